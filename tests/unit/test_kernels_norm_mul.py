"""U * LayerNorm(AV) kernel vs its reference, on the CPU under TRITON_INTERPRET=1."""

import sys

import pytest
import torch

from kernels import testing as kt


@pytest.fixture(scope="module", autouse=True)
def nm():
    with kt.triton_interpreter():
        yield sys.modules["kernels.norm_mul"]


@pytest.mark.parametrize("shape,dtype,tol", [
    ((37, 48), torch.float32, 1e-5),
    ((5, 128), torch.float32, 1e-5),
    ((3, 7, 24), torch.float16, 1e-2),
    ((1, 64), torch.float16, 1e-2),
])
def test_norm_mul_matches_reference(nm, shape, dtype, tol):
    g = torch.Generator().manual_seed(shape[0])
    x = (torch.randn(*shape, generator=g) * 3 + 1).to(dtype)
    u = torch.randn(*shape, generator=g).to(dtype)
    out = nm.norm_mul_triton(x, u)
    ref = nm.norm_mul_reference(x.double(), u.double())
    assert out.shape == u.shape and out.dtype == dtype
    assert kt.rel_err(out, ref) < tol


def test_norm_mul_dispatch(nm, monkeypatch):
    x, u = torch.randn(6, 32), torch.randn(6, 32)
    ref = nm.norm_mul_reference(x, u)
    assert kt.rel_err(nm.norm_mul(x, u), ref) < 1e-5
    assert kt.rel_err(nm.norm_mul(x, u, impl="reference"), ref) == 0.0
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert kt.rel_err(nm.norm_mul(x, u), ref) == 0.0
    xg = x.clone().requires_grad_(True)
    nm.norm_mul(xg, u).sum().backward()
    assert xg.grad is not None
