"""The worker end to end on the real broker and redis-server (in-process worker)."""

from __future__ import annotations

import random

import pytest
import redis.asyncio as aioredis

from pipeline.history_store import HistoryStore
from schemas import RecommendationRecord
from tests.helpers import (committed_vs_end, consume_all, create_topics, event, newest_reflected, produce_events,
                           running_worker, settings_for, wait_committed)

pytestmark = pytest.mark.integration

UNICODE_USERS = ["ユーザー-1", "usuário-ç", "пользователь", "😀-user", "user with spaces", "ü" * 40]


async def test_many_users_every_user_gets_its_newest_event(services, names, tiny_model_dir):
    await create_topics(services["bootstrap"], names, partitions=3)
    rng = random.Random(7)
    from pipeline.datasets.synthetic import SyntheticWorld

    items = SyntheticWorld(seed=0).item_ids()
    users = [f"u{i}" for i in range(300)] + UNICODE_USERS
    events, newest, counts = [], {}, {}
    ts = 1_732_600_000_000
    for _ in range(3000):
        u = rng.choice(users)
        ts += rng.randint(1, 5000)
        events.append(event(u, rng.choice(items), ts, rng.choice(["view", "click", "purchase", "like"])))
        newest[u] = ts
        counts[u] = counts.get(u, 0) + 1
    await produce_events(services["bootstrap"], names["input_topic"], events)

    s = settings_for(services, names, tiny_model_dir, max_batch_events=256)
    async with running_worker(s):
        assert await wait_committed(services["bootstrap"], names["group_id"], names["input_topic"], 120)

    def complete(recs):
        got = newest_reflected(recs)
        return all(got.get(u) == t for u, t in newest.items())

    recs = await consume_all(services["bootstrap"], names["output_topic"], complete, timeout_s=30)
    assert complete(recs), "some user has no recommendation reflecting its newest event"
    for r in recs[:50]:
        rec = RecommendationRecord.from_bytes(r.value)
        assert r.key.decode() == rec.user_id
        assert len(rec.items) == 10 and len({i.item_id for i in rec.items}) == 10
        assert rec.model.encoder == "torch" and rec.model.generator == "retrieval"
        assert any(k == "traceparent" for k, _ in r.headers)

    committed, end = await committed_vs_end(services["bootstrap"], names["group_id"], names["input_topic"])
    assert committed == end and sum(end.values()) == 3000

    client = aioredis.from_url(services["redis_url"])
    try:
        stored = await HistoryStore(client, cap=50, prefix=names["redis_prefix"]).read(users)
    finally:
        await client.aclose()
    for u in users:
        if u in counts:
            assert stored[u] is not None
            assert stored[u].applied_total == counts[u]
            assert len(stored[u].events) == min(50, counts[u])
            assert stored[u].last_ts == newest[u]
