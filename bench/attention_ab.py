"""A/B of the HSTU attention op against a baseline copy of kernels/hstu_attention.py, in one process
on one GPU (docs/perf.md: how the explorations compare two versions).

    git show <rev>:kernels/hstu_attention.py > /tmp/ha_base.py
    python3 bench/attention_ab.py --baseline /tmp/ha_base.py --out <dir>

Both versions run the issue's three target shapes (bf16, random jagged lengths 1..N) with their
default configs; timings are CUDA-graph medians, interleaved (baseline, current) ``--repeats`` times,
and each shape's padded reference is timed in the same run for the ratios. Checks that the two
outputs are bit-identical (``torch.equal``) and reports it. Writes ``attention_ab.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench.kernels_bench import ATTN_TARGETS, attn_inputs, bench_ms  # noqa: E402
from kernels import hstu_attention as ha  # noqa: E402


def load_baseline(path: str):
    """The baseline file as module ``kernels.hstu_attention_baseline`` (its relative imports resolve)."""
    spec = importlib.util.spec_from_file_location("kernels.hstu_attention_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="a copy of kernels/hstu_attention.py to compare against")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    base = load_baseline(args.baseline)
    card = torch.cuda.get_device_name()
    rows = []
    for B, N, H, d, target in ATTN_TARGETS:
        a = attn_inputs(B, N, H, d, torch.bfloat16, seed=B + N)
        pidx = ha.padded_index(a["offsets"], N, a["q"].shape[0])
        padded = bench_ms(lambda: ha.hstu_attention_padded(**a, padded_len=N, with_bias=False, pad_index=pidx),
                          graph=True, rep=40) * 1e3
        row = {"card": card, "B": B, "N": N, "H": H, "d": d, "target": target, "padded_us": round(padded, 1),
               "equal": torch.equal(base.hstu_attention_triton(**a), ha.hstu_attention_triton(**a))}
        for _ in range(args.repeats):
            for name, mod in (("baseline", base), ("current", ha)):
                f = lambda: mod.hstu_attention_triton(**a)  # noqa: E731
                row.setdefault(name + "_us", []).append(round(bench_ms(f, graph=True, rep=200) * 1e3, 2))
        for name in ("baseline", "current"):
            row[name + "_ratio"] = round(padded / min(row[name + "_us"]), 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention_ab.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
