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

from dataclasses import dataclass
from typing import Callable

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


def _rab(ts_s: Tensor, pos_w: Tensor, time_w: Tensor, num_time_buckets: int) -> Tensor:
    """Relative attention bias (..., L, L) for one or more sequences of length L.

    ``ts_s``: (..., L) integer seconds. Entry [i, j] = pos_w[min(i-j, P-1)] + time_w[bucket(ts_i - ts_j)];
    entries with j > i are garbage and must be masked by the caller.
    """
    L = ts_s.shape[-1]
    idx = torch.arange(L, device=ts_s.device)
    rel = (idx[:, None] - idx[None, :]).clamp(min=0, max=pos_w.shape[0] - 1)
    dt = ts_s[..., :, None] - ts_s[..., None, :]
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
) -> Tensor:
    """HSTU pointwise attention on a jagged batch, the readable reference.

    q, k: (T, H, qk_dim); v: (T, H, v_dim); offsets: (B+1,) int64, offsets[0] = 0,
    offsets[-1] = T; ts_s: (T,) int64 seconds; pos_w: (max_seq_len,);
    time_w: (num_time_buckets,). Returns (T, H, v_dim):

        out_i = sum_{j <= i, same sequence} SiLU(q_i . k_j + rab(i, j)) / attn_n * v_j

    Loops over sequences; never pads.
    """
    T, H, _ = q.shape
    out = q.new_zeros((T, H, v.shape[-1]))
    bounds = offsets.tolist()
    for b in range(len(bounds) - 1):
        s, e = bounds[b], bounds[b + 1]
        if e <= s:
            continue
        L = e - s
        qs, ks, vs = q[s:e], k[s:e], v[s:e]
        scores = torch.einsum("ihd,jhd->hij", qs, ks)  # (H, L, L)
        scores = scores + _rab(ts_s[s:e], pos_w, time_w, num_time_buckets).to(scores.dtype)
        causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        a = F.silu(scores) / attn_n
        a = a.masked_fill(~causal, 0.0)
        out[s:e] = torch.einsum("hij,jhd->ihd", a, vs)
    return out


def _jagged_to_padded_index(offsets: Tensor) -> tuple[Tensor, Tensor, int]:
    """(batch index, position) of every jagged row, and the batch max length."""
    lengths = offsets[1:] - offsets[:-1]
    B = lengths.shape[0]
    max_len = int(lengths.max().item()) if B > 0 else 0
    seq = torch.repeat_interleave(torch.arange(B, device=offsets.device), lengths)
    pos = torch.arange(int(offsets[-1].item()), device=offsets.device) - offsets[:-1][seq]
    return seq, pos, max_len


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
) -> Tensor:
    """Same op as :func:`hstu_attention_reference`, padded to the batch max internally.

    Used by training for speed (one batched matmul instead of a Python loop).
    Padding cannot change the result: the normaliser is the fixed ``attn_n`` and
    padded keys are masked to exactly 0.
    """
    T, H, dqk = q.shape
    dv = v.shape[-1]
    B = offsets.shape[0] - 1
    if T == 0 or B == 0:
        return q.new_zeros((T, H, dv))
    seq, pos, L = _jagged_to_padded_index(offsets)
    qp = q.new_zeros((B, L, H, dqk)); qp[seq, pos] = q
    kp = k.new_zeros((B, L, H, dqk)); kp[seq, pos] = k
    vp = v.new_zeros((B, L, H, dv)); vp[seq, pos] = v
    tp = ts_s.new_zeros((B, L)); tp[seq, pos] = ts_s
    valid = torch.zeros((B, L), dtype=torch.bool, device=q.device)
    valid[seq, pos] = True
    scores = torch.einsum("bihd,bjhd->bhij", qp, kp)
    scores = scores + _rab(tp, pos_w, time_w, num_time_buckets).to(scores.dtype)[:, None]
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    mask = causal[None, None] & valid[:, None, None, :]
    a = (F.silu(scores) / attn_n).masked_fill(~mask, 0.0)
    out = torch.einsum("bhij,bjhd->bihd", a, vp)
    return out[seq, pos]


AttentionFn = Callable[..., Tensor]


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

    def forward(self, x: Tensor, offsets: Tensor, ts_s: Tensor, attention: AttentionFn) -> Tensor:
        cfg = self.cfg
        T = x.shape[0]
        H = cfg.num_heads
        h = F.silu(self.uvqk(self.norm(x)))
        u, v, q, k = torch.split(
            h, [H * cfg.v_dim, H * cfg.v_dim, H * cfg.qk_dim, H * cfg.qk_dim], dim=-1
        )
        av = attention(
            q.reshape(T, H, cfg.qk_dim),
            k.reshape(T, H, cfg.qk_dim),
            v.reshape(T, H, cfg.v_dim),
            offsets,
            ts_s,
            self.pos_w,
            self.time_w,
            cfg.attn_n,
            cfg.num_time_buckets,
        ).reshape(T, H * cfg.v_dim)
        y = u * F.layer_norm(av, (H * cfg.v_dim,), eps=1e-6)
        return x + self.dropout(self.out(y))


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
        # The attention op. The jagged reference by default; training swaps in the padded
        # variant; a kernel dispatcher (kernels/hstu_attention.py) may swap in a fused op
        # with the same signature.
        self.attention: AttentionFn = hstu_attention_reference
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

    def encode(self, item_idx: Tensor, action_idx: Tensor, ts_ms: Tensor, offsets: Tensor) -> Tensor:
        """Every position's output, (T, dim), for a jagged batch (values + offsets)."""
        self._check(item_idx, action_idx, ts_ms, offsets)
        x = self.item_emb(item_idx) + self.action_emb(action_idx)
        x = self.input_dropout(x)
        ts_s = torch.div(ts_ms, 1000, rounding_mode="floor")
        for layer in self.layers:
            x = layer(x, offsets, ts_s, self.attention)
        return self.final_norm(x)


def flops_per_event(cfg: HSTUConfig, seq_len: int) -> float:
    """Approximate multiply-adds x2 for encoding one new event with a KV cache of ``seq_len``."""
    H = cfg.num_heads
    proj = 2 * cfg.dim * H * (2 * cfg.v_dim + 2 * cfg.qk_dim) + 2 * H * cfg.v_dim * cfg.dim
    attn = 2 * H * seq_len * (cfg.qk_dim + cfg.v_dim)
    return float(cfg.num_layers * (proj + attn))
