"""Train the HSTU encoder and write a model directory.

Objective (as in the paper's code, ``generative-recommenders``): next-item
prediction at EVERY position of each training sequence, sampled softmax over
the positive and ``num_negatives`` uniformly sampled items (shared by the whole
mini-batch; a negative equal to the positive is masked), on L2-normalised
embeddings with a temperature (0.05 by default). AdamW, fixed seeds, early
stopping on validation NDCG@10 (best epoch's weights are kept), an optional
wall-clock budget. Evaluation protocol: :mod:`pipeline.evaluation`.
"""
from __future__ import annotations

import copy
import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.datasets import SequenceDataset, load_dataset
from pipeline.evaluation import (
    evaluate,
    leave_one_out,
    model_scorer,
    oracle_scorer,
    popularity_scorer,
    random_scorer,
)
from pipeline.hstu import HSTUConfig, HSTUEncoder, hstu_attention_padded, hstu_attention_reference
from pipeline.model_dir import save_model_dir
from pipeline.recommender import HistoryEvent
from pipeline.vocab import ACTION_INDEX

__all__ = ["TrainConfig", "train", "train_encoder", "TrainResult"]


@dataclass
class TrainConfig:
    data: str = "synthetic"
    data_options: dict = field(default_factory=dict)  # passed to load_dataset (e.g. num_users)
    seed: int = 0
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    num_negatives: int = 256
    temperature: float = 0.05
    # model
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    qk_dim: int = 32
    v_dim: int = 32
    max_seq_len: int = 200
    attn_n: int | None = None  # None -> max_seq_len
    num_time_buckets: int = 64
    dropout: float = 0.2
    # budget / stopping
    max_minutes: float = 3.0  # a safety cap; on an idle 2-core CPU the default run takes about 45 s
    patience: int = 4
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    # torch device of the training loop and the per-epoch validation ("cpu", "cuda", "cuda:1");
    # batches and negatives are drawn on the CPU exactly as on "cpu", and the trained encoder is
    # moved back to the CPU before it is returned (the model directory and serving are CPU-side)
    device: str = "cpu"
    # --- arch (issue 3, SASRec baseline): "hstu" | "sasrec" (pipeline/sasrec.py; same loop, loss, eval)
    arch: str = "hstu"
    # --- end arch

    @classmethod
    def quick(cls, **overrides: Any) -> "TrainConfig":
        """A tiny configuration for tests and smoke runs: seconds on 2 cores."""
        base = dict(
            data="synthetic",
            data_options={"num_items": 120, "num_users": 400, "num_clusters": 6, "min_len": 8, "max_len": 24},
            epochs=10,
            batch_size=64,
            lr=3e-3,
            num_negatives=64,
            dim=32,
            num_layers=1,
            num_heads=1,
            qk_dim=16,
            v_dim=16,
            max_seq_len=32,
            num_time_buckets=32,
            dropout=0.1,
            max_minutes=3.0,  # a cap only: the tiny run is epoch-bound (~10 s on an idle 2-core CPU)
            patience=3,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def for_data(cls, data: str, **overrides: Any) -> "TrainConfig":
        """Defaults tuned per dataset (2-core CPU budgets); ``overrides`` win."""
        base: dict[str, Any] = {"data": data}
        if data == "ml-100k":
            # long histories (mean 106 ratings): windows of 50 keep the (L x L) attention cheap on a CPU
            # chosen by a small sweep (lr, dropout, negatives, dims, window, temperature; docs/model.md)
            base.update(
                max_seq_len=50, batch_size=64, lr=2e-3, epochs=200, max_minutes=5.0, patience=10, dropout=0.5,
                num_negatives=1024,
            )
        base.update(overrides)
        return cls(**base)

    def model_config(self, num_items: int) -> HSTUConfig:
        return HSTUConfig(
            num_items=num_items,
            dim=self.dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            qk_dim=self.qk_dim,
            v_dim=self.v_dim,
            max_seq_len=self.max_seq_len,
            attn_n=self.attn_n or self.max_seq_len,
            num_time_buckets=self.num_time_buckets,
            dropout=self.dropout,
        )


@dataclass
class TrainResult:
    encoder: HSTUEncoder
    dataset: SequenceDataset
    metrics: dict


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _to_arrays(seq: list[HistoryEvent], item_index: dict[str, int], oov: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.array([item_index.get(e.item_id, oov) for e in seq], dtype=np.int64),
        np.array([ACTION_INDEX[e.action] for e in seq], dtype=np.int64),
        np.array([e.ts for e in seq], dtype=np.int64),
    )


def _windows(arrays, max_seq_len: int) -> list:
    """Split a sequence longer than ``max_seq_len + 1`` into windows that overlap by one event.

    Every event after the first is a prediction target exactly once; the most recent window
    is the one that ends at the last event (what the model sees at serving time).
    """
    it, ac, t = arrays
    n, w = len(it), max_seq_len + 1
    if n <= w:
        return [arrays]
    out = []
    end = n
    while end > 1:
        start = max(0, end - w)
        out.append((it[start:end], ac[start:end], t[start:end]))
        end = start + 1
    return out[::-1]


def _batch(seqs, rng: np.random.Generator, max_seq_len: int, input_ts=None):
    """Jagged (input, target) batch. Inputs are already windowed by _windows; the random crop is a safety net.

    ``input_ts(t)`` maps a (cropped) sequence's timestamps to its inputs' (default ``t[:-1]``)."""
    items, actions, ts, targets, offsets = [], [], [], [], [0]
    for it, ac, t in seqs:
        n = len(it)
        if n > max_seq_len + 1:
            s = int(rng.integers(0, n - max_seq_len))
            it, ac, t = it[s : s + max_seq_len + 1], ac[s : s + max_seq_len + 1], t[s : s + max_seq_len + 1]
        items.append(it[:-1]); actions.append(ac[:-1]); targets.append(it[1:])
        ts.append(t[:-1] if input_ts is None else input_ts(t))
        offsets.append(offsets[-1] + len(it) - 1)
    cat = lambda xs: torch.from_numpy(np.concatenate(xs))  # noqa: E731
    return cat(items), cat(actions), cat(ts), cat(targets), torch.tensor(offsets, dtype=torch.long)


def sampled_softmax_loss(
    out: torch.Tensor, targets: torch.Tensor, encoder: HSTUEncoder, num_negatives: int, temperature: float, gen: torch.Generator
) -> torch.Tensor:
    u = F.normalize(out, dim=-1)
    table = encoder.item_table()
    pos = (u * table[targets]).sum(-1, keepdim=True)
    negs = torch.randint(0, table.shape[0], (num_negatives,), generator=gen).to(table.device)
    neg = u @ table[negs].T
    neg = neg.masked_fill(negs.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos, neg], dim=1) / temperature
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def train_encoder(cfg: TrainConfig, progress: bool = True, dataset: SequenceDataset | None = None) -> TrainResult:
    """Train on ``cfg.data`` and evaluate; does not write anything."""
    t0 = time.monotonic()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)
    ds = dataset if dataset is not None else load_dataset(cfg.data, **cfg.data_options)
    split = leave_one_out(ds.user_ids, ds.sequences)
    item_index = ds.item_index()
    mcfg = cfg.model_config(len(ds.items))
    oov = mcfg.num_items
    train_seqs = [
        w for s in split.train if len(s) >= 2 for w in _windows(_to_arrays(s, item_index, oov), mcfg.max_seq_len)
    ]
    if not train_seqs:
        raise ValueError("no training sequences with at least 2 events")

    # --- arch dispatch (issue 3): SASRec baseline in the same harness
    if cfg.arch == "sasrec":
        from pipeline.sasrec import SASRecConfig, SASRecEncoder

        encoder = SASRecEncoder(SASRecConfig.from_train_config(cfg, len(ds.items)))
    elif cfg.arch == "hstu":
        encoder = HSTUEncoder(mcfg)
        encoder.set_attention(hstu_attention_padded)
    else:
        raise ValueError(f"unknown arch {cfg.arch!r}; choose hstu or sasrec")
    # --- end arch dispatch
    device = torch.device(cfg.device)
    encoder.to(device)  # (Module.to and Tensor.to are no-ops on the device already holding them)
    opt = torch.optim.AdamW(encoder.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    valid_scorer = model_scorer(encoder, item_index, batch_device=cfg.device)

    best = (-1.0, 0, None)  # ndcg, epoch, state
    history: list[dict] = []
    stopped = "max-epochs"
    deadline = t0 + cfg.max_minutes * 60.0
    n_batches = (len(train_seqs) + cfg.batch_size - 1) // cfg.batch_size

    prog = None
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        prog = Progress(
            TextColumn("[bold]train[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(stderr=True),
            transient=False,
        )
        prog.start()
        task = prog.add_task(f"{ds.name}", total=cfg.epochs * n_batches, info="")
    try:
        for epoch in range(1, cfg.epochs + 1):
            encoder.train()
            order = rng.permutation(len(train_seqs))
            total, count = 0.0, 0
            for bstart in range(0, len(order), cfg.batch_size):
                chunk = [train_seqs[i] for i in order[bstart : bstart + cfg.batch_size]]
                it, ac, ts, tgt, off = _batch(chunk, rng, mcfg.max_seq_len)
                it, ac, ts, tgt, off = (x.to(device) for x in (it, ac, ts, tgt, off))
                out = encoder.encode(it, ac, ts, off)
                loss = sampled_softmax_loss(out, tgt, encoder, cfg.num_negatives, cfg.temperature, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(tgt)
                count += len(tgt)
                if prog is not None:
                    prog.advance(task)
            encoder.eval()
            val = evaluate(valid_scorer, split.valid, item_index)
            rec = {"epoch": epoch, "loss": total / max(count, 1), "valid_ndcg@10": val["ndcg@10"], "valid_hr@10": val["hr@10"]}
            history.append(rec)
            if val["ndcg@10"] > best[0]:
                best = (val["ndcg@10"], epoch, copy.deepcopy(encoder.state_dict()))
            if prog is not None:
                prog.update(
                    task,
                    info=f"epoch {epoch} loss {rec['loss']:.3f} val ndcg@10 {val['ndcg@10']:.4f} (best {best[0]:.4f} @ {best[1]})",
                )
            if epoch - best[1] >= cfg.patience:
                stopped = "early-stop"
                break
            if time.monotonic() > deadline:
                stopped = "time-budget"
                break
    finally:
        if prog is not None:
            prog.stop()

    encoder.load_state_dict(best[2])
    encoder.eval()
    train_s = time.monotonic() - t0
    t1 = time.monotonic()
    valid = evaluate(valid_scorer, split.valid, item_index)
    test = evaluate(valid_scorer, split.test, item_index)
    baselines = {
        "popularity": evaluate(popularity_scorer(split.train, item_index), split.test, item_index),
        "random": evaluate(random_scorer(len(item_index), cfg.seed), split.test, item_index),
    }
    if ds.oracle is not None:
        baselines["oracle"] = evaluate(oracle_scorer(ds.oracle), split.test, item_index)
    if cfg.arch == "hstu":  # arch dispatch (issue 3)
        encoder.set_attention(hstu_attention_reference)
    encoder.to("cpu")
    metrics = {
        "arch": cfg.arch,
        "data": ds.spec,
        "protocol": "leave-one-out, full ranking, own history excluded, pessimistic ties",
        "test": test,
        "valid": valid,
        "baselines": baselines,
        "train": {
            "best_epoch": best[1],
            "epochs_run": len(history),
            "stopped": stopped,
            "train_wall_s": round(train_s, 2),
            "eval_wall_s": round(time.monotonic() - t1, 2),
            "threads": torch.get_num_threads(),
            "history": history,
            "config": dataclasses.asdict(cfg),
            "parameters": encoder.num_parameters(),
            "users": len(ds.user_ids),
            "items": len(ds.items),
            "events": ds.num_events,
        },
    }
    return TrainResult(encoder, ds, metrics)


def train(cfg: TrainConfig, out: Path, progress: bool = True) -> dict:
    """Train, evaluate, and write the model directory ``out``. Returns the metrics (+ ``version``)."""
    result = train_encoder(cfg, progress=progress)
    version = save_model_dir(Path(out), result.encoder, result.dataset.items, result.metrics, result.dataset.titles)
    return {**result.metrics, "version": version, "path": str(out)}
