"""Shared dispatch helpers for the kernels package.

Every op has a readable PyTorch reference, a fast kernel and a dispatcher.
The dispatcher takes the fast kernel when the inputs live on a CUDA device and
the kernel's toolchain imports, and the reference otherwise (CPU tensors, ONNX
export, a missing toolchain).  A path can be forced:

* per call: ``impl="reference" | "triton" | "cutlass" | "auto"``;
* per process: the environment variable ``STREAMREC_KERNELS`` (same values;
  ``STREAMREC_KERNELS_<OP>`` — e.g. ``STREAMREC_KERNELS_HSTU_ATTENTION`` —
  overrides it for one op).

``TRITON_INTERPRET=1`` lets the Triton kernels run on CPU tensors (tests only).
"""

from __future__ import annotations

import functools
import os

import torch

VALID_IMPLS = ("auto", "reference", "triton", "cutlass")


def requested_impl(op: str, impl: str | None) -> str:
    """The implementation asked for: the argument, else the op's env var, else the global one."""
    if impl is None:
        impl = os.environ.get(f"STREAMREC_KERNELS_{op.upper()}") or os.environ.get("STREAMREC_KERNELS") or "auto"
    impl = impl.lower()
    if impl not in VALID_IMPLS:
        raise ValueError(f"unknown kernel implementation {impl!r}; expected one of {VALID_IMPLS}")
    return impl


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=1)
def _triton_import() -> tuple[bool, str]:
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the install
        return False, f"triton does not import: {exc!r}"
    return True, f"triton {triton.__version__}"


def triton_available() -> tuple[bool, str]:
    """(ok, reason): can Triton kernels run in this process at all?"""
    ok, why = _triton_import()
    if not ok:
        return False, why
    if interpreting():
        return True, "triton interpreter (TRITON_INTERPRET=1)"
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, f"{why} on CUDA"


def in_export() -> bool:
    """True while torch.onnx / torch.export is tracing: kernels do not export."""
    try:
        if torch.onnx.is_in_onnx_export():
            return True
    except Exception:  # pragma: no cover
        pass
    try:
        if torch.compiler.is_exporting():
            return True
    except Exception:  # pragma: no cover
        pass
    return False


def needs_grad(*tensors) -> bool:
    """The fast kernels are forward-only: autograd must take the reference path."""
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def triton_usable_for(*tensors: torch.Tensor) -> tuple[bool, str]:
    """Whether the Triton path can take these tensors (CUDA tensors, or CPU under the interpreter)."""
    ok, why = triton_available()
    if not ok:
        return False, why
    if in_export():
        return False, "exporting (ONNX / torch.export): Triton kernels do not export"
    if needs_grad(*tensors):
        return False, "autograd: the kernel is forward-only"
    on_cuda = all(t.is_cuda for t in tensors)
    if on_cuda:
        return True, why
    if interpreting() and all(t.device.type == "cpu" for t in tensors):
        return True, why
    return False, "inputs are not on a CUDA device"
