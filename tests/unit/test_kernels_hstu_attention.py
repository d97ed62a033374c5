"""HSTU attention kernel vs its reference, on the CPU under TRITON_INTERPRET=1 (small shapes)."""

import sys

import pytest
import torch

from kernels import testing as kt


@pytest.fixture(scope="module", autouse=True)
def interp():
    with kt.triton_interpreter():
        yield sys.modules["kernels.hstu_attention"]


def _ref64(a, ha):
    return ha.hstu_attention_reference(
        a["q"].double(), a["k"].double(), a["v"].double(), a["offsets"], a["ts_s"],
        a["pos_w"].double(), a["time_w"].double(), a["attn_n"], a["num_time_buckets"], a["max_seq_len"])


@pytest.mark.parametrize("B,max_len,H,qk,vd,dtype,tol", [
    (6, 40, 2, 16, 16, torch.float32, 1e-5),
    (4, 33, 1, 32, 16, torch.float32, 1e-5),
    (3, 20, 3, 8, 24, torch.float32, 1e-5),
    (5, 37, 2, 16, 32, torch.float16, 1e-2),
    (2, 64, 4, 16, 16, torch.float16, 1e-2),
])
def test_triton_matches_reference(interp, B, max_len, H, qk, vd, dtype, tol):
    ha = interp
    a = kt.random_jagged_attention_inputs(B, max_len, H, qk, vd, dtype=dtype, seed=B * 100 + H)
    out = ha.hstu_attention_triton(**a)
    assert out.shape == (a["q"].shape[0], H, vd) and out.dtype == dtype
    assert kt.rel_err(out, _ref64(a, ha)) < tol


def test_block_sizes_and_short_pos_table(interp):
    ha = interp
    # sequences longer than both the block and the position table (clamped index), lengths 1..N
    lengths = torch.tensor([1, 50, 2, 17, 33, 1])
    a = kt.random_jagged_attention_inputs(6, 50, 2, 16, 16, lengths=lengths, max_seq_len=8, seed=3)
    ref = _ref64(a, ha)
    for bm, bn, pf in [(16, 16, True), (32, 16, True), (16, 32, False), (16, 16, False)]:
        out = ha.hstu_attention_triton(**a, block_m=bm, block_n=bn, prefetch=pf)
        assert kt.rel_err(out, ref) < 1e-5, (bm, bn, pf)


def test_empty_sequences_and_strided_views(interp):
    ha = interp
    lengths = torch.tensor([0, 5, 0, 9, 1])
    a = kt.random_jagged_attention_inputs(5, 9, 2, 16, 16, lengths=lengths, seed=7)
    T = a["q"].shape[0]
    # q, k, v as views of one fused projection, like the encoder's split of U, V, Q, K
    fused = torch.randn(T, 2 * 16 * 4)
    u, v, q, k = torch.split(fused, [32, 32, 32, 32], dim=-1)
    a.update(q=q.reshape(T, 2, 16), k=k.reshape(T, 2, 16), v=v.reshape(T, 2, 16))
    assert not a["q"].is_contiguous()
    assert kt.rel_err(ha.hstu_attention_triton(**a), _ref64(a, ha)) < 1e-5


def test_padded_reference_matches(interp):
    ha = interp
    a = kt.random_jagged_attention_inputs(4, 24, 2, 8, 8, seed=11)
    ref = ha.hstu_attention_reference(**a)
    pad = ha.hstu_attention_padded(**a, padded_len=24)
    assert kt.rel_err(pad, ref) < 1e-5
    nobias = ha.hstu_attention_padded(**a, padded_len=24, with_bias=False)
    a0 = dict(a, pos_w=torch.zeros_like(a["pos_w"]), time_w=torch.zeros_like(a["time_w"]))
    assert kt.rel_err(nobias, ha.hstu_attention_reference(**a0)) < 1e-5


def test_time_bucket_formula(interp):
    ha = interp
    dt = torch.tensor([0, 1, -1, 2, 3, 10, -10, 1000, 86400, 10**9], dtype=torch.int64)
    import math
    want = [min(math.floor(math.log(max(abs(int(x)), 1)) / 0.301), 63) for x in dt]
    assert ha.time_bucket(dt, 64).tolist() == want
    assert ha.time_bucket(dt, 8).max().item() == 7


def test_dispatcher_paths(interp, monkeypatch):
    ha = interp
    a = kt.random_jagged_attention_inputs(3, 12, 2, 8, 8, seed=5)
    ref = ha.hstu_attention_reference(**a)
    # interpreter on: auto takes Triton on CPU tensors; forced reference works
    assert kt.rel_err(ha.hstu_attention(**a), ref) < 1e-5
    assert kt.rel_err(ha.hstu_attention(**a, impl="reference"), ref) == 0.0
    monkeypatch.setenv("STREAMREC_KERNELS_HSTU_ATTENTION", "reference")
    assert kt.rel_err(ha.hstu_attention(**a), ref) == 0.0
    monkeypatch.delenv("STREAMREC_KERNELS_HSTU_ATTENTION")
    # the 9-argument call of pipeline.hstu (max_seq_len from pos_w)
    args9 = [a[n] for n in ("q", "k", "v", "offsets", "ts_s", "pos_w", "time_w", "attn_n", "num_time_buckets")]
    assert kt.rel_err(ha.hstu_attention(*args9), ref) < 1e-5
    # exporting: reference path
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    ok, why = sys.modules["kernels._dispatch"].triton_usable_for(a["q"])
    assert not ok and "export" in why
    monkeypatch.undo()
    # autograd: reference path (kernel is forward-only), gradients flow
    q = a["q"].clone().requires_grad_(True)
    out = ha.hstu_attention(**dict(a, q=q))
    out.sum().backward()
    assert q.grad is not None
    with pytest.raises(ValueError):
        ha.hstu_attention(**a, impl="bogus")


def test_dispatcher_without_interpreter_uses_reference(interp, monkeypatch):
    ha = interp
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    a = kt.random_jagged_attention_inputs(3, 10, 1, 8, 8, seed=9)
    ref = ha.hstu_attention_reference(**a)
    assert kt.rel_err(ha.hstu_attention(**a), ref) == 0.0
    with pytest.raises(RuntimeError):
        ha.hstu_attention(**a, impl="triton")


def test_matches_pipeline_reference(interp):
    hstu = pytest.importorskip("pipeline.hstu")
    ha = interp
    a = kt.random_jagged_attention_inputs(4, 16, 2, 8, 8, seed=13)
    args9 = [a[n] for n in ("q", "k", "v", "offsets", "ts_s", "pos_w", "time_w", "attn_n", "num_time_buckets")]
    theirs = hstu.hstu_attention_reference(*args9)
    assert kt.rel_err(ha.hstu_attention_triton(**a), theirs) < 1e-5


def test_timestamps_far_apart(interp):
    ha = interp
    # users decades apart in one block, and one user whose own history spans > 2^31 s
    lengths = torch.tensor([5, 7, 6])
    a = kt.random_jagged_attention_inputs(3, 7, 2, 8, 8, lengths=lengths, seed=21)
    ts = a["ts_s"].clone()
    ts[5:12] -= 1_500_000_000
    ts[12:] = torch.tensor([0, 10, 2**31, 2**31 + 7, 2**33, 2**33 + 1])
    a["ts_s"] = ts
    assert kt.rel_err(ha.hstu_attention_triton(**a), _ref64(a, ha)) < 1e-5
