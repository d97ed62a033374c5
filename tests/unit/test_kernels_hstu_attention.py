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


@pytest.mark.parametrize("dtype,scale,tol", [(torch.float32, 40.0, 1e-5), (torch.float16, 8.0, 1e-2)])
def test_causal_mask_holds_for_large_scores(interp, dtype, scale, tol):
    """The causal mask lives in the position tiles (pos_tiles): a key after its query gets the
    dtype's most negative bias, so SiLU of its score is exactly 0 however large q k^T is (here up
    to ~1e4 in fp32, ~4e2 in fp16); a weaker mask value would let the future leak in."""
    ha = interp
    a = kt.random_jagged_attention_inputs(5, 70, 2, 16, 16, dtype=dtype, seed=int(scale), scale=scale)
    ref = _ref64(a, ha)
    assert ref.abs().max() > 100         # the scores are large: the test would see a leak
    assert kt.rel_err(ha.hstu_attention_triton(**a), ref) < tol


def test_block_sizes_and_short_pos_table(interp):
    ha = interp
    # sequences longer than both the block and the position table (clamped index), lengths 1..N
    lengths = torch.tensor([1, 50, 2, 17, 33, 1])
    a = kt.random_jagged_attention_inputs(6, 50, 2, 16, 16, lengths=lengths, max_seq_len=8, seed=3)
    ref = _ref64(a, ha)
    for bm, bn, hg in [(16, 16, 1), (32, 16, 2), (32, 32, 1), (64, 16, 2)]:
        out = ha.hstu_attention_triton(**a, block_m=bm, block_n=bn, heads=hg)
        assert kt.rel_err(out, ref) < 1e-5, (bm, bn, hg)
    with pytest.raises(ValueError):                   # key tiles must divide query tiles
        ha.hstu_attention_triton(**a, block_m=16, block_n=32)
    for bm, bn in [(16, 16), (32, 16), (16, 32)]:                  # the token-block kernel on every row
        out = ha.hstu_attention_triton(**a, block_m=bm, block_n=bn, kernel="block")
        assert kt.rel_err(out, ref) < 1e-5, (bm, bn)


def test_inference_mode_tensors(interp):
    ha = interp
    a = kt.random_jagged_attention_inputs(4, 30, 2, 16, 16, seed=8)
    ref = _ref64(a, ha)
    with torch.inference_mode():
        b = {n: (t.clone() if isinstance(t, torch.Tensor) else t) for n, t in a.items()}   # inference tensors
        assert kt.rel_err(ha.hstu_attention_triton(**b), ref) < 1e-5
        b["ts_s"][:5] -= 2**40                     # changed in place: no stale tile table
        out = ha.hstu_attention_triton(**b)
    assert kt.rel_err(out, _ref64(dict(a, ts_s=b["ts_s"].clone()), ha)) < 1e-5


def test_same_batch_shares_the_tile_table_of_inference_tensors(interp):
    """Inside same_batch() calls on the same offsets / ts_s build one tile table, also for
    inference tensors (which test_inference_mode_tensors shows are rebuilt outside it); the
    scope's end drops it."""
    ha = interp
    a = kt.random_jagged_attention_inputs(4, 30, 2, 16, 16, seed=8)
    ref = _ref64(a, ha)
    with torch.inference_mode():
        b = {n: (t.clone() if isinstance(t, torch.Tensor) else t) for n, t in a.items()}
        ha.hstu_attention_triton(**b)
        outside = ha.LAST_LAUNCH["tiles"]
        ha.hstu_attention_triton(**b)
        assert ha.LAST_LAUNCH["tiles"] is not outside
        with ha.same_batch():
            out1 = ha.hstu_attention_triton(**b)
            first = ha.LAST_LAUNCH["tiles"]
            with ha.same_batch():                  # re-entrant
                out2 = ha.hstu_attention_triton(**b)
            assert ha.LAST_LAUNCH["tiles"] is first
            ha.hstu_attention_triton(**b, block_m=32)       # another config: its own table
            assert ha.LAST_LAUNCH["tiles"] is not first
        assert "last" not in ha._TILES_CACHE
    assert torch.equal(out1, out2) and kt.rel_err(out1, ref) < 1e-5


def test_wired_encoder_matches_torch_and_its_layers_share_one_tile_table(interp):
    """pipeline.encoders.torch_backend.wire_kernels (what the torch backend does on CUDA) gives the
    PyTorch encoder's output; its 2 layers use one tile table per encode, under inference_mode."""
    hstu = pytest.importorskip("pipeline.hstu")
    from pipeline.encoders.testing import random_encoder
    from pipeline.encoders.torch_backend import wire_kernels
    ha = interp
    cfg = hstu.HSTUConfig(num_items=50, dim=32, num_layers=2, num_heads=2, qk_dim=16, v_dim=16, max_seq_len=40,
                          attn_n=40, num_time_buckets=24)
    enc = random_encoder(cfg, seed=0, bias_std=0.5)
    lengths = torch.tensor([7, 1, 33, 20])
    offsets = torch.zeros(5, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    g = torch.Generator().manual_seed(1)
    T = int(offsets[-1])
    items = torch.randint(0, 50, (T,), generator=g)
    actions = torch.randint(0, cfg.num_actions, (T,), generator=g)
    ts = 1_700_000_000_000 + torch.randint(0, 10**9, (T,), generator=g).cumsum(0)
    tables = []

    def attention(*args, **kw):
        out = ha.hstu_attention(*args, **kw)
        tables.append(ha.LAST_LAUNCH["tiles"])
        return out

    with torch.inference_mode():
        want = enc.encode(items, actions, ts, offsets)
        assert len(wire_kernels(enc)) == 3 and enc.norm_mul is not hstu.norm_mul_torch
        enc.set_kernels(attention=attention)
        got = enc.encode(items, actions, ts, offsets)
        enc.encode(items, actions, ts, offsets)
    assert kt.rel_err(got, want) < 1e-5
    assert len(tables) == 4 and tables[0] is tables[1] and tables[2] is tables[3] and tables[0] is not tables[2]


def test_wire_kernels_projection_without_building_cutlass(interp, monkeypatch):
    """wire_kernels neither loads nor builds the CUTLASS library for an fp32 encoder or when the
    projection is forced to PyTorch, and says so in its description."""
    hstu = pytest.importorskip("pipeline.hstu")
    from kernels import silu_linear as sl
    from pipeline.encoders.torch_backend import wire_kernels

    def no_build():
        raise AssertionError("the CUTLASS library was asked for")

    monkeypatch.setattr(sl, "available", no_build)
    cfg = hstu.HSTUConfig(num_items=10, dim=16, num_layers=1, num_heads=1, qk_dim=8, v_dim=8, max_seq_len=8, attn_n=8)
    assert wire_kernels(hstu.HSTUEncoder(cfg))[2] == "silu_linear: PyTorch"               # fp32
    monkeypatch.setenv("STREAMREC_KERNELS_SILU_LINEAR", "reference")
    assert wire_kernels(hstu.HSTUEncoder(cfg).to(torch.bfloat16))[2] == "silu_linear: PyTorch"


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


@pytest.mark.parametrize("nb", [64, 8, 100])
def test_bucket_lut_is_exact(interp, nb):
    ha = interp
    # every |dt| below 2^16, each bucket threshold and its neighbours, values that round to 2^31 in
    # float32, and random ones up to 2^31 - 1
    thr = ha.bucket_thresholds(nb, "cpu")[1:nb]
    edges = thr[torch.isfinite(thr) & (thr < 2**31 - 2)].to(torch.int64)
    near_2_31 = torch.tensor([2**31 - 1, 2**31 - 3, 2**31 - 64, 2**31 - 65, 2**31 - 200])   # float32 -> 2^31
    dt = torch.cat([torch.arange(-(1 << 16), 1 << 16), edges - 1, edges, edges + 1, near_2_31, -near_2_31,
                    torch.randint(-(2**31 - 1), 2**31 - 1, (100_000,), generator=torch.Generator().manual_seed(nb))])
    assert torch.equal(ha.lut_time_bucket(dt, nb), ha.time_bucket(dt, nb))



@pytest.mark.parametrize("bm,bn,P", [(16, 16, 40), (64, 16, 8), (64, 32, 100), (32, 32, 1)])
def test_pos_tiles_cover_every_tile(interp, bm, bn, P):
    ha = interp
    pos_w = torch.randn(P, dtype=torch.float64)
    tiles, n = ha.pos_tiles(pos_w, P, bm, bn, torch.float64)
    i = torch.arange(bm)[:, None]
    j = torch.arange(bn)[None, :]
    # query tiles beyond the table too (clamped), and first tiles that start before row 0
    for q0 in [*range(bn - bm, 0, bn), *range(0, 3 * P + 2 * bm, bm)]:
        for j0 in range(0, q0 + bm, bn):               # every key tile up to the diagonal
            d = min((q0 - j0 + bm - bn) // bn, n - 1)
            rel = q0 + i - (j0 + j)
            want = pos_w[rel.clamp(0, P - 1)]
            got = tiles[d * bm:(d + 1) * bm]
            assert torch.equal(got[rel >= 0], want[rel >= 0]), (q0, j0)
    # the halved tiles of the fast SiLU (_silu_v), in bf16: exactly half
    t16, _ = ha.pos_tiles(pos_w, P, bm, bn, torch.bfloat16)
    assert torch.equal(ha.pos_tiles(pos_w, P, bm, bn, torch.bfloat16, 0.5)[0].float(), t16.float() * 0.5)


@pytest.mark.parametrize("bm,align,slots", [(64, 16, 0), (64, 32, 0), (32, 16, 0), (16, 16, 0), (64, 0, 0),
                                             (64, 32, 200), (64, 16, 300), (16, 16, 500)])
def test_seq_tiles_cover_every_row_once(interp, bm, align, slots):
    """The tile table: every row of every sequence in exactly one tile, longest tiles first; with
    ``align`` the tiles end at the sequence end rounded up to ``align`` and start at multiples of it.
    With key splits (``slots``) the tiles above the average load of a slot come as two columns that
    share a unit and cover the tile's keys once: fewer units than slots."""
    ha = interp
    # the 2500- and 3000-row sequences have tiles past the last sort bin (they share it)
    lengths = torch.tensor([0, 1, 15, 16, 17, 31, 33, 63, 64, 65, 100, 127, 128, 129, 200, 0, 7, 3000, 2500])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    T = int(offsets[-1])
    sn = align or bm
    min_split = 2 * bm // sn
    tiles = ha._seq_tiles(offsets, torch.arange(T, dtype=torch.int64), T, bm, align, slots, 1, min_split).tolist()
    seen = {b: [] for b in range(len(lengths))}
    ends = {b: [] for b in range(len(lengths))}
    parts = {}
    sbins = []        # the columns' sort bins in table order: key tiles (a split tile's halves: half its bin)
    for s, L, q0, safe, jb, je, unit in zip(*tiles):
        if L == 0:
            continue
        b = int(torch.searchsorted(offsets, torch.tensor(s), right=True)) - 1
        assert L == lengths[b] and safe == 1 and -bm < q0 < L and q0 % sn == 0
        kend = min(q0 + bm, L)
        parts.setdefault((b, q0), []).append((jb, je, unit))
        if unit < 0:
            assert (jb, je) == (0, kend)
        c = min(-(-kend // sn), ha._TILE_BINS - 1)
        sbins.append((c + 1) // 2 if unit >= 0 else c)
    split = {u for ps in parts.values() for _, _, u in ps if u >= 0}
    for (b, q0), ps in parts.items():
        kend = min(q0 + bm, lengths[b].item())
        seen[b] += [r for r in range(q0, q0 + bm) if 0 <= r < lengths[b]]
        ends[b].append(q0 + bm)
        ps.sort()
        if len(ps) == 2:    # the halves of a split tile: [0, mid) of full key tiles only, [mid, kend)
            (jb0, je0, u0), (jb1, je1, u1) = ps
            assert u0 == u1 >= 0 and jb0 == 0 and je0 == jb1 and je1 == kend and je0 <= max(q0, 0)
            assert je0 % sn == 0 and -(-kend // sn) > min_split
        else:
            assert len(ps) == 1 and ps[0] == (0, kend, -1)
    for b, L in enumerate(lengths.tolist()):
        assert sorted(seen[b]) == list(range(L)), b
        if L and align:       # the last tile ends at L rounded up to ``align``
            assert max(ends[b]) == -(-L // align) * align, b
        elif L:               # the first tile starts at row 0
            assert min(ends[b]) == bm, b
    assert len(parts) == sum(-(-L // bm) for L in lengths.tolist())
    if align:                 # the work the benchmark reports (kernels.testing.key_tiles) is the table's
        assert sum(-(-(je - jb) // align) for ps in parts.values() for jb, je, _ in ps) == \
            kt.key_tiles(lengths.tolist(), bm, align)
    assert sorted(split) == list(range(len(split))) and len(split) < max(slots, 1) and len(split) <= T // bm
    if slots:                 # the longest tile had more key tiles than a slot's average load
        assert split
    assert sbins == sorted(sbins, reverse=True)      # longest first


@pytest.mark.parametrize("dtype,H,hg,tol", [(torch.float32, 2, 1, 1e-5), (torch.float16, 4, 4, 1e-2),
                                            (torch.float16, 4, 2, 1e-2)])
def test_key_splits(interp, monkeypatch, dtype, H, hg, tol):
    """Tiles split in two key halves (_seq_tiles) give the reference's result; a second call on the
    same table (cached, the kernel's add counters reset by the first) gives the same bits."""
    ha = interp
    monkeypatch.setattr(ha, "SPLIT_MIN_KEYS", 0)        # small shapes: split tiles of 5 key tiles
    lengths = torch.tensor([70, 3, 40, 1, 66, 9])
    a = kt.random_jagged_attention_inputs(6, 70, H, 16, 16, dtype=dtype, lengths=lengths, seed=11, scale=0.5)
    ref = _ref64(a, ha)
    out0 = ha.hstu_attention_triton(**a, block_m=16, block_n=16, heads=hg, split_slots=0)
    tiles0 = ha.LAST_LAUNCH["tiles"]
    assert bool((tiles0[6][tiles0[1] > 0] < 0).all())                   # no split
    out1 = ha.hstu_attention_triton(**a, block_m=16, block_n=16, heads=hg, split_slots=12)
    tiles = ha.LAST_LAUNCH["tiles"]
    n_split = int((tiles[6][tiles[1] > 0] >= 0).sum()) // 2
    assert 1 <= n_split < 12
    assert kt.rel_err(out0, ref) < tol and kt.rel_err(out1, ref) < tol
    out2 = ha.hstu_attention_triton(**a, block_m=16, block_n=16, heads=hg, split_slots=12)
    assert ha.LAST_LAUNCH["tiles"] is tiles and torch.equal(out1, out2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("nb", [64, 8, 100])
def test_folded_lut_gives_the_time_weight(interp, dtype, nb):
    ha = interp
    # the kernel's decode of one folded-LUT entry, on the values of test_bucket_lut_is_exact
    thr = ha.bucket_thresholds(nb, "cpu")[1:nb]
    edges = thr[torch.isfinite(thr) & (thr < 2**31 - 2)].to(torch.int64)
    dt = torch.cat([torch.arange(-(1 << 16), 1 << 16), edges - 1, edges, edges + 1, torch.tensor([2**31 - 1]),
                    torch.randint(-(2**31 - 1), 2**31 - 1, (50_000,), generator=torch.Generator().manual_seed(nb))])
    time_w = torch.randn(nb)
    xb = dt.abs().clamp(min=1).to(torch.float32).view(torch.int32).long()

    def decode(lut):
        e = lut[(xb >> ha.LUT_SHIFT) - ha.LUT_BASE]
        up = (xb & ha.LUT_LOW) > (e & 0xFFFFFFFF)
        return torch.where(up, (e >> 48) & 0xFFFF, (e >> 32) & 0xFFFF).to(torch.int16).view(dtype)
    got = decode(ha.folded_lut(time_w, nb, dtype))
    assert torch.equal(got, time_w.to(dtype)[ha.time_bucket(dt, nb)])
    # the halved table of the fast SiLU (_silu_v): exactly half of every weight
    assert torch.equal(decode(ha.folded_lut(time_w, nb, dtype, 0.5)).float(), got.float() * 0.5)


@pytest.mark.parametrize("H", [2, 4])   # 4: a 4-head program keeps only the timestamps' low words
def test_16bit_bias_tables_and_their_cache(interp, H):
    ha = interp
    # q = 0: the scores are the bias alone, so a wrong weight shows.  Sequence 2 spans > 2^31 s
    # (the log path), the others take the folded LUT
    lengths = torch.tensor([9, 30, 12])
    a = kt.random_jagged_attention_inputs(3, 30, H, 16, 16, dtype=torch.float16, lengths=lengths, seed=5,
                                          max_seq_len=20)
    a["q"] = torch.zeros_like(a["q"])
    a["ts_s"][39:] = torch.arange(12) * 2**29
    def ref16():     # the fp64 reference with the tables rounded to the input dtype, as the kernel takes them
        return _ref64(dict(a, pos_w=a["pos_w"].half().float(), time_w=a["time_w"].half().float()), ha)
    plain = ha.hstu_attention_triton(**a)
    assert kt.rel_err(plain, ref16()) < 2e-3
    # the token-block kernel (q_offsets) takes the same 16-bit tables
    assert kt.rel_err(ha.hstu_attention_triton(**a, q_offsets=a["offsets"].clone()), plain.double()) < 1e-5
    # the derived tables follow in-place updates of the weights (an optimizer step)
    with torch.no_grad():
        a["pos_w"].mul_(-2.0)
        a["time_w"].add_(1.0)
    assert kt.rel_err(ha.hstu_attention_triton(**a), ref16()) < 2e-3
    a32 = dict(a, q=a["q"].float(), k=a["k"].float(), v=a["v"].float())
    assert kt.rel_err(ha.hstu_attention_triton(**a32), _ref64(a32, ha)) < 1e-5

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
    # the tile table (which sequences take the int32 bucket path) follows the timestamps: a new
    # tensor with the same offsets, and the same tensor changed in place
    for far in (False, True):
        a["offsets"] = a["offsets"].clone()
        a["ts_s"] = ts.clone()
        a["ts_s"][12:] = torch.tensor([0, 10, 20, 30, 40, 50])       # every sequence int32-safe
        assert kt.rel_err(ha.hstu_attention_triton(**a), _ref64(a, ha)) < 1e-5
        if far:
            a["ts_s"][12:] = torch.tensor([0, 10, 20, 2**31 + 7, 40, 2**32])   # in place
        else:
            a["ts_s"] = ts                                            # a new tensor
        assert kt.rel_err(ha.hstu_attention_triton(**a), _ref64(a, ha)) < 1e-5, far


# ----------------------------------------------------------------- queries on the last rows (q_offsets)
def _decode_inputs(B, max_len, H, qk, vd, dtype=torch.float32, seed=0, lq=None):
    """Random key sequences (lengths 1..max_len) and, per sequence, Lq_b queries on its last rows:
    Lq_b uniform in 0..Lk_b, or ``lq`` (an int, capped at Lk_b).  Returns (kwargs, q_offsets, Lq)."""
    a = kt.random_jagged_attention_inputs(B, max_len, H, qk, vd, dtype=dtype, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    lk = (a["offsets"][1:] - a["offsets"][:-1]).tolist()
    lqs = [min(lq, n) if lq is not None else int(torch.randint(0, n + 1, (1,), generator=g)) for n in lk]
    q_offsets = torch.zeros(B + 1, dtype=torch.int64)
    q_offsets[1:] = torch.cumsum(torch.tensor(lqs), 0)
    a["q"] = torch.randn(int(q_offsets[-1]), H, qk, generator=g).to(dtype)
    return a, q_offsets, lqs


def _ref64_q(a, ha, q_offsets):
    return ha.hstu_attention_reference(
        a["q"].double(), a["k"].double(), a["v"].double(), a["offsets"], a["ts_s"],
        a["pos_w"].double(), a["time_w"].double(), a["attn_n"], a["num_time_buckets"], a["max_seq_len"],
        q_offsets=q_offsets)


@pytest.mark.parametrize("B,H,qk,vd,dtype,tol,lq", [
    (7, 1, 16, 32, torch.float32, 1e-5, None),
    (6, 2, 32, 16, torch.float32, 1e-5, None),
    (9, 2, 16, 16, torch.float32, 1e-5, 1),      # decode: one new event per user
    (6, 2, 16, 32, torch.float16, 1e-2, None),
    (9, 1, 32, 16, torch.float16, 1e-2, 1),
])
def test_triton_q_offsets_matches_reference(interp, B, H, qk, vd, dtype, tol, lq):
    ha = interp
    a, qo, lqs = _decode_inputs(B, 40, H, qk, vd, dtype=dtype, seed=B * 10 + H + qk, lq=lq)
    ref = _ref64_q(a, ha, qo)
    for splits in (None, 3):
        out = ha.hstu_attention_triton(**a, q_offsets=qo, num_splits=splits)
        assert out.shape == (int(qo[-1]), H, vd) and out.dtype == dtype
        assert kt.rel_err(out, ref) < tol, (splits, lqs)


def test_q_offsets_block_sizes_and_empty_query_sets(interp):
    ha = interp
    # sequences without queries between ones with queries (their key tiles are skipped), one
    # sequence whose queries are all its rows, a short position table, and a 4-way key split
    lengths = torch.tensor([30, 3, 40, 1, 17, 25])
    a = kt.random_jagged_attention_inputs(6, 40, 2, 16, 16, lengths=lengths, max_seq_len=8, seed=31)
    lqs = torch.tensor([1, 0, 0, 1, 17, 2])
    qo = torch.zeros(7, dtype=torch.int64)
    qo[1:] = lqs.cumsum(0)
    a["q"] = torch.randn(int(qo[-1]), 2, 16, generator=torch.Generator().manual_seed(2))
    ref = _ref64_q(a, ha, qo)
    for bm, bn, ns in [(16, 16, 1), (16, 32, 1), (32, 16, 4), (16, 16, 2)]:
        out = ha.hstu_attention_triton(**a, q_offsets=qo, block_m=bm, block_n=bn, num_splits=ns)
        assert kt.rel_err(out, ref) < 1e-5, (bm, bn, ns)
    # no queries at all
    empty = ha.hstu_attention_triton(**dict(a, q=a["q"][:0]), q_offsets=torch.zeros(7, dtype=torch.int64))
    assert empty.shape == (0, 2, 16)


def test_reference_q_offsets_is_last_rows_of_full(interp):
    """Prefill-decode equivalence: queries on the last Lq_b rows give those rows of the full op."""
    ha = interp
    a = kt.random_jagged_attention_inputs(8, 40, 2, 16, 32, seed=41)
    off = a["offsets"]
    g = torch.Generator().manual_seed(5)
    lk = (off[1:] - off[:-1]).tolist()
    lqs = [int(torch.randint(0, n + 1, (1,), generator=g)) for n in lk]
    lqs[0] = lk[0]                                   # one sequence entirely queries
    rows = torch.cat([torch.arange(int(off[b + 1]) - lqs[b], int(off[b + 1])) for b in range(8)])
    qo = torch.zeros(9, dtype=torch.int64)
    qo[1:] = torch.cumsum(torch.tensor(lqs), 0)
    full = ha.hstu_attention_reference(**a)
    part = ha.hstu_attention_reference(**dict(a, q=a["q"][rows]), q_offsets=qo)
    assert part.shape == (len(rows), 2, 32)
    torch.testing.assert_close(part, full[rows], rtol=1e-6, atol=1e-6)
    # and q_offsets == offsets is the plain op
    torch.testing.assert_close(ha.hstu_attention_reference(**a, q_offsets=off.clone()), full, rtol=0, atol=0)
    torch.testing.assert_close(ha.hstu_attention_triton(**a, q_offsets=off.clone()), full, rtol=1e-5, atol=1e-6)


def test_q_offsets_dispatcher_and_validation(interp, monkeypatch):
    ha = interp
    a, qo, _ = _decode_inputs(4, 12, 2, 8, 8, seed=3, lq=2)
    ref = ha.hstu_attention_reference(**a, q_offsets=qo)
    assert kt.rel_err(ha.hstu_attention(**a, q_offsets=qo), ref) < 1e-5             # Triton (interpreter)
    assert kt.rel_err(ha.hstu_attention(**a, q_offsets=qo, impl="reference"), ref) == 0.0
    # pipeline.hstu's signature: q_offsets as the 10th positional argument
    args9 = [a[n] for n in ("q", "k", "v", "offsets", "ts_s", "pos_w", "time_w", "attn_n", "num_time_buckets")]
    assert kt.rel_err(ha.hstu_attention(*args9, qo), ref) < 1e-5
    assert kt.rel_err(ha.hstu_attention_reference(*args9, qo), ref) == 0.0
    # autograd takes the reference path with q_offsets too
    q = a["q"].clone().requires_grad_(True)
    ha.hstu_attention(**dict(a, q=q), q_offsets=qo).sum().backward()
    assert q.grad is not None
    # without the interpreter: reference
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert kt.rel_err(ha.hstu_attention(**a, q_offsets=qo), ref) == 0.0
    monkeypatch.undo()
    # bad inputs
    with pytest.raises(ValueError):                   # q rows != k rows and no q_offsets
        ha.hstu_attention(**a)
    with pytest.raises(ValueError):                   # q_offsets of the wrong length
        ha.hstu_attention(**a, q_offsets=qo[:-1])
    bad = qo.clone()
    bad[1:] = torch.tensor([13, 14, 15, 16])          # more queries than keys in sequence 0
    with pytest.raises(ValueError):
        ha.hstu_attention_reference(**dict(a, q=torch.randn(16, 2, 8)), q_offsets=bad)


def test_decode_padded_baseline_matches(interp):
    ha = interp
    a, qo, _ = _decode_inputs(5, 30, 2, 16, 16, seed=17, lq=1)
    ref = ha.hstu_attention_reference(**a, q_offsets=qo)
    args = [a[n] for n in ("q", "k", "v", "offsets", "ts_s", "pos_w", "time_w", "attn_n", "num_time_buckets",
                           "max_seq_len")]
    assert kt.rel_err(ha.hstu_decode_padded(*args, padded_len=30), ref) < 1e-5
    padded = ha.pad_keys(a["k"], a["v"], a["offsets"], a["ts_s"], 32)
    assert kt.rel_err(ha.hstu_decode_padded(*args, padded_len=32, padded=padded), ref) < 1e-5


def test_q_offsets_matches_pipeline_reference(interp):
    hstu = pytest.importorskip("pipeline.hstu")
    import inspect
    if "q_offsets" not in inspect.signature(hstu.hstu_attention_reference).parameters:
        pytest.skip("pipeline.hstu reference has no q_offsets yet")
    ha = interp
    a, qo, _ = _decode_inputs(6, 30, 2, 8, 8, seed=4, lq=3)
    args9 = [a[n] for n in ("q", "k", "v", "offsets", "ts_s", "pos_w", "time_w", "attn_n", "num_time_buckets")]
    theirs = hstu.hstu_attention_reference(*args9, q_offsets=qo)
    assert kt.rel_err(ha.hstu_attention_reference(*args9, q_offsets=qo), theirs) < 1e-6
    assert kt.rel_err(ha.hstu_attention(*args9, q_offsets=qo), theirs) < 1e-5


def test_tma_experiment_matches_the_op(interp):
    """bench/attention_tma_experiment.py (where the attention time goes, docs/perf.md) computes the
    op: the same output as the production kernel, for every head grouping."""
    import importlib.util
    import pathlib
    ha = interp
    path = pathlib.Path(__file__).parents[2] / "bench" / "attention_tma_experiment.py"
    spec = importlib.util.spec_from_file_location("attention_tma_experiment", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    a = kt.random_jagged_attention_inputs(4, 70, 4, 16, 16, dtype=torch.float16, seed=3, scale=0.5)
    want = ha.hstu_attention_triton(**a).double()
    for hg in (1, 2, 4):
        assert kt.rel_err(ex.attention_tma(**a, bm=32, bn=16, ns=1, hg=hg), want) < 1e-6, hg
