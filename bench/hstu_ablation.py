"""Why does HSTU not beat SASRec on ML-100k? Input-side ablations of HSTU, same harness.

Variants (subclasses built here; pipeline/hstu.py is not changed):

  base        HSTU as in pipeline/hstu.py
  norab       rab frozen at 0 (no relative position/time bias)
  scale       input = item_emb * sqrt(dim) + action_emb  (the reference code's input scaling)
  scale_pos   scale + a learned absolute position embedding on the input (the reference
              code's LearnablePositionalEmbeddingInputFeaturesPreprocessor), positions from
              the start of the sequence (causal: appending never changes earlier outputs)

Every run = TrainConfig.for_data("ml-100k", seed=S, threads=T, max_minutes=M) through
pipeline.train.train_encoder (same loop, loss, early stopping, evaluation); nothing written.

    python bench/hstu_ablation.py --variants norab,scale,scale_pos --seeds 0,1,2 --parallel 9 --out x.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50")


def _variant_class(variant: str):
    import torch
    from torch import nn

    from pipeline.hstu import HSTUEncoder

    class Variant(HSTUEncoder):
        def __init__(self, cfg) -> None:
            super().__init__(cfg)
            if variant == "norab":
                for layer in self.layers:
                    layer.pos_w.requires_grad_(False)
                    layer.time_w.requires_grad_(False)
            if variant == "scale_pos":
                self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.dim)
                nn.init.trunc_normal_(self.pos_emb.weight, std=0.02)

        def encode(self, item_idx, action_idx, ts_ms, offsets):
            if variant in ("base", "norab"):
                return super().encode(item_idx, action_idx, ts_ms, offsets)
            self._check(item_idx, action_idx, ts_ms, offsets)
            x = self.item_emb(item_idx) * math.sqrt(self.cfg.dim) + self.action_emb(action_idx)
            if variant == "scale_pos":
                lengths = offsets[1:] - offsets[:-1]
                seq = torch.repeat_interleave(torch.arange(lengths.shape[0]), lengths)
                pos = (torch.arange(item_idx.shape[0]) - offsets[:-1][seq]).clamp(max=self.cfg.max_seq_len - 1)
                x = x + self.pos_emb(pos)
            x = self.input_dropout(x)
            ts_s = torch.div(ts_ms, 1000, rounding_mode="floor")
            for layer in self.layers:
                x = layer(x, offsets, ts_s, self.attention)
            return self.final_norm(x)

    return Variant


def _one(variant: str, seed: int, threads: int, max_minutes: float) -> dict:
    import torch

    torch.set_num_threads(threads)
    import pipeline.train as T

    T.HSTUEncoder = _variant_class(variant)
    cfg = T.TrainConfig.for_data("ml-100k", seed=seed, threads=threads, max_minutes=max_minutes)
    t0 = time.monotonic()
    r = T.train_encoder(cfg, progress=False)
    m = r.metrics
    return {"variant": variant, "seed": seed, "test": m["test"], "valid": m["valid"],
            "parameters": r.encoder.num_parameters(),
            "train": {k: m["train"][k] for k in ("best_epoch", "epochs_run", "stopped", "train_wall_s", "eval_wall_s")},
            "wall_s": round(time.monotonic() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="norab,scale,scale_pos")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=8.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    jobs = [(v, int(s)) for s in a.seeds.split(",") for v in a.variants.split(",")]
    runs = []
    with ProcessPoolExecutor(max_workers=a.parallel) as ex:
        futs = [ex.submit(_one, v, s, a.threads, a.max_minutes) for v, s in jobs]
        for f in as_completed(futs):
            r = f.result()
            runs.append(r)
            t = r["test"]
            print(f"{r['variant']} seed {r['seed']}: " + " ".join(f"{k} {t[k]:.4f}" for k in METRICS)
                  + f"  valid ndcg@10 {r['valid']['ndcg@10']:.4f} best {r['train']['best_epoch']}/{r['train']['epochs_run']}"
                  f" ({r['train']['stopped']}) {r['train']['train_wall_s']} s", flush=True)
    summary = {}
    for v in a.variants.split(","):
        rs = [r for r in runs if r["variant"] == v]
        summary[v] = {k: (statistics.fmean([r["test"][k] for r in rs]),
                          statistics.stdev([r["test"][k] for r in rs]) if len(rs) > 1 else 0.0) for k in METRICS}
        summary[v]["parameters"] = rs[0]["parameters"]
        print(f"{v:10s} " + "  ".join(f"{k} {m:.4f}±{s:.4f}" for k, (m, s) in
                                      ((k, summary[v][k]) for k in METRICS)) + f"  params {rs[0]['parameters']}")
    if a.out:
        Path(a.out).write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
