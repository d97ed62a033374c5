"""HSTU input projection: ``SiLU(x @ weight.T + bias)`` as one CUTLASS GEMM on Hopper.

    silu_linear(x (M, K), weight (N, K), bias (N,)) -> (M, N)

* :func:`silu_linear_reference` - ``F.silu(F.linear(x, weight, bias))``.
* :func:`silu_linear_cutlass`   - a CUTLASS 3.x sm_90a kernel (TMA + wgmma, warp-specialised)
  whose epilogue adds the bias and applies SiLU before the single store
  (``kernels/csrc/silu_linear_sm90.cu``).  The source is compiled once with the
  machine's ``nvcc`` against the C++ headers shipped in the ``nvidia-cutlass`` wheel
  (``cutlass_library/source/include``) into a small shared library, cached under
  ``$STREAMREC_KERNEL_CACHE`` (default ``~/.cache/streamrec/kernels``) by source hash,
  and called through ctypes: the per-call host cost is one argument struct, one
  CUTLASS ``initialize`` (TMA descriptors) and one launch - none of the Python
  emitter's per-call marshalling (DESIGN 8: 1.13 ms/call through ``plan.run``).
  ``STREAMREC_SILU_LINEAR_LIB`` may name a prebuilt library instead.
* :func:`silu_linear`           - the dispatcher; :func:`available` says whether the
  CUTLASS path can run here and, if not, why.

Requirements of the CUTLASS path: a CUDA device of compute capability 9.x, bf16 or fp16
tensors, K and N multiples of 8, contiguous row-major operands with 16-byte aligned bases.
Anything else takes the PyTorch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

from . import _dispatch

_SRC = Path(__file__).resolve().parent / "csrc" / "silu_linear_sm90.cu"
_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1}
CUTLASS_DTYPES = tuple(_DTYPE_CODE)   # the dtypes the CUTLASS kernel takes
_lock = threading.Lock()
_ABI = 2
# auto takes CUTLASS only from this many rows: at M=256 cuBLAS F.linear + F.silu won (4.7 vs
# 5.5 us), at M=6400 CUTLASS won x1.34-1.40 (docs/perf.md); the crossover was not measured.
MIN_ROWS_FOR_CUTLASS = 4096


def num_variants(dtype: torch.dtype) -> int:
    """How many tile/schedule variants the library has for this dtype (see the .cu file)."""
    lib, why = _load()
    if lib is None:
        return 0
    return int(lib.streamrec_silu_linear_num_variants(_DTYPE_CODE[dtype]))


def pick_variant(M: int, N: int, K: int, dtype: torch.dtype) -> int:
    """Tile/schedule choice from the GPU sweep (run 2, H100, docs/perf.md): 128x128 cooperative
    for small M, 128x128 ping-pong for K >= 512, 256x128 cooperative otherwise."""
    if dtype != torch.bfloat16:
        return 1 if M > 1024 else 0
    if M <= 1024:
        return 0
    if K >= 512:
        return 1
    return 3


def silu_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.silu(F.linear(x, weight, bias))


# ------------------------------------------------------------------------------ build
def cutlass_include_dirs() -> list[Path] | None:
    """CUTLASS C++ headers: $CUTLASS_PATH, else the nvidia-cutlass wheel's copy."""
    roots = []
    if os.environ.get("CUTLASS_PATH"):
        roots.append(Path(os.environ["CUTLASS_PATH"]))
    try:
        import importlib.util

        spec = importlib.util.find_spec("cutlass_library")
        if spec and spec.origin:
            roots.append(Path(spec.origin).parent / "source")
    except Exception:
        pass
    for r in roots:
        if (r / "include" / "cutlass" / "cutlass.h").exists():
            return [r / "include", r / "tools" / "util" / "include"]
    return None


def find_nvcc() -> str | None:
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            cand = Path(os.environ[env]) / "bin" / "nvcc"
            if cand.exists():
                return str(cand)
    p = shutil.which("nvcc")
    if p:
        return p
    cand = Path("/usr/local/cuda/bin/nvcc")
    return str(cand) if cand.exists() else None


def _cache_dir() -> Path:
    return Path(os.environ.get("STREAMREC_KERNEL_CACHE", Path.home() / ".cache" / "streamrec" / "kernels"))


def build_library(force: bool = False, verbose: bool = False) -> Path:
    """Compile kernels/csrc/silu_linear_sm90.cu (about a minute, once per source hash)."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    inc = cutlass_include_dirs()
    if inc is None:
        raise RuntimeError("CUTLASS headers not found (pip install nvidia-cutlass, or set CUTLASS_PATH)")
    src = _SRC.read_bytes()
    key = hashlib.sha256(src + str(inc[0]).encode() + nvcc.encode()).hexdigest()[:16]
    out = _cache_dir() / f"libstreamrec_silu_linear_sm90_{key}.so"
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp.so")
    cmd = [nvcc, "-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC",
           "-gencode=arch=compute_90a,code=sm_90a", "--expt-relaxed-constexpr", "-DNDEBUG",
           *[f"-I{d}" for d in inc], "-o", str(tmp), str(_SRC)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed ({res.returncode}):\n{res.stderr[-4000:]}")
    if verbose and res.stderr:
        print(res.stderr[-2000:])
    os.replace(tmp, out)
    return out


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str]:
    try:
        path = os.environ.get("STREAMREC_SILU_LINEAR_LIB")
        lib_path = Path(path) if path else build_library()
        lib = ctypes.CDLL(str(lib_path))
        lib.streamrec_silu_linear.restype = ctypes.c_int
        lib.streamrec_silu_linear.argtypes = [ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 4 + \
            [ctypes.c_int] * 3 + [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        lib.streamrec_silu_linear_workspace.restype = ctypes.c_size_t
        lib.streamrec_silu_linear_workspace.argtypes = [ctypes.c_int] * 5
        lib.streamrec_silu_linear_abi_version.restype = ctypes.c_int
        if lib.streamrec_silu_linear_abi_version() != _ABI:
            raise RuntimeError(f"{lib_path} is ABI {lib.streamrec_silu_linear_abi_version()}, expected {_ABI}")
        lib.streamrec_silu_linear_num_variants.restype = ctypes.c_int
        lib.streamrec_silu_linear_num_variants.argtypes = [ctypes.c_int]
        return lib, f"CUTLASS sm_90a library {lib_path.name}"
    except Exception as exc:
        return None, f"CUTLASS library unavailable: {exc}"


@functools.lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    """(ok, reason): can the CUTLASS kernel run in this process?"""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if major != 9:
        return False, f"the kernel is built for sm_90a (Hopper); this device is sm_{major}{minor}"
    lib, why = _load()
    return (lib is not None), why


def _supported(x, weight, bias) -> tuple[bool, str]:
    if not (x.is_cuda and weight.is_cuda and bias is not None and bias.is_cuda):
        return False, "tensors are not all on CUDA (or no bias)"
    if x.dtype not in _DTYPE_CODE or weight.dtype != x.dtype or bias.dtype != x.dtype:
        return False, f"dtype {x.dtype}/{weight.dtype}/{bias.dtype}: needs one of bf16, fp16 for all three"
    if x.dim() < 2 or weight.dim() != 2 or bias.dim() != 1:
        return False, "shapes"
    K = x.shape[-1]
    N = weight.shape[0]
    if K % 8 or N % 8:
        return False, f"K={K} and N={N} must be multiples of 8 (16-byte TMA rows)"
    return True, ""


_ws_cache: dict = {}


def silu_linear_cutlass(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                        variant: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    lib, why = _load()
    if lib is None:
        raise RuntimeError(why)
    ok, why = _supported(x, weight, bias)
    if not ok:
        raise ValueError(f"silu_linear_cutlass: {why}")
    lead = x.shape[:-1]
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    weight = weight.contiguous()
    bias = bias.contiguous()
    M, N = x2.shape[0], weight.shape[0]
    if out is None:
        out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return out.view(*lead, N)
    for t in (x2, weight, bias, out):
        if t.data_ptr() % 16:
            raise ValueError("silu_linear_cutlass: operands must be 16-byte aligned")
    code = _DTYPE_CODE[x.dtype]
    if variant is None:
        variant = pick_variant(M, N, K, x.dtype)
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    wkey = (dev, code, variant, M, N, K)
    ws = _ws_cache.get(wkey)
    if ws is None:
        with _lock:
            nbytes = int(lib.streamrec_silu_linear_workspace(code, variant, M, N, K))
            ws = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=x.device)
            if len(_ws_cache) > 64:
                _ws_cache.clear()
            _ws_cache[wkey] = ws
    stream = torch.cuda.current_stream(x.device).cuda_stream
    rc = lib.streamrec_silu_linear(code, variant, x2.data_ptr(), weight.data_ptr(), bias.data_ptr(),
                                   out.data_ptr(), M, N, K, ws.data_ptr(), ws.numel(), stream)
    if rc != 0:
        raise RuntimeError(f"CUTLASS silu_linear failed with status {rc} (M={M}, N={N}, K={K})")
    return out.view(*lead, N)


def silu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                impl: str | None = None) -> torch.Tensor:
    """Dispatcher: the CUTLASS kernel where it can run, PyTorch otherwise.

    ``impl`` (or env ``STREAMREC_KERNELS[_SILU_LINEAR]``) = auto | reference | cutlass.
    """
    want = _dispatch.requested_impl("silu_linear", impl)
    if want == "reference":
        return silu_linear_reference(x, weight, bias)
    ok, why = available()
    if ok:
        ok, why = _supported(x, weight, bias)
    if ok and want == "auto" and x.numel() // max(1, x.shape[-1]) < MIN_ROWS_FOR_CUTLASS:
        ok, why = False, f"M < {MIN_ROWS_FOR_CUTLASS}: cuBLAS linear + SiLU is faster there"
    if ok and _dispatch.in_export():
        ok, why = False, "exporting (ONNX / torch.export): the CUTLASS kernel does not export"
    if ok and _dispatch.needs_grad(x, weight, bias):
        ok, why = False, "autograd: the kernel is forward-only"
    if want == "cutlass" and not ok:
        raise RuntimeError(f"silu_linear: CUTLASS path forced but unusable: {why}")
    if ok and want in ("auto", "cutlass"):
        return silu_linear_cutlass(x, weight, bias)
    return silu_linear_reference(x, weight, bias)


__all__ = ["silu_linear", "silu_linear_reference", "silu_linear_cutlass", "available", "build_library",
           "num_variants", "pick_variant"]
