"""How typical is the attention benchmark's one length draw?  CPU only, seconds.

    python3 bench/attention_draws.py --fit bench/results/run47/kernels_NVIDIA_H200.json [--draws 2000]

The per-sequence kernel's work is its (query tile, key tile) pairs, which depend on the random
lengths; the padded reference's does not.  For each target shape this counts the key tiles of
``--draws`` length draws (seeds 0 .. draws - 1, lengths uniform in 1..N as in the benchmark), places
the headline's draw (seed B + N) among them, and, from a straight line through the kernel times
of the run given by ``--fit`` (its five draws per shape: ``attn_draws`` in kernels_bench.py),
estimates the ratio against the padded reference at the median draw and the share of draws at
or above the target.  The line is a fit to five points, so the estimates are no better than it.
Writes ``attention_draws.json`` beside the fitted run's JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels.testing import key_tiles, random_lengths  # noqa: E402


def draw_key_tiles(B: int, N: int, seed: int, cfg: dict) -> int:
    """The key tiles of the benchmark's lengths at ``seed``: random_jagged_attention_inputs draws
    them first from a generator seeded with it (only the lengths: the inputs would take minutes)."""
    lengths = random_lengths(B, N, torch.Generator().manual_seed(seed), 1).tolist()
    return key_tiles(lengths, cfg["block_m"], cfg["block_n"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", required=True, help="a kernels_bench.py JSON with the attention section's draws")
    ap.add_argument("--draws", type=int, default=2000)
    args = ap.parse_args()
    run = json.loads(Path(args.fit).read_text())
    out = []
    for r in run["sections"]["attention"]["targets"]:
        B, N, cfg = r["B"], r["N"], r["default_cfg"]
        points = [(r["key_tiles"], r["triton_default_ms_graph"])] + \
                 [(d["key_tiles"], d["triton_default_ms_graph"]) for d in r["draws"]]
        slope, icpt = statistics.linear_regression([p[0] for p in points], [p[1] for p in points])
        pad = r["padded_nobias_ms_graph"]
        if draw_key_tiles(B, N, B + N, cfg) != r["key_tiles"]:
            raise SystemExit(f"B={B} N={N}: the lengths drawn here are not the benchmark's (see draw_key_tiles)")
        tiles = sorted(draw_key_tiles(B, N, s, cfg) for s in range(args.draws))
        median = tiles[len(tiles) // 2]
        # each draw's ratio by the line's time at its key tiles (where the run's draws differ by less
        # than their noise the slope can come out <= 0: the line is then flat within noise, and so
        # is this estimate)
        ratio = [pad / (icpt + slope * t) for t in tiles]
        row = {"card": run["card"], "B": B, "N": N, "target": r["target"], "draws": args.draws,
               "headline_seed": B + N, "headline_key_tiles": r["key_tiles"],
               "headline_percentile": round(100 * sum(t < r["key_tiles"] for t in tiles) / len(tiles), 1),
               "median_key_tiles": median, "p5_key_tiles": tiles[len(tiles) // 20],
               "p95_key_tiles": tiles[-len(tiles) // 20], "fit_ns_per_key_tile": round(slope * 1e6, 2),
               "fit_intercept_us": round(icpt * 1e3, 2), "padded_us": round(pad * 1e3, 1),
               "est_ratio_at_median": round(ratio[len(tiles) // 2], 1),
               "share_meeting_target": round(sum(x >= r["target"] for x in ratio) / len(tiles), 3)}
        print(json.dumps(row))
        out.append(row)
    (Path(args.fit).parent / "attention_draws.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
