"""Fused ``U * LayerNorm(AV)`` of the HSTU layer (no affine LayerNorm).

    norm_mul(attn_out, u, eps) = u * (attn_out - mean) / sqrt(var + eps)

per row over the last dim (H * v_dim), statistics in float32, result in u's dtype.
One pass over each input instead of the reference's separate norm and multiply.

The residual / output-projection fusion of the issue was not built: the output
projection is a GEMM that cuBLAS runs at full speed, and folding the residual
into it saves one (T, D) read+write, a few microseconds at the encoder's shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _dispatch

try:
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except Exception:  # pragma: no cover
    triton = None
    tl = None
    _HAVE_TRITON = False


def norm_mul_reference(attn_out: torch.Tensor, u: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """u * layer_norm(attn_out) (no affine), the readable PyTorch version."""
    return u * F.layer_norm(attn_out, (attn_out.shape[-1],), eps=eps)


if _HAVE_TRITON:

    @triton.jit
    def _norm_mul_kernel(X, U, Out, n_rows, n_cols, stride_x, stride_u, stride_o, eps,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_C)
        rmask = rows < n_rows
        cmask = cols < n_cols
        m = rmask[:, None] & cmask[None, :]
        r64 = rows.to(tl.int64)
        x = tl.load(X + r64[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / n_cols
        xc = tl.where(m, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / n_cols
        rstd = 1.0 / tl.sqrt(var + eps)
        u = tl.load(U + r64[:, None] * stride_u + cols[None, :], mask=m, other=0.0).to(tl.float32)
        y = u * xc * rstd[:, None]
        tl.store(Out + r64[:, None] * stride_o + cols[None, :], y.to(Out.dtype.element_ty), mask=m)


def norm_mul_triton(attn_out: torch.Tensor, u: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    if not _HAVE_TRITON:
        raise RuntimeError("triton is not installed")
    assert attn_out.shape == u.shape
    D = attn_out.shape[-1]
    x2 = attn_out.reshape(-1, D)
    u2 = u.reshape(-1, D)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if u2.stride(-1) != 1:
        u2 = u2.contiguous()
    R = x2.shape[0]
    out = torch.empty((R, D), dtype=u.dtype, device=u.device)
    if R == 0:
        return out.view(u.shape)
    block_c = triton.next_power_of_2(D)
    if _dispatch.interpreting():
        block_r, nw = 4, 1
    else:
        # ~4K elements per program keeps registers low and the grid large
        block_r = max(1, min(64, 4096 // block_c))
        nw = 4 if block_c * block_r <= 4096 else 8
    grid = (triton.cdiv(R, block_r),)
    _norm_mul_kernel[grid](x2, u2, out, R, D, x2.stride(0), u2.stride(0), out.stride(0), eps,
                           BLOCK_R=block_r, BLOCK_C=block_c, num_warps=nw)
    return out.view(u.shape)


def norm_mul(attn_out: torch.Tensor, u: torch.Tensor, eps: float = 1e-6, *, impl: str | None = None) -> torch.Tensor:
    """Dispatcher: Triton on CUDA, the reference elsewhere and while exporting."""
    want = _dispatch.requested_impl("norm_mul", impl)
    if want == "reference":
        return norm_mul_reference(attn_out, u, eps)
    ok, why = _dispatch.triton_usable_for(attn_out, u)
    if want == "triton" and not ok:
        raise RuntimeError(f"norm_mul: Triton path forced but unusable: {why}")
    if ok and want in ("auto", "triton"):
        return norm_mul_triton(attn_out, u, eps)
    return norm_mul_reference(attn_out, u, eps)


__all__ = ["norm_mul", "norm_mul_reference", "norm_mul_triton"]
