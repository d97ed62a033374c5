"""The ``torch`` encoder backend: the model's own jagged ``HSTUEncoder.forward``.

Eager by default; ``compile=True`` wraps it in ``torch.compile(dynamic=True)``. On CUDA it
routes the layer ops through ``kernels/`` (:func:`wire_kernels`: Triton attention and norm gate,
CUTLASS input projection, each falling back to PyTorch where its kernel cannot run).
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


def wire_kernels(enc) -> list[str]:
    """Route an ``HSTUEncoder``'s layer ops through the dispatchers of ``kernels/``: the attention
    (Triton), the input projection's GEMM + bias + SiLU (CUTLASS) and the ``u * LayerNorm(av)``
    gate (Triton), and one attention tile table per forward pass for all layers
    (``kernels.hstu_attention.same_batch``). Each dispatcher still takes the PyTorch path where
    its kernel cannot run (CPU tensors, export, autograd; ``silu_linear`` below 4096 rows and
    without a CUTLASS library). The CUTLASS library is loaded here, or built on a first start
    where nvcc and the ``nvidia-cutlass`` headers are (about a minute, then cached: docs/kernels.md).
    Returns one line per op saying what runs it, for ``describe()``; [] for a model without
    these ops (SASRec)."""
    if not hasattr(enc, "set_kernels"):
        return []
    from kernels import hstu_attention as ha
    from kernels import norm_mul as nm
    from kernels import silu_linear as sl
    from kernels._dispatch import requested_impl

    enc.set_kernels(attention=ha.hstu_attention, silu_linear=sl.silu_linear, norm_mul=nm.norm_mul,
                    batch_context=ha.same_batch)
    dtype = next(enc.parameters()).dtype
    if requested_impl("silu_linear", None) == "reference":
        ok, why = False, "STREAMREC_KERNELS(_SILU_LINEAR)=reference"
    elif dtype not in sl.CUTLASS_DTYPES:
        ok, why = False, f"the CUTLASS kernel takes bf16 or fp16; the encoder is {dtype}"
    else:
        ok, why = sl.available()   # loads the library, or builds it (once per machine)
    if not ok:
        log.info("torch encoder: the input projection runs in PyTorch: %s", why)
    proj = f"silu_linear: CUTLASS from {sl.MIN_ROWS_FOR_CUTLASS} rows" if ok else "silu_linear: PyTorch"
    return ["hstu_attention: Triton", "norm_mul: Triton", proj]


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
        self.kernels: list[str] = []
        if self.device.type == "cuda" and use_kernels:
            try:
                self.kernels = wire_kernels(enc)
                log.info("torch encoder on %s: %s", self.device, "; ".join(self.kernels) or "no kernels for this model")
            except Exception as e:  # pragma: no cover - depends on the install
                log.warning("torch encoder: kernels/ unusable (%r); using the PyTorch ops", e)
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
        parts += self.kernels
        return ", ".join(parts)
