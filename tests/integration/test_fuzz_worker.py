"""Property-based fuzzing of the running worker: arbitrary bytes and arbitrary JSON objects, keyed or not.
Every record is either processed (applied to a user's history) or dead-lettered with a reason, and the
worker never stops."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import InvalidEvent, decode_event
from tests.helpers import (committed_vs_end, consume_all, create_topics, produce_raw, start_worker_process,
                           wait_committed, worker_env)

pytestmark = pytest.mark.integration

FIELDS = ["v", "event_id", "user_id", "item_id", "action", "ts", "value"]
json_scalar = st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=30)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 1, 2, "1", True]) | json_scalar,
        "event_id": st.text(min_size=0, max_size=300),
        "user_id": st.sampled_from(["fz-a", "fz-ü", "fz-😀"]) | st.text(max_size=300),
        "item_id": st.sampled_from(["i0001", "i0002", "unknown-item"]) | json_scalar,
        "action": st.sampled_from(["view", "click", "purchase", "nope"]) | json_scalar,
        "ts": st.integers(-5, 2**60) | json_scalar,
        "value": json_scalar,
        "extra": json_scalar,
    },
)
record = st.one_of(
    st.binary(max_size=300).map(lambda b: (b, None)),
    event_like.map(lambda d: (orjson.dumps(d, option=orjson.OPT_NON_STR_KEYS), d.get("user_id"))),
)


@pytest.fixture(scope="module")
def fuzz_worker(services, tiny_model_dir, tmp_path_factory):
    tag = uuid.uuid4().hex[:10]
    names = {"input_topic": f"fz-{tag}-in", "output_topic": f"fz-{tag}-out", "dlq_topic": f"fz-{tag}-dlq",
             "group_id": f"fz-{tag}", "redis_prefix": f"fz:{tag}"}
    asyncio.run(create_topics(services["bootstrap"], names, partitions=2))
    log = tmp_path_factory.mktemp("fuzz") / "worker.log"
    proc = start_worker_process(worker_env(services, names, tiny_model_dir), log)
    yield names, proc, log
    proc.terminate()
    proc.wait(30)


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(record, min_size=20, max_size=60))
def test_every_record_processed_or_dead_lettered(services, fuzz_worker, batch):
    names, proc, log = fuzz_worker

    def key_for(user) -> bytes | None:
        return user.encode("utf-8", "surrogatepass") if isinstance(user, str) else None

    records = [(key_for(u), v, [("fuzz", b"1")]) for v, u in batch]
    expected_invalid = 0
    for k, v, _ in records:
        try:
            decode_event(v, k)
        except InvalidEvent:
            expected_invalid += 1

    async def run():
        before_dlq = len(await consume_all(services["bootstrap"], names["dlq_topic"], lambda r: False, 2))
        await produce_raw(services["bootstrap"], names["input_topic"], records)
        assert await wait_committed(services["bootstrap"], names["group_id"], names["input_topic"], 60), \
            log.read_text()[-2000:]
        dlq = await consume_all(services["bootstrap"], names["dlq_topic"],
                                lambda r: len(r) >= before_dlq + expected_invalid, 20)
        return len(dlq) - before_dlq

    dead = asyncio.run(run())
    assert proc.poll() is None, log.read_text()[-3000:]
    assert dead == expected_invalid
