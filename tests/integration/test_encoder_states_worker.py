"""Incremental encoding in the running worker: exact embeddings across a restart with a cold cache, and
the encoder-state metrics exported (real Kafka and Redis)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest

from pipeline.embedding_cache import EmbeddingCache
from pipeline.history_store import HistoryStore
from pipeline.model_dir import load_model_dir
from pipeline.recommender import Recommender, UserRequest
from tests.helpers import create_topics, event, produce_events, running_worker, settings_for, wait_committed
from worker import metrics as m

pytestmark = pytest.mark.integration


async def test_worker_embeddings_equal_full_reencode_across_a_cold_restart(services, names, tiny_model_dir):
    await create_topics(services["bootstrap"], names, partitions=3)
    from pipeline.datasets.synthetic import SyntheticWorld

    items = SyntheticWorld(seed=0).item_ids()
    rng = random.Random(11)
    users = [f"heavy{i}" for i in range(4)] + [f"light{i}" for i in range(30)]
    weights = [60] * 4 + [1] * 30  # the heavy users cross the tiny model's 50-event cap several times
    ts = 1_732_600_000_000

    def batch(n):
        nonlocal ts
        out = []
        for _ in range(n):
            ts += rng.randint(1, 4000)
            out.append(event(rng.choices(users, weights)[0], rng.choice(items), ts, rng.choice(["view", "click"])))
        return out

    s = settings_for(services, names, tiny_model_dir, max_batch_events=16, max_wait_ms=5, window_slack=12)
    total = 0
    for part in range(2):  # two worker lifetimes: the second starts with no encoder states at all
        evs = batch(700)
        total += len(evs)
        await produce_events(services["bootstrap"], names["input_topic"], evs)
        async with running_worker(s) as w:
            assert await wait_committed(services["bootstrap"], names["group_id"], names["input_topic"], 120)
            hot = w.processor.engine.recommender.hot
            assert hot is not None and m.HOT_STATES.hot is hot
            stats = hot.stats
            assert stats.lookups["miss"] > 0 and stats.lookups["hit"] > 0 and stats.events_decoded > 0
            assert stats.lookups["window_moved"] > 0  # heavy users crossed the cap while holding a state
            text = generate_latest().decode()
            assert 'streamrec_encoder_state_lookups_total{result="hit"}' in text
            assert "streamrec_encoder_state_bytes" in text and "streamrec_encoder_state_evictions_total" in text

    # every user's cached embedding equals a full re-encode of its window, computed without states
    client = aioredis.from_url(services["redis_url"])
    try:
        stored = await HistoryStore(client, cap=50, prefix=names["redis_prefix"]).read(users)
        cached = await EmbeddingCache(client, 900, prefix=names["redis_prefix"]).get_many(users)
    finally:
        await client.aclose()
    plain = Recommender(load_model_dir(tiny_model_dir), window_slack=12)
    assert plain.hot is None
    seen = [u for u in users if stored[u] is not None]
    assert sum(stored[u].applied_total for u in seen) == total
    full = plain.embed([UserRequest(u, stored[u].events, stored[u].applied_total) for u in seen])
    for u, e in zip(seen, full):
        assert cached[u] is not None
        assert np.abs(cached[u].vector - e).max() <= 1e-5, u
