"""Redis down: no offset is committed for events whose state update did not happen, the worker reports
not-ready, keeps its group membership, and catches up when Redis is back."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from pipeline.history_store import HistoryStore
from tests.helpers import committed_vs_end, create_topics, event, produce_events, running_worker, settings_for

pytestmark = pytest.mark.integration


async def test_redis_outage_blocks_commits_then_catches_up(stack, names, tiny_model_dir):
    services = stack.services
    await create_topics(services["bootstrap"], names, partitions=1)
    s = settings_for(services, names, tiny_model_dir, max_batch_events=10, retry_backoff_max_s=0.5)
    try:
        async with running_worker(s) as w:
            await produce_events(services["bootstrap"], names["input_topic"],
                                 [event("r1", "i0001", 1000 + i) for i in range(5)])
            for _ in range(100):
                if (await committed_vs_end(services["bootstrap"], names["group_id"], names["input_topic"]))[0] == {0: 5}:
                    break
                await asyncio.sleep(0.1)
            assignment_before = w.consumer.assignment()
            stack.infra("down", "redis")
            await produce_events(services["bootstrap"], names["input_topic"],
                                 [event("r1", "i0002", 2000 + i) for i in range(5)])
            await asyncio.sleep(6)
            committed, end = await committed_vs_end(services["bootstrap"], names["group_id"], names["input_topic"])
            assert committed == {0: 5} and end == {0: 10}, "nothing may be committed while Redis is down"
            assert not w.ready
            assert w.consumer.assignment() == assignment_before  # still a member, same partitions
            stack.infra("up", "redis")
            for _ in range(200):
                committed, _ = await committed_vs_end(services["bootstrap"], names["group_id"], names["input_topic"])
                if committed == {0: 10}:
                    break
                await asyncio.sleep(0.1)
            assert committed == {0: 10}
            for _ in range(50):  # readiness also needs the 2-second Redis probe to have seen Redis back
                if w.ready:
                    break
                await asyncio.sleep(0.1)
            assert w.ready
    finally:
        stack.infra("up", "redis")
    client = aioredis.from_url(services["redis_url"])
    try:
        stored = (await HistoryStore(client, cap=50, prefix=names["redis_prefix"]).read(["r1"]))["r1"]
    finally:
        await client.aclose()
    assert stored.applied_total == 10 and [e.ts for e in stored.events] == [1000 + i for i in range(5)] + [
        2000 + i for i in range(5)]
