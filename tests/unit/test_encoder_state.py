"""Incremental HSTU encoding (prefill/decode) is exact, and the hot set keeps the right users.

The exactness tests are the seed's prefill/decode tests: on random event streams, the embedding
after any sequence of incremental updates equals a full re-encode of the same window, including
across evictions, window moves (history cap) and a restart with a cold cache.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pipeline.encoder_state import StateArena, extend
from pipeline.hot_states import FrequencySketch, HotStates, ResidentSet, pick_victim
from pipeline.hstu import HSTUConfig, HSTUEncoder, hstu_attention_padded, hstu_attention_reference
from pipeline.recommender import HistoryEvent, build_jagged, history_window

torch.set_num_threads(1)  # tiny ops: OpenMP threads only spin against each other on a busy host
ACTIONS = ["view", "click", "add_to_cart", "purchase", "like", "rate", "skip", "share"]


def _encoder(max_seq_len=24, dtype=torch.float32, seed=0, **kw) -> HSTUEncoder:
    torch.manual_seed(seed)
    cfg = HSTUConfig(num_items=60, max_seq_len=max_seq_len, attn_n=max_seq_len, num_time_buckets=20, dim=32,
                     num_heads=2, qk_dim=8, v_dim=8, **kw)
    enc = HSTUEncoder(cfg).eval()
    with torch.no_grad():  # large weights and a real relative bias, so that errors would show
        for p in enc.parameters():
            p.normal_(0, 0.3)
    return enc.to(dtype)


class Stream:
    """Random per-user event streams with the worker's bookkeeping (stored history capped, total count)."""

    def __init__(self, users: int, cap: int, seed: int = 0):
        self.rng = random.Random(seed)
        self.cap = cap
        self.stored = {f"u{i}": [] for i in range(users)}
        self.total = {u: 0 for u in self.stored}
        self.t = 1_700_000_000_000

    def act(self, user: str, n: int) -> None:
        for _ in range(n):
            self.t += self.rng.choice([0, 1, 1000, 50_000, 3_600_000, 90_000_000])
            ev = HistoryEvent(str(self.rng.randrange(70)), self.rng.choice(ACTIONS), self.t)  # ids >= 60 are OOV
            self.stored[user] = (self.stored[user] + [ev])[-self.cap:]
            self.total[user] += 1

    def windows(self, users, slack):
        wins, starts = [], []
        for u in users:
            w = history_window(self.total[u], len(self.stored[u]), self.cap, slack)
            wins.append(self.stored[u][len(self.stored[u]) - w:])
            starts.append(self.total[u] - w)
        return wins, starts


INDEX = {str(i): i for i in range(60)}


def _full(enc, batch):
    with torch.inference_mode():
        return enc(batch.item_idx, batch.action_idx, batch.ts_ms, batch.offsets).float()


def _run_stream(enc, hot, stream, steps, slack, rng, max_new=3, check=None):
    worst = 0.0
    for _ in range(steps):
        users = rng.sample(sorted(stream.stored), rng.randint(1, 6))
        for u in users:
            if rng.random() < 0.85:  # sometimes nothing new: a redelivery
                stream.act(u, rng.randint(1, max_new))
        users = [u for u in users if stream.total[u] > 0]
        if not users:
            continue
        wins, starts = stream.windows(users, slack)
        batch = build_jagged(wins, INDEX, 60)
        with torch.inference_mode():
            got = hot.embed(users, starts, batch).float()
        worst = max(worst, float((got - _full(enc, batch)).abs().max()))
    return worst


def test_window_function():
    # up to max_len: everything stored; slack 1: the exact sliding window
    assert [history_window(t, min(t, 10), 10, 1) for t in (1, 10, 11, 500)] == [1, 10, 10, 10]
    # slack 4: restarts at 7 events, grows to 10, moves once per 4 events
    assert [history_window(t, 10, 10, 4) for t in range(10, 20)] == [10, 7, 8, 9, 10, 7, 8, 9, 10, 7]
    assert history_window(30, 5, 10, 4) == 5  # never more than what is stored
    with pytest.raises(ValueError, match="slack"):
        history_window(5, 5, 10, 11)


def test_attention_with_query_offsets_equals_last_rows_of_full():
    g = torch.Generator().manual_seed(1)
    lk = [5, 1, 17, 9]
    lq = [2, 1, 17, 0]
    off = torch.tensor([0, 5, 6, 23, 32])
    qoff = torch.tensor([0, 2, 3, 20, 20])
    q, k, v = (torch.randn(32, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ts = torch.randint(0, 10**7, (32,), generator=g)
    pw, tw = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    full = hstu_attention_reference(q, k, v, off, ts, pw, tw, 17, 12)
    rows = torch.cat([torch.arange(int(off[b + 1]) - lq[b], int(off[b + 1])) for b in range(4)])
    for fn in (hstu_attention_reference, hstu_attention_padded):
        got = fn(q[rows], k, v, off, ts, pw, tw, 17, 12, q_offsets=qoff)
        assert torch.allclose(got, full[rows], atol=1e-12), fn.__name__
    assert sum(lk) == 32


def test_padded_attention_in_groups_equals_reference(monkeypatch):
    import pipeline.hstu as hstu

    g = torch.Generator().manual_seed(2)
    lengths = [3, 40, 1, 25, 7, 40, 2]
    off = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    T = sum(lengths)
    q, k, v = (torch.randn(T, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ts = torch.randint(0, 10**7, (T,), generator=g)
    pw, tw = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    ref = hstu_attention_reference(q, k, v, off, ts, pw, tw, 40, 12)
    monkeypatch.setattr(hstu, "_PADDED_MAX_ELEMENTS", 2 * 40 * 40 * 2)  # forces several groups
    assert torch.allclose(hstu_attention_padded(q, k, v, off, ts, pw, tw, 40, 12), ref, atol=1e-12)


def test_prefill_then_decode_equals_full_encode():
    enc = _encoder()
    arena = StateArena(enc, 1 << 20, page_rows=4)
    stream = Stream(5, cap=24)
    users = sorted(stream.stored)
    for i, u in enumerate(users):
        stream.act(u, 1 + 3 * i)
    lengths = {u: 0 for u in users}
    pages = {u: [] for u in users}
    for step in range(4):
        if step:
            for u in users[step:]:
                stream.act(u, step)
        wins, _ = stream.windows(users, 1)
        todo = [u for u, w in zip(users, wins) if len(w) > lengths[u]]
        new = [w[lengths[u]:] for u, w in zip(users, wins) if u in todo]
        nb = build_jagged(new, INDEX, 60)
        for u, w in zip(todo, new):
            pages[u] += arena.alloc(arena.pages_for(lengths[u] + len(w)) - len(pages[u]))
        with torch.inference_mode():
            width = max(len(pages[u]) for u in todo)
            table = np.array([pages[u] + [0] * (width - len(pages[u])) for u in todo])
            got = extend(enc, arena, [lengths[u] for u in todo], table, [True] * len(todo),
                         nb.item_idx, nb.action_idx, nb.ts_ms, [len(w) for w in new])
        for u, w in zip(todo, new):
            lengths[u] += len(w)
        full = _full(enc, build_jagged([w for u, w in zip(users, wins) if u in todo], INDEX, 60))
        assert float((got - full).abs().max()) <= 1e-5


@pytest.mark.parametrize("budget,slack", [(1 << 20, 6), (6_000, 6), (1 << 20, 1)],
                         ids=["roomy", "tiny-budget-evictions", "exact-sliding-window"])
def test_random_streams_incremental_equals_full_reencode(budget, slack):
    enc = _encoder()
    rng = random.Random(budget + slack)
    stream = Stream(12, cap=24, seed=budget)
    hot = HotStates(enc, budget, page_rows=4)
    worst = _run_stream(enc, hot, stream, 80, slack, rng)
    assert worst <= 1e-5
    st = hot.stats
    assert st.lookups["hit"] > 0 and st.events_decoded > 0  # incremental work really happened
    if budget < 10_000:
        assert st.evictions > 0 and st.rejections > 0
    else:
        assert st.lookups["window_moved"] > 0  # the history cap was crossed
    assert hot.bytes_in_use == sum(hot.arena.pages_for(hot.length[s]) for s in hot.states.values()) * hot.arena.page_bytes


def test_restart_with_a_cold_cache_gives_the_same_embeddings():
    enc = _encoder()
    rng = random.Random(7)
    stream = Stream(8, cap=24, seed=7)
    hot = HotStates(enc, 1 << 20, page_rows=4)
    assert _run_stream(enc, hot, stream, 60, 6, rng) <= 1e-5
    users = sorted(u for u in stream.stored if stream.total[u])
    wins, starts = stream.windows(users, 6)
    batch = build_jagged(wins, INDEX, 60)
    with torch.inference_mode():
        warm = hot.embed(users, starts, batch)
        cold = HotStates(enc, 1 << 20, page_rows=4).embed(users, starts, batch)
    assert hot.stats.lookups["reuse"] >= len(users)
    assert float((warm - cold).abs().max()) <= 1e-5


def test_bf16_incremental_within_bounds():
    enc = _encoder(dtype=torch.bfloat16)
    rng = random.Random(3)
    hot = HotStates(enc, 1 << 20, page_rows=4)
    # bf16 has 8 mantissa bits: embeddings are unit vectors, so 3e-2 absolute is ~2 % of an entry's range
    assert _run_stream(enc, hot, Stream(6, cap=24, seed=3), 40, 6, rng) <= 3e-2


def test_failed_batch_drops_the_states_it_touched():
    enc = _encoder()
    stream = Stream(3, cap=24)
    hot = HotStates(enc, 1 << 20, page_rows=4)
    users = sorted(stream.stored)
    for u in users:
        stream.act(u, 5)
    wins, starts = stream.windows(users, 6)
    with torch.inference_mode():
        hot.embed(users, starts, build_jagged(wins, INDEX, 60))
    free_before = hot.arena.free_pages
    for u in users:
        stream.act(u, 2)
    wins, starts = stream.windows(users, 6)
    bad = build_jagged(wins, INDEX, 60)
    bad.action_idx[-1] = 99  # out of range: the embedding lookup raises mid-batch
    with pytest.raises(IndexError), torch.inference_mode():
        hot.embed(users, starts, bad)
    assert not hot.states and hot.arena.free_pages == hot.arena.num_pages > free_before
    with torch.inference_mode():  # and the next batch is exact again
        good = build_jagged(wins, INDEX, 60)
        assert float((hot.embed(users, starts, good) - _full(enc, good)).abs().max()) <= 1e-5


def test_sketch_counts_and_ages():
    sk = FrequencySketch(width=1024, depth=4, aging_events=1000)
    for i in range(200):
        sk.add(f"cold{i}")
    sk.add("hot", 300)
    assert sk.estimate("hot") >= 300  # count-min never under-estimates
    assert sk.estimate("cold7") < 10
    sk.add("x", 500)  # crosses aging_events: everything halves
    assert sk.agings == 1 and 150 <= sk.estimate("hot") < 300


def test_resident_set_sampling_and_victim():
    rs = ResidentSet()
    for i in range(50):
        rs.add(f"u{i}")
    rs.discard("u3")
    rs.discard("u3")
    assert len(rs) == 49 and "u3" not in rs and "u49" in rs
    sk = FrequencySketch(width=4096)
    for i in range(50):
        sk.add(f"u{i}", 10 + i)
    victim = pick_victim(rs, sk, protected={"u0"}, sample=49)
    assert victim == ("u1", 11)  # the least frequent unprotected resident


def test_hot_user_survives_a_scan_of_one_off_users():
    """Predictive, not LRU: a regular keeps its state while a stream of one-off users passes by."""
    enc = _encoder()
    stream = Stream(0, cap=24)
    hot = HotStates(enc, 4 * 10 * hot_page_bytes(enc), page_rows=4)  # room for ~4 users of 10 events
    regulars = ["r0", "r1"]
    for u in regulars + [f"once{i}" for i in range(40)]:
        stream.stored[u], stream.total[u] = [], 0
    for u in regulars:
        for _ in range(3):
            stream.act(u, 3)
            wins, starts = stream.windows([u], 6)
            with torch.inference_mode():
                hot.embed([u], starts, build_jagged(wins, INDEX, 60))
    for i in range(40):
        u = f"once{i}"
        stream.act(u, 10)
        wins, starts = stream.windows([u], 6)
        with torch.inference_mode():
            hot.embed([u], starts, build_jagged(wins, INDEX, 60))
    assert all(u in hot.states for u in regulars)
    assert hot.stats.rejections > 0


def hot_page_bytes(enc) -> int:
    return StateArena(enc, 1 << 16, page_rows=4).page_bytes


def test_recommender_with_states_gives_the_same_slates(tmp_path):
    from pipeline.model_dir import load_model_dir, save_model_dir
    from pipeline.recommender import Recommender, UserRequest

    enc = _encoder()
    items = [str(i) for i in range(60)]
    save_model_dir(tmp_path / "m", enc, items, {})
    bundle = load_model_dir(tmp_path / "m")
    plain = Recommender(bundle, k=5, window_slack=6)
    inc = Recommender(bundle, k=5, window_slack=6, hot_state_bytes=1 << 20)
    assert plain.hot is None and inc.hot is not None
    rng = random.Random(5)
    stream = Stream(6, cap=24, seed=5)
    for _ in range(40):
        users = rng.sample(sorted(stream.stored), 3)
        for u in users:
            stream.act(u, rng.randint(1, 4))
        reqs = [UserRequest(u, list(stream.stored[u]), stream.total[u]) for u in users]
        a, b = plain.recommend(reqs), inc.recommend(reqs)
        for x, y in zip(a, b):
            assert [i for i, _ in x.items] == [i for i, _ in y.items]
            assert abs(x.embedding - y.embedding).max() <= 1e-5
    assert inc.hot.stats.lookups["hit"] > 0
