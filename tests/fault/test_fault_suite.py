"""Fault injection on real Kafka and Redis: two workers, 20,000+ events for 1,000+ users over 6 partitions,
while a worker is kill -9'd and restarted (static membership), another is SIGTERM'd and restarted, the
broker restarts, Redis is down for ~10 s, and one user's input makes the model raise. Afterwards every
valid event is applied exactly once, every invalid one is in the DLQ, lag is 0, nothing is lost."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import urllib.request

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from pipeline.history_store import HistoryStore
from schemas import DLQHeader
from tests.helpers import (committed_vs_end, consume_all, create_topics, event, newest_reflected,
                           start_worker_process, worker_env)
from worker.commands.produce import MALFORMED

pytestmark = pytest.mark.integration

N_EVENTS, N_USERS, PARTITIONS, RATE = 20_000, 1_000, 6, 300
CHAOS_USER = "chaos-user"
CAP = 50  # tiny_model_dir's max_seq_len: every user gets fewer events than this


def _stream(seed: int = 1):
    """(key, value, user, ts | None) for valid and malformed records, in send order."""
    from pipeline.datasets.synthetic import SyntheticWorld

    rng = random.Random(seed)
    items = SyntheticWorld(seed=0).item_ids()
    users = [f"f{i}-ü" if i % 50 == 0 else f"f{i}" for i in range(N_USERS)] + [CHAOS_USER]
    ts = 1_732_600_000_000
    out = []
    for i in range(N_EVENTS):
        u = users[i % len(users)] if i < len(users) else rng.choice(users)
        ts += 1 + rng.randrange(50)
        if rng.random() < 0.02:
            out.append((u.encode(), MALFORMED[i % len(MALFORMED)], u, None))
        else:
            out.append((u.encode(), orjson.dumps(event(u, rng.choice(items), ts)), u, ts))
    return out


async def _committed_total(services, names) -> int | None:
    try:
        committed, _ = await committed_vs_end(services["bootstrap"], names["group_id"], names["input_topic"])
        return sum(committed.values())
    except Exception:
        return None


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


async def test_fault_suite(stack, names, tiny_model_dir, tmp_path, reaper):
    services = stack.services
    await create_topics(services["bootstrap"], names, partitions=PARTITIONS)
    records = _stream()
    log = tmp_path / "workers.log"
    ports = [19111, 19112]

    def worker(i: int):
        env = worker_env(services, names, tiny_model_dir, STREAMREC_CHAOS_FAIL_USERS=CHAOS_USER,
                         STREAMREC_SESSION_TIMEOUT_MS=10_000, STREAMREC_METRICS_PORT=ports[i],
                         STREAMREC_MAX_BATCH_EVENTS=200, STREAMREC_RETRY_BACKOFF_MAX_S=1.0,
                         STREAMREC_LOG_LEVEL=os.environ.get("STREAMREC_FAULT_LOG_LEVEL", "info"))
        if i == 0:
            env["STREAMREC_GROUP_INSTANCE_ID"] = "fault-w0"  # static membership: a restart keeps the partitions
        proc = start_worker_process(env, log)
        reaper.append(proc)
        return proc

    workers = [worker(0), worker(1)]
    produced = 0
    recovery: dict[str, tuple[float, float]] = {}
    notes: dict[str, str] = {}

    async def produce():
        nonlocal produced
        p = AIOKafkaProducer(bootstrap_servers=services["bootstrap"], acks="all", enable_idempotence=True,
                             linger_ms=5, request_timeout_ms=60_000)
        await p.start()
        t0 = time.perf_counter()
        futs = []
        for i, (k, v, _, _) in enumerate(records):
            futs.append(await p.send(names["input_topic"], v, key=k))
            ahead = (i + 1) / RATE - (time.perf_counter() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await asyncio.gather(*futs)
        produced = len(futs)
        await p.stop()

    async def caught_up(name: str, since: float) -> None:
        """From the fault's end: when commits move again (resumed) and when they pass the input's end
        offset at that moment (caught up with the backlog the fault built)."""
        target = base = None
        while target is None or base is None:
            try:
                committed, end = await committed_vs_end(services["bootstrap"], names["group_id"],
                                                        names["input_topic"])
                target, base = sum(end.values()), sum(committed.values())
            except Exception:
                await asyncio.sleep(0.5)
        resumed = None
        while True:
            done = await _committed_total(services, names) or 0
            if resumed is None and done > base:
                resumed = time.monotonic() - since
            if done >= target:
                break
            await asyncio.sleep(0.25)
        recovery[name] = (resumed if resumed is not None else time.monotonic() - since, time.monotonic() - since)

    async def until_ready(i: int, timeout: float = 120) -> None:
        """Wait for a (re)started worker to serve /readyz: a worker that starts while Kafka is down exits 2
        by design (start-up checks), so faults are spaced by the workers' start-up."""
        deadline = time.monotonic() + timeout
        while not _ready(ports[i]):
            assert workers[i].poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "worker did not become ready"
            await asyncio.sleep(0.2)

    async def faults():
        checks = []
        await until_ready(0)
        await until_ready(1)
        await asyncio.sleep(3)
        workers[0].send_signal(signal.SIGKILL)  # 1. kill -9 mid-batch, restart with the same static id
        workers[0].wait(10)
        await asyncio.sleep(1)
        workers[0] = worker(0)
        checks.append(asyncio.create_task(caught_up("kill -9 worker + restart", time.monotonic())))
        await until_ready(0)
        await asyncio.sleep(3)
        t = time.monotonic()
        workers[1].send_signal(signal.SIGTERM)  # 2. SIGTERM under load: finish batch, commit, exit 0
        code = workers[1].wait(30)
        notes["sigterm"] = f"exit {code} after {time.monotonic() - t:.1f} s"
        assert code == 0, log.read_text()[-3000:]
        workers[1] = worker(1)
        checks.append(asyncio.create_task(caught_up("SIGTERM worker + restart", time.monotonic())))
        await until_ready(1)
        await asyncio.sleep(3)
        stack.infra("down", "kafka")  # 3. broker restart
        await asyncio.sleep(2)
        stack.infra("up", "kafka")
        checks.append(asyncio.create_task(caught_up("Kafka broker restart", time.monotonic())))
        await asyncio.sleep(8)
        stack.infra("down", "redis")  # 4. Redis outage ~10 s
        await asyncio.sleep(5)
        notes["readyz during Redis outage"] = str([_ready(p) for p in ports])
        committed_during = await _committed_total(services, names)
        await asyncio.sleep(5)
        committed_end = await _committed_total(services, names)
        notes["commits during outage"] = f"{committed_during} -> {committed_end}"
        stack.infra("up", "redis")
        checks.append(asyncio.create_task(caught_up("Redis outage 10 s", time.monotonic())))
        await asyncio.gather(*checks)

    prod = asyncio.create_task(produce())
    await asyncio.wait_for(faults(), 400)
    await asyncio.wait_for(prod, 200)

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        committed, end = await committed_vs_end(services["bootstrap"], names["group_id"], names["input_topic"])
        if committed == end:
            break
        await asyncio.sleep(0.5)
    lag = sum(end.values()) - sum(committed.values())
    for w in workers:
        assert w.poll() is None, f"a worker died: {log.read_text()[-3000:]}"
    ready_after = [_ready(p) for p in ports]
    for w in workers:
        w.send_signal(signal.SIGTERM)
    assert [w.wait(40) for w in workers] == [0, 0]

    # ---- accounting ----
    sent: dict[str, list[int]] = {}
    malformed = 0
    for _, _, u, ts in records:
        if ts is None:
            malformed += 1
        else:
            sent.setdefault(u, []).append(ts)
    client = aioredis.from_url(services["redis_url"])
    try:
        stored = await HistoryStore(client, cap=CAP, prefix=names["redis_prefix"]).read(sent)
    finally:
        await client.aclose()
    applied = duplicates = lost = wrong_newest = 0
    missing: list[tuple[str, int]] = []
    for u, ts_list in sent.items():
        s = stored[u]
        got = [e.ts for e in s.events] if s else []
        applied += s.applied_total if s else 0
        duplicates += len(got) - len(set(got)) + max(0, (s.applied_total if s else 0) - len(ts_list))
        lost += len(set(ts_list) - set(got))
        missing += [(u, t) for t in sorted(set(ts_list) - set(got))][:2]
        wrong_newest += (s is None or s.last_ts != ts_list[-1])
    dlq = await consume_all(services["bootstrap"], names["dlq_topic"], lambda r: False, timeout_s=6)
    dlq_decode = {(dict(r.headers)[DLQHeader.SOURCE_PARTITION], dict(r.headers)[DLQHeader.SOURCE_OFFSET])
                  for r in dlq if dict(r.headers)[DLQHeader.STAGE] == b"decode"}
    dlq_model = {(dict(r.headers)[DLQHeader.SOURCE_PARTITION], dict(r.headers)[DLQHeader.SOURCE_OFFSET])
                 for r in dlq if dict(r.headers)[DLQHeader.STAGE] == b"model"}
    outs = await consume_all(services["bootstrap"], names["output_topic"], lambda r: False, timeout_s=8)
    newest_rec = newest_reflected(outs)
    stale = [u for u, ts in sent.items() if u != CHAOS_USER and newest_rec.get(u) != ts[-1]]

    print("\nfault suite:", f"{produced} produced ({malformed} malformed) for {len(sent)} users, "
          f"{PARTITIONS} partitions, 2 workers")
    for name, (resumed, caught) in recovery.items():
        print(f"  {name:<26} commits resumed after {resumed:5.1f} s, backlog caught up after {caught:5.1f} s")
    for k, v in notes.items():
        print(f"  {k}: {v}")
    print(f"  produced={produced} applied={applied} dead-lettered(decode)={len(dlq_decode)} "
          f"dead-lettered(model, {CHAOS_USER})={len(dlq_model)} duplicates={duplicates} lost={lost} "
          f"lag={lag} stale-recommendations={len(stale)} readyz-after={ready_after}")

    print(f"  first missing (user, ts): {missing[:10]}; input end offsets total {sum(end.values())}")
    if missing:
        inp = await consume_all(services["bootstrap"], names["input_topic"], lambda r: False, timeout_s=10)
        where = {}
        for r in inp:
            try:
                v = orjson.loads(r.value)
                where[(v["user_id"], v["ts"])] = (r.partition, r.offset)
            except Exception:
                pass
        print(f"  input records {len(inp)}; missing located at {[where.get(m) for m in missing[:10]]}")
    assert produced == N_EVENTS and lag == 0
    assert produced == applied + len(dlq_decode)
    assert len(dlq_decode) == malformed
    assert len(dlq_model) == len(sent[CHAOS_USER])
    assert duplicates == 0 and lost == 0 and wrong_newest == 0
    assert not stale, stale[:5]
    assert notes["readyz during Redis outage"] == "[False, False]"
    assert ready_after == [True, True]
    assert max(len(v) for v in sent.values()) < CAP
