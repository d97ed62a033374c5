"""Retrieval: dot-product scores of user embeddings against the item table, top-k.

On the CPU this is a matmul + ``torch.topk`` (DESIGN §4); a fused GEMM + top-k
kernel may replace it on a GPU with the same contract:

* scores are plain dot products ``user_emb @ item_table.T`` (both sides are
  L2-normalised by the encoder, so they are cosines in [-1, 1]);
* an excluded index is never returned;
* when a user has fewer than ``k`` eligible items the remaining slots hold
  index ``-1`` and score ``-inf`` (callers drop them); ``k`` larger than the
  table is clipped to the table size.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["top_k_items", "exclusion_mask"]


def exclusion_mask(num_users: int, num_items: int, exclude: Sequence[Sequence[int]] | None, device=None) -> Tensor | None:
    """Boolean (B, N) mask, True where an item is excluded. Out-of-range ids (e.g. OOV) are ignored."""
    if exclude is None:
        return None
    if len(exclude) != num_users:
        raise ValueError(f"exclude has {len(exclude)} rows for {num_users} users")
    rows: list[int] = []
    cols: list[int] = []
    for b, idxs in enumerate(exclude):
        for i in idxs:
            i = int(i)
            if 0 <= i < num_items:
                rows.append(b)
                cols.append(i)
    mask = torch.zeros((num_users, num_items), dtype=torch.bool, device=device)
    if rows:
        mask[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = True
    return mask


def top_k_items(
    user_emb: Tensor,
    item_table: Tensor,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` items per user by dot product. Returns (scores (B, k), indices (B, k))."""
    if user_emb.dim() != 2 or item_table.dim() != 2 or user_emb.shape[1] != item_table.shape[1]:
        raise ValueError(
            f"shape mismatch: user_emb {tuple(user_emb.shape)} vs item_table {tuple(item_table.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    B, N = user_emb.shape[0], item_table.shape[0]
    k = min(k, N)
    scores = user_emb @ item_table.T
    mask = exclusion_mask(B, N, exclude, device=scores.device)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    top_scores, top_idx = torch.topk(scores, k, dim=1)
    if mask is not None:
        # rows with fewer than k eligible items: the tail is -inf; mark it unusable
        # (an excluded item would otherwise appear among the -inf ties)
        top_idx = top_idx.masked_fill(torch.isneginf(top_scores), -1)
    return top_scores, top_idx
