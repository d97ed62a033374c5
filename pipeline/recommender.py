"""What the worker calls: histories in, slates (+ user embeddings) out.

Synchronous and thread-safe for one caller at a time: the worker runs it in a
dedicated executor thread, never on the event loop. All users of a call go
through ONE jagged batched encode and one retrieval matmul.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pipeline.model_dir import ModelBundle
from pipeline.retrieval import top_k_items
from pipeline.vocab import ACTION_INDEX, ACTIONS

__all__ = ["HistoryEvent", "UserRequest", "Recommendation", "Recommender", "JaggedBatch", "build_jagged",
           "history_window"]

log = logging.getLogger("streamrec.recommender")

AUTO_STATE_BYTES = 256 << 20
# on an H200 the decode step paid off from about 500 cached events (docs/perf.md, incremental encoding)
AUTO_GPU_MIN_SEQ_LEN = 512


@dataclass(frozen=True)
class HistoryEvent:
    item_id: str
    action: str  # the wire string: view, click, add_to_cart, purchase, like, rate, skip, share
    ts: int  # epoch ms
    value: float | None = None


@dataclass(frozen=True)
class UserRequest:
    user_id: str
    events: Sequence[HistoryEvent]  # chronological, the stored history (already capped)
    total: int | None = None  # events ever stored for the user (>= len(events)); None = len(events)


def history_window(total: int, stored: int, max_len: int, slack: int) -> int:
    """How many of a user's newest events the encoder sees, given ``total`` events ever stored.

    All of them up to ``max_len``. Past it the window does not slide by one event per event
    (that would change every row of the encoder and defeat incremental encoding): it restarts
    at ``max_len - slack + 1`` events and grows to ``max_len`` again, so it moves once per
    ``slack`` events. ``slack = 1`` is the exact sliding window. A function of ``total`` only,
    so every backend and every worker, with or without encoder states, sees the same window.
    """
    if not 1 <= slack <= max_len:
        raise ValueError(f"window slack must be in [1, max_seq_len={max_len}], got {slack}")
    total = max(total, stored)
    if total <= max_len:
        return stored
    return min(stored, max_len - slack + 1 + (total - max_len - 1) % slack)


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
                 encoder_backend: str = "torch", encoder_options: dict | None = None,
                 hot_state_bytes: int = 0, window_slack: int = 0) -> None:
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
        max_len = bundle.config.max_seq_len
        self.window_slack = window_slack or max(1, max_len // 4)
        history_window(max_len, max_len, max_len, self.window_slack)  # validates the slack
        self.hot = self._hot_states(hot_state_bytes)

    def _hot_states(self, budget: int):
        """Incremental encoding (pipeline/hot_states.py) where it can run: HSTU on the torch backend.

        ``budget`` < 0 is auto: 256 MiB on the CPU; on CUDA only for max_seq_len >= 512 (docs/incremental.md)."""
        if budget < 0:
            budget = AUTO_STATE_BYTES
            if self.device.type == "cuda" and self.bundle.config.max_seq_len < AUTO_GPU_MIN_SEQ_LEN:
                log.info("encoder states off (auto): on CUDA a full re-encode of at most %d events costs no more "
                         "than a decode step; set STREAMREC_ENCODER_STATE_MB to force them on",
                         self.bundle.config.max_seq_len)
                return None
        if budget == 0:
            return None
        from pipeline.hot_states import HotStates
        from pipeline.hstu import HSTUEncoder

        backend = self._user_encoder.backend
        enc = getattr(backend, "encoder", None)
        if backend.name != "torch" or not isinstance(enc, HSTUEncoder) or backend.compiled:
            log.info("encoder states off: incremental encoding needs the HSTU model on the eager torch encoder "
                     "backend", extra={"encoder": self._user_encoder.describe(), "model": type(self.encoder).__name__})
            return None
        hot = HotStates(enc, budget, device=self.device)
        log.info("encoder states on", extra={"budget_bytes": budget, "pages": hot.arena.num_pages,
                                             "page_bytes": hot.arena.page_bytes})
        return hot

    @property
    def encoder_name(self) -> str:
        """The encoder backend in use: tensorrt | onnxruntime | torch (may change after a run-time fallback)."""
        return self._user_encoder.name
    # --- end encoder backend

    def _encode(self, requests: Sequence[UserRequest]) -> tuple[torch.Tensor, JaggedBatch]:
        for r in requests:
            if not r.events:
                raise ValueError(f"user {r.user_id!r} has no events to recommend from")
        max_len = self.bundle.config.max_seq_len
        windows, starts = [], []
        for r in requests:
            total = len(r.events) if r.total is None else r.total
            w = history_window(total, len(r.events), max_len, self.window_slack)
            windows.append(r.events[len(r.events) - w :])
            starts.append(max(total, len(r.events)) - w)
        batch = build_jagged(windows, self.bundle.item_index, self.bundle.config.num_items)
        with self._lock:
            self.oov_count += batch.oov
        with torch.inference_mode():
            if self.hot is not None:
                emb = self.hot.embed([r.user_id for r in requests], starts, batch).float()
            else:
                b = batch.to(self.device)
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
