"""Generator backends side by side: slates/s at batch 1, 32, 256 and p50/p99 latency, parity of vLLM
vs torch, and slate quality (HR@10 / NDCG@10) of every backend — one run, one machine.

    .venv/bin/python bench/generator_bench.py --model-dir models/default \
        --out bench/results/generator_cpu.json --png bench/results/generator_cpu.png

Latency is the wall time of one ``Recommender.recommend(batch)`` call (HSTU encode + retrieval +
slate decoding), i.e. the time until every slate of the batch is ready; ``gen_*`` columns time the
decoding alone (``backend.generate`` on prepared prompts). slates/s = batch size / mean call time.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def _time_calls(fn, min_time: float, min_calls: int, max_calls: int):
    fn()  # warm-up
    lat = []
    t_end = time.perf_counter() + min_time
    while (len(lat) < min_calls or time.perf_counter() < t_end) and len(lat) < max_calls:
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    return lat


def _first_divergence_gap(model, pe_row, a, b) -> float:
    i = next(j for j, (x, y) in enumerate(zip(a, b)) if x != y)
    seq = torch.cat([pe_row[None], model.decoder.embed(torch.tensor([a[:i]], dtype=torch.long))], 1)
    with torch.no_grad():
        lg = model.decoder(seq, last_only=True)[0]
    return abs(float(lg[a[i]] - lg[b[i]]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--backends", default="vllm,torch,retrieval")
    ap.add_argument("--batches", default="1,32,256")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds of timed calls per (backend, batch)")
    ap.add_argument("--min-calls", type=int, default=5)
    ap.add_argument("--max-calls", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2, help="torch threads here and OMP threads of the vLLM process")
    ap.add_argument("--parity-users", type=int, default=2000)
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--quality-from", default=None, help="reuse parity + quality from an earlier result JSON")
    ap.add_argument("--out", default="bench/results/generator_cpu.json")
    ap.add_argument("--png", default="bench/results/generator_cpu.png")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from pipeline.datasets import load_dataset
    from pipeline.evaluation import leave_one_out
    from pipeline.generator.evaluate import evaluate_generator
    from pipeline.generator.registry import make_recommender
    from pipeline.model_dir import load_model_dir
    from pipeline.recommender import UserRequest

    bundle = load_model_dir(a.model_dir)
    ds = load_dataset(bundle.metrics["data"])
    cases = leave_one_out(ds.user_ids, ds.sequences).test
    reqs_all = [UserRequest(c.user_id, c.history) for c in cases]
    batches = [int(b) for b in a.batches.split(",")]
    backends = [b for b in a.backends.split(",") if b]
    vllm_opts = {"threads": a.threads}

    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": __import__("os").cpu_count(), "torch": torch.__version__, "threads": a.threads,
                    "loadavg_start": list(__import__("os").getloadavg())},
        "model_dir": str(a.model_dir), "version": bundle.version, "data": bundle.metrics.get("data"),
        "command": " ".join(sys.argv), "speed": {}, "parity": None, "quality": {},
    }
    recs = {}

    def start(b):
        t0 = time.perf_counter()
        r = make_recommender(bundle, k=10, exclude_recent=50, generator_backend=b,
                             vllm_options=vllm_opts if b == "vllm" else None)
        result.setdefault("startup_s", {})[b] = round(time.perf_counter() - t0, 2)
        assert r.generator_name == b, (b, r.generator_name)
        return r

    try:
        # All backends alive; calls interleaved round-robin (vllm, torch, retrieval, vllm, ...) so that the
        # load of a shared machine hits every backend alike.
        for b in backends:
            recs[b] = start(b)
        for B in batches:
            reqs = (reqs_all * (B // len(reqs_all) + 1))[:B]
            prep = {b: recs[b].prompts(reqs) for b in backends if b != "retrieval"}
            lat = {b: [] for b in backends}
            glat = {b: [] for b in backends}
            for b in backends:  # warm-up
                recs[b].recommend(reqs)
            t_end = time.perf_counter() + a.min_time * len(backends)
            rounds = 0
            while (rounds < a.min_calls or time.perf_counter() < t_end) and rounds < a.max_calls:
                for b in backends:
                    t = time.perf_counter()
                    recs[b].recommend(reqs)
                    lat[b].append(time.perf_counter() - t)
                    if b in prep:
                        _, pe, allowed = prep[b]
                        t = time.perf_counter()
                        recs[b].backend.generate(pe, allowed, 10)
                        glat[b].append(time.perf_counter() - t)
                rounds += 1
            for b in backends:
                row = {"calls": len(lat[b]), "slates_per_s": B / statistics.fmean(lat[b]),
                       "p50_ms": 1e3 * _pct(lat[b], 50), "p99_ms": 1e3 * _pct(lat[b], 99)}
                if glat[b]:
                    row.update({"gen_slates_per_s": B / statistics.fmean(glat[b]), "gen_p50_ms": 1e3 * _pct(glat[b], 50),
                                "gen_p99_ms": 1e3 * _pct(glat[b], 99)})
                row = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
                result["speed"].setdefault(b, {})[str(B)] = row
                print(json.dumps({"backend": b, "batch": B, **row}), flush=True)
        for r in recs.values():
            getattr(r, "close", lambda: None)()
        recs = {}
        if a.parity_users and "vllm" in backends and "torch" in backends:
            recs = {"torch": start("torch"), "vllm": start("vllm")}
            tr, vr = recs["torch"], recs["vllm"]
            reqs = reqs_all[: a.parity_users]
            same, gaps, lp_diff = 0, [], 0.0
            for s in range(0, len(reqs), 256):
                _, pe, allowed = tr.prompts(reqs[s : s + 256])
                ts, vs = tr.backend.generate(pe, allowed, 10), vr.backend.generate(pe, allowed, 10)
                for i, (x, y) in enumerate(zip(ts, vs)):
                    xt, yt = [t for t, _ in x], [t for t, _ in y]
                    if xt == yt:
                        same += 1
                        lp_diff = max([lp_diff] + [abs(p - q) for (_, p), (_, q) in zip(x, y)])
                    else:
                        gaps.append(_first_divergence_gap(tr.generator, pe[i], xt, yt))
            result["parity"] = {"users": len(reqs), "identical": same, "rate": same / max(len(reqs), 1),
                                "mismatch_logit_gaps": gaps, "max_logprob_diff_when_identical": lp_diff}
            print(json.dumps(result["parity"]), flush=True)
    finally:
        for r in recs.values():
            getattr(r, "close", lambda: None)()
    if a.quality_from:
        prev = json.loads(Path(a.quality_from).read_text())
        result["parity"] = result["parity"] or prev.get("parity")
        result["quality"] = prev.get("quality", {})
        result["quality_from"] = {"file": a.quality_from, "command": prev.get("command")}
    elif not a.no_quality:
        for b in backends:
            q = evaluate_generator(a.model_dir, b)
            result["quality"][b] = q
            print(json.dumps(q), flush=True)
    result["machine"]["loadavg_end"] = list(__import__("os").getloadavg())
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if a.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        w = 0.8 / max(len(backends), 1)
        for i, b in enumerate(backends):
            xs = np.arange(len(batches)) + i * w
            axes[0].bar(xs, [result["speed"][b][str(B)]["slates_per_s"] for B in batches], w, label=b)
            axes[1].bar(xs, [result["speed"][b][str(B)]["p50_ms"] for B in batches], w, label=b,
                        yerr=[[0] * len(batches), [result["speed"][b][str(B)]["p99_ms"] - result["speed"][b][str(B)]["p50_ms"] for B in batches]])
        for ax, t in zip(axes, ["slates/s (end to end, higher is better)", "p50 latency per batch call, ms (bar to p99)"]):
            ax.set_xticks(np.arange(len(batches)) + w * (len(backends) - 1) / 2, [f"batch {B}" for B in batches])
            ax.set_yscale("log")
            ax.set_title(t, fontsize=10)
            ax.legend()
        fig.suptitle(f"generator backends, {result['machine']['cpus']} CPU cores, {bundle.version}", fontsize=10)
        fig.tight_layout()
        fig.savefig(a.png, dpi=110)
    print(f"wrote {out}" + (f" and {a.png}" if a.png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
