"""Slate quality of a generator backend: leave-one-out HR@10 / NDCG@10 of the K-item slate.

Same protocol as :mod:`pipeline.evaluation` (chronological leave-one-out, the user's own history
excluded) but measured on the slate the worker would publish: the target's position in the
slate is its rank; a target outside the slate is a miss. For ``retrieval`` this equals the
full-ranking HR@10/NDCG@10 of the HSTU model (up to exact score ties).

    python -m pipeline.generator.evaluate DIR --generator vllm|torch|retrieval [--json] [--split test]
"""
from __future__ import annotations

import time
from pathlib import Path

__all__ = ["evaluate_generator"]


def evaluate_generator(model_dir: Path | str, generator: str = "torch", split: str = "test", data=None,
                       k: int = 10, num_candidates: int | None = None, batch_size: int = 256,
                       max_users: int | None = None, disabled=()) -> dict:
    from pipeline.datasets import load_dataset
    from pipeline.evaluation import leave_one_out
    from pipeline.generator.registry import make_recommender
    from pipeline.generator.train import slate_metrics
    from pipeline.model_dir import load_model_dir
    from pipeline.recommender import UserRequest

    t0 = time.monotonic()
    bundle = load_model_dir(model_dir)
    spec = data if data is not None else bundle.metrics.get("data")
    ds = load_dataset(spec)
    if ds.items != bundle.items:
        raise ValueError("the dataset's item vocabulary is not the model's")
    sp = leave_one_out(ds.user_ids, ds.sequences)
    cases = sp.test if split == "test" else sp.valid
    if max_users:
        cases = cases[:max_users]
    rec = make_recommender(bundle, k=k, exclude_recent=bundle.config.max_seq_len, generator_backend=generator,
                           num_candidates=num_candidates, disabled=disabled)
    try:
        slates, targets = [], []
        for s in range(0, len(cases), batch_size):
            chunk = cases[s : s + batch_size]
            out = rec.recommend([UserRequest(c.user_id, c.history) for c in chunk])
            slates += [[i for i, _ in r.items] for r in out]
            targets += [c.target for c in chunk]
    finally:
        getattr(rec, "close", lambda: None)()
    m = slate_metrics(slates, targets, k)
    return {f"hr@{k}": m[f"hr@{k}"], f"ndcg@{k}": float(m[f"ndcg@{k}"]), "users": m["users"],
            "generator": rec.generator_name, "version": bundle.version, "data": ds.name, "split": split,
            "eval_wall_s": round(time.monotonic() - t0, 2)}


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--generator", default="torch", choices=["auto", "vllm", "torch", "retrieval"])
    ap.add_argument("--split", default="test", choices=["test", "valid"])
    ap.add_argument("--data", default=None)
    ap.add_argument("--candidates", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = evaluate_generator(a.model_dir, a.generator, a.split, a.data, num_candidates=a.candidates)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{r['generator']:>9}  HR@10 {r['hr@10']:.4f}  NDCG@10 {r['ndcg@10']:.4f}  ({r['users']} users, {r['data']} {r['split']})")
