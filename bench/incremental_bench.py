"""Cost of one new event: incremental HSTU encoding (decode on a cached state) vs a full re-encode.

    .venv/bin/python bench/incremental_bench.py                       # CPU here (+ spill vs recompute via Redis)
    python bench/incremental_bench.py --device cuda --batches 1,64,512  # on the GPU machine

For each history length L (100, 500, 1000, 2000) and batch size B (users per call), every user
has L events and gets one new one. ``full`` = the torch encoder backend's forward over the B
windows of L+1 events (on CUDA with kernels/hstu_attention, as the worker runs it); ``incremental``
= :meth:`pipeline.hot_states.HotStates.embed` on users whose states hold the first L events
(decode: one new row per layer, attention over the cached keys/values). Both start from the
same prebuilt jagged tensors, so the times are the encoder's (the worker also reads and parses the
history, for both paths). Per-event cost = call time / B. Reps are interleaved (full, incremental,
full, ...) and the median is reported. A check asserts both give the same embeddings.

``--redis-url``: also measures whether spilling an evicted state to Redis and reloading it beats
recomputing it (one user: pack + SET + GET + unpack into the arena, vs a prefill of L events).

Model: the default model's shape (dim 64, 2 layers, 2 heads, qk/v 32) with random weights and
max_seq_len = 4096 (speed does not depend on the weights).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.hot_states import HotStates  # noqa: E402
from pipeline.hstu import HSTUConfig, HSTUEncoder  # noqa: E402
from pipeline.recommender import JaggedBatch  # noqa: E402

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return platform.processor()


def make_encoder(device: str, dtype: torch.dtype, max_len: int) -> HSTUEncoder:
    torch.manual_seed(0)
    cfg = HSTUConfig(num_items=10_000, dim=64, num_layers=2, num_heads=2, qk_dim=32, v_dim=32,
                     max_seq_len=max_len, attn_n=max_len, num_time_buckets=64)
    enc = HSTUEncoder(cfg).eval()
    with torch.no_grad():
        for layer in enc.layers:
            layer.pos_w.normal_(0, 0.1)
            layer.time_w.normal_(0, 0.1)
    enc = enc.to(device=device, dtype=dtype)
    if device == "cuda":
        from kernels.hstu_attention import hstu_attention

        enc.set_attention(hstu_attention)
    return enc


def histories(B: int, L: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(0, 10_000, (B, L), generator=g)
    actions = torch.randint(0, 8, (B, L), generator=g)
    ts = 1_700_000_000_000 + torch.randint(0, 90_000_000, (B, L), generator=g).cumsum(1)
    return items, actions, ts


def jagged(items, actions, ts, upto: int) -> JaggedBatch:
    B = items.shape[0]
    offsets = torch.arange(B + 1, dtype=torch.long) * upto
    return JaggedBatch(items[:, :upto].reshape(-1), actions[:, :upto].reshape(-1), ts[:, :upto].reshape(-1), offsets, 0)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def bench_cell(enc, device, B, L, reps, budget) -> dict:
    items, actions, ts = histories(B, L + reps + 1, seed=L * 1000 + B)
    users = [f"u{b}" for b in range(B)]
    hot = HotStates(enc, budget, device=device)
    with torch.inference_mode():
        hot.embed(users, [0] * B, jagged(items, actions, ts, L))  # prefill L events
        batches = [jagged(items, actions, ts, L + 1 + r) for r in range(reps + 1)]
        dev_batches = [b.to(device) for b in batches]
        # check: incremental == full on the first step (then warm both up)
        inc = hot.embed(users, [0] * B, batches[0]).float()
        b0 = dev_batches[0]
        full = enc(b0.item_idx, b0.action_idx, b0.ts_ms, b0.offsets).float()
        err = float((inc - full).abs().max())
        t_full, t_inc = [], []
        for r in range(1, reps + 1):
            b = dev_batches[r]
            t_full.append(timed(lambda: enc(b.item_idx, b.action_idx, b.ts_ms, b.offsets), device))
            t_inc.append(timed(lambda: hot.embed(users, [0] * B, batches[r]), device))
    assert hot.stats.lookups["hit"] == B * (reps + 1), hot.stats.snapshot()
    f, i = statistics.median(t_full), statistics.median(t_inc)
    return {"batch": B, "L": L, "full_ms_per_event": 1e3 * f / B, "incremental_ms_per_event": 1e3 * i / B,
            "speedup": f / i, "max_abs_err": err, "full_ms_call": 1e3 * f, "incremental_ms_call": 1e3 * i,
            "state_bytes_per_user": hot.bytes_in_use // B}


def bench_spill(enc, redis_url: str, L: int, reps: int) -> dict:
    """One evicted user: reload its state from Redis vs recompute it (prefill of L events), on the CPU."""
    import numpy as np
    import redis

    r = redis.Redis.from_url(redis_url)
    items, actions, ts = histories(1, L, seed=L)
    b = jagged(items, actions, ts, L)
    hot = HotStates(enc, 64 << 20)
    with torch.inference_mode():
        hot.embed(["u"], [0], b)
    a = hot.arena
    rows = torch.cat([torch.arange(p * a.page_rows, (p + 1) * a.page_rows) for p in hot.pages_of("u")])[:L]

    def spill():  # at eviction: pack the user's rows and SET them
        blob = a.kv[:, rows].numpy().tobytes() + a.ts[rows].numpy().tobytes()
        r.set("streamrec-bench:state", blob)
        return len(blob)

    def reload():  # when the user is back: GET and unpack into the arena
        raw = r.get("streamrec-bench:state")
        shape = (a.kv.shape[0], len(rows), a.kv.shape[2])
        n = shape[0] * shape[1] * shape[2]
        kv = np.frombuffer(raw, dtype=np.float32, count=n).reshape(shape)
        a.kv[:, rows] = torch.from_numpy(kv.copy())
        a.ts[rows] = torch.from_numpy(np.frombuffer(raw, dtype=np.int64, offset=4 * n).copy())

    def recompute():
        cold = HotStates(enc, 64 << 20)
        with torch.inference_mode():
            cold.embed(["u"], [0], b)

    nbytes = spill()
    t_spill, t_reload, t_re = [], [], []
    for _ in range(reps):
        t_spill.append(timed(spill, "cpu"))
        t_reload.append(timed(reload, "cpu"))
        t_re.append(timed(recompute, "cpu"))
    r.delete("streamrec-bench:state")
    s, rl, c = (statistics.median(x) for x in (t_spill, t_reload, t_re))
    # spilling costs `s` at every eviction and saves `c - rl` for each evicted user that comes back:
    # it pays only if more than s / (c - rl) of the evicted users return
    return {"L": L, "state_bytes": nbytes, "spill_ms": 1e3 * s, "reload_ms": 1e3 * rl, "recompute_ms": 1e3 * c,
            "break_even_return_rate": s / (c - rl) if c > rl else None}


def profile_cell(enc, device: str, B: int, L: int, reps: int = 10) -> None:
    """Where one incremental call's time goes: host time until ``embed`` returns (no sync) vs wall time
    (with sync), the Python functions (cProfile) and the torch ops (torch.profiler) of ``reps`` calls."""
    import cProfile
    import pstats

    items, actions, ts = histories(B, L + 2 * reps + 2, seed=7)
    users = [f"u{b}" for b in range(B)]
    hot = HotStates(enc, int(B * (L + 2 * reps + 40) * 2200), device=device)
    with torch.inference_mode():
        hot.embed(users, [0] * B, jagged(items, actions, ts, L))
        batches = iter([jagged(items, actions, ts, L + 1 + r) for r in range(2 * reps + 1)])
        hot.embed(users, [0] * B, next(batches))
        host, wall = [], []
        for _ in range(reps):
            b = next(batches)
            sync(device)
            t = time.perf_counter()
            hot.embed(users, [0] * B, b)
            host.append(time.perf_counter() - t)
            sync(device)
            wall.append(time.perf_counter() - t)
        print(f"[profile B={B} L={L}] host until embed returns {1e3 * statistics.median(host):.2f} ms, "
              f"wall (synced) {1e3 * statistics.median(wall):.2f} ms (medians of {reps})", flush=True)
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(reps // 2):
            hot.embed(users, [0] * B, next(batches))
        sync(device)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(30)
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(reps - reps // 2):
                hot.embed(users, [0] * B, next(batches))
            sync(device)
        sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
        if device == "cuda":
            print(prof.key_averages().table(sort_by=sort, row_limit=20), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=list(_DTYPES))
    ap.add_argument("--lengths", default="100,500,1000,2000")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--redis-url", default=None, help="also measure spill-to-Redis vs recompute (CPU)")
    ap.add_argument("--out", default="bench/results/incremental_cpu.json")
    ap.add_argument("--profile", default=None, metavar="B,L",
                    help="instead of the table: profile the incremental call at batch B, history L")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    lengths = [int(x) for x in a.lengths.split(",")]
    batches = [int(x) for x in a.batches.split(",")]
    enc = make_encoder(a.device, _DTYPES[a.dtype], 4096)
    name = device_name(a.device)
    if a.profile:
        B, L = (int(x) for x in a.profile.split(","))
        profile_cell(enc, a.device, B, L)
        return 0
    rows = []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):
            return x
    cells = [(B, L) for B in batches for L in lengths]
    for B, L in tqdm(cells, desc="incremental vs full", unit="cell"):
        budget = int(B * (L + a.reps + 40) * 1100 * (2 if a.dtype == "fp32" else 1))
        row = bench_cell(enc, a.device, B, L, a.reps, budget)
        rows.append(row)
        print(f"[{name}] B={B:4d} L={L:5d}: full {row['full_ms_per_event']:8.3f} ms/event, incremental "
              f"{row['incremental_ms_per_event']:8.3f} ms/event, x{row['speedup']:6.1f}  (max |diff| {row['max_abs_err']:.1e})",
              flush=True)
    spill = []
    if a.redis_url and a.device == "cpu" and a.dtype == "fp32":
        for L in lengths:
            s = bench_spill(enc, a.redis_url, L, a.reps)
            spill.append(s)
            be = s["break_even_return_rate"]
            print(f"[{name}] L={L}: state {s['state_bytes'] / 1e6:.2f} MB; spill {s['spill_ms']:.2f} ms, reload "
                  f"{s['reload_ms']:.2f} ms vs recompute {s['recompute_ms']:.2f} ms; spilling pays if more than "
                  f"{'never' if be is None else f'{100 * be:.0f} %'} of evicted users come back", flush=True)
    out = {"device": name, "dtype": a.dtype, "torch": torch.__version__, "reps": a.reps,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cells": rows, "spill": spill,
           "command": " ".join(sys.argv)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for B in batches:
            rs = [r for r in rows if r["batch"] == B]
            ax.plot([r["L"] for r in rs], [r["full_ms_per_event"] for r in rs], "o-", label=f"full re-encode, B={B}")
            ax.plot([r["L"] for r in rs], [r["incremental_ms_per_event"] for r in rs], "s--", label=f"incremental, B={B}")
        ax.set_xlabel("history length L"), ax.set_ylabel("ms per new event"), ax.set_yscale("log")
        ax.set_title(f"One new event: incremental vs full ({name}, {a.dtype})", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(str(Path(a.out).with_suffix(".png")), dpi=110)
    except ImportError:
        pass
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
