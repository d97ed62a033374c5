"""Random jagged batches for the encoder parity tests, the export check and the benchmark."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from pipeline.hstu import HSTUConfig

__all__ = ["random_jagged", "random_lengths"]


def random_lengths(B: int, max_len: int, seed: int = 0, include_extremes: bool = True) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, max_len + 1, (B,), generator=g).tolist()
    if include_extremes and B >= 2:
        lens[0], lens[1] = 1, max_len
    return lens


def random_jagged(cfg: HSTUConfig, lengths: Sequence[int], seed: int = 0,
                  oov: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(item_idx, action_idx, ts_ms, offsets) with the given lengths; realistic, sorted timestamps.

    Time gaps span seconds to months (so every time bucket is exercised), items include the
    OOV index when ``oov``.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = [int(x) for x in lengths]
    T = sum(lengths)
    hi = cfg.num_items + (1 if oov else 0)
    item = torch.randint(0, hi, (T,), generator=g)
    action = torch.randint(0, cfg.num_actions, (T,), generator=g)
    # log-uniform gaps between 0.1 s and ~100 days, cumulated per sequence
    gaps = torch.exp(torch.empty(T).uniform_(torch.log(torch.tensor(100.0)).item(), 22.9, generator=g)).long()
    ts = torch.empty(T, dtype=torch.long)
    offsets = [0]
    for n in lengths:
        s = offsets[-1]
        start = 1_700_000_000_000 + int(torch.randint(0, 10**9, (1,), generator=g))
        ts[s:s + n] = start + torch.cumsum(gaps[s:s + n], 0) - gaps[s]
        offsets.append(s + n)
    return item, action, ts, torch.tensor(offsets, dtype=torch.long)
