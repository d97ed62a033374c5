"""Exploration Q (docs/perf.md): the hand-written CUDA mma.sync attention kernel
(kernels/csrc/hstu_attention_mma.cu) against the Triton op, on the GPU machine, in one run.

    python3 bench/attention_cuda_experiment.py --out <dir>

1. Correctness: bf16, several jagged shapes and head counts, every built config, against the
   float64 reference (<= 1e-2) and the Triton op; plus one batch with a sequence spanning more
   than 2^31 s (the saturating time path), length-1 sequences and q/k/v strided views of one
   qkv tensor.
2. Timing (CUDA-graph medians) at the issue's three target shapes: the padded reference, the
   Triton op, and the CUDA kernel in three builds: full bias, position bias only
   (``-DSR_NO_TIME``) and no bias (``-DSR_NO_BIAS``), the last two timing only.
Writes ``attention_cuda_experiment.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench.kernels_bench import ATTN_TARGETS, attn_inputs, bench_ms, ref64  # noqa: E402
from kernels import hstu_attention as ha  # noqa: E402
from kernels import hstu_attention_cuda as hc  # noqa: E402
from kernels.testing import random_jagged_attention_inputs, rel_err  # noqa: E402


def configs(H):
    return [c for c in hc.CONFIGS if H % c[0] == 0]


def run_cfg(a, cfg):
    return hc.hstu_attention_cuda(**a, heads=cfg[0], block_n=cfg[1], min_blocks=cfg[2])


def correctness():
    rows = []
    for B, N, H in [(16, 300, 2), (5, 1024, 4), (33, 129, 2), (64, 64, 1), (7, 200, 4), (40, 70, 3)]:
        a = attn_inputs(B, N, H, 64, torch.bfloat16, seed=B * 7 + N)
        ref, tri = ref64(a), ha.hstu_attention_triton(**a).float()
        for cfg in configs(H):
            o = run_cfg(a, cfg)
            rows.append({"case": f"B={B} N={N} H={H}", "cfg": cfg, "err_ref": rel_err(o, ref), "err_triton": rel_err(o, tri)})
    lengths = torch.tensor([1, 200, 1, 64, 65, 3, 128, 1])
    a = random_jagged_attention_inputs(8, 200, 2, 64, 64, dtype=torch.bfloat16, device="cuda", seed=5,
                                       lengths=lengths, scale=0.5)
    T = a["q"].shape[0]
    ts = a["ts_s"].clone()   # rows 3..139 of the 200-row sequence: a span of ~4e9 s, out of order
    ts[3:140] = ts[3:140] * 7 - 5_000_000_000 + torch.arange(137, device="cuda") * 30_000_000
    a["ts_s"] = ts
    qkv = torch.randn(T, 3, 2, 64, device="cuda", dtype=torch.bfloat16) * 0.5
    a["q"], a["k"], a["v"] = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    ref, tri = ref64(a), ha.hstu_attention_triton(**a).float()
    for cfg in configs(2):
        o = run_cfg(a, cfg)
        rows.append({"case": "span > 2^31 s, L = 1, strided qkv", "cfg": cfg, "err_ref": rel_err(o, ref),
                     "err_triton": rel_err(o, tri)})
    for r in rows:
        print(r, flush=True)
    return rows


def timing():
    builds = {}
    for name, defines in (("full", []), ("position_only", ["-DSR_NO_TIME"]), ("no_bias", ["-DSR_NO_BIAS"])):
        t0 = time.time()
        builds[name] = hc.build_library(defines)
        print(f"built {name} in {time.time() - t0:.1f} s", flush=True)
    rows = []
    for B, N, H, d, target in ATTN_TARGETS:
        a = attn_inputs(B, N, H, d, torch.bfloat16, seed=B + N)
        pidx = ha.padded_index(a["offsets"], N, a["q"].shape[0])
        padded = bench_ms(lambda: ha.hstu_attention_padded(**a, padded_len=N, with_bias=False, pad_index=pidx),
                          graph=True, rep=40) * 1e3
        row = {"B": B, "N": N, "H": H, "target": target, "padded_us": round(padded, 1),
               "triton_us": round(bench_ms(lambda: ha.hstu_attention_triton(**a), graph=True, rep=200) * 1e3, 2)}
        for name, lib in builds.items():
            os.environ["STREAMREC_HSTU_ATTN_LIB"] = str(lib)
            hc._load.cache_clear()
            for cfg in configs(H):
                row[f"cuda_{name}_{cfg[0]}x{cfg[1]}_minb{cfg[2]}_us"] = round(
                    bench_ms(lambda: run_cfg(a, cfg), graph=True, rep=200) * 1e3, 2)
        os.environ.pop("STREAMREC_HSTU_ATTN_LIB")
        hc._load.cache_clear()
        best = min(v for k, v in row.items() if k.startswith("cuda_full"))
        row["cuda_best_ratio"] = round(padded / best, 1)
        row["triton_ratio"] = round(padded / row["triton_us"], 1)
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    ok, why = hc.available()
    if not ok:
        raise SystemExit(f"the CUDA kernel cannot run here: {why}")
    res = {"card": torch.cuda.get_device_name(), "correctness": correctness()}
    res["all_ok"] = all(r["err_ref"] < 1e-2 for r in res["correctness"])
    print("all within 1e-2 of float64:", res["all_ok"], flush=True)
    res["timing"] = timing()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention_cuda_experiment.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
