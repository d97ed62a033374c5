"""silu_linear: reference math and the CPU fallback of the dispatcher (the CUTLASS kernel
itself is tested in tests/gpu/)."""

import torch
import torch.nn.functional as F

from kernels import silu_linear as sl


def test_reference_math():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(7, 16, generator=g), torch.randn(24, 16, generator=g), torch.randn(24, generator=g)
    want = (x @ w.T + b) * torch.sigmoid(x @ w.T + b)
    assert torch.allclose(sl.silu_linear_reference(x, w, b), want, atol=1e-6)


def test_available_reports_a_reason():
    ok, why = sl.available()
    assert isinstance(ok, bool) and isinstance(why, str) and why
    if not torch.cuda.is_available():
        assert not ok and "CUDA" in why


def test_dispatcher_falls_back_on_cpu():
    x, w, b = torch.randn(4, 8), torch.randn(16, 8), torch.randn(16)
    assert torch.equal(sl.silu_linear(x, w, b), F.silu(F.linear(x, w, b)))
    if not sl.available()[0]:
        import pytest
        with pytest.raises(RuntimeError):
            sl.silu_linear(x, w, b, impl="cutlass")
