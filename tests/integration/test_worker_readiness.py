"""/readyz after a batch that failed and then went to another worker: the worker is ready again.

The fault suite found a worker that stayed not-ready after a Redis outage: its last batch failed,
a rebalance took the partition while it retried, it abandoned the batch (the new owner re-reads
it), and with no further traffic nothing ever cleared the failure. Here the same sequence runs
deterministically: a real worker whose Redis does not answer (nothing listens on its port), one
batch, and the real rebalance callback revoking the partition mid-retry.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka.structs import ConsumerRecord, TopicPartition

from tests.helpers import event, settings_for
from worker.engine import ModelEngine
from worker.service import Worker, _Listener

pytestmark = pytest.mark.integration


def _record(topic: str, user: str, ts: int) -> ConsumerRecord:
    value = orjson.dumps(event(user, "i0001", ts))
    return ConsumerRecord(topic=topic, partition=0, offset=0, timestamp=ts, timestamp_type=0, key=user.encode(),
                          value=value, checksum=None, serialized_key_size=len(user), serialized_value_size=len(value),
                          headers=())


async def _until(cond, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_ready_again_after_a_failed_batch_is_handed_off(services, names, tiny_model_dir, unused_tcp_port):
    s = settings_for(services, names, tiny_model_dir)
    engine = ModelEngine.from_dir(tiny_model_dir, top_k=5, exclude_recent=0, device="cpu")
    down = aioredis.from_url(f"redis://127.0.0.1:{unused_tcp_port}/0", socket_connect_timeout=0.2)
    w = Worker(s, engine, down, history_cap=engine.bundle.config.max_seq_len)
    w.alive = True                      # what run() sets; its loops are not needed here
    w._set_batch_ok(True)
    assert w.ready
    try:
        async def one_batch():
            async with w._batch_lock:   # as the process loop holds it
                await w._handle_unit([_record(names["input_topic"], "alice", 1_732_600_000_000)])

        batch = asyncio.create_task(one_batch())
        await _until(lambda: not w.ready)          # Redis refused: the batch is failing and retried
        await asyncio.wait_for(_Listener(w).on_partitions_revoked([TopicPartition(names["input_topic"], 0)]), 30)
        await asyncio.wait_for(batch, 5)           # abandoned uncommitted for the partition's new owner
        assert w.ready, "a batch handed to another worker must not leave this one not-ready"
    finally:
        await down.aclose()
        await w.producer.stop()
        await w.consumer.stop()
