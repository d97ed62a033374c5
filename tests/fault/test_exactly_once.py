"""Exactly-once mode: a read_committed reader never sees two recommendations built from the same input
offsets — across kill -9 restarts and across a zombie worker (SIGSTOP past its session timeout, its
partitions reprocessed by another worker, then SIGCONT so it finishes its stale batch).

The same zombie scenario in at-least-once mode does publish duplicates (the zombie's outputs are
acknowledged before its commit is rejected): that run shows the test can tell the two modes apart.
"""

from __future__ import annotations

import asyncio
import signal
import time

import orjson
import pytest

from tests.e2e.test_worker_process import _events
from tests.helpers import (committed_vs_end, consume_all, create_topics, produce_events, start_worker_process,
                           wait_committed, worker_env)

pytestmark = pytest.mark.integration


async def _wait_progress(services, names, target: int, procs, log) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        committed, _ = await committed_vs_end(services["bootstrap"], names["group_id"], names["input_topic"])
        if sum(committed.values()) >= target:
            return
        for p in procs:
            assert p.poll() is None, log.read_text()[-3000:]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no progress to {target}: {log.read_text()[-3000:]}")


def _duplicates(outs) -> tuple[dict, dict[str, int]]:
    seen: dict[tuple[str, str, int], int] = {}
    newest: dict[str, int] = {}
    for r in outs:
        v = orjson.loads(r.value)
        newest[v["user_id"]] = max(newest.get(v["user_id"], 0), v["source"]["last_event_ts"])
        for part, off in v["source"]["offsets"].items():
            seen[(v["user_id"], part, off)] = seen.get((v["user_id"], part, off), 0) + 1
    return {k: n for k, n in seen.items() if n > 1}, newest


async def _scenario(stack, names, model_dir, tmp_path, delivery: str, kills: int, reaper) -> tuple[int, dict, dict, dict]:
    services = stack.services
    await create_topics(services["bootstrap"], names, partitions=3)
    evs, per_user = _events(4000, 150, seed=11)
    await produce_events(services["bootstrap"], names["input_topic"], evs)
    env = worker_env(services, names, model_dir, STREAMREC_DELIVERY=delivery, STREAMREC_MAX_BATCH_EVENTS=40,
                     STREAMREC_SESSION_TIMEOUT_MS=6000)
    log = tmp_path / "workers.log"
    target = 200
    for _ in range(kills):  # kill -9 mid-stream, then restart
        proc = start_worker_process(env, log)
        reaper.append(proc)
        await _wait_progress(services, names, target, [proc], log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        target += 500
    zombie = start_worker_process(env, log)
    reaper.append(zombie)
    await _wait_progress(services, names, target, [zombie], log)
    zombie.send_signal(signal.SIGSTOP)  # frozen mid-batch: it misses heartbeats and loses its partitions
    other = start_worker_process(env, log)
    reaper.append(other)
    try:
        await _wait_progress(services, names, target + 500, [other], log)  # the other worker took over
        zombie.send_signal(signal.SIGCONT)  # the zombie wakes up and finishes its stale batch
        assert await wait_committed(services["bootstrap"], names["group_id"], names["input_topic"], 180), \
            log.read_text()[-3000:]
    finally:
        zombie.send_signal(signal.SIGCONT)
        for p in (zombie, other):
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(40) for p in (zombie, other)]
    assert codes == [0, 0], log.read_text()[-3000:]
    outs = await consume_all(services["bootstrap"], names["output_topic"], lambda r: False, timeout_s=8,
                             isolation_level="read_committed")
    dups, newest = _duplicates(outs)
    expected = {u: max(e["ts"] for e in es) for u, es in per_user.items()}
    print(f"{delivery}: {len(outs)} committed recommendations, {kills} kill -9 + 1 zombie, "
          f"duplicated input offsets {len(dups)}")
    return len(outs), dups, newest, expected


async def test_exactly_once_never_duplicates_across_kill9_and_zombie(stack, names, tiny_model_dir, tmp_path, reaper):
    _, dups, newest, expected = await _scenario(stack, names, tiny_model_dir, tmp_path, "exactly_once", 2, reaper)
    assert not dups, f"{len(dups)} input offsets produced two committed recommendations, e.g. {list(dups)[:3]}"
    assert newest == expected


async def test_at_least_once_zombie_does_duplicate(stack, names, tiny_model_dir, tmp_path, reaper):
    _, dups, newest, expected = await _scenario(stack, names, tiny_model_dir, tmp_path, "at_least_once", 0, reaper)
    assert dups, "the zombie scenario should publish duplicates without transactions"
    assert newest == expected
