"""Test helpers that talk to the real services (no mocks): produce, consume, read committed offsets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Iterable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.config import Settings, load_settings


def event(user: str, item: str, ts: int, action: str = "view", **extra) -> dict:
    return {"v": 1, "event_id": f"{user}-{ts}", "user_id": user, "item_id": item, "action": action, "ts": ts, **extra}


async def create_topics(bootstrap: str, names: dict, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(names["input_topic"], partitions, 1),
                                   NewTopic(names["output_topic"], partitions, 1),
                                   NewTopic(names["dlq_topic"], 1, 1)])
    finally:
        await admin.close()


async def produce_raw(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None, list]]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await p.start()
    try:
        futs = [await p.send(topic, value=v, key=k, headers=h) for k, v, h in records]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def produce_events(bootstrap: str, topic: str, events: Iterable[dict]) -> None:
    await produce_raw(bootstrap, topic, ((e["user_id"].encode(), orjson.dumps(e), []) for e in events))


async def consume_all(bootstrap: str, topic: str, until, timeout_s: float = 60.0,
                      isolation_level: str = "read_uncommitted") -> list:
    """Read ``topic`` from the beginning until ``until(records)`` is true or the timeout passes."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                         enable_auto_commit=False, isolation_level=isolation_level)
    await c.start()
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not until(out):
            batch = await c.getmany(timeout_ms=300)
            for recs in batch.values():
                out.extend(recs)
    finally:
        await c.stop()
    return out


def newest_reflected(records) -> dict[str, int]:
    """Per user, the newest event ts that any of these recommendation records reflects."""
    got: dict[str, int] = {}
    for r in records:
        v = orjson.loads(r.value)
        got[v["user_id"]] = max(got.get(v["user_id"], 0), v["source"]["last_event_ts"])
    return got


async def committed_vs_end(bootstrap: str, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        parts = sorted(c.partitions_for_topic(topic) or await _parts(c, topic))
        tps = [TopicPartition(topic, p) for p in parts]
        end = await c.end_offsets(tps)
        committed = {tp.partition: (await c.committed(tp)) or 0 for tp in tps}
        return committed, {tp.partition: off for tp, off in end.items()}
    finally:
        await c.stop()


async def _parts(c: AIOKafkaConsumer, topic: str) -> set[int]:
    await c._client.force_metadata_update()
    return c._client.cluster.partitions_for_topic(topic) or set()


async def wait_committed(bootstrap: str, group: str, topic: str, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        committed, end = await committed_vs_end(bootstrap, group, topic)
        if committed == end:
            return True
        await asyncio.sleep(0.5)
    return False


def settings_for(services: dict, names: dict, model_dir: Path, **kw) -> Settings:
    return load_settings(None, kafka_bootstrap=services["bootstrap"], redis_url=services["redis_url"],
                         model_dir=model_dir, metrics_port=0, create_topics=False, **names, **kw)


@contextlib.asynccontextmanager
async def running_worker(settings: Settings):
    """The real worker in this process (its own event-loop tasks, model on its executor thread)."""
    from worker.commands.worker import build_worker

    w = await build_worker(settings)
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        w.request_stop()
        await asyncio.wait_for(task, 60)
        await w.redis.aclose()


def worker_env(services: dict, names: dict, model_dir: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update({
        "STREAMREC_KAFKA_BOOTSTRAP": services["bootstrap"], "STREAMREC_REDIS_URL": services["redis_url"],
        "STREAMREC_MODEL_DIR": str(model_dir), "STREAMREC_METRICS_PORT": "0", "STREAMREC_CREATE_TOPICS": "false",
        "STREAMREC_LOG_FORMAT": "json",
        **{f"STREAMREC_{k.upper()}": v for k, v in names.items()},
        **{k: str(v) for k, v in extra.items()},
    })
    return env


def start_worker_process(env: dict, log_path: Path) -> subprocess.Popen:
    from tests.conftest import ROOT, streamrec_cmd

    return subprocess.Popen([*streamrec_cmd(), "worker"], env=env, cwd=ROOT, stdout=open(log_path, "ab"),
                            stderr=subprocess.STDOUT)
