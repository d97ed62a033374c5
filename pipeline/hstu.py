"""HSTU sequence encoder on jagged batches.

Formulation
-----------
This is the Hierarchical Sequential Transduction Unit of Zhai et al., "Actions
Speak Louder than Words: Trillion-Parameter Sequential Transducers for
Generative Recommendations", ICML 2024 (arXiv:2402.17152), equations (1)-(3),
as implemented in the authors' reference code (github.com/facebookresearch/
generative-recommenders, ``hstu.py``). One layer, for the events of one user:

    X'            = LayerNorm(X)
    U, V, Q, K    = Split(SiLU(X' W_uvqk + b))                       (1)
    A[i, j]       = SiLU(Q_i . K_j + rab(i, j)) / n   for j <= i    (2)
                  = 0                                   otherwise
    Y             = X + W_o (U * LayerNorm(A V)) + b_o                (3)

with a relative attention bias ``rab(i, j) = pos_w[min(i - j, max_seq_len - 1)]
+ time_w[bucket(ts_i - ts_j)]``, where ``bucket(dt) = min(floor(log(max(|dt|, 1))
/ 0.301), num_time_buckets - 1)`` on timestamps in whole seconds, computed in
float32 (the reference code's log bucketisation). The input of the first layer
is the item embedding plus the action-type embedding of each event; the user
embedding is the last position's output, L2-normalised; item vectors for
retrieval are the L2-normalised rows of the (shared) item embedding table.

Deliberate differences from the paper / reference code, all small:

* ``n`` is a fixed number from the config (``HSTUConfig.attn_n``), not the
  padded length of the batch, so a user's embedding is independent of the rest
  of the batch. (The reference code divides by the padded ``N`` of the batch.)
* One ``pos_w`` and one ``time_w`` table per layer, shared by the heads (the
  reference code does the same, ``RelativeBucketedTimeAndPositionBasedBias``);
  position is a 1-D bias over the distance ``i - j`` rather than a full
  (N, N) Toeplitz parameterisation, which is equivalent for a Toeplitz matrix
  and keeps the table length ``max_seq_len``.
* The time delta is ``ts_i - ts_j`` of the query and key events themselves. The
  reference code shifts the query side by one event (``ts_{i+1} - ts_j``, the
  time of the event being predicted, which a server knows at request time);
  here the user embedding depends only on events already seen, so a cached
  embedding stays valid until the next event arrives.
* No 1/sqrt(d) scaling inside the SiLU, exactly as in equation (2).
* The LayerNorm on ``AV`` has no affine parameters and eps 1e-6; a final
  LayerNorm is applied to the last layer's output before L2 normalisation.
* No positional embedding is added to the input; position enters only through
  ``rab``. No input scaling by sqrt(dim).
* Jagged input (values + offsets) everywhere. The reference attention
  (:func:`hstu_attention_reference`) loops over sequences and never pads;
  training switches to :func:`hstu_attention_padded`, which pads to the
  mini-batch maximum for speed and is tested to give the same numbers.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.encoder_base import EncoderConfig, SequenceEncoder

__all__ = [
    "HSTUConfig",
    "HSTUEncoder",
    "HSTULayer",
    "hstu_attention_reference",
    "hstu_attention_padded",
    "time_bucket",
    "AttentionFn",
]

# log base used by the reference code's bucketisation: floor(ln(dt) / 0.301)
_BUCKET_DIVISOR = 0.301


@dataclass(frozen=True)
class HSTUConfig(EncoderConfig):
    num_items: int
    num_actions: int = 8
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    qk_dim: int = 32
    v_dim: int = 32
    max_seq_len: int = 200
    attn_n: int = 200
    num_time_buckets: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self._validate_fields()


def time_bucket(dt_s: Tensor, num_time_buckets: int) -> Tensor:
    """``min(floor(log(max(|dt|, 1)) / 0.301), num_time_buckets - 1)`` in float32."""
    x = dt_s.abs().clamp(min=1).to(torch.float32)
    b = torch.floor(torch.log(x) / _BUCKET_DIVISOR).to(torch.long)
    return b.clamp(min=0, max=num_time_buckets - 1)


def _rab(ts_s: Tensor, pos_w: Tensor, time_w: Tensor, num_time_buckets: int, last_rows: int | None = None) -> Tensor:
    """Relative attention bias (..., L, L) for one or more sequences of length L (only the last
    ``last_rows`` rows when given: (..., last_rows, L)).

    ``ts_s``: (..., L) integer seconds. Entry [i, j] = pos_w[min(i-j, P-1)] + time_w[bucket(ts_i - ts_j)];
    entries with j > i are garbage and must be masked by the caller.
    """
    L = ts_s.shape[-1]
    first = 0 if last_rows is None else L - last_rows
    idx = torch.arange(L, device=ts_s.device)
    rel = (idx[first:, None] - idx[None, :]).clamp(min=0, max=pos_w.shape[0] - 1)
    dt = ts_s[..., first:, None] - ts_s[..., None, :]
    return pos_w[rel] + time_w[time_bucket(dt, num_time_buckets)]


def hstu_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    ts_s: Tensor,
    pos_w: Tensor,
    time_w: Tensor,
    attn_n: int,
    num_time_buckets: int,
    q_offsets: Tensor | None = None,
) -> Tensor:
    """HSTU pointwise attention on a jagged batch, the readable reference.

    k: (T, H, qk_dim); v: (T, H, v_dim); offsets: (B+1,) int64, offsets[0] = 0,
    offsets[-1] = T; ts_s: (T,) int64 seconds; pos_w: (max_seq_len,);
    time_w: (num_time_buckets,). Returns (Tq, H, v_dim):

        out_i = sum_{j <= p(i), same sequence} SiLU(q_i . k_j + rab(p(i), j)) / attn_n * v_j

    Without ``q_offsets`` the queries are every row (q: (T, H, qk_dim), p(i) = i). With
    ``q_offsets`` (B+1,) the queries are only the LAST ``q_offsets[b+1] - q_offsets[b]`` rows
    of each key sequence (q: (Tq, H, qk_dim)), aligned bottom-right: query i of sequence b sits
    at position ``Lk_b - Lq_b + i``. That is the decode step of incremental encoding
    (new events attend to the cached keys/values of the earlier ones).

    Loops over sequences; never pads.
    """
    q_offsets = offsets if q_offsets is None else q_offsets
    H = q.shape[1]
    out = q.new_zeros((q.shape[0], H, v.shape[-1]))
    bounds, qbounds = offsets.tolist(), q_offsets.tolist()
    for b in range(len(bounds) - 1):
        s, e = bounds[b], bounds[b + 1]
        qs_, qe = qbounds[b], qbounds[b + 1]
        L, Lq = e - s, qe - qs_
        if Lq <= 0:
            continue
        if Lq > L:
            raise ValueError(f"sequence {b}: {Lq} queries but only {L} keys")
        qs, ks, vs = q[qs_:qe], k[s:e], v[s:e]
        scores = torch.einsum("ihd,jhd->hij", qs, ks)  # (H, Lq, L)
        scores = scores + _rab(ts_s[s:e], pos_w, time_w, num_time_buckets, Lq).to(scores.dtype)
        causal = torch.ones(Lq, L, dtype=torch.bool, device=q.device).tril(L - Lq)
        a = F.silu(scores) / attn_n
        a = a.masked_fill(~causal, 0.0)
        out[qs_:qe] = torch.einsum("hij,jhd->ihd", a, vs)
    return out


def _seq_pos(offsets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(sequence index, position in its sequence) of every jagged row, and the lengths."""
    lengths = offsets[1:] - offsets[:-1]
    seq = torch.repeat_interleave(torch.arange(lengths.shape[0], device=offsets.device), lengths)
    pos = torch.arange(seq.shape[0], device=offsets.device) - offsets[:-1][seq]
    return seq, pos, lengths


def _rows_of(offsets: Tensor, users: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of the jagged sequences ``users`` (in that order) and their own offsets."""
    lengths = (offsets[1:] - offsets[:-1])[users]
    sub = torch.zeros(users.shape[0] + 1, dtype=torch.long, device=offsets.device)
    sub[1:] = torch.cumsum(lengths, 0)
    seq, pos, _ = _seq_pos(sub)
    return offsets[:-1][users][seq] + pos, sub


# Largest padded score tensor (B x H x Lq x Lk elements) built at once; bigger batches are cut
# into groups of users with similar shapes.
_PADDED_MAX_ELEMENTS = 1 << 23


def hstu_attention_padded(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    ts_s: Tensor,
    pos_w: Tensor,
    time_w: Tensor,
    attn_n: int,
    num_time_buckets: int,
    q_offsets: Tensor | None = None,
) -> Tensor:
    """Same op as :func:`hstu_attention_reference`, padded internally for speed.

    Used by training and by incremental encoding on the CPU (batched matmuls instead of a
    Python loop per sequence). Users are padded in groups of similar shape so that no
    score tensor exceeds ``_PADDED_MAX_ELEMENTS``. Padding cannot change the result: the
    normaliser is the fixed ``attn_n`` and padded keys are masked to exactly 0.
    """
    q_offsets = offsets if q_offsets is None else q_offsets
    H = q.shape[1]
    B = offsets.shape[0] - 1
    if q.shape[0] == 0 or B == 0:
        return q.new_zeros((q.shape[0], H, v.shape[-1]))
    lk = (offsets[1:] - offsets[:-1]).tolist()
    lq = (q_offsets[1:] - q_offsets[:-1]).tolist()
    if B * H * max(lq) * max(lk) <= _PADDED_MAX_ELEMENTS:
        return _attention_padded_group(q, k, v, offsets, q_offsets, ts_s, pos_w, time_w, attn_n, num_time_buckets)
    out = q.new_zeros((q.shape[0], H, v.shape[-1]))
    order = sorted(range(B), key=lambda b: (lq[b], lk[b]))
    group: list[int] = []
    group_lk = 0
    for n, b in enumerate(order):
        group.append(b)
        group_lk = max(group_lk, lk[b])
        nxt = order[n + 1] if n + 1 < B else None
        if nxt is None or (len(group) + 1) * H * lq[nxt] * max(lk[nxt], group_lk) > _PADDED_MAX_ELEMENTS:
            users = torch.tensor(group, dtype=torch.long, device=offsets.device)
            krows, koff = _rows_of(offsets, users)
            qrows, qoff = _rows_of(q_offsets, users)
            out[qrows] = _attention_padded_group(q[qrows], k[krows], v[krows], koff, qoff, ts_s[krows], pos_w, time_w,
                                                 attn_n, num_time_buckets)
            group, group_lk = [], 0
    return out


def _attention_padded_group(q, k, v, offsets, q_offsets, ts_s, pos_w, time_w, attn_n, num_time_buckets) -> Tensor:
    _, H, dqk = q.shape
    dv = v.shape[-1]
    B = offsets.shape[0] - 1
    kseq, kpos, lk = _seq_pos(offsets)
    qseq, qpos, lq = _seq_pos(q_offsets)
    if bool((lq > lk).any()):
        raise ValueError("a sequence has more queries than keys")
    Lk, Lq = int(lk.max()), int(lq.max())
    kp = k.new_zeros((B, Lk, H, dqk)); kp[kseq, kpos] = k
    vp = v.new_zeros((B, Lk, H, dv)); vp[kseq, kpos] = v
    tp = ts_s.new_zeros((B, Lk)); tp[kseq, kpos] = ts_s
    qp = q.new_zeros((B, Lq, H, dqk)); qp[qseq, qpos] = q
    # absolute position of each padded query row; rows past a sequence's queries are clamped and dropped
    p = (lk - lq)[:, None] + torch.arange(Lq, device=q.device)[None, :]  # (B, Lq)
    p = torch.minimum(p, (lk - 1)[:, None])
    j = torch.arange(Lk, device=q.device)
    rel = (p[:, :, None] - j[None, None, :]).clamp(min=0, max=pos_w.shape[0] - 1)  # (B, Lq, Lk)
    dt = torch.gather(tp, 1, p)[:, :, None] - tp[:, None, :]
    rab = pos_w[rel] + time_w[time_bucket(dt, num_time_buckets)]
    scores = torch.einsum("bihd,bjhd->bhij", qp, kp) + rab.to(q.dtype)[:, None]
    mask = j[None, None, :] <= p[:, :, None]  # also masks padded keys (p < Lk_b)
    a = (F.silu(scores) / attn_n).masked_fill(~mask[:, None], 0.0)
    out = torch.einsum("bhij,bjhd->bihd", a, vp)
    return out[qseq, qpos]


AttentionFn = Callable[..., Tensor]
SiluLinearFn = Callable[[Tensor, Tensor, Tensor], Tensor]   # (x, weight, bias) -> SiLU(x W^T + b)
NormMulFn = Callable[[Tensor, Tensor], Tensor]              # (av, u) -> u * LayerNorm(av)


def silu_linear_torch(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Equation (1)'s projection, SiLU(x W^T + b), in PyTorch."""
    return F.silu(F.linear(x, weight, bias))


def norm_mul_torch(av: Tensor, u: Tensor) -> Tensor:
    """Equation (3)'s gate, u * LayerNorm(av) (no affine, eps 1e-6), in PyTorch."""
    return u * F.layer_norm(av, (av.shape[-1],), eps=1e-6)


class HSTULayer(nn.Module):
    def __init__(self, cfg: HSTUConfig) -> None:
        super().__init__()
        self.cfg = cfg
        H = cfg.num_heads
        self.norm = nn.LayerNorm(cfg.dim)
        self.uvqk = nn.Linear(cfg.dim, H * (2 * cfg.v_dim + 2 * cfg.qk_dim))
        self.pos_w = nn.Parameter(torch.zeros(cfg.max_seq_len))
        self.time_w = nn.Parameter(torch.zeros(cfg.num_time_buckets))
        self.out = nn.Linear(H * cfg.v_dim, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def project(self, x: Tensor, silu_linear: SiluLinearFn = silu_linear_torch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Equation (1): u (T, H*v_dim), v (T, H, v_dim), q and k (T, H, qk_dim) of each row."""
        cfg = self.cfg
        T, H = x.shape[0], cfg.num_heads
        h = silu_linear(self.norm(x), self.uvqk.weight, self.uvqk.bias)
        u, v, q, k = torch.split(
            h, [H * cfg.v_dim, H * cfg.v_dim, H * cfg.qk_dim, H * cfg.qk_dim], dim=-1
        )
        return u, v.reshape(T, H, cfg.v_dim), q.reshape(T, H, cfg.qk_dim), k.reshape(T, H, cfg.qk_dim)

    def combine(self, x: Tensor, u: Tensor, av: Tensor, norm_mul: NormMulFn = norm_mul_torch) -> Tensor:
        """Equation (3): ``x + W_o (u * LayerNorm(av)) + b_o`` with av (T, H, v_dim)."""
        y = norm_mul(av.reshape(x.shape[0], -1), u)
        return x + self.dropout(self.out(y))

    def forward(self, x: Tensor, offsets: Tensor, ts_s: Tensor, attention: AttentionFn,
                silu_linear: SiluLinearFn = silu_linear_torch, norm_mul: NormMulFn = norm_mul_torch) -> Tensor:
        u, v, q, k = self.project(x, silu_linear)
        av = attention(q, k, v, offsets, ts_s, self.pos_w, self.time_w, self.cfg.attn_n, self.cfg.num_time_buckets)
        return self.combine(x, u, av, norm_mul)


class HSTUEncoder(SequenceEncoder):
    """HSTU over jagged batches: ``encode`` gives every position, ``forward`` the user embedding."""

    def __init__(self, cfg: HSTUConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.dim)  # last row = OOV
        self.action_emb = nn.Embedding(cfg.num_actions, cfg.dim)
        self.layers = nn.ModuleList(HSTULayer(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.dim)
        self.input_dropout = nn.Dropout(cfg.dropout)
        # The layer ops. PyTorch by default (the jagged reference attention); training swaps
        # in the padded attention; the torch backend on CUDA swaps in kernels/ (set_kernels).
        self.attention: AttentionFn = hstu_attention_reference
        self.silu_linear: SiluLinearFn = silu_linear_torch
        self.norm_mul: NormMulFn = norm_mul_torch
        self.batch_context: Callable[[], ContextManager] = contextlib.nullcontext
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.item_emb.weight, std=0.02)
        nn.init.trunc_normal_(self.action_emb.weight, std=0.02)
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.uvqk.weight)
            nn.init.zeros_(layer.uvqk.bias)
            nn.init.xavier_uniform_(layer.out.weight)
            nn.init.zeros_(layer.out.bias)

    def set_attention(self, fn: AttentionFn) -> None:
        self.attention = fn

    def set_kernels(self, *, attention: AttentionFn | None = None, silu_linear: SiluLinearFn | None = None,
                    norm_mul: NormMulFn | None = None,
                    batch_context: Callable[[], ContextManager] | None = None) -> None:
        """Swap layer ops for implementations of the same math (``None`` keeps the current one).
        ``batch_context()`` is entered around the layers of each ``encode``: the kernels use it to
        build per-batch tables once for all layers (``kernels.hstu_attention.same_batch``)."""
        self.attention = attention or self.attention
        self.silu_linear = silu_linear or self.silu_linear
        self.norm_mul = norm_mul or self.norm_mul
        self.batch_context = batch_context or self.batch_context

    def embed_events(self, item_idx: Tensor, action_idx: Tensor) -> Tensor:
        """The first layer's input: item embedding + action-type embedding, (T, dim)."""
        return self.input_dropout(self.item_emb(item_idx) + self.action_emb(action_idx))

    def encode(self, item_idx: Tensor, action_idx: Tensor, ts_ms: Tensor, offsets: Tensor,
               check: bool = True) -> Tensor:
        """Every position's output, (T, dim), for a jagged batch (values + offsets).
        ``check=False`` skips the input checks, which read ``offsets`` on the host (CUDA-graph capture)."""
        if check:
            self._check(item_idx, action_idx, ts_ms, offsets)
        x = self.embed_events(item_idx, action_idx)
        ts_s = torch.div(ts_ms, 1000, rounding_mode="floor")
        with self.batch_context():
            for layer in self.layers:
                x = layer(x, offsets, ts_s, self.attention, self.silu_linear, self.norm_mul)
        return self.final_norm(x)


def flops_per_event(cfg: HSTUConfig, seq_len: int) -> float:
    """Approximate multiply-adds x2 for encoding one new event with a KV cache of ``seq_len``."""
    H = cfg.num_heads
    proj = 2 * cfg.dim * H * (2 * cfg.v_dim + 2 * cfg.qk_dim) + 2 * H * cfg.v_dim * cfg.dim
    attn = 2 * H * seq_len * (cfg.qk_dim + cfg.v_dim)
    return float(cfg.num_layers * (proj + attn))
