"""Offline evaluation protocol and metric code.

Protocol (docs/model.md):

* chronological leave-one-out: per user, the last event is the test target and
  the one before it the validation target; training sees everything before the
  validation target. Users with fewer than 3 events are used for training only.
* full ranking over all items (no sampled candidates);
* the items of the user's own input history are excluded from the ranking
  (the target itself is never excluded, so a repeat consumption still counts);
* ties are counted against the target (pessimistic rank), so a constant scorer
  does not look perfect;
* HR@K = share of users whose target ranks in the top K; NDCG@K = mean of
  1/log2(rank + 2) over users whose target ranks in the top K (0-based rank),
  K in {10, 50}.

Every scorer (the HSTU model, popularity, random, the planted-truth oracle) is
evaluated by the same code: a scorer maps a batch of (user id, history) to a
(B, num_items) score matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.recommender import HistoryEvent, build_jagged

__all__ = [
    "Split",
    "EvalCase",
    "leave_one_out",
    "target_ranks",
    "hit_rate",
    "ndcg",
    "metrics_from_ranks",
    "evaluate",
    "model_scorer",
    "popularity_scorer",
    "random_scorer",
    "oracle_scorer",
    "Scorer",
    "KS",
]

KS = (10, 50)

Scorer = Callable[[Sequence[str], Sequence[Sequence[HistoryEvent]]], Tensor]


@dataclass
class EvalCase:
    user_id: str
    history: list[HistoryEvent]
    target: str


@dataclass
class Split:
    train: list[list[HistoryEvent]]  # per user: events before the validation target
    train_users: list[str]
    valid: list[EvalCase]
    test: list[EvalCase]


def leave_one_out(user_ids: Sequence[str], sequences: Sequence[Sequence[HistoryEvent]]) -> Split:
    if len(user_ids) != len(sequences):
        raise ValueError("user_ids and sequences must align")
    train, train_users, valid, test = [], [], [], []
    for u, seq in zip(user_ids, sequences):
        seq = list(seq)
        if len(seq) < 3:
            train.append(seq)
            train_users.append(u)
            continue
        train.append(seq[:-2])
        train_users.append(u)
        valid.append(EvalCase(u, seq[:-2], seq[-2].item_id))
        test.append(EvalCase(u, seq[:-1], seq[-1].item_id))
    return Split(train, train_users, valid, test)


def target_ranks(scores: Tensor, targets: Tensor, exclude: Sequence[Sequence[int]] | None = None) -> Tensor:
    """0-based rank of each target among the non-excluded items; ties count against the target.

    scores: (B, N); targets: (B,) item indices; exclude: per row, item indices removed from
    the ranking (the target itself is never removed).
    """
    scores = scores.detach().to(torch.float64)
    B, N = scores.shape
    targets = targets.to(torch.long).view(-1, 1)
    if targets.shape[0] != B:
        raise ValueError(f"{targets.shape[0]} targets for {B} score rows")
    t = scores.gather(1, targets)
    if exclude is not None:
        rows: list[int] = []
        cols: list[int] = []
        for b, idxs in enumerate(exclude):
            for i in idxs:
                i = int(i)
                if 0 <= i < N:
                    rows.append(b)
                    cols.append(i)
        if rows:
            scores = scores.clone()
            scores[torch.tensor(rows), torch.tensor(cols)] = float("-inf")
            scores.scatter_(1, targets, t)  # the target is never excluded
    higher = (scores > t).sum(1)
    ties = (scores == t).sum(1) - 1  # other items with exactly the target's score
    ranks = higher + ties.clamp(min=0)
    # a NaN target score can never count as a hit
    return torch.where(torch.isnan(t.view(-1)), torch.full_like(ranks, N), ranks)


def hit_rate(ranks: Tensor, k: int) -> float:
    if ranks.numel() == 0:
        return 0.0
    return float((ranks < k).double().mean())


def ndcg(ranks: Tensor, k: int) -> float:
    if ranks.numel() == 0:
        return 0.0
    r = ranks.double()
    gain = torch.where(r < k, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r))
    return float(gain.mean())


def metrics_from_ranks(ranks: Tensor, ks: Sequence[int] = KS) -> dict:
    out: dict = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(ranks, k)
        out[f"ndcg@{k}"] = ndcg(ranks, k)
    out["users"] = int(ranks.numel())
    return out


def evaluate(
    scorer: Scorer,
    cases: Sequence[EvalCase],
    item_index: dict[str, int],
    batch_size: int = 256,
    ks: Sequence[int] = KS,
) -> dict:
    """Full-ranking metrics of ``scorer`` on ``cases`` (own history excluded)."""
    all_ranks: list[Tensor] = []
    for s in range(0, len(cases), batch_size):
        chunk = cases[s : s + batch_size]
        scores = scorer([c.user_id for c in chunk], [c.history for c in chunk])
        targets = torch.tensor([item_index[c.target] for c in chunk], dtype=torch.long)
        exclude = [[item_index[e.item_id] for e in c.history if e.item_id in item_index] for c in chunk]
        all_ranks.append(target_ranks(scores, targets, exclude))
    ranks = torch.cat(all_ranks) if all_ranks else torch.zeros(0, dtype=torch.long)
    return metrics_from_ranks(ranks, ks)


# ------------------------------------------------------------------ scorers
def model_scorer(encoder, item_index: dict[str, int], batch_device: str = "cpu") -> Scorer:
    cfg = encoder.cfg

    def score(user_ids, histories):
        b = build_jagged(histories, item_index, cfg.num_items, cfg.max_seq_len).to(batch_device)
        with torch.inference_mode():
            emb = encoder(b.item_idx, b.action_idx, b.ts_ms, b.offsets)
            return (emb @ encoder.item_table().T).float().cpu()

    return score


def popularity_scorer(train_sequences: Sequence[Sequence[HistoryEvent]], item_index: dict[str, int]) -> Scorer:
    counts = np.zeros(len(item_index), dtype=np.float64)
    for seq in train_sequences:
        for e in seq:
            i = item_index.get(e.item_id)
            if i is not None:
                counts[i] += 1
    # tiny deterministic tie-breaker so equal counts do not all tie
    pop = torch.tensor(counts + np.linspace(0, 1e-6, len(counts)), dtype=torch.float64)

    def score(user_ids, histories):
        return pop.unsqueeze(0).expand(len(histories), -1).clone()

    return score


def random_scorer(num_items: int, seed: int = 0) -> Scorer:
    g = torch.Generator().manual_seed(seed)

    def score(user_ids, histories):
        return torch.rand((len(histories), num_items), generator=g, dtype=torch.float64)

    return score


def oracle_scorer(oracle: Callable[[str, Sequence[HistoryEvent]], np.ndarray]) -> Scorer:
    """Bayes-optimal ranking from the planted next-item distribution (synthetic data)."""

    def score(user_ids, histories):
        return torch.tensor(np.stack([oracle(u, h) for u, h in zip(user_ids, histories)]), dtype=torch.float64)

    return score

