"""What the worker calls: histories in, slates (+ user embeddings) out.

Synchronous and thread-safe for one caller at a time: the worker runs it in a
dedicated executor thread, never on the event loop. All users of a call go
through ONE jagged batched encode and one retrieval matmul.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pipeline.model_dir import ModelBundle
from pipeline.retrieval import top_k_items
from pipeline.vocab import ACTION_INDEX, ACTIONS

__all__ = ["HistoryEvent", "UserRequest", "Recommendation", "Recommender", "JaggedBatch", "build_jagged"]


@dataclass(frozen=True)
class HistoryEvent:
    item_id: str
    action: str  # the wire string: view, click, add_to_cart, purchase, like, rate, skip, share
    ts: int  # epoch ms
    value: float | None = None


@dataclass(frozen=True)
class UserRequest:
    user_id: str
    events: Sequence[HistoryEvent]  # chronological, already capped


@dataclass(frozen=True)
class Recommendation:
    user_id: str
    items: list[tuple[str, float]]
    embedding: np.ndarray  # float32, (dim,)


@dataclass
class JaggedBatch:
    item_idx: torch.Tensor  # (T,) int64
    action_idx: torch.Tensor  # (T,) int64
    ts_ms: torch.Tensor  # (T,) int64
    offsets: torch.Tensor  # (B+1,) int64
    oov: int  # events whose item id is not in the vocabulary

    def to(self, device: str | torch.device) -> "JaggedBatch":
        return JaggedBatch(
            self.item_idx.to(device), self.action_idx.to(device), self.ts_ms.to(device), self.offsets.to(device), self.oov
        )


def build_jagged(
    histories: Sequence[Sequence[HistoryEvent]],
    item_index: dict[str, int],
    oov_index: int,
    max_seq_len: int | None = None,
) -> JaggedBatch:
    """Histories -> jagged tensors (values + offsets). Keeps the last ``max_seq_len`` events of each."""
    items: list[int] = []
    actions: list[int] = []
    ts: list[int] = []
    offsets = [0]
    oov = 0
    for events in histories:
        if max_seq_len is not None and len(events) > max_seq_len:
            events = events[len(events) - max_seq_len :]
        for ev in events:
            idx = item_index.get(ev.item_id)
            if idx is None:
                idx = oov_index
                oov += 1
            items.append(idx)
            a = ACTION_INDEX.get(ev.action)
            if a is None:
                raise ValueError(f"unknown action {ev.action!r}; expected one of {', '.join(ACTIONS)}")
            actions.append(a)
            ts.append(int(ev.ts))
        offsets.append(len(items))
    return JaggedBatch(
        torch.tensor(items, dtype=torch.long),
        torch.tensor(actions, dtype=torch.long),
        torch.tensor(ts, dtype=torch.long),
        torch.tensor(offsets, dtype=torch.long),
        oov,
    )


class Recommender:
    """Batched recommendations from a verified :class:`ModelBundle`.

    ``recommend`` excludes each user's last ``exclude_recent`` items from the slate.
    """

    generator_name: str = "retrieval"

    def __init__(self, bundle: ModelBundle, k: int = 10, exclude_recent: int = 50, device: str = "cpu",
                 encoder_backend: str = "torch", encoder_options: dict | None = None) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if exclude_recent < 0:
            raise ValueError(f"exclude_recent must be >= 0, got {exclude_recent}")
        self.bundle = bundle
        self.k = k
        self.exclude_recent = exclude_recent
        self.device = torch.device(device)
        self.encoder = bundle.encoder.to(self.device).eval()
        self.version = bundle.version
        self.dim = bundle.config.dim
        self.oov_count = 0
        self._lock = threading.Lock()
        with torch.inference_mode():
            self._item_table = self.encoder.item_table().detach().clone()
        # --- encoder backend (pipeline/encoders, issue 5): auto|tensorrt|onnxruntime|torch, with run-time fallback
        from pipeline.encoders import build_encoder

        self._user_encoder = build_encoder(bundle, encoder_backend, self.device, encoder_options)

    @property
    def encoder_name(self) -> str:
        """The encoder backend in use: tensorrt | onnxruntime | torch (may change after a run-time fallback)."""
        return self._user_encoder.name
    # --- end encoder backend

    def _encode(self, requests: Sequence[UserRequest]) -> tuple[torch.Tensor, JaggedBatch]:
        for r in requests:
            if not r.events:
                raise ValueError(f"user {r.user_id!r} has no events to recommend from")
        batch = build_jagged(
            [r.events for r in requests], self.bundle.item_index, self.bundle.config.num_items, self.bundle.config.max_seq_len
        )
        with self._lock:
            self.oov_count += batch.oov
        b = batch.to(self.device)
        with torch.inference_mode():
            emb = self._user_encoder(b.item_idx, b.action_idx, b.ts_ms, b.offsets).to(self.device)
        return emb, batch

    def embed(self, requests: Sequence[UserRequest]) -> np.ndarray:
        """User embeddings (B, dim) float32, L2-normalised."""
        if not requests:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb, _ = self._encode(requests)
        return emb.float().cpu().numpy()

    def recommend(self, requests: Sequence[UserRequest]) -> list[Recommendation]:
        if not requests:
            return []
        emb, batch = self._encode(requests)
        exclude: list[list[int]] = []
        item_idx = batch.item_idx.tolist()
        offs = batch.offsets.tolist()
        for b in range(len(requests)):
            s, e = offs[b], offs[b + 1]
            recent = item_idx[max(s, e - self.exclude_recent) : e] if self.exclude_recent else []
            exclude.append(recent)
        with torch.inference_mode():
            scores, idx = top_k_items(emb, self._item_table, self.k, exclude)
        scores_l = scores.float().cpu().tolist()
        idx_l = idx.cpu().tolist()
        emb_np = emb.float().cpu().numpy()
        items = self.bundle.items
        out: list[Recommendation] = []
        for b, r in enumerate(requests):
            slate = [(items[i], float(s)) for i, s in zip(idx_l[b], scores_l[b]) if i >= 0]
            out.append(Recommendation(user_id=r.user_id, items=slate, embedding=emb_np[b].copy()))
        return out
