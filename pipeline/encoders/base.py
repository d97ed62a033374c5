"""What every encoder backend is: ``available() -> (ok, reason)`` and ``encode(jagged) -> (B, dim)``."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["EncoderBackend", "BackendUnavailable", "BACKEND_NAMES"]

# the values that may appear in an output record's model.encoder (schemas, DESIGN §2)
BACKEND_NAMES = ("tensorrt", "onnxruntime", "torch")


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (missing library/device/export); the message says why."""


class EncoderBackend:
    """One way to run the HSTU encoder of a verified model bundle.

    Contract: ``encode(item_idx, action_idx, ts_ms, offsets)`` takes the same jagged batch
    as :meth:`pipeline.hstu.HSTUEncoder.forward` (int64 values (T,) + offsets (B+1,), on
    any device) and returns the L2-normalised user embeddings (B, dim), float32, on the
    backend's device. Every backend gives the same numbers as eager torch within the
    tolerances in docs/backends.md (tests/unit/test_encoders_parity.py).
    """

    name: ClassVar[str] = "?"

    def __init__(self, bundle, device: str | torch.device = "cpu", **options: Any) -> None:
        self.bundle = bundle
        self.config = bundle.config
        self.device = torch.device(device)
        self.options = options

    @classmethod
    def available(cls, device: str | torch.device = "cpu") -> tuple[bool, str]:
        """Can this backend run on ``device`` in this process at all? ``(ok, reason)``; never raises."""
        raise NotImplementedError

    def encode(self, item_idx: Tensor, action_idx: Tensor, ts_ms: Tensor, offsets: Tensor) -> Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for logs: what exactly runs (providers, precision, engine file...)."""
        return self.name

    def close(self) -> None:
        pass

    __call__ = encode
