"""A model-stage failure costs only the failing user's events (DLQ, stage=model); `inspect-user` shows state."""

from __future__ import annotations

import subprocess

import orjson
import pytest

from schemas import DLQHeader
from tests.conftest import ROOT, streamrec_cmd
from tests.helpers import consume_all, create_topics, event, produce_events, running_worker, settings_for, wait_committed

pytestmark = pytest.mark.integration


async def test_one_failing_user_goes_to_dlq_the_rest_is_published(services, names, tiny_model_dir):
    await create_topics(services["bootstrap"], names, partitions=1)
    users = [f"m{i}" for i in range(20)]
    evs = [event(u, f"i{(i * 7 + j) % 400 + 1:04d}", 1_732_600_000_000 + 100 * i + j)
           for j in range(3) for i, u in enumerate(users)]
    await produce_events(services["bootstrap"], names["input_topic"], evs)
    s = settings_for(services, names, tiny_model_dir, max_batch_events=1000, max_wait_ms=500,
                     chaos_fail_users="m7")
    async with running_worker(s):
        assert await wait_committed(services["bootstrap"], names["group_id"], names["input_topic"], 60)
    dlq = await consume_all(services["bootstrap"], names["dlq_topic"], lambda r: len(r) >= 3, 20)
    assert len(dlq) == 3
    for r in dlq:
        h = dict(r.headers)
        assert r.key == b"m7" and h[DLQHeader.STAGE] == b"model"
        assert b"injected model failure" in h[DLQHeader.REASON]
    outs = await consume_all(services["bootstrap"], names["output_topic"],
                             lambda rs: {orjson.loads(x.value)["user_id"] for x in rs} >= set(users) - {"m7"}, 20)
    published = {orjson.loads(x.value)["user_id"] for x in outs}
    assert published == set(users) - {"m7"}


async def test_inspect_user_reports_history_watermarks_and_cache(services, names, tiny_model_dir):
    await create_topics(services["bootstrap"], names, partitions=1)
    user = "inspect-ユーザー"
    evs = [event(user, f"i{j + 1:04d}", 1_732_600_000_000 + j) for j in range(5)]
    await produce_events(services["bootstrap"], names["input_topic"], evs)
    async with running_worker(settings_for(services, names, tiny_model_dir)) as w:
        assert await wait_committed(services["bootstrap"], names["group_id"], names["input_topic"], 60)
        version = w.engine.version
    env = {"STREAMREC_REDIS_URL": services["redis_url"], "STREAMREC_REDIS_PREFIX": names["redis_prefix"],
           "PATH": "/usr/bin:/bin"}
    r = subprocess.run([*streamrec_cmd(), "inspect-user", user, "--json"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    info = orjson.loads(r.stdout)
    assert info["found"] and info["history_length"] == 5 and info["applied_total"] == 5
    assert info["newest_event_ts"] == 1_732_600_000_004
    assert info["watermarks"] == {f"{names['input_topic']}:0": 4}
    assert info["embedding"]["model_version"] == version and info["embedding"]["age_ms"] >= 0
    assert info["embedding"]["history_length"] == 5 and 0 < info["embedding"]["ttl_ms"] <= 900_000
    r = subprocess.run([*streamrec_cmd(), "inspect-user", "nobody", "--json"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and orjson.loads(r.stdout) == {"user_id": "nobody", "found": False}
