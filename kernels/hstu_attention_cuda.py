"""EXPERIMENT (docs/perf.md, exploration Q; not wired into the dispatcher): the HSTU attention op
(every row a query) as a hand-written CUDA kernel with warp-level tensor-core MMAs,
``kernels/csrc/hstu_attention_mma.cu``, timed by ``bench/attention_cuda_experiment.py``.

Same math, bias tables and tile table as the per-sequence Triton kernel
(:func:`kernels.hstu_attention.hstu_attention_triton`). Built on first use with the machine's
``nvcc`` (about 10 s, cached by source hash like the CUTLASS library) and called through ctypes;
``STREAMREC_HSTU_ATTN_LIB`` may name a prebuilt library instead.

What it takes (:func:`supported` says why not): a CUDA device of compute capability 9.x
(built for sm_90a; tried on an H200 only), bf16 q/k/v of head dim 64 with 16-byte aligned
rows and heads, every row a query (no ``q_offsets``), ``max_seq_len`` <= 8192 (the position
weights sit in shared memory) and ``num_time_buckets`` <= 72 (a time difference of 2^31 s or
more then falls in the last bucket, so sequences spanning that long take a saturating path).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
from pathlib import Path

import torch

from . import hstu_attention as ha
from .silu_linear import _cache_dir, find_nvcc

_SRC = Path(__file__).resolve().parent / "csrc" / "hstu_attention_mma.cu"
_ABI = 1
BLOCK_M = 64
MAX_POS = 8192
MAX_BUCKETS = 72
# (heads per program, keys per tile, min programs per SM) the library is built for
CONFIGS = ((1, 64, 2), (2, 32, 2), (2, 64, 2), (2, 32, 3), (4, 32, 1), (4, 32, 2), (4, 64, 1))
LAST_LAUNCH: dict = {}


def build_library(defines=(), force: bool = False) -> Path:
    """Compile kernels/csrc/hstu_attention_mma.cu for sm_90a (about 10 s, once per source hash);
    ``defines`` (e.g. ``["-DSR_NO_TIME"]``) build the timing-only variants of the experiment."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    flags = ["-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC", "-gencode=arch=compute_90a,code=sm_90a", *defines]
    key = hashlib.sha256(_SRC.read_bytes() + " ".join(flags).encode() + nvcc.encode()).hexdigest()[:16]
    out = _cache_dir() / f"libstreamrec_hstu_attn_{key}.so"
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp.so")
    res = subprocess.run([nvcc, *flags, "-o", str(tmp), str(_SRC)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed ({res.returncode}):\n{res.stderr[-4000:]}")
    os.replace(tmp, out)
    return out


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str]:
    try:
        path = os.environ.get("STREAMREC_HSTU_ATTN_LIB")
        lib_path = Path(path) if path else build_library()
        lib = ctypes.CDLL(str(lib_path))
        lib.streamrec_hstu_attn_abi_version.restype = ctypes.c_int
        if lib.streamrec_hstu_attn_abi_version() != _ABI:
            raise RuntimeError(f"{lib_path} is ABI {lib.streamrec_hstu_attn_abi_version()}, expected {_ABI}")
        f = lib.streamrec_hstu_attn_fwd
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_longlong] * 8 + [ctypes.c_int] * 3 + [ctypes.c_float] + \
            [ctypes.c_int] * 3 + [ctypes.c_void_p]
        return lib, f"CUDA library {lib_path.name}"
    except Exception as exc:
        return None, f"CUDA attention library unavailable: {exc}"


@functools.lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    """(ok, reason): can the CUDA kernel run in this process (device, toolchain, build)?"""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if major != 9:
        return False, f"the kernel is built for sm_90a (Hopper); this device is sm_{major}{minor}"
    ok, why = ha._dispatch.triton_available()
    if not ok:   # the tile table is built by two small Triton kernels
        return False, why
    lib, why = _load()
    return lib is not None, why


def supported(q, k, v, max_seq_len: int, num_time_buckets: int, q_offsets=None) -> tuple[bool, str]:
    """(ok, reason): do these inputs fit the kernel (module docstring)?"""
    if q_offsets is not None:
        return False, "q_offsets: the CUDA kernel runs every row as a query"
    if not (q.is_cuda and k.is_cuda and v.is_cuda):
        return False, "inputs are not on a CUDA device"
    if not (q.dtype == k.dtype == v.dtype == torch.bfloat16):
        return False, f"dtype {q.dtype}: the CUDA kernel is bf16 only"
    if q.dim() != 3 or q.shape[-1] != 64 or k.shape != q.shape or v.shape != q.shape:
        return False, f"shapes {tuple(q.shape)}/{tuple(k.shape)}/{tuple(v.shape)}: needs q, k, v of (T, H, 64)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1 or t.stride(0) % 8 or t.stride(1) % 8 or t.data_ptr() % 16:
            return False, f"{name}: rows and heads must be contiguous and 16-byte aligned"
    if max_seq_len > MAX_POS:
        return False, f"max_seq_len {max_seq_len} > {MAX_POS}"
    if num_time_buckets > MAX_BUCKETS:
        return False, f"num_time_buckets {num_time_buckets} > {MAX_BUCKETS}"
    return True, ""


def default_config(H: int) -> tuple[int, int, int]:
    """(heads per program, keys per tile, min programs per SM); see docs/perf.md."""
    if H % 2 == 0:
        return 2, 32, 2
    return 1, 64, 2


def mma_lut(time_w: torch.Tensor, num_time_buckets: int) -> torch.Tensor:
    """(128, 4) int32: per quarter-octave cell of float32(|dt|) (:func:`ha.bucket_lut`) the
    threshold test value of its low 21 bits and the float32 bits of time_w[b] and time_w[b + 1]
    (time_w rounded to bf16 first, as the padded reference and the Triton kernel use it)."""
    e = ha.bucket_lut(num_time_buckets, time_w.device).to(torch.int64)
    b = e & 1023
    w = time_w.detach().to(torch.bfloat16).float()
    lo = w[b].view(torch.int32)
    hi = w[(b + 1).clamp(max=num_time_buckets - 1)].view(torch.int32)
    return torch.stack([(e >> 10).to(torch.int32), lo, hi, torch.zeros_like(lo)], 1).contiguous()


def hstu_attention_cuda(q, k, v, offsets, ts_s, pos_w, time_w, attn_n: int, num_time_buckets: int,
                        max_seq_len: int | None = None, *, heads: int | None = None, block_n: int | None = None,
                        min_blocks: int | None = None) -> torch.Tensor:
    """The CUDA kernel (module docstring); raises where :func:`available` or :func:`supported` say no."""
    lib, why = _load()
    if lib is None:
        raise RuntimeError(why)
    max_seq_len = int(max_seq_len or pos_w.shape[0])
    ok, why = supported(q, k, v, max_seq_len, num_time_buckets)
    if not ok:
        raise ValueError(f"hstu_attention_cuda: {why}")
    T, H, _ = q.shape
    hg, bn, mb = default_config(H)
    hg, bn, mb = heads or hg, block_n or bn, min_blocks or mb
    if (hg, bn, mb) not in CONFIGS or H % hg:
        raise ValueError(f"no CUDA kernel for heads={hg}, block_n={bn}, min_blocks={mb} (H={H}); built: {CONFIGS}")
    out = torch.empty_like(q)
    if T == 0:
        return out
    offsets = offsets.to(torch.int64).contiguous()
    ts_s = ts_s.to(torch.int64).contiguous()
    tiles = ha._seq_tiles(offsets, ts_s, T, BLOCK_M, bn)
    pos = ha._cached("pos_f32", pos_w, (max_seq_len,),
                     lambda: pos_w.detach()[:max_seq_len].to(torch.bfloat16).float().contiguous())
    lut = ha._cached("mma_lut", time_w, (num_time_buckets,), lambda: mma_lut(time_w, num_time_buckets))
    G = tiles.shape[1]
    global LAST_LAUNCH
    LAST_LAUNCH = {"kernel": "cuda", "grid": (G, H // hg), "heads": hg, "block_n": bn, "min_blocks": mb}
    rc = lib.streamrec_hstu_attn_fwd(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), tiles.data_ptr(), ts_s.data_ptr(),
        pos.data_ptr(), lut.data_ptr(),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        G, H // hg, pos.shape[0], 1.0 / float(attn_n), hg, bn, mb, torch.cuda.current_stream(q.device).cuda_stream)
    if rc != 0:
        raise RuntimeError(f"hstu_attention_cuda: launch failed (code {rc})")
    return out
