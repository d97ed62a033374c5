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

from pipeline.encoder_state import StateArena, extend, to_device

__all__ = ["FrequencySketch", "ResidentSet", "HotStats", "HotStates", "pick_victim"]

_MASK = (1 << 64) - 1


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
        self.stats = HotStats()
        self.sample = sample
        # the states, one slot each (a state holds at least one page, so num_pages slots suffice); per slot:
        # length, the all-time index of its first event, its newest event (item, action, ts), its pages
        # (row of the page table; grown when a state outgrows it). Arrays, so a batch is checked at once.
        self.states: dict[str, int] = {}  # user -> slot
        slots = self.arena.num_pages
        self._free_slots = list(range(slots - 1, -1, -1))
        self.length = np.zeros(slots, dtype=np.int64)
        self.start = np.zeros(slots, dtype=np.int64)
        self.last = np.zeros((slots, 3), dtype=np.int64)
        self.npages = np.zeros(slots, dtype=np.int64)
        self.page_table = np.zeros((slots, 4), dtype=np.int64)

    @property
    def bytes_in_use(self) -> int:
        return self.arena.bytes_in_use

    def pages_of(self, user: str) -> np.ndarray:
        s = self.states[user]
        return self.page_table[s, : self.npages[s]]

    def _drop(self, user: str) -> None:
        s = self.states.pop(user, None)
        if s is not None:
            self.arena.free(self.page_table[s, : self.npages[s]].tolist())
            self.npages[s] = self.length[s] = 0
            self._free_slots.append(s)
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

    def _grow(self, user: str, pages: list[int]) -> int:
        """Append ``pages`` to the user's state (a new slot for a new user); return its slot."""
        s = self.states.get(user)
        if s is None:
            s = self.states[user] = self._free_slots.pop()
            self.residents.add(user)
        n = int(self.npages[s])
        if n + len(pages) > self.page_table.shape[1]:
            width = max(2 * self.page_table.shape[1], n + len(pages))
            self.page_table = np.pad(self.page_table, ((0, 0), (0, width - self.page_table.shape[1])))
        self.page_table[s, n : n + len(pages)] = pages
        self.npages[s] = n + len(pages)
        return s

    def embed(self, users, starts, batch):
        B = len(users)
        if len(set(users)) != B:
            raise ValueError("users must be distinct within one call")
        offs = batch.offsets.numpy()
        lens = offs[1:] - offs[:-1]
        starts = np.asarray(starts, dtype=np.int64)
        self.sketch.add_many(users, lens)
        slot = np.fromiter((self.states.get(u, -1) for u in users), dtype=np.int64, count=B)
        has = slot >= 0
        sl = np.where(has, slot, 0)
        n = np.where(has, self.length[sl], 0)
        # the event a state must end with, and each window's newest event
        probe = np.concatenate([np.where(has & (n > 0) & (n <= lens), offs[:-1] + n - 1, offs[1:] - 1), offs[1:] - 1])
        pt = torch.from_numpy(probe)
        keys = torch.stack([batch.item_idx[pt], batch.action_idx[pt], batch.ts_ms[pt]], 1).numpy()
        ok = has & (self.start[sl] == starts) & (n <= lens) & (self.last[sl] == keys[:B]).all(1)
        reuse, moved = ok & (n == lens), has & ~ok & (self.start[sl] != starts)
        lookups = self.stats.lookups
        for name, mask in (("reuse", reuse), ("hit", ok & ~reuse), ("miss", ~has), ("window_moved", moved),
                           ("stale", has & ~ok & ~moved)):
            lookups[name] += int(mask.sum())
            if name in ("window_moved", "stale"):
                self.stats.reprefills[name] += int(mask.sum())
        for b in np.flatnonzero(has & ~ok):
            self._drop(users[b])
        n = np.where(ok, n, 0)
        dev = self.arena.kv.device
        out = torch.empty((B, self.encoder.cfg.dim), dtype=torch.float32, device=dev)
        rb = np.flatnonzero(reuse)
        reuse_rows = self.page_table[slot[rb], 0]
        work = np.flatnonzero(~reuse)
        if not len(work):
            d = to_device(np.concatenate([rb, reuse_rows]), dev)
            return out.index_copy_(0, d[: len(rb)], self.arena.emb.index_select(0, d[len(rb):]))  # all redeliveries

        # pages: only users whose new rows cross into a new page need any (hottest users first);
        # batch members are never evicted for each other
        need = -(-lens[work] // self.arena.page_rows) - np.where(ok[work], self.npages[sl[work]], 0)
        keep = np.ones(len(work), dtype=bool)
        wslot = np.where(ok[work], slot[work], -1)
        grow = np.flatnonzero(need > 0)
        if len(grow):
            protected = {users[b] for b in work}
            estimates = self.sketch.estimate_many([users[work[w]] for w in grow])
            for w, est in sorted(zip(grow.tolist(), estimates), key=lambda x: -x[1]):
                u = users[work[w]]
                if not self._make_room(int(need[w]), est, protected):
                    self.stats.rejections += 1
                    keep[w] = False
                    self._drop(u)  # its state would miss these rows: computed from scratch, not kept
                    n[work[w]], wslot[w] = 0, -1
                    continue
                wslot[w] = self._grow(u, self.arena.alloc(int(need[w])))
        table = np.where(keep[:, None], self.page_table[np.maximum(wslot, 0)], 0)
        table = table[:, : max(1, int(self.npages[wslot[keep]].max(initial=1)))]
        cnt = lens[work] - n[work]
        rows = np.repeat(offs[work] + n[work] - np.cumsum(cnt) + cnt, cnt) + np.arange(int(cnt.sum()))
        rt = torch.from_numpy(rows)
        # everything this call copies to the device, in one (pinned, asynchronous) copy
        Tn, R = len(rows), len(rb)
        host = np.concatenate([torch.stack([batch.item_idx[rt], batch.action_idx[rt], batch.ts_ms[rt]]).numpy().ravel(),
                               work, rb, reuse_rows])
        dh = to_device(host, dev, "embed")
        new, work_b, reuse_b, reuse_r = dh[: 3 * Tn].view(3, Tn), *dh[3 * Tn:].split([len(work), R, R])
        if R:
            out.index_copy_(0, reuse_b, self.arena.emb.index_select(0, reuse_r))
        try:
            emb = extend(self.encoder, self.arena, n[work], table, keep, new[0], new[1], new[2], lens[work] - n[work])
        except BaseException:
            for b in work:  # their rows past the old length may be half written: rebuild next time
                self._drop(users[b])
            raise
        out.index_copy_(0, work_b, emb)
        self.stats.events_decoded += int((lens[work] - n[work])[n[work] > 0].sum())
        self.stats.events_prefilled += int(lens[work][n[work] == 0].sum())
        ks = wslot[keep]
        kb = work[keep]
        self.length[ks], self.start[ks], self.last[ks] = lens[kb], starts[kb], keys[B + kb]
        return out
