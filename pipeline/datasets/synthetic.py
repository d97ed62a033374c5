"""A seeded synthetic world with planted sequential structure.

Used to train the default model (quality is checkable against the planted truth)
and by ``streamrec produce`` to generate live traffic.

The generative process (all parameters are constructor arguments, all
randomness comes from ``seed``):

* Items ``i0001 … iNNNN`` are split into ``num_clusters`` equal clusters. Inside
  a cluster the items have Zipf popularity and form one random cycle:
  ``successor[item]`` is the planted "next item".
* Each user prefers 1 or 2 clusters (weights), and has a Zipf activity level
  (how often it appears in :meth:`event_stream`).
* Next item, given the user and their history:
  - with probability ``p_new_session`` a new session starts: a *fresh draw*
    (pick a preferred cluster by weight, then an item by popularity);
  - otherwise, if the last action was ``skip``: a fresh draw in which the
    skipped item's cluster is down-weighted x0.1 (the user moves away);
  - otherwise with probability ``p_follow`` the planted successor of the last
    item, else a fresh draw;
  - with probability ``p_noise`` (taken off everything above) any item uniformly.
  Items among the user's last ``no_repeat_window`` events are never drawn again
  (the successor chain is followed further until an unseen item; draws are
  renormalised).
* Actions are drawn independently of items (mostly ``view``; ``skip`` ~12 %);
  ``rate`` events carry a value 1–5. Timestamps: seconds-scale gaps inside a
  session, hours between sessions.

:meth:`next_item_distribution` returns the exact planted next-item distribution,
so the Bayes-optimal ranking (``oracle_next`` / the "oracle" scorer) gives the
ceiling any model can reach on this data.
"""
from __future__ import annotations

from collections import deque
from typing import Iterator, Sequence

import numpy as np

from pipeline.recommender import HistoryEvent

__all__ = ["SyntheticWorld", "ACTION_PROBS"]

ACTION_PROBS: dict[str, float] = {
    "view": 0.55,
    "click": 0.14,
    "add_to_cart": 0.05,
    "purchase": 0.03,
    "like": 0.05,
    "rate": 0.03,
    "skip": 0.12,
    "share": 0.03,
}

DEFAULT_START_MS = 1_732_600_000_000  # 2024-11-26T05:46:40Z


def _draw(rng: np.random.Generator, p: np.ndarray) -> int:
    """One index from the (normalised) distribution ``p`` by inverse CDF (faster than rng.choice)."""
    c = np.cumsum(p)
    i = int(np.searchsorted(c, rng.random() * c[-1], side="right"))
    return min(i, len(p) - 1)


class SyntheticWorld:
    def __init__(
        self,
        seed: int = 0,
        num_items: int = 500,
        num_users: int = 2000,
        num_clusters: int = 10,
        p_follow: float = 0.6,
        p_new_session: float = 0.08,
        p_noise: float = 0.05,
        no_repeat_window: int = 100,
        zipf_items: float = 1.0,
        zipf_users: float = 1.0,
        start_ms: int = DEFAULT_START_MS,
    ) -> None:
        if num_items < num_clusters or num_clusters < 1:
            raise ValueError("need num_items >= num_clusters >= 1")
        if num_users < 1:
            raise ValueError("need num_users >= 1")
        self.seed = seed
        self.num_items = num_items
        self.num_users = num_users
        self.num_clusters = num_clusters
        self.p_follow = p_follow
        self.p_new_session = p_new_session
        self.p_noise = p_noise
        self.no_repeat_window = no_repeat_window
        self.start_ms = start_ms
        rng = np.random.default_rng(seed)

        width = max(4, len(str(num_items)))
        self._items = [f"i{n:0{width}d}" for n in range(1, num_items + 1)]
        self._index = {it: i for i, it in enumerate(self._items)}
        uwidth = max(5, len(str(num_users)))
        self._users = [f"u{n:0{uwidth}d}" for n in range(1, num_users + 1)]
        self._user_index = {u: i for i, u in enumerate(self._users)}

        perm = rng.permutation(num_items)
        self.cluster_of = np.empty(num_items, dtype=np.int64)
        self.successor = np.empty(num_items, dtype=np.int64)
        self.popularity = np.empty(num_items, dtype=np.float64)  # within-cluster, sums to 1 per cluster
        self.cluster_members: list[np.ndarray] = []
        for c, members in enumerate(np.array_split(perm, num_clusters)):
            members = np.array(members)
            self.cluster_members.append(members)
            self.cluster_of[members] = c
            cycle = rng.permutation(members)
            self.successor[cycle] = np.roll(cycle, -1)
            ranks = rng.permutation(len(members))
            w = 1.0 / (ranks + 1.0) ** zipf_items
            self.popularity[members] = w / w.sum()

        # user preferences: 1 or 2 clusters, cluster choice mildly Zipf-popular
        cw = 1.0 / (np.arange(num_clusters) + 1.0) ** 0.5
        cw = cw[rng.permutation(num_clusters)]
        cw /= cw.sum()
        self.user_pref = np.zeros((num_users, num_clusters), dtype=np.float64)
        for u in range(num_users):
            n = 1 if (num_clusters == 1 or rng.random() < 0.5) else 2
            cs = rng.choice(num_clusters, size=n, replace=False, p=cw)
            if n == 1:
                self.user_pref[u, cs[0]] = 1.0
            else:
                a = rng.uniform(0.5, 0.8)
                self.user_pref[u, cs[0]] = a
                self.user_pref[u, cs[1]] = 1.0 - a
        aw = 1.0 / (rng.permutation(num_users) + 1.0) ** zipf_users
        self.user_activity = aw / aw.sum()
        self._actions = list(ACTION_PROBS)
        self._action_p = np.array([ACTION_PROBS[a] for a in self._actions])

    # ------------------------------------------------------------------ ids
    def item_ids(self) -> list[str]:
        return list(self._items)

    def user_ids(self) -> list[str]:
        return list(self._users)

    def item_index(self, item_id: str) -> int:
        return self._index[item_id]

    # ----------------------------------------------------------- the truth
    def _fresh(self, pref: np.ndarray, blocked: np.ndarray) -> np.ndarray:
        """Fresh draw distribution: cluster by ``pref``, item by popularity; blocked items removed."""
        d = pref[self.cluster_of] * self.popularity
        d[blocked] = 0.0
        s = d.sum()
        if s <= 0:  # every preferred item recently seen: anything not blocked, by popularity
            d = self.popularity.copy()
            d[blocked] = 0.0
            s = d.sum()
            if s <= 0:
                d = np.ones(self.num_items)
                s = d.sum()
        return d / s

    def _chain_next(self, last: int, blocked: np.ndarray) -> int | None:
        nxt = int(self.successor[last])
        for _ in range(len(self.cluster_members[self.cluster_of[last]])):
            if not blocked[nxt]:
                return nxt
            nxt = int(self.successor[nxt])
        return None

    def _conditional(self, pref: np.ndarray, recent: Sequence[int], last_action: str | None, new_session: bool) -> np.ndarray:
        blocked = np.zeros(self.num_items, dtype=bool)
        if len(recent):
            blocked[np.asarray(recent, dtype=np.int64)] = True
        if new_session or not len(recent):
            d = self._fresh(pref, blocked)
        else:
            last = int(recent[-1])
            if last_action == "skip":
                p = pref.copy()
                p[self.cluster_of[last]] *= 0.1
                d = self._fresh(p, blocked)
            else:
                fresh = self._fresh(pref, blocked)
                nxt = self._chain_next(last, blocked)
                if nxt is None:
                    d = fresh
                else:
                    d = (1.0 - self.p_follow) * fresh
                    d[nxt] += self.p_follow
        uni = (~blocked).astype(np.float64)
        if uni.sum() == 0:
            uni[:] = 1.0
        uni /= uni.sum()
        return (1.0 - self.p_noise) * d + self.p_noise * uni

    def _pref_for(self, user_id: str | None, recent: Sequence[int]) -> np.ndarray:
        if user_id is not None and user_id in self._user_index:
            return self.user_pref[self._user_index[user_id]]
        # unknown user: preferences estimated from the clusters in the history
        counts = np.bincount(self.cluster_of[np.asarray(recent, dtype=np.int64)], minlength=self.num_clusters).astype(float)
        if counts.sum() == 0:
            counts[:] = 1.0
        return counts / counts.sum()

    def next_item_distribution(self, history: Sequence[HistoryEvent], user_id: str | None = None) -> np.ndarray:
        """The planted probability of each item (index order of :meth:`item_ids`) being next."""
        idx = [self._index[e.item_id] for e in history if e.item_id in self._index]
        recent = idx[-self.no_repeat_window :] if self.no_repeat_window else []
        last_action = history[-1].action if history else None
        pref = self._pref_for(user_id, idx)
        p = self.p_new_session
        return p * self._conditional(pref, recent, last_action, True) + (1 - p) * self._conditional(
            pref, recent, last_action, False
        )

    def oracle_next(self, history: Sequence[HistoryEvent], user_id: str | None = None) -> str:
        """The single most likely next item under the planted process."""
        return self._items[int(np.argmax(self.next_item_distribution(history, user_id)))]

    # ------------------------------------------------------------ sampling
    def _step(
        self, rng: np.random.Generator, u: int, recent: Sequence[int], last_action: str | None
    ) -> tuple[int, str, bool, float | None]:
        new_session = bool(rng.random() < self.p_new_session)
        d = self._conditional(self.user_pref[u], list(recent)[-self.no_repeat_window :] if self.no_repeat_window else [], last_action, new_session)
        item = _draw(rng, d)
        action = self._actions[_draw(rng, self._action_p)]
        value = float(rng.integers(1, 6)) if action == "rate" else None
        return item, action, new_session, value

    def _gap_ms(self, rng: np.random.Generator, new_session: bool) -> int:
        if new_session:
            return int(np.exp(rng.uniform(np.log(3600), np.log(3 * 86400))) * 1000)
        return int(max(1.0, rng.exponential(90.0)) * 1000)

    def sample_sequences(
        self, n_users: int | None = None, min_len: int = 8, max_len: int = 40, seed: int | None = None
    ) -> list[list[HistoryEvent]]:
        """One chronological sequence per user, for ``user_ids()[:n_users]`` (all by default).

        Deterministic given the world's seed (and ``seed`` if given).
        """
        n_users = self.num_users if n_users is None else n_users
        if not 1 <= n_users <= self.num_users:
            raise ValueError(f"n_users must be in 1..{self.num_users}, got {n_users}")
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        rng = np.random.default_rng([self.seed, 1 if seed is None else 2 + seed])
        out: list[list[HistoryEvent]] = []
        for u in range(n_users):
            n = int(rng.integers(min_len, max_len + 1))
            ts = self.start_ms + int(rng.integers(0, 30 * 86400)) * 1000
            recent: deque[int] = deque(maxlen=max(self.no_repeat_window, 1))
            last_action: str | None = None
            seq: list[HistoryEvent] = []
            for t in range(n):
                item, action, new_session, value = self._step(rng, u, recent, last_action)
                if t:
                    ts += self._gap_ms(rng, new_session)
                seq.append(HistoryEvent(self._items[item], action, ts, value))
                recent.append(item)
                last_action = action
            out.append(seq)
        return out

    def event_stream(
        self,
        rng_or_seed: np.random.Generator | int | None = None,
        start_ms: int | None = None,
        mean_gap_ms: float = 10.0,
    ) -> Iterator[tuple[str, HistoryEvent]]:
        """An endless stream of ``(user_id, event)``: Zipf user activity, increasing timestamps.

        ``start_ms`` defaults to the world's fixed start (pass ``int(time.time()*1000)``
        for wall-clock-like timestamps); the global clock advances by an exponential
        gap of mean ``mean_gap_ms`` per event (strictly increasing).
        """
        rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
        ts = self.start_ms if start_ms is None else int(start_ms)
        recent: dict[int, deque[int]] = {}
        last_action: dict[int, str] = {}
        users = rng.choice(self.num_users, size=4096, p=self.user_activity)
        pos = 0
        while True:
            if pos == len(users):
                users = rng.choice(self.num_users, size=4096, p=self.user_activity)
                pos = 0
            u = int(users[pos])
            pos += 1
            r = recent.setdefault(u, deque(maxlen=max(self.no_repeat_window, 1)))
            item, action, _, value = self._step(rng, u, r, last_action.get(u))
            ts += 1 + int(rng.exponential(mean_gap_ms))
            r.append(item)
            last_action[u] = action
            yield self._users[u], HistoryEvent(self._items[item], action, ts, value)

    def spec(self) -> dict:
        return {
            "name": "synthetic",
            "seed": self.seed,
            "num_items": self.num_items,
            "num_users": self.num_users,
            "num_clusters": self.num_clusters,
            "p_follow": self.p_follow,
            "p_new_session": self.p_new_session,
            "p_noise": self.p_noise,
            "no_repeat_window": self.no_repeat_window,
        }
