"""Train the generator after HSTU and add it to the model directory.

Objective (teacher forcing on the user's next item, slate-shaped). For every
training prefix ``s[:t]`` of every user (the leave-one-out training part, so the
validation and test targets are never seen) the decoder input is::

    prompt(s[:t])  +  [c_1 .. c_{K-1}]

where the prompt is the soft prompt of the (frozen) HSTU embedding of ``s[:t]`` plus
the last R items, and ``c_j`` are retrieval's top candidates for that prefix with
the true next item ``s[t]`` removed (a little rank jitter, so the model also sees
slates in slightly different orders). The target at EVERY one of the K positions is
the true next item ``s[t]``: the decoder learns P(next item | user, the slate so far
did not contain it), so greedy decoding ranks the candidates by what the user is most
likely to take next, conditioned on what is already in the slate. Full softmax over
the item vocabulary (it is small), AdamW, fixed seeds, early stopping on the
validation NDCG@10 of the greedy slates (torch backend), best epoch kept.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.generator.model import GeneratorConfig, GeneratorModel, save_generator
from pipeline.model_dir import load_model_dir

__all__ = ["GeneratorTrainConfig", "train_generator", "build_examples", "slate_metrics"]


@dataclass
class GeneratorTrainConfig:
    seed: int = 0
    epochs: int = 8
    batch_size: int = 128
    lr: float = 5e-3
    weight_decay: float = 0.01
    slate_len: int = 10  # K used for teacher forcing
    num_candidates: int = 100  # retrieval candidates at validation (as served)
    rank_jitter: float = 4.0
    hidden_size: int = 64
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    soft_prompt_len: int = 4
    recent_len: int = 12
    max_minutes: float = 6.0
    patience: int = 3
    valid_users: int = 1000  # validation subset for early stopping
    threads: int | None = None
    warm_start: bool = True
    # candidates for GeneratorConfig.retrieval_weight (the retrieval score's weight in the decoding logits),
    # picked on validation after training; 0 = the decoder alone, 200 ~ retrieval's own order
    retrieval_weights: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0, 20.0, 50.0, 200.0)

    @classmethod
    def quick(cls, **overrides: Any) -> "GeneratorTrainConfig":
        base = dict(epochs=4, hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=1,
                    recent_len=8, soft_prompt_len=2, max_minutes=0.5, valid_users=200, batch_size=128)
        base.update(overrides)
        return cls(**base)


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@torch.no_grad()
def _prefix_embeddings(encoder, seq_items, seq_actions, seq_ts, max_len: int):
    """HSTU user embedding of every prefix s[:t], t = 1..n, for one user: (n, dim).

    HSTU is causal and normalises by a fixed n, so position t-1 of one encode of s equals the served
    embedding of s[:t] while t <= max_seq_len; longer users are encoded in overlapping windows so every
    prefix sees at least max_len/2 events of context (the served model sees max_len)."""
    n = len(seq_items)
    out = torch.empty((n, encoder.cfg.dim))
    starts = [0] if n <= max_len else list(range(0, n - max_len + 1, max_len // 2)) + [n - max_len]
    done = 0
    for a in sorted(set(starts)):
        b = min(n, a + max_len)
        it = torch.as_tensor(seq_items[a:b]); ac = torch.as_tensor(seq_actions[a:b]); ts = torch.as_tensor(seq_ts[a:b])
        h = encoder.encode(it, ac, ts, torch.tensor([0, b - a]))
        h = F.normalize(h, dim=-1)
        lo = done if a == 0 else max(done, a + max_len // 2)
        lo = max(lo, done)
        out[lo:b] = h[lo - a : b - a]
        done = max(done, b)
    return out


def build_examples(bundle, sequences, gcfg: GeneratorConfig, slate_len: int, pool: int, min_history: int = 1):
    """Training tensors from chronological sequences: user embeddings (M, dim), recent tokens (M, R),
    candidate pool (M, pool) = retrieval top items of each prefix minus seen items and minus the target,
    targets (M,)."""
    from pipeline.vocab import ACTION_INDEX

    enc = bundle.encoder.eval()
    idx = bundle.item_index
    oov = bundle.config.num_items
    table = enc.item_table().detach()
    U, R, P, T = [], [], [], []
    model = GeneratorModel(gcfg)  # only for recent_tokens()
    for seq in sequences:
        if len(seq) < min_history + 1:
            continue
        items = [idx.get(e.item_id, oov) for e in seq]
        acts = [ACTION_INDEX[e.action] for e in seq]
        ts = [int(e.ts) for e in seq]
        emb = _prefix_embeddings(enc, items, acts, ts, bundle.config.max_seq_len)
        cuts = [t for t in range(min_history, len(seq)) if items[t] != oov]
        if not cuts:
            continue
        u = emb[[t - 1 for t in cuts]]
        scores = u @ table.T
        for j, t in enumerate(cuts):
            seen = [i for i in items[:t] if i != oov]
            if seen:
                scores[j, seen] = float("-inf")
            scores[j, items[t]] = float("-inf")  # the target never appears in the slate prefix
        top = torch.topk(scores, min(pool, table.shape[0] - 1), dim=1).indices
        U.append(u)
        P.append(top)
        R.append(model.recent_tokens([items[:t] for t in cuts]))
        T.append(torch.tensor([items[t] for t in cuts]))
    return torch.cat(U), torch.cat(R), torch.cat(P), torch.cat(T)


def slate_metrics(slates: list[list[int]], targets: list[int], k: int = 10) -> dict:
    """HR@k / NDCG@k of slates against one target each (position in the slate = rank)."""
    hits, gains = 0, 0.0
    for s, t in zip(slates, targets):
        s = list(s)[:k]
        if t in s:
            hits += 1
            gains += 1.0 / np.log2(s.index(t) + 2)
    n = max(len(targets), 1)
    return {f"hr@{k}": hits / n, f"ndcg@{k}": gains / n, "users": len(targets)}


def _eval_cases(bundle, model: GeneratorModel, cases, k: int, num_candidates: int, batch: int = 256,
                retrieval: bool = True) -> dict:
    """Slate metrics of the torch generator and (``retrieval``) of retrieval's top-k on leave-one-out
    cases (whole history excluded, as in pipeline.evaluation)."""
    from pipeline.generator.recommender import GenerativeRecommender
    from pipeline.generator.torch_backend import TorchGenerator
    from pipeline.recommender import Recommender, UserRequest

    excl = bundle.config.max_seq_len
    gen = GenerativeRecommender(bundle, model, TorchGenerator(model), k=k, exclude_recent=excl, num_candidates=num_candidates)
    ret = Recommender(bundle, k=k, exclude_recent=excl)
    g_sl, r_sl, tg = [], [], []
    for s in range(0, len(cases), batch):
        chunk = cases[s : s + batch]
        reqs = [UserRequest(c.user_id, c.history) for c in chunk]
        g_sl += [[it for it, _ in r.items] for r in gen.recommend(reqs)]
        if retrieval:
            r_sl += [[it for it, _ in r.items] for r in ret.recommend(reqs)]
        tg += [c.target for c in chunk]
    out = {"generator": slate_metrics(g_sl, tg, k)}
    if retrieval:
        out["retrieval"] = slate_metrics(r_sl, tg, k)
    return out


@torch.no_grad()
def _warm_start(model: GeneratorModel, bundle) -> None:
    """Start from what HSTU already knows (when hidden_size == HSTU dim): item token embeddings and
    output rows = HSTU's L2-normalised item vectors (output rows x2, the scale of a 0.05-temperature
    softmax over cosines after RMSNorm), and the first soft-prompt vector = the user embedding."""
    c = model.cfg
    if c.hidden_size != bundle.config.dim:
        return
    table = bundle.encoder.item_table().detach().float()
    model.decoder.model.embed_tokens.weight[: c.num_items] = table
    model.decoder.lm_head.weight[: c.num_items] = 2.0 * table
    model.prompt.proj.weight[: c.hidden_size] = torch.eye(c.hidden_size)


def train_generator(model_dir: Path | str, data: str | dict | None = None, cfg: GeneratorTrainConfig | None = None,
                    progress: bool = False, dataset=None) -> dict:
    """Train the generator on the dataset the HSTU model in ``model_dir`` was trained on (or ``data``),
    write it into ``model_dir`` (listed in the manifest) and return its metrics."""
    from pipeline.datasets import load_dataset
    from pipeline.evaluation import leave_one_out

    cfg = cfg or GeneratorTrainConfig()
    t0 = time.monotonic()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed(cfg.seed)
    bundle = load_model_dir(model_dir)
    if dataset is None:
        spec = data if data is not None else bundle.metrics.get("data")
        if spec is None:
            raise ValueError(f"{model_dir}/metrics.json does not record the dataset; pass data=")
        dataset = load_dataset(spec)
    if dataset.items != bundle.items:
        raise ValueError("the dataset's item vocabulary is not the model's; train on the HSTU model's dataset")
    split = leave_one_out(dataset.user_ids, dataset.sequences)
    gcfg = GeneratorConfig(
        num_items=bundle.config.num_items, hstu_dim=bundle.config.dim, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_attention_heads,
        soft_prompt_len=cfg.soft_prompt_len, recent_len=cfg.recent_len,
    )
    K = cfg.slate_len
    pool = 2 * K
    U, R, P, T = build_examples(bundle, split.train, gcfg, K, pool)
    M = T.shape[0]
    prep_s = time.monotonic() - t0
    rng = random.Random(cfg.seed)
    valid_cases = list(split.valid)
    rng.shuffle(valid_cases)
    valid_cases = valid_cases[: cfg.valid_users]

    model = GeneratorModel(gcfg)
    if cfg.warm_start:
        _warm_start(model, bundle)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    steps_total = cfg.epochs * ((M + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps_total, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    L = gcfg.prompt_len
    best = (-1.0, 0, None)
    history = []
    stopped = "max-epochs"
    deadline = t0 + cfg.max_minutes * 60
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(M, generator=gen)
        total, count = 0.0, 0
        for s in range(0, M, cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            n = b.shape[0]
            # slate prefix: K-1 of the top `pool` candidates, chosen by rank + jitter, kept in that order
            keys = torch.arange(pool, dtype=torch.float32)[None, :] + cfg.rank_jitter * torch.rand((n, pool), generator=gen)
            order = keys.argsort(dim=1)[:, : K - 1]
            prefix = P[b].gather(1, order)
            pe = model.prompt_embeds(U[b], R[b])
            x = torch.cat([pe, model.decoder.embed(prefix)], dim=1)
            logits = model.decoder(x, last_n=K)  # positions L-1 .. L+K-2: (n, K, V)
            tgt = T[b][:, None].expand(n, K)
            loss = F.cross_entropy(logits.reshape(n * K, -1), tgt.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += loss.item() * n
            count += n
        model.eval()
        val = _eval_cases(bundle, model, valid_cases, K, cfg.num_candidates)
        rec = {"epoch": epoch, "loss": total / max(count, 1), "valid_ndcg@10": val["generator"][f"ndcg@{K}"],
               "valid_hr@10": val["generator"][f"hr@{K}"], "valid_retrieval_ndcg@10": val["retrieval"][f"ndcg@{K}"],
               "wall_s": round(time.monotonic() - t0, 1)}
        history.append(rec)
        if progress:
            import sys

            print("generator " + json.dumps(rec), file=sys.stderr, flush=True)
        if rec["valid_ndcg@10"] > best[0]:
            best = (rec["valid_ndcg@10"], epoch, copy.deepcopy(model.state_dict()))
        if epoch - best[1] >= cfg.patience:
            stopped = "early-stop"
            break
        if time.monotonic() > deadline:
            stopped = "time-budget"
            break
    model.load_state_dict(best[2])
    model.eval()
    # retrieval as a prior the decoder corrects: the weight of the retrieval score in the decoding
    # logits, chosen on the validation users (ties: the smaller weight)
    search = []
    for w in cfg.retrieval_weights:
        model.cfg = dataclasses.replace(model.cfg, retrieval_weight=float(w))
        v = _eval_cases(bundle, model, valid_cases, K, cfg.num_candidates, retrieval=False)["generator"]
        search.append({"retrieval_weight": float(w), "valid_ndcg@10": v[f"ndcg@{K}"], "valid_hr@10": v[f"hr@{K}"]})
    chosen = max(search, key=lambda r: (r["valid_ndcg@10"], -r["retrieval_weight"]))["retrieval_weight"]
    model.cfg = dataclasses.replace(model.cfg, retrieval_weight=chosen)
    if progress:
        import sys

        print(f"generator retrieval_weight {chosen} (validation NDCG@10 by weight: "
              + ", ".join(f"{r['retrieval_weight']:g}: {r['valid_ndcg@10']:.4f}" for r in search) + ")",
              file=sys.stderr, flush=True)
    train_s = time.monotonic() - t0
    test = _eval_cases(bundle, model, split.test, K, cfg.num_candidates)
    metrics = {
        "arch": "LlamaForCausalLM",
        "objective": "teacher forcing: true next item at every slate position after retrieval candidates",
        "protocol": "leave-one-out test split, whole history excluded, greedy torch decoding, slate position = rank",
        "test": test,
        "train": {
            "examples": int(M), "best_epoch": best[1], "epochs_run": len(history), "stopped": stopped,
            "retrieval_weight": chosen, "retrieval_weight_search": search,
            "prep_wall_s": round(prep_s, 2), "train_wall_s": round(train_s, 2), "history": history,
            "config": dataclasses.asdict(cfg), "parameters": sum(p.numel() for p in model.parameters()),
        },
    }
    version = save_generator(model_dir, model, metrics)
    return {**metrics, "version": version, "path": str(model_dir)}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Train the generator into an existing HSTU model directory")
    ap.add_argument("model_dir")
    ap.add_argument("--data", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    c = GeneratorTrainConfig.quick() if a.quick else GeneratorTrainConfig()
    if a.epochs:
        c.epochs = a.epochs
    if a.max_minutes:
        c.max_minutes = a.max_minutes
    m = train_generator(a.model_dir, a.data, c, progress=True)
    print(json.dumps({"version": m["version"], "test": m["test"], "train_wall_s": m["train"]["train_wall_s"]}))
