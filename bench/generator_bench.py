"""Generator backends side by side: slates/s at batch 1, 32, 256 and p50/p99 latency, parity of vLLM
vs torch, and slate quality (HR@10 / NDCG@10) of every backend — one run, one machine.

    .venv/bin/python bench/generator_bench.py --model-dir models/default \
        --out bench/results/generator_cpu.json --png bench/results/generator_cpu.png

On the GPU machine (no vLLM there; see bench/run_gpu_generator.sh):

    python3 bench/generator_bench.py --model-dir models/gen-bench --device cuda \
        --backends torch,torch-bf16,retrieval --no-quality --out $OUT/generator_gpu.json

Latency is the wall time of one ``Recommender.recommend(batch)`` call (HSTU encode + retrieval +
slate decoding), i.e. the time until every slate of the batch is ready; ``gen_*`` columns time the
decoding alone (``backend.generate`` on prepared prompts). slates/s = batch size / mean call time.

``--device cuda`` puts the HSTU encoder (torch backend, with kernels/), retrieval and the torch
generator on the GPU; the soft-prompt projection and the jagged batch building stay on the CPU
(as in the worker). The clock is read after ``torch.cuda.synchronize()``. Backend labels:
``vllm``, ``torch`` (fp32), ``torch-bf16`` (the same weights cast to bf16: a speed row, its slates
may differ from fp32 at near-ties), ``retrieval``. On CUDA, ``--check-users`` compares the torch
generator's slates on the GPU with the same prompts decoded on the CPU in fp32 (``torch-bf16`` too, also
on the CPU) -> ``slates_vs_cpu_fp32`` in the JSON.
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


# label -> (generator_backend, options for the torch backend)
LABELS = {"vllm": ("vllm", None), "torch": ("torch", None), "torch-bf16": ("torch", {"dtype": torch.bfloat16}),
          "retrieval": ("retrieval", None)}


def _same_slates(a, b) -> int:
    return sum([t for t, _ in x] == [t for t, _ in y] for x, y in zip(a, b))


def _first_divergence_gap(model, pe_row, a, b) -> float:
    i = next(j for j, (x, y) in enumerate(zip(a, b)) if x != y)
    seq = torch.cat([pe_row[None], model.decoder.embed(torch.tensor([a[:i]], dtype=torch.long))], 1)
    with torch.no_grad():
        lg = model.decoder(seq, last_only=True)[0]
    return abs(float(lg[a[i]] - lg[b[i]]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--backends", default="vllm,torch,retrieval", help=f"comma-separated, of {', '.join(LABELS)}")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where the HSTU encoder, retrieval and the torch generator run (vLLM: its own build's device)")
    ap.add_argument("--batches", default="1,32,256")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds of timed calls per (backend, batch)")
    ap.add_argument("--min-calls", type=int, default=5)
    ap.add_argument("--max-calls", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2, help="torch threads here and OMP threads of the vLLM process")
    ap.add_argument("--parity-users", type=int, default=2000)
    ap.add_argument("--check-users", type=int, default=2000,
                    help="on CUDA / with torch-bf16: users whose slates are compared with torch fp32 on the CPU (0: skip)")
    ap.add_argument("--no-kernels", action="store_true", help="CUDA: HSTU attention in plain PyTorch, not kernels/")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--quality-from", default=None, help="reuse parity + quality from an earlier result JSON")
    ap.add_argument("--out", default=None, help="default bench/results/generator_{cpu,gpu}.json")
    ap.add_argument("--png", default=None, help="default: --out with .png; '' for none")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    backends = [b for b in a.backends.split(",") if b]
    bad = [b for b in backends if b not in LABELS]
    if bad:
        ap.error(f"unknown backend(s) {bad}; choose from {', '.join(LABELS)}")
    if a.device == "cuda":
        if not torch.cuda.is_available():
            ap.error(f"--device cuda, but this torch ({torch.__version__}, built for CUDA {torch.version.cuda}) "
                     "sees no CUDA device; run on the GPU machine or use --device cpu")
        from pipeline.generator.vllm_backend import vllm_installed

        if "vllm" in backends and not vllm_installed()[0]:
            ap.error(f"vllm is not installed here ({vllm_installed()[1]}); leave it out: --backends torch,retrieval")
    if a.out is None:
        a.out = f"bench/results/generator_{'gpu' if a.device == 'cuda' else 'cpu'}.json"
    if a.png is None:
        a.png = str(Path(a.out).with_suffix(".png"))
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)

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
    vllm_opts = {"threads": a.threads}

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": __import__("os").cpu_count(), "torch": torch.__version__, "threads": a.threads,
               "device": a.device, "loadavg_start": list(__import__("os").getloadavg())}
    if a.device == "cuda":
        machine.update({"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                        "capability": ".".join(map(str, torch.cuda.get_device_capability()))})
    result = {
        "machine": machine,
        "model_dir": str(a.model_dir), "version": bundle.version, "data": bundle.metrics.get("data"),
        "command": " ".join(sys.argv), "speed": {}, "parity": None, "quality": {},
    }
    recs = {}

    def start(b):
        t0 = time.perf_counter()
        name, topts = LABELS[b]
        r = make_recommender(bundle, k=10, exclude_recent=50, generator_backend=name, device=a.device,
                             vllm_options=vllm_opts if name == "vllm" else None, torch_options=topts,
                             encoder_options={"torch": {"use_kernels": False}} if a.no_kernels else None)
        result.setdefault("startup_s", {})[b] = round(time.perf_counter() - t0, 2)
        assert r.generator_name == name, (b, r.generator_name)
        result.setdefault("encoder", {})[b] = r._user_encoder.describe()
        if name == "torch":
            result.setdefault("generator_runs_on", {})[b] = f"{r.backend.device} {str(r.backend.dtype).replace('torch.', '')}"
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
            for b in backends:  # warm-up (on CUDA also the Triton compiles of this batch's shapes)
                recs[b].recommend(reqs)
                if b in prep:
                    recs[b].backend.generate(prep[b][1], prep[b][2], 10, prep[b][3])
            sync()
            t_end = time.perf_counter() + a.min_time * len(backends)
            rounds = 0
            while (rounds < a.min_calls or time.perf_counter() < t_end) and rounds < a.max_calls:
                for b in backends:
                    sync()
                    t = time.perf_counter()
                    recs[b].recommend(reqs)
                    sync()
                    lat[b].append(time.perf_counter() - t)
                    if b in prep:
                        _, pe, allowed, bias = prep[b]
                        sync()
                        t = time.perf_counter()
                        recs[b].backend.generate(pe, allowed, 10, bias)
                        sync()
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
        torch_labels = [b for b in backends if LABELS[b][0] == "torch"]
        if a.check_users and torch_labels and (a.device == "cuda" or "torch-bf16" in torch_labels):
            # the same prompts decoded on the GPU (or in bf16) and on the CPU in fp32: same slates?
            from pipeline.generator.torch_backend import TorchGenerator

            ref_rec = recs[torch_labels[0]]
            cpu_gen = TorchGenerator(ref_rec.generator, device="cpu")
            reqs = reqs_all[: a.check_users]
            got = {b: [] for b in torch_labels}
            ref = []
            for s in range(0, len(reqs), 256):
                _, pe, allowed, bias = ref_rec.prompts(reqs[s : s + 256])
                ref += cpu_gen.generate(pe, allowed, 10, bias)
                for b in torch_labels:
                    got[b] += recs[b].backend.generate(pe, allowed, 10, bias)
            chk = {"users": len(reqs), "reference": f"torch fp32 on the CPU, same prompts (HSTU + retrieval on {a.device})"}
            for b in torch_labels:
                lp = max((abs(p - q) for x, y in zip(got[b], ref) if [t for t, _ in x] == [t for t, _ in y]
                          for (_, p), (_, q) in zip(x, y)), default=0.0)
                chk[b] = {"identical": _same_slates(got[b], ref), "rate": _same_slates(got[b], ref) / max(len(reqs), 1),
                          "max_logprob_diff_when_identical": lp}
            result["slates_vs_cpu_fp32"] = chk
            print(json.dumps({"slates_vs_cpu_fp32": chk}), flush=True)
        for r in recs.values():
            getattr(r, "close", lambda: None)()
        recs = {}
        if a.parity_users and "vllm" in backends and "torch" in backends:
            recs = {"torch": start("torch"), "vllm": start("vllm")}
            tr, vr = recs["torch"], recs["vllm"]
            reqs = reqs_all[: a.parity_users]
            same, gaps, lp_diff = 0, [], 0.0
            for s in range(0, len(reqs), 256):
                _, pe, allowed, bias = tr.prompts(reqs[s : s + 256])
                ts, vs = tr.backend.generate(pe, allowed, 10, bias), vr.backend.generate(pe, allowed, 10, bias)
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
    elif not a.no_quality:  # on the CPU whatever --device says (evaluate_generator has no device)
        for b in backends:
            if b not in ("vllm", "torch", "retrieval"):
                continue
            q = evaluate_generator(a.model_dir, b)
            result["quality"][b] = q
            print(json.dumps(q), flush=True)
    result["machine"]["loadavg_end"] = list(__import__("os").getloadavg())
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if a.png:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:  # the JSON is the result
            print(f"no PNG: {e}", flush=True)
            a.png = ""
    if a.png:
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
        where = (f"{result['machine']['gpu']} (CUDA; {a.threads} torch CPU threads)" if a.device == "cuda"
                 else f"{result['machine']['cpus']} CPU cores, {a.threads} threads")
        fig.suptitle(f"generator backends on {where}, {bundle.version}", fontsize=10)
        fig.tight_layout()
        fig.savefig(a.png, dpi=110)
    print(f"wrote {out}" + (f" and {a.png}" if a.png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
