"""A/B of the HSTU attention op against baseline copies of kernels/hstu_attention.py, in one process
on one GPU (docs/perf.md: how the explorations compare versions).

    git show <rev>:kernels/hstu_attention.py > /tmp/ha_base.py
    python3 bench/attention_ab.py --baseline /tmp/ha_base.py --out <dir>
    python3 bench/attention_ab.py --baseline a.py --baseline b.py --config 1024:64,64,2 --all-shapes --out <dir>
    python3 bench/attention_ab.py --baseline /tmp/ha_base.py --variant nosplit:split_slots=0 --seeds std,1,2 --out <dir>

Each version (every ``--baseline`` in order, then the working tree's kernel, ``current``) runs the
issue's three target shapes (bf16, random jagged lengths 1..N; ``--all-shapes`` adds the encoder's
B=64 and B=512 at N=200) with its default config; ``--config N:bm,bn,heads[,warps[,maxnreg]]`` also
times the current kernel with that config at the shapes of that N; ``--variant NAME:key=value[,...]``
times it with those keyword arguments of ``hstu_attention_triton`` (integers) at every shape.
``--seeds`` replaces each shape's input seed (``std``: B + N, the benchmark's and the default) by each seed given:
the lengths, and so the load balance, depend on it. Timings are CUDA-graph medians,
interleaved over the variants ``--repeats`` times, and each shape's padded reference is timed in the
same run for the ratios. Reports each variant's error against the float64 reference and whether its
output equals the first variant's bit for bit (``torch.equal``). Writes ``attention_ab.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench.kernels_bench import ATTN_TARGETS, attn_inputs, bench_ms, ref64  # noqa: E402
from kernels import hstu_attention as ha  # noqa: E402
from kernels.testing import rel_err  # noqa: E402

ENCODER_SHAPES = [(64, 200, 2, 64, None), (512, 200, 2, 64, None)]


def load_baseline(path: str, i: int = 0):
    """A baseline file as module ``kernels.hstu_attention_baseline<i>`` (its relative imports resolve)."""
    spec = importlib.util.spec_from_file_location(f"kernels.hstu_attention_baseline{i}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def parse_config(text: str) -> tuple[int, dict]:
    """``N:bm,bn,heads[,warps[,maxnreg]]`` -> (N, keyword arguments of hstu_attention_triton)."""
    n, cfg = text.split(":")
    v = [int(x) for x in cfg.split(",")]
    kw = dict(block_m=v[0], block_n=v[1], heads=v[2])
    if len(v) > 3:
        kw["num_warps"] = v[3]
    if len(v) > 4:
        kw["maxnreg"] = v[4]
    return int(n), kw


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME:key=value[,key=value...]`` -> (NAME, keyword arguments with integer values)."""
    name, kws = text.split(":")
    return name, {k: int(v) for k, v in (kv.split("=") for kv in kws.split(","))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", action="append", required=True,
                    help="a copy of kernels/hstu_attention.py to compare against (repeatable)")
    ap.add_argument("--config", action="append", default=[], help="N:bm,bn,heads[,warps[,maxnreg]] for current")
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value[,...] for current, every shape")
    ap.add_argument("--seeds", default="", help="comma-separated input seeds, 'std' = B + N (the default)")
    ap.add_argument("--all-shapes", action="store_true", help="add the encoder's shapes, B=64/512 at N=200")
    ap.add_argument("--only", default="", help="comma-separated B:N shapes to keep (default: all of them)")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    bases = [load_baseline(p, i) for i, p in enumerate(args.baseline)]
    names = ["baseline"] if len(bases) == 1 else [f"baseline{i}" for i in range(len(bases))]
    configs = [parse_config(c) for c in args.config]
    card = torch.cuda.get_device_name()
    extra = [parse_variant(v) for v in args.variant]
    seeds = [None if x == "std" else int(x) for x in args.seeds.split(",") if x]
    only = {tuple(int(x) for x in bn.split(":")) for bn in args.only.split(",") if bn}
    shapes = [s for s in ATTN_TARGETS + (ENCODER_SHAPES if args.all_shapes else []) if not only or s[:2] in only]
    rows = []
    for (B, N, H, d, target), seed in [(s, sd) for s in shapes
                                       for sd in [s[0] + s[1] if x is None else x for x in seeds or [None]]]:
        variants = [(n, m, {}) for n, m in zip(names, bases)] + [("current", ha, {})]
        variants += [(f"current@{N}:{','.join(str(x) for x in kw.values())}", ha, kw) for n, kw in configs if n == N]
        variants += [(f"current[{n}]", ha, kw) for n, kw in extra]
        a = attn_inputs(B, N, H, d, torch.bfloat16, seed=seed)
        pidx = ha.padded_index(a["offsets"], N, a["q"].shape[0])
        padded = bench_ms(lambda: ha.hstu_attention_padded(**a, padded_len=N, with_bias=False, pad_index=pidx),
                          graph=True, rep=40) * 1e3
        ref = ref64(a)
        row = {"card": card, "B": B, "N": N, "H": H, "d": d, "seed": seed, "target": target,
               "padded_us": round(padded, 1)}
        first = None
        for name, mod, kw in variants:
            out = mod.hstu_attention_triton(**a, **kw)
            row[name + "_err"] = rel_err(out, ref)
            first = out if first is None else first
            row[name + "_equal"] = torch.equal(out, first)
        row["equal"] = all(row[name + "_equal"] for name, _, _ in variants)
        for _ in range(args.repeats):
            for name, mod, kw in variants:
                f = lambda: mod.hstu_attention_triton(**a, **kw)  # noqa: E731
                row.setdefault(name + "_us", []).append(round(bench_ms(f, graph=True, rep=200) * 1e3, 2))
        for name, _, _ in variants:
            row[name + "_ratio"] = round(padded / min(row[name + "_us"]), 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention_ab.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
