"""GPU correctness of the kernels against their references (skipped without CUDA).

fp32 within ~1e-5 relative, fp16/bf16 within ~1e-2, random jagged lengths 1..N,
several head counts and dims.  Run: pytest tests/gpu/test_kernels_gpu.py
"""

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,max_len,H,qk,vd", [
    (16, 300, 2, 64, 64), (5, 1024, 4, 64, 64), (64, 64, 1, 32, 32), (7, 200, 3, 128, 64), (9, 77, 2, 16, 48),
])
def test_hstu_attention_gpu(dtype, B, max_len, H, qk, vd):
    from kernels import hstu_attention as ha
    from kernels.testing import random_jagged_attention_inputs, rel_err
    a = random_jagged_attention_inputs(B, max_len, H, qk, vd, dtype=dtype, device="cuda",
                                       seed=B + H + qk, scale=0.5)
    out = ha.hstu_attention(**a)
    assert out.dtype == dtype
    ref = ha.hstu_attention_reference(
        a["q"].double(), a["k"].double(), a["v"].double(), a["offsets"], a["ts_s"],
        a["pos_w"].double(), a["time_w"].double(), a["attn_n"], a["num_time_buckets"], a["max_seq_len"])
    err = rel_err(out, ref)
    assert err < TOL[dtype], err


@pytest.mark.parametrize("B,max_len,H,dtype", [(4, 1024, 4, torch.bfloat16), (3, 2000, 2, torch.float32),
                                               (64, 1024, 4, torch.bfloat16), (2, 700, 3, torch.float16)])
def test_hstu_attention_key_splits_gpu(B, max_len, H, dtype):
    """Query tiles split into two key halves (_seq_tiles) give the reference's result, the same bits
    on every call (the half that finishes second adds the other's sums: one fp32 add, either order)
    with the table and its add counters reused, and the unsplit kernel's result up to rounding."""
    from kernels import hstu_attention as ha
    from kernels.testing import random_jagged_attention_inputs, rel_err
    a = random_jagged_attention_inputs(B, max_len, H, 64, 64, dtype=dtype, device="cuda", seed=B + max_len,
                                       scale=0.5)
    out = ha.hstu_attention_triton(**a)
    tiles = ha.LAST_LAUNCH["tiles"]
    assert bool((tiles[6][tiles[1] > 0] >= 0).any()), "no tile was split"
    ref = ha.hstu_attention_reference(
        a["q"].double(), a["k"].double(), a["v"].double(), a["offsets"], a["ts_s"],
        a["pos_w"].double(), a["time_w"].double(), a["attn_n"], a["num_time_buckets"], a["max_seq_len"])
    assert rel_err(out, ref) < TOL[dtype]
    for _ in range(20):
        assert torch.equal(ha.hstu_attention_triton(**a), out)
    assert ha.LAST_LAUNCH["tiles"] is tiles
    assert rel_err(ha.hstu_attention_triton(**a, split_slots=0), out) < TOL[dtype] / 10


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                    reason="the Gluon experiment is written for Hopper (wgmma)")
@pytest.mark.parametrize("B,max_len,H,cfg,variant", [
    (16, 1024, 4, (64, 16, 2, 3), "one"), (64, 128, 2, (64, 16, 2, 2), "one"), (32, 300, 4, (64, 16, 4, 3), "one"),
    (40, 77, 2, (64, 32, 1, 3), "one"), (16, 1024, 4, (64, 16, 2, 3), "ws"), (40, 77, 2, (64, 32, 1, 3), "ws"),
    (16, 1024, 4, (64, 32, 4, 3), "split"), (40, 77, 2, (64, 32, 2, 2), "split")])
def test_gluon_experiment_matches_the_op_gpu(B, max_len, H, cfg, variant):
    """bench/attention_gluon_experiment.py computes what the op computes (same tables): one warpgroup,
    warp-specialised, and two warpgroups splitting each tile by columns. The op's SiLU rounds P to
    bf16 before the 1 / n and the experiment's after it, so the two differ by bf16 rounding (each is
    ~2.4e-3 from float64 here), not bit for bit."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.attention_gluon_experiment import attention_gluon
    from kernels import hstu_attention as ha
    from kernels.testing import random_jagged_attention_inputs, rel_err
    a = random_jagged_attention_inputs(B, max_len, H, 64, 64, dtype=torch.bfloat16, device="cuda", seed=B + H,
                                       scale=0.5)
    bm, bn, hg, st = cfg
    out = attention_gluon(**a, block_m=bm, block_n=bn, heads=hg, stages=st, ws=variant == "ws",
                          warpgroups=2 if variant == "split" else 1)
    assert rel_err(out, ha.hstu_attention_triton(**a)) < 5e-3
    ref = ha.hstu_attention_reference(
        a["q"].double(), a["k"].double(), a["v"].double(), a["offsets"], a["ts_s"],
        a["pos_w"].double(), a["time_w"].double(), a["attn_n"], a["num_time_buckets"], a["max_seq_len"])
    assert rel_err(out, ref) < TOL[torch.bfloat16]


def _decode_case(B, max_len, H, qk, vd, dtype, lq, seed, fixed_len=False):
    """Key sequences (lengths 1..max_len, or all max_len) and Lq_b queries on their last rows
    (Lq_b = min(lq, Lk_b), or uniform in 0..Lk_b when lq is None)."""
    from kernels.testing import random_jagged_attention_inputs
    lengths = torch.full((B,), max_len) if fixed_len else None
    a = random_jagged_attention_inputs(B, max_len, H, qk, vd, dtype=dtype, device="cuda", seed=seed,
                                       scale=0.5, lengths=lengths)
    g = torch.Generator().manual_seed(seed)
    lk = (a["offsets"][1:] - a["offsets"][:-1]).cpu()
    lqs = lk.clamp(max=lq) if lq is not None else (torch.rand(B, generator=g) * (lk + 1)).long().clamp(max=lk)
    qo = torch.zeros(B + 1, dtype=torch.int64)
    qo[1:] = lqs.cumsum(0)
    a["q"] = (torch.randn(int(qo[-1]), H, qk, generator=g) * 0.5).to(dtype).cuda()
    return a, qo.cuda()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,max_len,H,qk,vd,lq,fixed", [
    (64, 2048, 2, 64, 64, 1, True),       # decode: one new event per user, 2048 cached keys each
    (300, 500, 2, 64, 64, 1, False),      # decode, many users, lengths 1..500
    (7, 2048, 4, 64, 64, 1, False),
    (16, 1024, 2, 64, 64, None, False),   # Lq_b uniform in 0..Lk_b
    (9, 77, 3, 16, 48, 5, False),
    (33, 300, 1, 128, 64, 16, False),
])
def test_hstu_attention_q_offsets_gpu(dtype, B, max_len, H, qk, vd, lq, fixed):
    from kernels import hstu_attention as ha
    from kernels.testing import rel_err
    a, qo = _decode_case(B, max_len, H, qk, vd, dtype, lq, seed=B + max_len + H, fixed_len=fixed)
    ref = ha.hstu_attention_reference(
        a["q"].double(), a["k"].double(), a["v"].double(), a["offsets"], a["ts_s"],
        a["pos_w"].double(), a["time_w"].double(), a["attn_n"], a["num_time_buckets"], a["max_seq_len"],
        q_offsets=qo)
    out = ha.hstu_attention(**a, q_offsets=qo)                           # dispatcher: auto key split
    assert out.dtype == dtype and out.shape == (a["q"].shape[0], H, vd)
    assert rel_err(out, ref) < TOL[dtype]
    one = ha.hstu_attention_triton(**a, q_offsets=qo, num_splits=1)     # no split
    assert rel_err(one, ref) < TOL[dtype]


def test_hstu_attention_q_offsets_full_equals_plain_gpu():
    """q_offsets == offsets (every row a query) goes through the q_offsets code path and must
    agree with the plain op; the plain op itself must be unchanged (bitwise, same config)."""
    from kernels import hstu_attention as ha
    from kernels.testing import random_jagged_attention_inputs, rel_err
    a = random_jagged_attention_inputs(16, 300, 2, 64, 64, dtype=torch.bfloat16, device="cuda", seed=3, scale=0.5)
    plain = ha.hstu_attention_triton(**a)
    assert torch.equal(plain, ha.hstu_attention_triton(**a, q_offsets=a["offsets"]))   # same object: plain path
    assert rel_err(ha.hstu_attention_triton(**a, q_offsets=a["offsets"].clone()), plain) < 1e-3


def test_time_bucket_matches_on_gpu():
    from kernels import hstu_attention as ha
    dt = torch.arange(-(1 << 20), 1 << 22, device="cuda")
    mism = (ha.time_bucket_triton(dt, 64) != ha.time_bucket(dt, 64)).sum().item()
    assert mism == 0
    # the per-sequence kernel's int32 LUT path, up to 2^31 - 1
    big = torch.randint(-(2**31 - 1), 2**31 - 1, (1 << 22,), device="cuda")
    for d in (dt, big):
        assert torch.equal(ha.lut_time_bucket(d, 64), ha.time_bucket(d, 64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4096, 128), (1000, 96), (3, 5, 256)])
def test_norm_mul_gpu(dtype, shape):
    from kernels import norm_mul as nm
    from kernels.testing import rel_err
    x = (torch.randn(*shape, device="cuda") * 2 + 0.5).to(dtype)
    u = torch.randn(*shape, device="cuda").to(dtype)
    assert rel_err(nm.norm_mul(x, u), nm.norm_mul_reference(x.double(), u.double())) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,N,D,k", [(64, 100_000, 64, 100), (3, 40_000, 128, 10), (200, 50_000, 32, 1)])
def test_retrieval_topk_gpu(dtype, B, N, D, k):
    from kernels import retrieval_topk as rt
    u = torch.randn(B, D, device="cuda").to(dtype)
    items = torch.randn(N, D, device="cuda").to(dtype)
    s, i = rt.retrieval_topk(u, items, k, impl="triton")
    ref_s, _ = rt.retrieval_topk_reference(u.double(), items.double(), k)
    scale = ref_s.abs().max().item()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert (s.double() - ref_s).abs().max().item() <= tol * scale
    recomputed = (u.double()[:, None, :] * items.double()[i]).sum(-1)
    assert (recomputed - ref_s).abs().max().item() <= tol * scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,N,K", [(6400, 512, 256), (333, 1024, 256), (65536, 1024, 256), (8, 64, 64)])
def test_silu_linear_cutlass_gpu(dtype, M, N, K):
    from kernels import silu_linear as sl
    ok, why = sl.available()
    if not ok:
        pytest.skip(why)
    x = torch.randn(M, K, device="cuda").to(dtype)
    w = (torch.randn(N, K, device="cuda") / K ** 0.5).to(dtype)
    b = torch.randn(N, device="cuda").to(dtype)
    out = sl.silu_linear(x, w, b, impl="cutlass")
    ref = sl.silu_linear_reference(x.double(), w.double(), b.double())
    from kernels.testing import rel_err
    assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("B,S", [(64, 200), (16, 1024)])
def test_wired_encoder_gpu(B, S):
    """HSTUEncoder with its ops wired to kernels/ as the torch backend does (wire_kernels: CUTLASS
    projection where its library loads, Triton attention and norm gate, one tile table per encode)
    gives the PyTorch encoder's output in bf16; these batches have M >= 4096 rows, where the
    dispatcher takes CUTLASS whenever its library loads (``wired`` says whether it did)."""
    from kernels import silu_linear as sl
    from kernels.testing import rel_err
    from pipeline import hstu as ph
    from pipeline.encoders.testing import random_encoder
    from pipeline.encoders.torch_backend import wire_kernels
    cfg = ph.HSTUConfig(num_items=1000, dim=256, num_layers=2, num_heads=2, qk_dim=64, v_dim=64, max_seq_len=S,
                        attn_n=S, num_time_buckets=64)
    enc = random_encoder(cfg, seed=B + S, device="cuda").to(torch.bfloat16)
    g = torch.Generator().manual_seed(S)
    lengths = torch.randint(1, S + 1, (B,), generator=g)
    lengths[0] = S
    offsets = torch.zeros(B + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    T = int(offsets[-1])
    batch = (torch.randint(0, 1000, (T,), generator=g).cuda(), torch.randint(0, cfg.num_actions, (T,), generator=g).cuda(),
             (1_700_000_000_000 + torch.randint(0, 10**8, (T,), generator=g).cumsum(0)).cuda(), offsets.cuda())
    with torch.inference_mode():
        want = enc.encode(*batch).float()
        wired = wire_kernels(enc)
        got = enc.encode(*batch).float()
    ok, why = sl.available()
    assert wired[2] == (f"silu_linear: CUTLASS from {sl.MIN_ROWS_FOR_CUTLASS} rows" if ok else "silu_linear: PyTorch"), why
    assert T >= sl.MIN_ROWS_FOR_CUTLASS
    assert rel_err(got, want) < 2e-2
