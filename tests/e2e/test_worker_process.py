"""The `streamrec worker` process: kill -9 and restart loses nothing and applies nothing twice; SIGTERM
finishes the batch, commits and exits 0; bad config / model dir / unreachable services exit 2 clearly."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time

import pytest
import redis.asyncio as aioredis

from pipeline.history_store import HistoryStore
from tests.conftest import ROOT, streamrec_cmd
from tests.helpers import (committed_vs_end, create_topics, event, produce_events, start_worker_process,
                           wait_committed, worker_env)

pytestmark = pytest.mark.integration


def _events(n_events: int, n_users: int, seed: int) -> tuple[list[dict], dict[str, list[dict]]]:
    from pipeline.datasets.synthetic import SyntheticWorld

    rng = random.Random(seed)
    items = SyntheticWorld(seed=0).item_ids()
    per_user: dict[str, list[dict]] = {}
    evs = []
    ts = 1_732_600_000_000
    for _ in range(n_events):
        u = f"k{rng.randrange(n_users)}"
        ts += 1 + rng.randrange(1000)  # unique ts per event: duplicates in history would show
        e = event(u, rng.choice(items), ts)
        evs.append(e)
        per_user.setdefault(u, []).append(e)
    return evs, per_user


async def _progress(services, names) -> tuple[int, int]:
    committed, end = await committed_vs_end(services["bootstrap"], names["group_id"], names["input_topic"])
    return sum(committed.values()), sum(end.values())


async def test_kill9_mid_stream_then_restart_loses_nothing_and_applies_nothing_twice(
        services, names, tiny_model_dir, tmp_path):
    await create_topics(services["bootstrap"], names, partitions=3)
    evs, per_user = _events(6000, 200, seed=3)
    await produce_events(services["bootstrap"], names["input_topic"], evs)
    env = worker_env(services, names, tiny_model_dir, STREAMREC_MAX_BATCH_EVENTS=25)
    log = tmp_path / "worker.log"

    proc = start_worker_process(env, log)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done, total = await _progress(services, names)
            if done >= 300:
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        assert 0 < done < total, f"kill must land mid-stream (committed {done} of {total})"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    proc = start_worker_process(env, log)
    try:
        assert await wait_committed(services["bootstrap"], names["group_id"], names["input_topic"], 180), \
            log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0

    client = aioredis.from_url(services["redis_url"])
    try:
        stored = await HistoryStore(client, cap=50, prefix=names["redis_prefix"]).read(per_user)
    finally:
        await client.aclose()
    for u, sent in per_user.items():
        s = stored[u]
        assert s is not None, u
        assert s.applied_total == len(sent), f"{u}: applied {s.applied_total}, sent {len(sent)}"
        assert [e.ts for e in s.events] == [e["ts"] for e in sent][-50:]  # order kept, nothing twice
        assert s.last_ts == sent[-1]["ts"]


async def test_sigterm_finishes_batch_commits_and_exits_zero(services, names, tiny_model_dir, tmp_path):
    await create_topics(services["bootstrap"], names, partitions=2)
    evs, _ = _events(3000, 100, seed=5)
    await produce_events(services["bootstrap"], names["input_topic"], evs)
    log = tmp_path / "worker.log"
    proc = start_worker_process(worker_env(services, names, tiny_model_dir, STREAMREC_MAX_BATCH_EVENTS=25), log)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (await _progress(services, names))[0] < 200:
            assert proc.poll() is None, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, log.read_text()[-3000:]
    assert took < 30
    text = log.read_text()
    assert "stop requested" in text and "worker stopped" in text
    done, total = await _progress(services, names)
    assert done >= 200


def _run_cli(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*streamrec_cmd(), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("case", ["missing_model", "tampered_model", "bad_setting", "kafka_down", "redis_down"])
def test_startup_errors_exit_2_with_a_clear_message(case, services, names, tiny_model_dir, tmp_path):
    import shutil

    env = worker_env(services, names, tiny_model_dir)
    if case == "missing_model":
        env["STREAMREC_MODEL_DIR"] = str(tmp_path / "nope")
        expect = "streamrec train"
    elif case == "tampered_model":
        bad = tmp_path / "bad-model"
        shutil.copytree(tiny_model_dir, bad)
        with open(bad / "hstu.safetensors", "r+b") as f:
            f.seek(-8, 2)
            f.write(b"\x00" * 8)
        env["STREAMREC_MODEL_DIR"] = str(bad)
        expect = "hstu.safetensors"
    elif case == "bad_setting":
        env["STREAMREC_MAX_BATCH_EVENTS"] = "lots"
        expect = "STREAMREC_MAX_BATCH_EVENTS"
    elif case == "kafka_down":
        env["STREAMREC_KAFKA_BOOTSTRAP"] = "127.0.0.1:1"
        env["STREAMREC_CREATE_TOPICS"] = "true"
        expect = "Kafka"
    else:
        env["STREAMREC_REDIS_URL"] = "redis://127.0.0.1:1/0"
        expect = "Redis"
    r = _run_cli(["worker"], env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert expect in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
