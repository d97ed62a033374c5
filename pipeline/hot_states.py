"""The predictive hot set: which users keep their encoder state, within a memory budget.

A user's state (pipeline/encoder_state.py) lets their next event cost one decode step instead
of a full re-encode. Memory is bounded (the arena), so the question is whose state to keep.
The answer here is *predictive*: keep the users most likely to act again soon, estimated by
their event frequency with exponential aging (W-TinyLFU's idea):

* every event of a user increments a count-min sketch (4 rows; a user's estimate is the
  minimum of its 4 counters, so collisions only over-estimate);
* every ``aging_events`` increments, all counters are halved: frequency decays, so a user who
  was hot an hour ago loses to one who is hot now;
* to make room, the arena evicts the resident user with the lowest estimate among a random
  sample of ``sample`` residents (Redis-style sampled eviction, O(sample) per eviction), and a
  user without a state is admitted only if its estimate beats that victim's (a one-off user
  never pushes out a regular).

Users in the current batch are never evicted for each other: when a batch needs more pages
than the policy frees, its lowest-estimate users are computed without keeping a state.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from pipeline.encoder_state import StateArena, UserEncoderState, extend, to_device

__all__ = ["FrequencySketch", "ResidentSet", "HotStats", "HotStates", "pick_victim"]

_MASK = (1 << 64) - 1
_NO_PAGES = np.zeros(0, dtype=np.int64)


class FrequencySketch:
    """Count-min sketch of event counts per key, with periodic halving (aging)."""

    def __init__(self, width: int = 1 << 16, depth: int = 4, aging_events: int = 100_000, seed: int = 0) -> None:
        if width < 1 or depth < 1 or aging_events < 1:
            raise ValueError("width, depth and aging_events must be >= 1")
        self.width, self.depth, self.aging_events = width, depth, aging_events
        self.table = np.zeros((depth, width), dtype=np.uint32)
        rng = random.Random(seed)
        self._salts = np.array([rng.getrandbits(64) | 1 for _ in range(depth)], dtype=np.uint64)
        self._since_aging = 0
        self.agings = 0

    def _cols(self, keys: list[str]) -> np.ndarray:
        """(depth, len(keys)) column of each key in each row."""
        h = np.array([hash(k) & _MASK for k in keys], dtype=np.uint64)
        with np.errstate(over="ignore"):
            mixed = (h[None, :] ^ self._salts[:, None]) * np.uint64(0x9E3779B97F4A7C15)
        return ((mixed >> np.uint64(16)) % np.uint64(self.width)).astype(np.int64)

    def add_many(self, keys: list[str], counts: list[int]) -> None:
        cols = self._cols(keys)
        c = np.asarray(counts, dtype=np.uint32)
        for row in range(self.depth):
            np.add.at(self.table[row], cols[row], c)
        self._since_aging += int(c.sum())
        if self._since_aging >= self.aging_events:
            self.table >>= 1
            self._since_aging = 0
            self.agings += 1

    def add(self, key: str, count: int = 1) -> None:
        self.add_many([key], [count])

    def estimate_many(self, keys: list[str]) -> list[int]:
        if not keys:
            return []
        cols = self._cols(keys)
        return self.table[np.arange(self.depth)[:, None], cols].min(0).tolist()

    def estimate(self, key: str) -> int:
        return self.estimate_many([key])[0]


class ResidentSet:
    """The users that hold a state, with O(1) random sampling (for sampled eviction)."""

    def __init__(self, seed: int = 0) -> None:
        self._keys: list[str] = []
        self._pos: dict[str, int] = {}
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._pos

    def add(self, key: str) -> None:
        if key not in self._pos:
            self._pos[key] = len(self._keys)
            self._keys.append(key)

    def discard(self, key: str) -> None:
        i = self._pos.pop(key, None)
        if i is None:
            return
        last = self._keys.pop()
        if i < len(self._keys):
            self._keys[i] = last
            self._pos[last] = i

    def sample(self, n: int) -> list[str]:
        if len(self._keys) <= n:
            return list(self._keys)
        return [self._keys[self._rng.randrange(len(self._keys))] for _ in range(n)]


@dataclass
class HotStats:
    """Counters since start (the worker exports their increments as Prometheus counters)."""

    lookups: Counter = field(default_factory=Counter)  # hit | reuse | miss | stale | window_moved
    evictions: int = 0
    rejections: int = 0  # users computed without keeping a state (not admitted / no room)
    reprefills: Counter = field(default_factory=Counter)  # why a user's state was rebuilt: stale | window_moved
    events_decoded: int = 0  # new events encoded on top of a state
    events_prefilled: int = 0  # events encoded from scratch

    def snapshot(self) -> dict:
        return {"lookups": dict(self.lookups), "evictions": self.evictions, "rejections": self.rejections,
                "reprefills": dict(self.reprefills), "events_decoded": self.events_decoded,
                "events_prefilled": self.events_prefilled}


def pick_victim(residents: ResidentSet, sketch: FrequencySketch, protected: Iterable[str] | set[str],
                sample: int = 8) -> tuple[str, int] | None:
    """The resident with the lowest frequency estimate among a random sample, never a protected one."""
    protected = protected if isinstance(protected, set) else set(protected)
    best: tuple[str, int] | None = None
    for _ in range(4):  # a few tries in case the sample is all protected
        keys = [k for k in residents.sample(sample) if k not in protected]
        for key, est in zip(keys, sketch.estimate_many(keys)):
            if best is None or est < best[1]:
                best = (key, est)
        if best is not None:
            return best
    return None


class HotStates:
    """Per-user encoder states for the users most likely to act again, within a byte budget.

    ``embed(users, starts, batch)`` returns the same embeddings as a full encode of ``batch``
    (each user's window, as jagged tensors on the CPU), computing for each user only what its
    state does not cover: nothing when the window is unchanged (a redelivery), a decode step
    for new events appended to the same window, a prefill otherwise. ``starts[b]`` is the
    all-time index of the first event of user b's window: when it moves (the history cap
    dropped old events), every row changes and the state is rebuilt.
    """

    def __init__(self, encoder, budget_bytes: int, device="cpu", page_rows: int = 16,
                 sketch: FrequencySketch | None = None, sample: int = 8, seed: int = 0) -> None:
        self.encoder = encoder
        dtype = next(encoder.parameters()).dtype
        self.arena = StateArena(encoder, budget_bytes, page_rows=page_rows, device=device, dtype=dtype)
        self.sketch = sketch or FrequencySketch(seed=seed)
        self.residents = ResidentSet(seed=seed)
        self.states: dict = {}
        self.stats = HotStats()
        self.sample = sample

    @property
    def bytes_in_use(self) -> int:
        return self.arena.bytes_in_use

    def _drop(self, user: str) -> None:
        st = self.states.pop(user, None)
        if st is not None:
            self.arena.free(st.pages)
            self.residents.discard(user)

    def _make_room(self, pages: int, estimate: int, protected: set) -> bool:
        """Evict lower-estimate residents (sampled) until ``pages`` are free; False if that needs a hotter one."""
        while self.arena.free_pages < pages:
            victim = pick_victim(self.residents, self.sketch, protected, self.sample)
            if victim is None or victim[1] >= estimate:
                return False
            self._drop(victim[0])
            self.stats.evictions += 1
        return True

    def embed(self, users, starts, batch):
        B = len(users)
        if len(set(users)) != B:
            raise ValueError("users must be distinct within one call")
        offs = batch.offsets.tolist()
        lens = [e - s for s, e in zip(offs, offs[1:])]
        self.sketch.add_many(users, lens)
        # the events a state must end with, and each window's newest event (O(B), not O(events))
        cached = [self.states.get(u) for u in users]
        probe = [offs[b] + st.length - 1 if st is not None and 0 < st.length <= lens[b] else offs[b + 1] - 1
                 for b, st in enumerate(cached)] + [e - 1 for e in offs[1:]]
        idx = torch.tensor(probe, dtype=torch.long)
        keys = list(zip(batch.item_idx[idx].tolist(), batch.action_idx[idx].tolist(), batch.ts_ms[idx].tolist()))
        newest = keys[B:]
        lookups = self.stats.lookups
        reuse: list[tuple[int, int]] = []  # (b, its embedding row)
        work: list[tuple[int, int]] = []  # (b, rows already in the state)
        for b, st in enumerate(cached):
            if st is not None:
                n = st.length
                if st.start == starts[b] and n <= lens[b] and st.last == keys[b]:
                    if n == lens[b]:
                        lookups["reuse"] += 1
                        reuse.append((b, int(st.pages[0])))
                    else:
                        lookups["hit"] += 1
                        work.append((b, n))
                    continue
                reason = "window_moved" if st.start != starts[b] else "stale"
                lookups[reason] += 1
                self.stats.reprefills[reason] += 1
                self._drop(users[b])
            else:
                lookups["miss"] += 1
            work.append((b, 0))
        dev = self.arena.kv.device
        out = torch.empty((B, self.encoder.cfg.dim), dtype=torch.float32, device=dev)
        if not work:
            rb = to_device(np.array([b for b, _ in reuse] + [r for _, r in reuse], dtype=np.int64), dev)
            return out.index_copy_(0, rb[: len(reuse)], self.arena.emb.index_select(0, rb[len(reuse):]))

        # pages: hottest users first; batch members are never evicted for each other
        protected = {users[b] for b, _ in work}
        estimates = self.sketch.estimate_many([users[b] for b, _ in work])
        keep: dict[int, np.ndarray] = {}
        fresh: list[list[int]] = []
        for (b, n), est in sorted(zip(work, estimates), key=lambda w: -w[1]):
            have = self.states[users[b]].pages if n else _NO_PAGES
            need = self.arena.pages_for(lens[b]) - len(have)
            if need > 0 and not self._make_room(need, est, protected):
                self.stats.rejections += 1
                continue
            if need > 0:
                got = self.arena.alloc(need)
                fresh.append(got)
                keep[b] = np.concatenate([have, np.asarray(got, dtype=np.int64)])
            else:
                keep[b] = have
        pages = [keep[b] if b in keep else (self.states[users[b]].pages if n else _NO_PAGES) for b, n in work]
        rows_idx = [r for b, n in work for r in range(offs[b] + n, offs[b + 1])]
        idx = torch.tensor(rows_idx, dtype=torch.long)
        Tn, R = len(rows_idx), len(reuse)
        # everything this call copies to the device, in one (pinned, asynchronous) copy
        host = np.concatenate([torch.stack([batch.item_idx[idx], batch.action_idx[idx], batch.ts_ms[idx]]).numpy().ravel(),
                               np.array([b for b, _ in work] + [b for b, _ in reuse] + [r for _, r in reuse],
                                        dtype=np.int64)])
        dh = to_device(host, dev, "embed")
        new, work_b, reuse_b, reuse_rows = dh[: 3 * Tn].view(3, Tn), *dh[3 * Tn:].split([len(work), R, R])
        if reuse:
            out.index_copy_(0, reuse_b, self.arena.emb.index_select(0, reuse_rows))
        try:
            emb = extend(self.encoder, self.arena, [n for _, n in work], pages, [b in keep for b, _ in work],
                         new[0], new[1], new[2], [lens[b] - n for b, n in work])
        except BaseException:
            for got in fresh:
                self.arena.free(got)
            for b, _ in work:  # their rows past the old length may be half written: rebuild next time
                self._drop(users[b])
            raise
        out.index_copy_(0, work_b, emb)
        for b, n in work:
            u = users[b]
            if n:
                self.stats.events_decoded += lens[b] - n
            else:
                self.stats.events_prefilled += lens[b]
            if b in keep:
                self.states[u] = UserEncoderState(keep[b], lens[b], starts[b], newest[b])
                self.residents.add(u)
            else:
                self._drop(u)
        return out

