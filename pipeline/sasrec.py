"""SASRec sequence encoder on jagged batches: the baseline HSTU is compared against.

Formulation
-----------
Self-Attentive Sequential Recommendation, Kang & McAuley, ICDM 2018
(arXiv:1808.09781), as in the authors' TensorFlow code (github.com/kang205/SASRec,
``model.py`` / ``modules.py``) and its widely used PyTorch port
(github.com/pmixer/SASRec.pytorch). For the events of one user, X = item
embeddings * sqrt(dim) + learned position embeddings, dropout, then per block:

    Q  = LayerNorm(X)
    X  = Q + MHA(Q, X, X)                    causal softmax(Q K^T / sqrt(d_head)) V,
                                             dropout on the attention weights
    Z  = LayerNorm(X)
    X  = Z + Dropout(W_2 Dropout(ReLU(W_1 Z + b_1)) + b_2)     point-wise FFN (dim -> dim -> dim)

and a final LayerNorm. (The residual adds the *normalised* input, exactly as the
reference code does: ``outputs += queries`` with ``queries = normalize(seq)``.)
The user embedding is the last position's output, L2-normalised; the item
vectors are the L2-normalised rows of the shared item embedding table -- the
same interface and the same scoring as :class:`pipeline.hstu.HSTUEncoder`, so
the training loop (sampled softmax), the evaluation and the Recommender work
unchanged.

Positions: the reference code left-pads every sequence to ``maxlen`` and adds
the embedding of the *padded* position, so a user's most recent event always
gets position ``maxlen - 1``. Here (jagged, no padding) the same thing is
written as a position counted from the end: event ``i`` of a sequence of
length ``L`` gets the embedding ``pos_emb[max_seq_len - L + i]`` (clamped at 0),
which is identical to the reference code for ``L <= max_seq_len`` and depends
only on the user's own sequence (batch independence).

Deliberate differences, all small:

* An action-type embedding is added to the input, as HSTU's input is item +
  action embedding (the same inputs for both models). On ML-100k every event is
  a ``rate``, so it is a constant bias there.
* Loss: the harness's sampled softmax with L2-normalised vectors and a
  temperature (as HSTU is trained), instead of the paper's binary cross-entropy
  with one negative per position. Same loss for both models = same harness.
* Weight init: items/actions/positions trunc-normal(0.02) (the same item-table
  init as HSTU), linear layers Xavier-uniform.
* Jagged input (values + offsets). :func:`sasrec_attention_reference` loops over
  sequences and never pads; :func:`sasrec_attention_padded` pads to the batch
  max internally (keys masked, so padding cannot change a result) and is the
  default; tests prove they agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.encoder_base import EncoderConfig, SequenceEncoder

__all__ = [
    "SASRecConfig",
    "SASRecEncoder",
    "SASRecBlock",
    "sasrec_attention_reference",
    "sasrec_attention_padded",
    "jagged_positions",
]


@dataclass(frozen=True)
class SASRecConfig(EncoderConfig):
    num_items: int
    num_actions: int = 8
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    ffn_dim: int = 64  # the reference code's FFN is dim -> dim -> dim
    max_seq_len: int = 200
    dropout: float = 0.2

    def __post_init__(self) -> None:
        self._validate_fields()
        if self.dim % self.num_heads:
            raise ValueError(f"SASRecConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")

    @classmethod
    def from_train_config(cls, cfg: Any, num_items: int) -> "SASRecConfig":
        """The SASRec twin of ``TrainConfig.model_config``: same dim, layers, heads, window, dropout."""
        return cls(
            num_items=num_items,
            dim=cfg.dim,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            ffn_dim=cfg.dim,
            max_seq_len=cfg.max_seq_len,
            dropout=cfg.dropout,
        )


def jagged_positions(offsets: Tensor, max_seq_len: int) -> Tensor:
    """Position index of every jagged row, counted so that the LAST event of each sequence is
    ``max_seq_len - 1`` (the reference code's left-padded positions); clamped at 0."""
    lengths = offsets[1:] - offsets[:-1]
    T = int(offsets[-1].item()) if offsets.numel() else 0
    seq = torch.repeat_interleave(torch.arange(lengths.shape[0], device=offsets.device), lengths)
    i = torch.arange(T, device=offsets.device) - offsets[:-1][seq]
    return (max_seq_len - lengths[seq] + i).clamp(min=0)


def sasrec_attention_reference(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, dropout_p: float = 0.0) -> Tensor:
    """Causal scaled-dot-product softmax attention per sequence of a jagged batch; never pads.

    q, k, v: (T, H, d); offsets (B+1,). Returns (T, H, d).
    """
    T, H, d = q.shape
    out = q.new_zeros((T, H, v.shape[-1]))
    bounds = offsets.tolist()
    for b in range(len(bounds) - 1):
        s, e = bounds[b], bounds[b + 1]
        if e <= s:
            continue
        L = e - s
        scores = torch.einsum("ihd,jhd->hij", q[s:e], k[s:e]) / math.sqrt(d)
        causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        a = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        a = F.dropout(a, dropout_p, training=dropout_p > 0)
        out[s:e] = torch.einsum("hij,jhd->ihd", a, v[s:e])
    return out


def sasrec_attention_padded(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, dropout_p: float = 0.0) -> Tensor:
    """Same op as :func:`sasrec_attention_reference`, right-padded to the batch max internally.

    Padded keys are masked out of the softmax, so padding cannot change a valid row; padded
    query rows still see their sequence's valid keys (no all-masked row, no NaN) and are dropped.
    """
    T, H, d = q.shape
    B = offsets.shape[0] - 1
    if T == 0 or B == 0:
        return q.new_zeros((T, H, v.shape[-1]))
    lengths = offsets[1:] - offsets[:-1]
    L = int(lengths.max().item())
    seq = torch.repeat_interleave(torch.arange(B, device=q.device), lengths)
    pos = torch.arange(T, device=q.device) - offsets[:-1][seq]
    qp = q.new_zeros((B, H, L, d)); qp[seq, :, pos] = q
    kp = k.new_zeros((B, H, L, d)); kp[seq, :, pos] = k
    vp = v.new_zeros((B, H, L, v.shape[-1])); vp[seq, :, pos] = v
    valid = torch.arange(L, device=q.device)[None, :] < lengths[:, None]  # (B, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    mask = causal[None, None] & valid[:, None, None, :]  # (B, 1, L, L), True = attend
    out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, dropout_p=dropout_p)
    return out[seq, :, pos]


class SASRecBlock(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn_norm = nn.LayerNorm(cfg.dim, eps=1e-8)
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=1e-8)
        self.ffn1 = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.ffn2 = nn.Linear(cfg.ffn_dim, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, offsets: Tensor, padded: bool = True) -> Tensor:
        cfg = self.cfg
        T, H = x.shape[0], cfg.num_heads
        dh = cfg.dim // H
        qn = self.attn_norm(x)
        q = self.q(qn).reshape(T, H, dh)
        k, v = self.kv(x).reshape(T, 2, H, dh).unbind(1)
        p = cfg.dropout if self.training else 0.0
        attn = (sasrec_attention_padded if padded else sasrec_attention_reference)(q, k, v, offsets, p)
        x = qn + self.out(attn.reshape(T, cfg.dim))  # dropout is on the attention weights, as in the reference
        z = self.ffn_norm(x)
        return z + self.dropout(self.ffn2(self.dropout(F.relu(self.ffn1(z)))))


class SASRecEncoder(SequenceEncoder):
    """SASRec over jagged batches, with :class:`pipeline.hstu.HSTUEncoder`'s interface."""

    arch = "sasrec"

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.dim)  # last row = OOV
        self.action_emb = nn.Embedding(cfg.num_actions, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.dim)
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.dim, eps=1e-8)
        # "padded" (default, one batched op) or "reference" (loops over sequences, never pads)
        self.attention_impl = "padded"
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for emb in (self.item_emb, self.action_emb, self.pos_emb):
            nn.init.trunc_normal_(emb.weight, std=0.02)
        for blk in self.blocks:
            for lin in (blk.q, blk.kv, blk.out, blk.ffn1, blk.ffn2):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def encode(self, item_idx: Tensor, action_idx: Tensor, ts_ms: Tensor, offsets: Tensor) -> Tensor:
        """Every position's output, (T, dim), for a jagged batch. ``ts_ms`` is unused (SASRec has no time input)."""
        self._check(item_idx, action_idx, ts_ms, offsets)
        cfg = self.cfg
        x = self.item_emb(item_idx) * math.sqrt(cfg.dim) + self.action_emb(action_idx)
        x = x + self.pos_emb(jagged_positions(offsets, cfg.max_seq_len))
        x = self.input_dropout(x)
        padded = self.attention_impl != "reference"
        for blk in self.blocks:
            x = blk(x, offsets, padded)
        return self.final_norm(x)
