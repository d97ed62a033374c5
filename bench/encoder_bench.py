"""All available encoder backends side by side, in one run: users/s and ratio to eager PyTorch.

    .venv/bin/python bench/encoder_bench.py --model-dir models/default            # CPU here
    .venv/bin/python bench/encoder_bench.py --model-dir models/default --device cuda

Grid: batch 1, 64, 512 users x sequence length 50, 200 (every user of a batch has that
length). Rows: every backend ``available()`` on the device -- torch (eager, the jagged
HSTUEncoder.forward), onnxruntime fp32, onnxruntime INT8 (CPU), tensorrt fp32/fp16 (GPU,
where installed) -- plus ``torch-padded-graph``: the exported graph's PyTorch module run
eagerly, which separates what the padded/last-row graph buys from what the engine buys.

The machine is shared and noisy: repetitions are interleaved (rep 1 of every backend and
shape, then rep 2, ...; the backend order rotates each rep), each timing runs >= --min-time
seconds of calls, and the numbers reported are medians with the [min, max] of the reps.

Also measures the quantisation trade-off: leave-one-out HR@10 / NDCG@10 of the model's own
dataset (test split) with eager torch, ORT fp32 and ORT INT8 (on the CPU).

On the GPU machine (``--device cuda``) the rows are whatever is available there: torch on
CUDA (with kernels/), the padded graph in torch, ORT only with onnxruntime-gpu, TensorRT
only where installed.

Writes bench/results/benchmark_results_encoders_<machine>.json and .png.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.encoders import available_all, build_encoder  # noqa: E402
from pipeline.encoders.onnx_export import PaddedHSTU, ensure_export, jagged_to_padded  # noqa: E402
from pipeline.encoders.testing import random_jagged  # noqa: E402
from pipeline.model_dir import load_model_dir  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def machine_tag(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name().lower().replace("nvidia ", "").replace(" ", "-")
    return f"cpu{os.cpu_count()}"


def build_rows(bundle, device: str, with_compile: bool) -> dict:
    rows: dict = {}
    avail = available_all(device)
    rows["torch"] = build_encoder(bundle, "torch", device)
    if with_compile:
        rows["torch-compile"] = build_encoder(bundle, "torch", device, {"torch": {"compile": True}})
    padded = PaddedHSTU(copy.deepcopy(bundle.encoder).to(device)).eval()

    def padded_fn(it, ac, ts, off):
        with torch.inference_mode():
            return padded(*jagged_to_padded(it.to(device), ac.to(device), ts.to(device), off.to(device)))

    rows["torch-padded-graph"] = padded_fn
    if avail["onnxruntime"][0]:
        rows["onnxruntime"] = build_encoder(bundle, "onnxruntime", device)
        if device == "cpu":
            rows["onnxruntime-int8"] = build_encoder(bundle, "onnxruntime", device, {"onnxruntime": {"quant": "int8"}})
        else:
            rows["onnxruntime-fp16"] = build_encoder(bundle, "onnxruntime", device, {"onnxruntime": {"dtype": "fp16"}})
    if avail["tensorrt"][0]:
        rows["tensorrt"] = build_encoder(bundle, "tensorrt", device)
        rows["tensorrt-fp16"] = build_encoder(bundle, "tensorrt", device, {"tensorrt": {"dtype": "fp16"}})
    return rows, avail


def time_once(fn, batch, device: str, min_time: float) -> float:
    """users/s of ``fn`` on ``batch``: as many calls as fit in ``min_time`` (at least one)."""
    B = batch[3].shape[0] - 1
    n = 0
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    while True:
        fn(*batch)
        n += 1
        sync()
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return n * B / dt


def quality(bundle, device: str) -> dict:
    from pipeline.datasets import load_dataset
    from pipeline.encoders.registry import encoder_scorer
    from pipeline.evaluation import evaluate, leave_one_out

    spec = bundle.metrics.get("data")
    if not isinstance(spec, dict):
        return {"skipped": "metrics.json does not record the training dataset"}
    ds = load_dataset(spec)
    cases = leave_one_out(ds.user_ids, ds.sequences).test
    out = {"dataset": ds.name, "split": "test", "users": len(cases)}
    for name, backend, opts in [("torch", "torch", {}), ("onnxruntime", "onnxruntime", {}),
                                ("onnxruntime-int8", "onnxruntime", {"onnxruntime": {"quant": "int8"}})]:
        enc = build_encoder(bundle, backend, device, opts)
        t0 = time.perf_counter()
        m = evaluate(encoder_scorer(enc, bundle), cases, bundle.item_index)
        out[name] = {k: m[k] for k in ("hr@10", "ndcg@10", "hr@50", "ndcg@50")} | {"eval_wall_s": round(time.perf_counter() - t0, 2)}
    ref = out["onnxruntime"]["hr@10"]
    out["int8_hr@10_relative_change"] = (out["onnxruntime-int8"]["hr@10"] - ref) / ref if ref else None
    out["int8_ndcg@10_relative_change"] = ((out["onnxruntime-int8"]["ndcg@10"] - out["onnxruntime"]["ndcg@10"])
                                           / out["onnxruntime"]["ndcg@10"]) if out["onnxruntime"]["ndcg@10"] else None
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = [f"B={s['batch']}\nL={s['seq']}" for s in result["shapes"]]
    names = result["rows"]
    fig, ax = plt.subplots(figsize=(11, 5))
    w = 0.8 / len(names)
    for i, n in enumerate(names):
        vals = [s["users_per_s"][n]["median"] for s in result["shapes"]]
        xs = [j + (i - (len(names) - 1) / 2) * w for j in range(len(shapes))]
        ax.bar(xs, vals, w, label=n)
        for x, s in zip(xs, result["shapes"]):
            r = s["users_per_s"][n]["ratio_to_eager"]
            ax.text(x, s["users_per_s"][n]["median"], f"{r:.1f}x", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_yscale("log")
    ax.set_xticks(range(len(shapes)), shapes)
    ax.set_ylabel("users / s (median, log scale)")
    ax.set_title(f"HSTU encoder backends on {result['machine']['name']} ({result['machine']['device']}, "
                 f"{result['machine']['threads']} threads); labels = ratio to eager torch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="models/default")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batches", default="1,64,512")
    ap.add_argument("--seqs", default="50,200")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds of calls per timing")
    ap.add_argument("--threads", type=int, default=0, help="torch and ORT intra-op threads (0: torch default)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--no-quality", action="store_true", help="skip the HR@10 measurement")
    ap.add_argument("--machine", default=None, help="name in the file name (default: cpu<N> or the GPU's name)")
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_model_dir(args.model_dir)
    ensure_export(bundle, "fp32")  # the bench exports what it times (into DIR/onnx)
    rows, avail = build_rows(bundle, args.device, args.compile)
    names = list(rows)
    shapes = [(int(b), int(s)) for s in args.seqs.split(",") for b in args.batches.split(",")]
    batches = {}
    for B, L in shapes:
        L = min(L, bundle.config.max_seq_len)
        batches[(B, L)] = random_jagged(bundle.config, [L] * B, seed=B * 1000 + L)
    samples = {(shape, n): [] for shape in batches for n in names}
    t_start = time.time()
    for shape, batch in batches.items():  # warm-up (and a first correctness check)
        ref = rows["torch"](*batch).cpu()
        for n in names:
            d = (rows[n](*batch).float().cpu() - ref).abs().max().item()
            samples[(shape, n, "maxdiff")] = d
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for shape, batch in batches.items():
            for n in order:
                samples[(shape, n)].append(time_once(rows[n], batch, args.device, args.min_time))
        print(f"rep {rep + 1}/{args.reps} done ({time.time() - t_start:.0f} s)", flush=True)
    out_shapes = []
    for (B, L) in batches:
        per = {}
        eager = statistics.median(samples[((B, L), "torch")])
        for n in names:
            v = samples[((B, L), n)]
            med = statistics.median(v)
            per[n] = {"median": med, "min": min(v), "max": max(v), "reps": v, "ratio_to_eager": med / eager,
                      "max_abs_diff_vs_eager": samples[((B, L), n, "maxdiff")]}
        out_shapes.append({"batch": B, "seq": L, "users_per_s": per})
    machine = args.machine or machine_tag(args.device)
    result = {
        "what": "HSTU encoder users/s by backend (median of interleaved reps)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"name": machine, "device": args.device, "cpu": cpu_name(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                    "note": "shared machine: other jobs ran on the same cores; see min/max per cell"},
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     **{k: v[1] for k, v in avail.items()}},
        "model": {"dir": str(args.model_dir), "version": bundle.version, **bundle.config.to_dict()},
        "rows": names,
        "row_notes": {n: (rows[n].describe() if hasattr(rows[n], "describe") else
                          "PaddedHSTU (the exported graph's torch module) run eagerly: not a backend")
                      for n in names},
        "reps": args.reps,
        "min_time_s": args.min_time,
        "shapes": out_shapes,
        "wall_s": round(time.time() - t_start, 1),
    }
    if not args.no_quality:
        result["quality"] = quality(bundle, "cpu")  # accuracy, not speed: INT8 is a CPU feature
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"benchmark_results_encoders_{machine}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    try:
        plot(result, stem.with_suffix(".png"))
    except Exception as e:  # matplotlib missing: the JSON is the result
        print(f"no plot: {e}")
    # the table
    print(f"\n{machine} ({result['machine']['cpu'] if args.device == 'cpu' else result['machine']['gpu']}), "
          f"{result['machine']['threads']} threads; users/s, median of interleaved reps (ratio to eager torch)")
    print("| batch | seq | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for s in out_shapes:
        cells = [f"{s['users_per_s'][n]['median']:.0f} ({s['users_per_s'][n]['ratio_to_eager']:.1f}x)" for n in names]
        print(f"| {s['batch']} | {s['seq']} | " + " | ".join(cells) + " |")
    if "quality" in result:
        print(json.dumps(result["quality"], indent=1))
    print(f"wrote {stem}.json / .png")


if __name__ == "__main__":
    main()
