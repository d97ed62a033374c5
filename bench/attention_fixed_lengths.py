"""The per-sequence HSTU attention kernel at fixed sequence lengths, in TFLOP/s of useful (causal)
matmul work: the same work as a dense causal FMHA run (bench/cutlass_fmha_compare.sh runs CUTLASS's
Hopper FMHA example beside it).  GPU only.

    python3 bench/attention_fixed_lengths.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.kernels_bench import bench_ms  # noqa: E402
from kernels import hstu_attention as ha  # noqa: E402
from kernels.testing import random_jagged_attention_inputs  # noqa: E402

SHAPES = [(64, 4, 1024), (64, 4, 512), (256, 2, 256), (512, 2, 128)]   # B, H, every length; d = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    card = torch.cuda.get_device_name()
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        for B, H, L in SHAPES:
            a = random_jagged_attention_inputs(B, L, H, 64, 64, dtype=dtype, device="cuda",
                                               lengths=torch.full((B,), L), seed=1, max_seq_len=L, scale=0.5)
            f = lambda: ha.hstu_attention_triton(**a)  # noqa: E731
            graph = bench_ms(f, graph=True, rep=200)
            eager = bench_ms(f, rep=200)
            fl = ha.flops(a["offsets"], H, 64, 64)
            rows.append(dict(card=card, dtype=str(dtype).split(".")[-1], B=B, H=H, L=L, us_graph=round(graph * 1e3, 2),
                             us_eager=round(eager * 1e3, 2), TFLOPs_graph=round(fl / graph / 1e9, 1)))
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention_fixed_lengths.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
