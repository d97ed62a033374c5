"""The model engine: owns the model and the one thread it runs on, so the event loop never blocks.

Like vLLM v1's split, the asyncio side only awaits futures; all torch work happens on a dedicated
single-thread executor. A batch that raises is retried user by user so that one bad input costs
only that user's events (they go to the DLQ with stage ``model``), not the batch.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import torch

from pipeline.model_dir import ModelBundle, load_model_dir
from pipeline.recommender import Recommendation, Recommender, UserRequest
from worker import metrics as m

log = logging.getLogger("streamrec.engine")


@dataclass
class EngineResult:
    recommendations: dict[str, Recommendation]
    failures: dict[str, str]  # user_id -> reason


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch sees no CUDA device; use device=auto or cpu")
    return device


class ModelEngine:
    def __init__(self, bundle: ModelBundle, top_k: int, exclude_recent: int, device: str = "auto",
                 torch_threads: int = 0, chaos_fail_users: frozenset[str] = frozenset(),
                 encoder_backend: str = "auto", generator_backend: str = "auto", encoder_state_bytes: int = 0,
                 window_slack: int = 0):
        self.device = pick_device(device)
        self.chaos_fail_users = chaos_fail_users
        self.bundle = bundle
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamrec-model")
        if torch_threads:
            self._executor.submit(torch.set_num_threads, torch_threads).result()
        from pipeline.generator.registry import make_recommender  # generator: auto|vllm|torch|retrieval (issue 4)

        self.recommender: Recommender = make_recommender(bundle, k=top_k, exclude_recent=exclude_recent,
                                                         device=self.device, encoder_backend=encoder_backend,
                                                         generator_backend=generator_backend,
                                                         hot_state_bytes=encoder_state_bytes,
                                                         window_slack=window_slack)
        m.HOT_STATES.hot = self.recommender.hot

    @classmethod
    def from_dir(cls, model_dir, **kw) -> "ModelEngine":
        device = pick_device(kw.get("device", "auto"))
        return cls(load_model_dir(model_dir, device=device), **{**kw, "device": device})

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def encoder_name(self) -> str:
        return self.recommender.encoder_name

    @property
    def generator_name(self) -> str:
        return self.recommender.generator_name

    def _model(self, requests: Sequence[UserRequest]):
        for r in requests:
            if r.user_id in self.chaos_fail_users:
                raise RuntimeError(f"chaos: injected model failure for user {r.user_id!r}")
        return self.recommender.recommend(requests)

    def _run(self, requests: Sequence[UserRequest]) -> EngineResult:
        try:
            recs = self._model(requests)
            return EngineResult({r.user_id: r for r in recs}, {})
        except Exception as batch_error:  # isolate the failing user(s)
            if len(requests) == 1:
                return EngineResult({}, {requests[0].user_id: f"{type(batch_error).__name__}: {batch_error}"})
            log.warning("model batch failed, retrying user by user", extra={"error": repr(batch_error)})
        good: dict[str, Recommendation] = {}
        bad: dict[str, str] = {}
        for req in requests:
            try:
                good[req.user_id] = self._model([req])[0]
            except Exception as e:
                bad[req.user_id] = f"{type(e).__name__}: {e}"
        return EngineResult(good, bad)

    async def recommend(self, requests: Sequence[UserRequest]) -> EngineResult:
        if not requests:
            return EngineResult({}, {})
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, requests)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        getattr(self.recommender, "close", lambda: None)()  # the generator's vLLM engine process, if any
