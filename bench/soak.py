"""Bounded soak: steady load on one `streamrec worker` for a few minutes; the worker's resident memory
and the consumer lag must stay flat. Writes bench/results/soak_<machine>.json and .png.

    .venv/bin/python bench/soak.py --rate 250 --minutes 5 --model-dir models/default
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import signal
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from rich.console import Console

from bench.worker_bench import ROOT, committed_total, create, machine, make_events, start_worker

console = Console()


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models/default")
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--rate", type=float, default=250.0, help="events/s (about half the measured maximum)")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--max-batch-events", type=int, default=512)
    ap.add_argument("--max-wait-ms", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    names = {"in": f"soak-{tag}-in", "out": f"soak-{tag}-out", "dlq": f"soak-{tag}-dlq", "group": f"soak-{tag}",
             "prefix": f"soak:{tag}"}
    await create(args.bootstrap, names, args.partitions)
    proc = start_worker(args, names, args.out / "soak_worker.log")
    await asyncio.sleep(10)
    prod = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=2, acks="all")
    await prod.start()
    samples: list[dict] = []
    duration = args.minutes * 60
    t0 = time.perf_counter()
    n = int(args.rate * duration)

    async def sample():
        while True:
            done, end = await committed_total(args.bootstrap, names["group"], names["in"], args.partitions)
            samples.append({"t": time.perf_counter() - t0, "rss_mb": rss_mb(proc.pid), "lag": end - done,
                            "committed": done})
            await asyncio.sleep(5)

    sampler = asyncio.create_task(sample())
    try:
        futs = []
        for i, e in enumerate(make_events(n, args.users, 3, stamp_now=True)):
            futs.append(await prod.send(names["in"], orjson.dumps(e), key=e["user_id"].encode()))
            if len(futs) >= 2000:
                await asyncio.gather(*futs)
                futs.clear()
            ahead = (i + 1) / args.rate - (time.perf_counter() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
            if i % 5000 == 0:
                console.print(f"{time.perf_counter() - t0:6.0f} s  sent {i}  "
                              f"rss {samples[-1]['rss_mb'] if samples else 0:.0f} MB  "
                              f"lag {samples[-1]['lag'] if samples else 0}")
        await asyncio.gather(*futs)
        await asyncio.sleep(10)
    finally:
        sampler.cancel()
        await prod.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    third = max(1, len(samples) // 3)
    first, last = samples[:third], samples[-third:]
    result = {"machine": machine(), "rate_events_per_s": args.rate, "minutes": args.minutes, "users": args.users,
              "rss_mb_first_third_mean": sum(s["rss_mb"] for s in first) / len(first),
              "rss_mb_last_third_mean": sum(s["rss_mb"] for s in last) / len(last),
              "lag_max": max(s["lag"] for s in samples), "lag_last_third_max": max(s["lag"] for s in last),
              "samples": samples}
    stem = args.out / f"soak_{platform.node() or 'host'}"
    stem.with_suffix(".json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    ax[0].plot([s["t"] for s in samples], [s["rss_mb"] for s in samples])
    ax[0].set_ylabel("worker RSS (MB)")
    ax[1].plot([s["t"] for s in samples], [s["lag"] for s in samples])
    ax[1].set_ylabel("consumer lag (events)")
    ax[1].set_xlabel("seconds")
    fig.suptitle(f"soak at {args.rate:.0f} ev/s, {args.users} users — {result['machine']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=100)
    console.print(f"RSS {result['rss_mb_first_third_mean']:.0f} -> {result['rss_mb_last_third_mean']:.0f} MB "
                  f"(first vs last third), lag max {result['lag_max']}, last third max {result['lag_last_third_max']}")
    console.print(f"wrote {stem.with_suffix('.json')}")


if __name__ == "__main__":
    asyncio.run(main())
