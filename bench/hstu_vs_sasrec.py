"""HSTU vs SASRec on MovieLens-100k: several seeds per arch, same harness, one table.

Each run is exactly ``streamrec train --data ml-100k --arch ARCH --seed S --threads T
--max-minutes M --out DIR/ARCH-sS --no-progress`` (it calls the same
``pipeline.train.train`` with ``TrainConfig.for_data("ml-100k", ...)``); runs go in
parallel worker processes (``--parallel``), each on ``--threads`` torch threads.

    .venv/bin/python bench/hstu_vs_sasrec.py --seeds 0,1,2 --threads 2 --parallel 6 \
        --max-minutes 8 --models /tmp/cmp --out bench/results/hstu_vs_sasrec.json

``--summarize FILE...`` only rebuilds the table from finished runs' metrics.json files.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50")


def _one(arch: str, seed: int, threads: int, max_minutes: float, out: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    from pipeline.train import TrainConfig, train

    t0 = time.monotonic()
    cfg = TrainConfig.for_data("ml-100k", arch=arch, seed=seed, threads=threads, max_minutes=max_minutes)
    m = train(cfg, Path(out), progress=False)
    m["command_wall_s"] = round(time.monotonic() - t0, 2)
    return m


def summarize(runs: list[dict]) -> dict:
    by_arch: dict[str, list[dict]] = {}
    for m in runs:
        by_arch.setdefault(m["arch"], []).append(m)
    table: dict = {}
    for arch, ms in sorted(by_arch.items()):
        row: dict = {"seeds": [m["train"]["config"]["seed"] for m in ms], "parameters": ms[0]["train"]["parameters"]}
        for k in METRICS:
            xs = [m["test"][k] for m in ms]
            row[k] = {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                      "min": min(xs), "max": max(xs), "values": xs}
        for k in ("train_wall_s", "eval_wall_s", "best_epoch", "epochs_run"):
            xs = [m["train"][k] for m in ms]
            row[k] = {"mean": statistics.fmean(xs), "values": xs}
        row["stopped"] = [m["train"]["stopped"] for m in ms]
        table[arch] = row
    if "hstu" in table and "sasrec" in table:
        table["ratio_hstu_over_sasrec"] = {k: table["hstu"][k]["mean"] / table["sasrec"][k]["mean"] for k in METRICS}
    return table


def print_table(table: dict) -> None:
    print("| model | params | " + " | ".join(k.upper().replace("@", "@") for k in METRICS) + " | train s | eval s | best/ran epochs |")
    print("| --- " * (len(METRICS) + 5) + "|")
    for arch in ("hstu", "sasrec"):
        if arch not in table:
            continue
        r = table[arch]
        cells = [f"{r[k]['mean']:.4f} ± {r[k]['std']:.4f}" for k in METRICS]
        ep = ", ".join(f"{b}/{e}" for b, e in zip(r["best_epoch"]["values"], r["epochs_run"]["values"]))
        print(f"| {arch} (n={len(r['seeds'])}) | {r['parameters']} | " + " | ".join(cells)
              + f" | {r['train_wall_s']['mean']:.0f} | {r['eval_wall_s']['mean']:.1f} | {ep} |")
    if "ratio_hstu_over_sasrec" in table:
        print("HSTU / SASRec: " + ", ".join(f"{k} {v:.3f}" for k, v in table["ratio_hstu_over_sasrec"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="hstu,sasrec")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=8.0)
    ap.add_argument("--models", default="/tmp/hstu_vs_sasrec")
    ap.add_argument("--out", default=None, help="write all runs' metrics + the summary to this JSON file")
    ap.add_argument("--summarize", nargs="*", default=None, help="metrics.json files of finished runs")
    a = ap.parse_args()

    if a.summarize is not None:
        runs = [json.loads(Path(p).read_text()) for p in a.summarize]
    else:
        jobs = [(arch, int(s)) for s in a.seeds.split(",") for arch in a.archs.split(",")]
        runs = []
        with ProcessPoolExecutor(max_workers=a.parallel) as ex:
            futs = {ex.submit(_one, arch, s, a.threads, a.max_minutes, f"{a.models}/{arch}-s{s}"): (arch, s) for arch, s in jobs}
            for f in as_completed(futs):
                arch, s = futs[f]
                m = f.result()
                runs.append(m)
                t = m["test"]
                print(f"{arch} seed {s}: hr@10 {t['hr@10']:.4f} ndcg@10 {t['ndcg@10']:.4f} hr@50 {t['hr@50']:.4f} "
                      f"ndcg@50 {t['ndcg@50']:.4f}  train {m['train']['train_wall_s']} s eval {m['train']['eval_wall_s']} s "
                      f"best {m['train']['best_epoch']}/{m['train']['epochs_run']} ({m['train']['stopped']})", flush=True)
    table = summarize(runs)
    print_table(table)
    if a.out:
        slim = [{k: v for k, v in m.items() if k != "baselines"} | {"baselines": m.get("baselines")} for m in runs]
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"summary": table, "runs": slim}, indent=2) + "\n")


if __name__ == "__main__":
    main()
