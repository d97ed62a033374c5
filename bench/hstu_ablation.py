"""Why does HSTU not beat SASRec on ML-100k? HSTU variants x seeds against SASRec, same harness.

Every run = ``TrainConfig.for_data("ml-100k", seed=S, ...)`` through
``pipeline.train.train_encoder`` (same windows, loss, early stopping on validation NDCG@10,
full-ranking evaluation); nothing is written except the results JSON. Model variants are
subclasses built here; ``pipeline/hstu.py`` is not changed.

A variant is a name made of tokens joined by ``+`` (e.g. ``nextts+scale_pos+lr1e-3+p20``):

  arch      ``sasrec`` (the baseline, pipeline/sasrec.py) or ``base``/``hstu`` (HSTU as shipped)
  model     HSTU only:
    norab       rab frozen at 0 (no relative position/time bias)
    scale       input = item_emb * sqrt(dim) + action_emb (the reference code's input scaling)
    pos         + a learned absolute position embedding on the input, positions from the start
                of the sequence (the reference code's LearnablePositionalEmbeddingInputFeatures-
                Preprocessor); ``scale_pos`` = ``scale+pos``
    nextts      the reference code's time delta ts_{i+1} - ts_j in rab: the query side uses the
                timestamp of the event being predicted (in training the next event's, at
                evaluation the target's, i.e. the request time), instead of ts_i - ts_j
    refinit     the reference code's init: uvqk ~ N(0, 0.02) without bias, pos/time bias ~ N(0, 0.02)
                (shipped: Xavier-uniform uvqk with a bias, rab tables at 0)
    refdrop     the reference code's dropout placement: x + W_o(Dropout(u * LN(AV)))
                (shipped: x + Dropout(W_o(u * LN(AV))))
    nofinalnorm no final LayerNorm before the L2 norm (the reference code has none)
  training  (TrainConfig overrides; any arch):
    lr<x> lr, p<n> patience, w<n> window (max_seq_len), do<x> dropout, neg<n> negatives,
    t<x> temperature, bs<n> batch size, wd<x> weight decay, dim<n> / h<n> model width / heads
    (HSTU: qk_dim = v_dim = dim / heads), wu<n> linear lr warm-up over n optimizer steps

Runs go in parallel processes (spawned), ``--threads`` torch threads each, on ``--device``
(``cuda``: many small runs share one GPU; batches/negatives are still drawn on the CPU, so a
run's random streams are the same as on the CPU). ``--budget-minutes`` bounds the whole sweep:
each run's ``max_minutes`` is cut so that it ends (training + final evaluation) before then.
Results are rewritten to ``--out`` after every finished run, and a markdown table is printed
(test metrics mean ± sample std over seeds, ratio vs the ``--baseline`` variant of the same run).

    python bench/hstu_ablation.py --device cuda --seeds 0,1,2 --budget-minutes 8 --out sweep.json
    python bench/hstu_ablation.py --device cpu --variants sasrec,base,nextts --parallel 15 --threads 1
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing as mp
import os
import re
import statistics
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50")

# The default sweep: the baseline, HSTU as shipped, and the leads of issue 3 (docs/model.md).
DEFAULT_VARIANTS = ",".join([
    "sasrec",
    "base",
    "nextts",
    "scale_pos+lr1e-3+p20",
    "nextts+scale_pos+lr1e-3+p20",
    "nextts+scale_pos+lr1e-3+p20+w200",
    "nextts+scale_pos+refinit+refdrop+lr1e-3+p20",
    "sasrec+lr1e-3+p20",  # control: the baseline with the same training recipe
])

MODEL_FLAGS = ("norab", "scale", "pos", "nextts", "refinit", "refdrop", "nofinalnorm")
ALIASES = {"scale_pos": ("scale", "pos")}
_NUM = r"(\d+(?:\.\d*)?(?:e-?\d+)?|\.\d+(?:e-?\d+)?)"
TRAIN_TOKENS = (  # (regex, TrainConfig field, type)
    (re.compile(r"lr" + _NUM), "lr", float),
    (re.compile(r"p(\d+)"), "patience", int),
    (re.compile(r"w(\d+)"), "max_seq_len", int),
    (re.compile(r"do" + _NUM), "dropout", float),
    (re.compile(r"neg(\d+)"), "num_negatives", int),
    (re.compile(r"t" + _NUM), "temperature", float),
    (re.compile(r"bs(\d+)"), "batch_size", int),
    (re.compile(r"wd" + _NUM), "weight_decay", float),
    (re.compile(r"dim(\d+)"), "dim", int),
    (re.compile(r"h(\d+)"), "num_heads", int),
    (re.compile(r"wu(\d+)"), "warmup", int),  # not a TrainConfig field: handled here
)
_PACK = 1 << 32  # nextts: (key seconds, query seconds) packed into one int64 "timestamp"


@dataclass
class Spec:
    name: str
    arch: str = "hstu"
    flags: frozenset = frozenset()
    overrides: dict = field(default_factory=dict)
    warmup: int = 0


def parse_variant(name: str) -> Spec:
    arch, flags, over, warmup = "hstu", set(), {}, 0
    for tok in name.split("+"):
        if tok in ("sasrec",):
            arch = "sasrec"
        elif tok in ("base", "hstu"):
            pass
        elif tok in ALIASES:
            flags.update(ALIASES[tok])
        elif tok in MODEL_FLAGS:
            flags.add(tok)
        else:
            for rx, key, typ in TRAIN_TOKENS:
                m = rx.fullmatch(tok)
                if m:
                    if key == "warmup":
                        warmup = int(m.group(1))
                    else:
                        over[key] = typ(m.group(1))
                    break
            else:
                raise ValueError(f"variant {name!r}: unknown token {tok!r}")
    if arch == "sasrec" and flags:
        raise ValueError(f"variant {name!r}: model flags {sorted(flags)} are HSTU-only")
    if arch == "hstu" and ("dim" in over or "num_heads" in over):
        dim = over.get("dim", 64)
        heads = over.get("num_heads", 2)
        over["qk_dim"] = over["v_dim"] = max(1, dim // heads)
    return Spec(name, arch, frozenset(flags), over, warmup)


# ------------------------------------------------------------------ model variants (HSTU)
def _positions(offsets):
    import torch

    lengths = offsets[1:] - offsets[:-1]
    seq = torch.repeat_interleave(torch.arange(lengths.shape[0], device=offsets.device), lengths)
    pos = torch.arange(seq.shape[0], device=offsets.device) - offsets[:-1][seq]
    return seq, pos, lengths


def attention_nextts(q, k, v, offsets, ts_pair, pos_w, time_w, attn_n, num_time_buckets, q_offsets=None):
    """HSTU pointwise attention (padded) with the reference code's rab time delta.

    ``ts_pair``: (T, 2) int64 seconds, column 0 = the event's own timestamp (key side),
    column 1 = the timestamp of the event it predicts (query side). rab(i, j) =
    pos_w[min(i - j, P - 1)] + time_w[bucket(tsq_i - ts_j)].
    """
    import torch
    import torch.nn.functional as F

    from pipeline.hstu import time_bucket

    if q_offsets is not None:
        raise NotImplementedError("nextts variant: training/evaluation only (no incremental decode)")
    T, H, dqk = q.shape
    dv = v.shape[-1]
    B = offsets.shape[0] - 1
    if T == 0 or B == 0:
        return q.new_zeros((T, H, dv))
    seq, pos, lengths = _positions(offsets)
    L = int(lengths.max())
    qp = q.new_zeros((B, L, H, dqk)); qp[seq, pos] = q
    kp = k.new_zeros((B, L, H, dqk)); kp[seq, pos] = k
    vp = v.new_zeros((B, L, H, dv)); vp[seq, pos] = v
    tk = ts_pair.new_zeros((B, L)); tk[seq, pos] = ts_pair[:, 0]
    tq = ts_pair.new_zeros((B, L)); tq[seq, pos] = ts_pair[:, 1]
    idx = torch.arange(L, device=q.device)
    rel = (idx[:, None] - idx[None, :]).clamp(min=0, max=pos_w.shape[0] - 1)
    rab = pos_w[rel] + time_w[time_bucket(tq[:, :, None] - tk[:, None, :], num_time_buckets)]  # (B, L, L)
    scores = torch.einsum("bihd,bjhd->bhij", qp, kp) + rab.to(q.dtype)[:, None]
    valid = idx[None, :] < lengths[:, None]
    mask = (idx[:, None] >= idx[None, :])[None, None] & valid[:, None, None, :]
    a = (F.silu(scores) / attn_n).masked_fill(~mask, 0.0)
    return torch.einsum("bhij,bjhd->bihd", a, vp)[seq, pos]


def _layer_refdrop(layer, x, offsets, ts, attention):
    """HSTULayer with the reference code's dropout placement: x + W_o(Dropout(u * LN(AV)))."""
    import torch
    import torch.nn.functional as F

    cfg = layer.cfg
    T, H = x.shape[0], cfg.num_heads
    h = F.silu(layer.uvqk(layer.norm(x)))
    u, v, q, k = torch.split(h, [H * cfg.v_dim, H * cfg.v_dim, H * cfg.qk_dim, H * cfg.qk_dim], dim=-1)
    av = attention(q.reshape(T, H, cfg.qk_dim), k.reshape(T, H, cfg.qk_dim), v.reshape(T, H, cfg.v_dim), offsets,
                   ts, layer.pos_w, layer.time_w, cfg.attn_n, cfg.num_time_buckets).reshape(T, H * cfg.v_dim)
    y = u * F.layer_norm(av, (H * cfg.v_dim,), eps=1e-6)
    return x + layer.out(layer.dropout(y))


def _variant_class(flags: frozenset):
    import torch
    from torch import nn

    from pipeline.hstu import HSTUEncoder

    input_flags = {"scale", "pos", "nextts", "refdrop", "nofinalnorm"} & flags

    class Variant(HSTUEncoder):
        def __init__(self, cfg) -> None:
            super().__init__(cfg)
            if "refinit" in flags:
                for layer in self.layers:
                    nn.init.normal_(layer.uvqk.weight, std=0.02)
                    nn.init.zeros_(layer.uvqk.bias)
                    layer.uvqk.bias.requires_grad_(False)
                    nn.init.normal_(layer.pos_w, std=0.02)
                    nn.init.normal_(layer.time_w, std=0.02)
            if "norab" in flags:
                for layer in self.layers:
                    with torch.no_grad():
                        layer.pos_w.zero_()
                        layer.time_w.zero_()
                    layer.pos_w.requires_grad_(False)
                    layer.time_w.requires_grad_(False)
            if "pos" in flags:
                self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.dim)
                nn.init.trunc_normal_(self.pos_emb.weight, std=0.02)
            if "nextts" in flags:
                self.attention = attention_nextts

        def set_attention(self, fn) -> None:
            if "nextts" not in flags:  # the nextts op replaces both the reference and the padded op
                super().set_attention(fn)

        def encode(self, item_idx, action_idx, ts_ms, offsets):
            if not input_flags:
                return super().encode(item_idx, action_idx, ts_ms, offsets)
            self._check(item_idx, action_idx, ts_ms, offsets)
            x = self.item_emb(item_idx)
            if "scale" in flags:
                x = x * math.sqrt(self.cfg.dim)
            x = x + self.action_emb(action_idx)
            if "pos" in flags:
                _, pos, _ = _positions(offsets)
                x = x + self.pos_emb(pos.clamp(max=self.cfg.max_seq_len - 1))
            x = self.input_dropout(x)
            if "nextts" in flags:  # ts_ms carries key_s * 2^32 + query_s (see _nextts_input_ts)
                key = torch.div(ts_ms, _PACK, rounding_mode="floor")
                ts = torch.stack([key, ts_ms - key * _PACK], dim=1)
            else:
                ts = torch.div(ts_ms, 1000, rounding_mode="floor")
            for layer in self.layers:
                x = _layer_refdrop(layer, x, offsets, ts, self.attention) if "refdrop" in flags else layer(
                    x, offsets, ts, self.attention)
            return x if "nofinalnorm" in flags else self.final_norm(x)

    return Variant


def _nextts_input_ts(t):
    """Each input position's timestamp packed together with its target's (the next event's):
    key_s * 2^32 + query_s, in whole seconds."""
    sec = t // 1000
    return sec[:-1] * _PACK + sec[1:]


def _nextts_model_scorer(dataset):
    """pipeline.evaluation.model_scorer for the nextts variant: the last position's query time is
    the evaluated target's timestamp (the request time), as in the reference code."""
    import torch

    from pipeline.recommender import build_jagged

    target_ts: dict[tuple[str, int], int] = {}
    for u, seq in zip(dataset.user_ids, dataset.sequences):
        if len(seq) >= 3:  # leave_one_out: valid history = seq[:-2], test history = seq[:-1]
            target_ts[(u, len(seq) - 2)] = int(seq[-2].ts)
            target_ts[(u, len(seq) - 1)] = int(seq[-1].ts)

    def model_scorer(encoder, item_index, batch_device="cpu"):
        cfg = encoder.cfg

        def score(user_ids, histories):
            b = build_jagged(histories, item_index, cfg.num_items, cfg.max_seq_len)
            key = torch.div(b.ts_ms, 1000, rounding_mode="floor")
            query = torch.roll(key, -1)
            query[b.offsets[1:] - 1] = torch.tensor(
                [target_ts[(u, len(h))] // 1000 for u, h in zip(user_ids, histories)], dtype=torch.long)
            packed = key * _PACK + query
            with torch.inference_mode():
                emb = encoder(b.item_idx.to(batch_device), b.action_idx.to(batch_device), packed.to(batch_device),
                              b.offsets.to(batch_device))
                return (emb @ encoder.item_table().T).float().cpu()

        return score

    return model_scorer


def _warmup_adamw(steps: int):
    import torch

    base = torch.optim.AdamW

    class WarmupAdamW(base):  # linear warm-up of the lr over the first `steps` optimizer steps
        def __init__(self, params, lr=1e-3, **kw):
            super().__init__(params, lr=lr, **kw)
            self._peak, self._k = lr, 0

        def step(self, closure=None):
            self._k += 1
            for g in self.param_groups:
                g["lr"] = self._peak * min(1.0, self._k / steps)
            return super().step(closure)

    return WarmupAdamW


# ------------------------------------------------------------------ one run
def run_one(name: str, seed: int, threads: int, max_minutes: float, device: str, deadline: float | None,
            reserve_s: float = 40.0) -> dict:
    t0 = time.monotonic()
    rec: dict = {"variant": name, "seed": seed, "device": device}
    try:
        import torch

        torch.set_num_threads(threads)
        import pipeline.train as T
        from pipeline.datasets import load_dataset

        spec = parse_variant(name)
        budget = max_minutes
        if deadline is not None:
            left = (deadline - time.time() - reserve_s) / 60.0
            if left < min(budget, 0.25):
                return rec | {"skipped": f"no time left in the sweep budget ({left:.2f} min)", "wall_s": 0.0}
            budget = min(budget, left)
        if device.startswith("cuda"):
            rec["device_name"] = torch.cuda.get_device_name(torch.device(device))
        ds = load_dataset("ml-100k")
        if spec.arch == "hstu" and spec.flags:
            T.HSTUEncoder = _variant_class(spec.flags)
        if "nextts" in spec.flags:
            T._batch = functools.partial(T._batch, input_ts=_nextts_input_ts)
            T.model_scorer = _nextts_model_scorer(ds)
        if spec.warmup:
            torch.optim.AdamW = _warmup_adamw(spec.warmup)
        cfg = T.TrainConfig.for_data("ml-100k", seed=seed, threads=threads, max_minutes=budget, arch=spec.arch,
                                     device=device, **spec.overrides)
        r = T.train_encoder(cfg, progress=False, dataset=ds)
        m = r.metrics
        tr = m["train"]
        rec |= {
            "test": m["test"], "valid": m["valid"], "parameters": tr["parameters"],
            "train": {k: tr[k] for k in ("best_epoch", "epochs_run", "stopped", "train_wall_s", "eval_wall_s")},
            "max_minutes": round(budget, 2),
            "overrides": spec.overrides | ({"warmup": spec.warmup} if spec.warmup else {}),
            "valid_ndcg10_history": [round(h["valid_ndcg@10"], 4) for h in tr["history"]],
        }
    except Exception:  # one broken variant must not lose the sweep
        rec["error"] = traceback.format_exc()
    rec["wall_s"] = round(time.monotonic() - t0, 1)
    return rec


# ------------------------------------------------------------------ summary
def summarize(runs: list[dict], variants: list[str], baseline: str) -> dict:
    table: dict = {}
    for v in variants:
        ok = [r for r in runs if r["variant"] == v and "test" in r]
        row: dict = {"n": len(ok), "failed": sum(1 for r in runs if r["variant"] == v and "error" in r),
                     "skipped": sum(1 for r in runs if r["variant"] == v and "skipped" in r)}
        if ok:
            for k in METRICS:
                xs = [r["test"][k] for r in ok]
                row[k] = {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                          "values": xs}
            vs = [r["valid"]["ndcg@10"] for r in ok]
            row["valid_ndcg@10"] = {"mean": statistics.fmean(vs), "values": vs}
            row["seeds"] = [r["seed"] for r in ok]
            row["epochs"] = [f"{r['train']['best_epoch']}/{r['train']['epochs_run']}" for r in ok]
            row["stopped"] = [r["train"]["stopped"] for r in ok]
            row["wall_s"] = {"mean": statistics.fmean(r["wall_s"] for r in ok), "max": max(r["wall_s"] for r in ok)}
            row["parameters"] = ok[0]["parameters"]
        table[v] = row
    base = table.get(baseline)
    if base and base["n"]:
        for v, row in table.items():
            if row["n"]:
                row["ratio"] = {k: row[k]["mean"] / base[k]["mean"] if base[k]["mean"] else float("nan") for k in METRICS}
    return table


def markdown(table: dict, baseline: str) -> str:
    lines = [
        f"| variant | n | HR@10 | NDCG@10 | HR@50 | NDCG@50 | ×{baseline} HR@10 / NDCG@10 (HR@50 / NDCG@50) "
        "| valid NDCG@10 | best/ran epochs | capped | wall s (mean, max) |",
        "| --- " * 11 + "|",
    ]
    for v, r in table.items():
        if not r["n"]:
            lines.append(f"| {v} | 0 | failed {r['failed']}, skipped {r['skipped']} |" + " |" * 8)
            continue
        cells = [f"{r[k]['mean']:.4f} ± {r[k]['std']:.4f}" for k in METRICS]
        ratio = r.get("ratio")
        rc = (f"**{ratio['hr@10']:.3f} / {ratio['ndcg@10']:.3f}** ({ratio['hr@50']:.3f} / {ratio['ndcg@50']:.3f})"
              if ratio else "—")
        capped = sum(s == "time-budget" for s in r["stopped"])
        lines.append(f"| {v} | {r['n']} | " + " | ".join(cells) + f" | {rc} | {r['valid_ndcg@10']['mean']:.4f} | "
                     + ", ".join(r["epochs"]) + f" | {capped} | {r['wall_s']['mean']:.0f}, {r['wall_s']['max']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated variant names (see above)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--parallel", type=int, default=None,
                    help="runs at a time (default: all runs on cuda, os.cpu_count() - 1 on cpu)")
    ap.add_argument("--max-minutes", type=float, default=7.0, help="training wall-clock cap per run")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help="the whole sweep ends within this (runs are capped to finish in time)")
    ap.add_argument("--baseline", default="sasrec", help="variant the ratios are taken against")
    ap.add_argument("--tag", default="", help="free text stored in the JSON (e.g. the card)")
    ap.add_argument("--out", default=None, help="results JSON (rewritten after every finished run)")
    a = ap.parse_args()

    t_start = time.time()
    deadline = t_start + a.budget_minutes * 60.0 if a.budget_minutes else None
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    for v in variants:
        parse_variant(v)  # fail now on a typo, not in a worker
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no GPU")
    jobs = [(v, s) for s in seeds for v in variants]
    parallel = a.parallel or (len(jobs) if a.device.startswith("cuda") else max(1, (os.cpu_count() or 2) - 1))
    print(f"{len(jobs)} runs ({len(variants)} variants x {len(seeds)} seeds), {parallel} at a time on {a.device}, "
          f"{a.threads} thread(s) each, cap {a.max_minutes} min/run"
          + (f", sweep budget {a.budget_minutes} min" if deadline else ""), flush=True)

    runs: list[dict] = []

    def dump() -> dict:
        table = summarize(runs, variants, a.baseline)
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps({
                "tag": a.tag, "device": a.device, "threads": a.threads, "parallel": parallel,
                "max_minutes": a.max_minutes, "budget_minutes": a.budget_minutes, "baseline": a.baseline,
                "sweep_wall_s": round(time.time() - t_start, 1), "complete": len(runs) == len(jobs),
                "summary": table, "runs": runs}, indent=1) + "\n")
        return table

    # one process per run: a run patches pipeline.train (encoder class, batching, scorer) and AdamW, and a
    # reused worker would carry those patches into the next run
    with ProcessPoolExecutor(max_workers=parallel, mp_context=mp.get_context("spawn"), max_tasks_per_child=1) as ex:
        futs = [ex.submit(run_one, v, s, a.threads, a.max_minutes, a.device, deadline) for v, s in jobs]
        for f in as_completed(futs):
            r = f.result()
            runs.append(r)
            head = f"[{time.time() - t_start:5.0f} s] {r['variant']} seed {r['seed']}:"
            if "test" in r:
                t, tr = r["test"], r["train"]
                print(head + " " + " ".join(f"{k} {t[k]:.4f}" for k in METRICS)
                      + f"  valid ndcg@10 {r['valid']['ndcg@10']:.4f} best {tr['best_epoch']}/{tr['epochs_run']}"
                      f" ({tr['stopped']}) train {tr['train_wall_s']} s, run {r['wall_s']} s", flush=True)
            else:
                print(head + " " + (r.get("skipped") or "FAILED\n" + r.get("error", "")), flush=True)
            dump()
    table = dump()
    print(f"\nsweep wall {time.time() - t_start:.0f} s, device {a.device}"
          + (f" ({runs[0].get('device_name')})" if runs and runs[0].get("device_name") else "")
          + f"; test split, mean ± sample std over seeds {a.seeds}\n")
    print(markdown(table, a.baseline), flush=True)


if __name__ == "__main__":
    main()
