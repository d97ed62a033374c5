"""The ``torch`` encoder backend: the model's own jagged ``HSTUEncoder.forward``.

Eager by default; ``compile=True`` wraps it in ``torch.compile(dynamic=True)``. On CUDA it
swaps in the kernel dispatcher of ``kernels/hstu_attention.py`` (Triton where it runs, the
PyTorch reference otherwise), which has the attention signature of ``pipeline.hstu``.
``dtype="fp16"|"bf16"`` runs a half-precision copy of the encoder (GPU use; outputs float32).
Always available: it is the end of the fallback chain.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor

from pipeline.encoders.base import EncoderBackend

log = logging.getLogger("streamrec.encoders")

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(EncoderBackend):
    name = "torch"

    def __init__(self, bundle, device="cpu", *, compile: bool = False, dtype: str = "fp32",
                 use_kernels: bool = True, **options) -> None:
        super().__init__(bundle, device, **options)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        enc = bundle.encoder
        if dtype != "fp32" or (self.device.type == "cuda" and use_kernels):
            enc = copy.deepcopy(enc)  # never change the bundle's shared encoder
        enc = enc.to(self.device).eval()
        if dtype != "fp32":
            enc = enc.to(_DTYPES[dtype])
        self.kernels = False
        if self.device.type == "cuda" and use_kernels:
            try:
                from kernels.hstu_attention import hstu_attention

                enc.set_attention(hstu_attention)
                self.kernels = True
            except Exception as e:  # pragma: no cover - depends on the install
                log.warning("torch encoder: kernels.hstu_attention unusable (%r); using the PyTorch reference", e)
        self.encoder = enc
        self.dtype = dtype
        self.compiled = bool(compile)
        self._fn = torch.compile(enc, dynamic=True) if compile else enc

    @classmethod
    def available(cls, device="cpu") -> tuple[bool, str]:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            return False, "device is cuda but torch sees no CUDA device"
        return True, f"PyTorch {torch.__version__} on {dev.type}"

    def encode(self, item_idx: Tensor, action_idx: Tensor, ts_ms: Tensor, offsets: Tensor) -> Tensor:
        d = self.device
        with torch.inference_mode():
            out = self._fn(item_idx.to(d), action_idx.to(d), ts_ms.to(d), offsets.to(d))
        return out.float()

    def describe(self) -> str:
        parts = [f"torch {torch.__version__}", str(self.device), self.dtype, "eager" if not self.compiled else "torch.compile"]
        if self.kernels:
            parts.append("kernels.hstu_attention")
        return ", ".join(parts)
