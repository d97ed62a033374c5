"""Test helpers for the kernels package: random jagged inputs and a Triton-interpreter scope.

Triton decides at *decoration* time whether a kernel is compiled for the GPU or run by
the CPU interpreter (``TRITON_INTERPRET=1``).  :func:`triton_interpreter` sets the
variable, re-imports the kernel modules so their kernels are interpreted, and on exit
restores the variable and re-imports them again, so nothing leaks into other tests.
"""

from __future__ import annotations

import contextlib
import importlib
import os

import torch

KERNEL_MODULES = ("kernels.hstu_attention", "kernels.norm_mul", "kernels.retrieval_topk")


def _reload_all():
    import sys

    for name in KERNEL_MODULES:
        if name in sys.modules:
            importlib.reload(sys.modules[name])
        else:
            importlib.import_module(name)


@contextlib.contextmanager
def triton_interpreter():
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        _reload_all()
        yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
        _reload_all()


def random_lengths(B: int, max_len: int, generator: torch.Generator | None = None,
                   min_len: int = 1) -> torch.Tensor:
    return torch.randint(min_len, max_len + 1, (B,), generator=generator)


def key_tiles(lengths, block_m: int, block_n: int) -> int:
    """(query tile, key tile) pairs the per-sequence attention kernel visits for these sequence
    lengths (BLOCK_M-row query tiles aligned to the sequence end, keys up to each tile's last row):
    its work, which depends on the lengths; the padded reference's does not."""
    return sum(-(-(L - t * block_m) // block_n) for L in lengths for t in range(-(-L // block_m)))


def random_jagged_attention_inputs(B: int, max_len: int, H: int, qk_dim: int, v_dim: int,
                                   dtype=torch.float32, device="cpu", num_time_buckets: int = 64,
                                   max_seq_len: int | None = None, min_len: int = 1,
                                   lengths: torch.Tensor | None = None, seed: int | None = None,
                                   scale: float = 1.0):
    """Random jagged HSTU attention inputs (lengths uniform in [min_len, max_len]).

    Timestamps are increasing integer seconds with gaps from 0 s to ~3 days, so the
    time buckets spread over 0..~40.  Returns a dict of the op's keyword arguments.
    """
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    if lengths is None:
        lengths = random_lengths(B, max_len, g, min_len)
    offsets = torch.zeros(B + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    T = int(offsets[-1])
    max_seq_len = max_seq_len or max_len

    def rn(*shape):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    gaps = torch.exp(torch.rand(T, generator=g) * 12.5).to(torch.int64) - 1   # 0 .. ~2.7e5 s
    ts = 1_700_000_000 + torch.cumsum(gaps, 0)
    return dict(
        q=rn(T, H, qk_dim).to(device), k=rn(T, H, qk_dim).to(device), v=rn(T, H, v_dim).to(device),
        offsets=offsets.to(device), ts_s=ts.to(device),
        pos_w=(torch.randn(max_seq_len, generator=g) * 0.5).to(device),
        time_w=(torch.randn(num_time_buckets, generator=g) * 0.5).to(device),
        attn_n=max_len, num_time_buckets=num_time_buckets, max_seq_len=max_seq_len,
    )


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN-propagating)."""
    out = out.double()
    ref = ref.double()
    if not torch.isfinite(out).all():
        return float("nan")
    den = ref.norm().item()
    return (out - ref).norm().item() / (den if den > 0 else 1.0)
