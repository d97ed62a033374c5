"""Worker benchmark on the real broker and Redis: sustained events/s, then p50/p99 end-to-end latency
at about half that rate. Writes bench/results/worker_<machine>.json and a PNG.

    .venv/bin/python -m bench.worker_bench --model-dir models/default [--eos-cost]

Phase 1 (throughput): N events for U users are produced up front; a `streamrec worker` process
consumes them; the rate is measured between its first and last commit (start-up excluded).
Phase 2 (latency): events are produced at each of --latency-fractions x that rate, stamped with the
send time; latency = when the recommendation reached a consumer - the newest event it reflects. On a
2-core machine the load generator itself (producer + consumer, same host) takes CPU from the worker,
so the rate the worker sustains under live load is below the phase-1 figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console
from rich.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
console = Console()


def machine() -> str:
    cpu = "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} ({os.cpu_count()} cores, {cpu})"


async def create(bootstrap: str, names: dict, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(names["in"], partitions, 1), NewTopic(names["out"], partitions, 1),
                                   NewTopic(names["dlq"], 1, 1)])
    finally:
        await admin.close()


def make_events(n: int, users: int, seed: int, stamp_now: bool, zipf: float = 0.8):
    from pipeline.datasets.synthetic import SyntheticWorld

    world = SyntheticWorld(seed=0)
    items = world.item_ids()
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** zipf for i in range(users)]  # skewed (Zipf) activity, like real users
    uids = [f"bench-{i}" for i in range(users)]
    for k, u in enumerate(rng.choices(uids, weights, k=n)):
        yield {"v": 1, "event_id": uuid.uuid4().hex, "user_id": u, "item_id": rng.choice(items),
               "action": rng.choice(["view", "view", "click", "purchase"]),
               "ts": int(time.time() * 1000) if stamp_now else 1_700_000_000_000 + k}


async def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> tuple[int, int]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        end = await c.end_offsets(tps)
        done = 0
        for tp in tps:
            done += (await c.committed(tp)) or 0
        return done, sum(end.values())
    finally:
        await c.stop()


def start_worker(args, names: dict, log: Path) -> subprocess.Popen:
    env = dict(os.environ, STREAMREC_KAFKA_BOOTSTRAP=args.bootstrap, STREAMREC_REDIS_URL=args.redis_url,
               STREAMREC_MODEL_DIR=str(args.model_dir), STREAMREC_INPUT_TOPIC=names["in"],
               STREAMREC_OUTPUT_TOPIC=names["out"], STREAMREC_DLQ_TOPIC=names["dlq"],
               STREAMREC_GROUP_ID=names["group"], STREAMREC_REDIS_PREFIX=names["prefix"],
               STREAMREC_METRICS_PORT="0", STREAMREC_CREATE_TOPICS="false",
               STREAMREC_MAX_BATCH_EVENTS=str(args.max_batch_events), STREAMREC_MAX_WAIT_MS=str(args.max_wait_ms),
               STREAMREC_DELIVERY=names.get("delivery", "at_least_once"))
    if "state_mb" in names:
        env["STREAMREC_ENCODER_STATE_MB"] = str(names["state_mb"])
    return subprocess.Popen([sys.executable, "-m", "worker.cli", "worker"], env=env, cwd=ROOT,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)


async def throughput(args, names: dict, log: Path) -> dict:
    prod = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5, acks="all")
    await prod.start()
    futs = []
    for e in make_events(args.events, args.users, 1, stamp_now=False, zipf=args.zipf):
        futs.append(await prod.send(names["in"], orjson.dumps(e), key=e["user_id"].encode()))
    await asyncio.gather(*futs)
    await prod.stop()
    proc = start_worker(args, names, log)
    samples = []
    try:
        with Progress(console=console) as bar:
            task = bar.add_task("throughput phase", total=args.events)
            while True:
                done, total = await committed_total(args.bootstrap, names["group"], names["in"], args.partitions)
                samples.append((time.perf_counter(), done))
                bar.update(task, completed=done)
                if done >= total:
                    break
                if proc.poll() is not None:
                    raise SystemExit(f"worker exited: {log.read_text()[-2000:]}")
                await asyncio.sleep(0.25)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    first = next(i for i, (_, d) in enumerate(samples) if d > 0)
    t0, d0 = samples[first]
    t1, d1 = samples[-1]
    return {"events": args.events, "users": args.users, "events_per_s": (d1 - d0) / max(1e-9, t1 - t0),
            "measured_events": d1 - d0, "seconds": t1 - t0}


async def latency(args, names: dict, rate: float, log: Path) -> dict:
    proc = start_worker(args, names, log)
    cons = AIOKafkaConsumer(names["out"], bootstrap_servers=args.bootstrap, group_id=None,
                            auto_offset_reset="earliest")
    await cons.start()
    lat: list[float] = []
    stop = asyncio.Event()

    async def collect():
        while not stop.is_set():
            batch = await cons.getmany(timeout_ms=200)
            now = time.time() * 1000
            for recs in batch.values():
                for r in recs:
                    v = orjson.loads(r.value)
                    if v["source"]["last_event_ts"] >= warm_ts:
                        lat.append(now - v["source"]["last_event_ts"])

    try:
        await asyncio.sleep(8)  # let the worker join before the clock starts
        warm_ts = int(time.time() * 1000) + int(args.warmup_s * 1000)
        collector = asyncio.create_task(collect())
        prod = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=1, acks="all")
        await prod.start()
        n = int(rate * (args.latency_seconds + args.warmup_s))
        t0 = time.perf_counter()
        futs = []
        with Progress(console=console) as bar:
            task = bar.add_task(f"latency phase at {rate:.0f} ev/s", total=n)
            for i, e in enumerate(make_events(n, args.users, 2, stamp_now=True)):
                futs.append(await prod.send(names["in"], orjson.dumps(e), key=e["user_id"].encode()))
                ahead = (i + 1) / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
                if i % 200 == 0:
                    bar.update(task, completed=i)
        await asyncio.gather(*futs)
        await prod.stop()
        await asyncio.sleep(3)
        stop.set()
        await collector
    finally:
        await cons.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    a = np.array(lat)
    return {"rate_events_per_s": rate, "seconds": args.latency_seconds, "recommendations": int(a.size),
            "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()), "latencies_ms": a.tolist()}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models/default")
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--events", type=int, default=30000)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--max-batch-events", type=int, default=512)
    ap.add_argument("--max-wait-ms", type=int, default=20)
    ap.add_argument("--latency-fractions", default="0.25,0.5",
                    help="latency phases at these fractions of the measured maximum rate")
    ap.add_argument("--latency-seconds", type=float, default=30)
    ap.add_argument("--warmup-s", type=float, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--eos-cost", action="store_true",
                    help="also run the throughput phase in exactly-once mode and report the ratio")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--zipf", type=float, default=0.8, help="exponent of the users' activity distribution")
    ap.add_argument("--states-cost", type=int, default=0, metavar="ROUNDS",
                    help="also run the throughput phase ROUNDS times each with encoder states off and on "
                         "(STREAMREC_ENCODER_STATE_MB=0 vs the default), interleaved, and report the ratio")
    args = ap.parse_args()

    tag = uuid.uuid4().hex[:8]
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "model_dir": str(args.model_dir), "settings": {
        "max_batch_events": args.max_batch_events, "max_wait_ms": args.max_wait_ms, "partitions": args.partitions}}
    names = {"in": f"bench-{tag}-in", "out": f"bench-{tag}-out", "dlq": f"bench-{tag}-dlq",
             "group": f"bench-{tag}", "prefix": f"bench:{tag}"}
    await create(args.bootstrap, names, args.partitions)
    results["throughput"] = await throughput(args, names, args.out / "worker_bench_tp.log")
    if args.eos_cost:
        t3 = uuid.uuid4().hex[:8]
        names3 = {"in": f"bench-{t3}-in", "out": f"bench-{t3}-out", "dlq": f"bench-{t3}-dlq",
                  "group": f"bench-{t3}", "prefix": f"bench:{t3}", "delivery": "exactly_once"}
        await create(args.bootstrap, names3, args.partitions)
        eos = await throughput(args, names3, args.out / "worker_bench_eos.log")
        results["throughput_exactly_once"] = {**eos, "ratio_to_at_least_once":
                                              eos["events_per_s"] / results["throughput"]["events_per_s"]}
        console.print(f"[bold]exactly-once[/] {eos['events_per_s']:.0f} events/s = "
                      f"{results['throughput_exactly_once']['ratio_to_at_least_once']:.2f}x at-least-once")
    if args.states_cost:
        runs: dict[str, list[float]] = {"off": [], "on": []}
        for rnd in range(args.states_cost):
            for mode in ("off", "on"):
                t4 = uuid.uuid4().hex[:8]
                names4 = {"in": f"bench-{t4}-in", "out": f"bench-{t4}-out", "dlq": f"bench-{t4}-dlq",
                          "group": f"bench-{t4}", "prefix": f"bench:{t4}"}
                if mode == "off":
                    names4["state_mb"] = 0
                await create(args.bootstrap, names4, args.partitions)
                r = await throughput(args, names4, args.out / f"worker_bench_states_{mode}.log")
                runs[mode].append(r["events_per_s"])
                console.print(f"encoder states {mode} (round {rnd + 1}): {r['events_per_s']:.0f} events/s")
        on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
        results["encoder_states"] = {"zipf": args.zipf, "events": args.events, "users": args.users,
                                     "events_per_s_off": runs["off"], "events_per_s_on": runs["on"],
                                     "ratio_on_to_off": on / off}
        console.print(f"[bold]encoder states[/] on {on:.0f} vs off {off:.0f} events/s = {on / off:.2f}x")
    if args.skip_latency:
        stem = args.out / f"worker_{platform.node() or 'host'}"
        stem.with_suffix(".json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        console.print(f"throughput {results['throughput']['events_per_s']:.0f} events/s; wrote {stem}.json")
        return
    results["latency"] = []
    lat_by_rate = {}
    for frac in (float(f) for f in args.latency_fractions.split(",")):
        rate = results["throughput"]["events_per_s"] * frac
        t2 = uuid.uuid4().hex[:8]
        names2 = {"in": f"bench-{t2}-in", "out": f"bench-{t2}-out", "dlq": f"bench-{t2}-dlq",
                  "group": f"bench-{t2}", "prefix": f"bench:{t2}"}
        await create(args.bootstrap, names2, args.partitions)
        r = await latency(args, names2, rate, args.out / "worker_bench_lat.log")
        lat_by_rate[rate] = r.pop("latencies_ms")
        results["latency"].append({"fraction_of_max": frac, **r})

    stem = args.out / f"worker_{platform.node() or 'host'}"
    stem.with_suffix(".json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for (rate, lat), r in zip(lat_by_rate.items(), results["latency"]):
            ax.hist(lat, bins=60, alpha=0.6,
                    label=f"{rate:.0f} ev/s: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms")
        ax.set_xlabel("end-to-end latency (ms): event stamped -> recommendation consumed")
        ax.set_ylabel("recommendations")
        ax.legend(fontsize=8)
        ax.set_title(f"max {results['throughput']['events_per_s']:.0f} ev/s — {results['machine']}", fontsize=8)
        fig.tight_layout()
        fig.savefig(stem.with_suffix(".png"), dpi=100)
    except ImportError:
        pass
    tp = results["throughput"]
    console.print(f"[bold]throughput[/] {tp['events_per_s']:.0f} events/s sustained "
                  f"({tp['measured_events']} events in {tp['seconds']:.1f} s)")
    for la in results["latency"]:
        console.print(f"[bold]latency[/] at {la['rate_events_per_s']:.0f} ev/s ({la['fraction_of_max']:.2f} of max): "
                      f"p50 {la['p50_ms']:.1f} ms, p95 {la['p95_ms']:.1f} ms, p99 {la['p99_ms']:.1f} ms "
                      f"over {la['recommendations']} recommendations")
    console.print(f"wrote {stem.with_suffix('.json')}")


if __name__ == "__main__":
    asyncio.run(main())
