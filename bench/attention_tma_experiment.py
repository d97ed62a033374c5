"""Experiment (not used by the op): the per-sequence HSTU attention kernel with K, V, Q and the
position-bias tiles loaded by TMA (host tensor descriptors), and switches that drop the time bias
or the whole bias, to see where the time of the production kernel goes.  Timed against the
production kernel (kernels/hstu_attention.py, default config) and the padded reference at the
issue-6 shapes, in one run.  docs/perf.md ("Runs 12–14 and explorations A–F") has what it showed.

    python3 bench/attention_tma_experiment.py --out DIR     # on a Hopper GPU (TMA); Triton >= 3.4

Same math and tile table as the production kernel; 16-bit inputs only take the folded LUT; the
head dims must be powers of two with the heads packed (q.stride(1) == d), the TMA layout.
"""

import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl
import triton.testing as tt
from triton.tools.tensor_descriptor import TensorDescriptor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kernels import hstu_attention as ha                                    # noqa: E402
from kernels.hstu_attention import (_dot_qk, _folded_time_weight, _silu_v, _store_heads,  # noqa: E402
                                     _time_bucket_tl)
from kernels.testing import random_jagged_attention_inputs, rel_err         # noqa: E402


@triton.jit
def _ld3(desc, row, h, BD: tl.constexpr):
    return desc.load([row, h * BD])


@triton.jit
def _head3(acc, q, Kd, Vd, krow, h, bias, k_ok, inv_n, BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr,
           DIAG: tl.constexpr, IEEE: tl.constexpr, FAST_SILU: tl.constexpr):
    kb = _ld3(Kd, krow, h, BLOCK_DQ)
    vb = _ld3(Vd, krow, h, BLOCK_DV)
    if DIAG:   # the tile runs past the sequence: other users' rows, zeroed (a NaN there must not leak)
        vb = tl.where(k_ok[:, None], vb, 0.0)
    return _silu_v(acc, _dot_qk(q, kb, IEEE), vb, bias, inv_n, IEEE, FAST_SILU)


@triton.jit
def _tile3(acc0, acc1, acc2, acc3, q0_, q1_, q2_, q3_, Kd, Vd, TS, PosTd, Lut64, TimeW, Thr, s, L, q0, qpos, ts_q,
           safe, j0, h0, n_pos_tiles, num_tb, inv_n, log2_scale,
           HG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQ: tl.constexpr,
           BLOCK_DV: tl.constexpr, DIAG: tl.constexpr, IEEE: tl.constexpr, FAST_SILU: tl.constexpr,
           W_BF16: tl.constexpr, LUT_BASE: tl.constexpr, BIAS: tl.constexpr):
    kpos = j0 + tl.arange(0, BLOCK_N)
    k_ok = kpos < L
    if DIAG:
        ts_k = tl.load(TS + s + tl.minimum(kpos, L - 1))
    else:
        ts_k = tl.load(TS + s + kpos)
    d = tl.minimum((q0 - j0 + BLOCK_M - BLOCK_N) // BLOCK_N, n_pos_tiles - 1)
    bias = PosTd.load([d * BLOCK_M, 0]).to(tl.float32)
    if BIAS == 0:        # experiment: no bias at all
        bias = bias * 0.0
    if BIAS < 2:         # experiment: no time bias
        pass
    elif IEEE:
        bkt = _time_bucket_tl(ts_q[:, None] - ts_k[None, :], Thr, num_tb, log2_scale)
        bias += tl.load(TimeW + bkt).to(tl.float32)
    elif safe != 0:
        bias += _folded_time_weight(ts_q, ts_k, Lut64, W_BF16, LUT_BASE)
    else:
        bkt = _time_bucket_tl(ts_q[:, None] - ts_k[None, :], Thr, num_tb, log2_scale)
        bias += tl.load(TimeW + bkt).to(tl.float32)
    if DIAG:   # the causal mask in the bias, as the op's position tiles hold it (here also without them)
        bias = tl.where(qpos[:, None] >= kpos[None, :], bias, -3.0e38)
    krow = s + j0
    acc0 = _head3(acc0, q0_, Kd, Vd, krow, h0, bias, k_ok, inv_n, BLOCK_DQ, BLOCK_DV, DIAG,
                  IEEE, FAST_SILU)
    if HG > 1:
        acc1 = _head3(acc1, q1_, Kd, Vd, krow, h0 + 1, bias, k_ok, inv_n, BLOCK_DQ, BLOCK_DV, DIAG,
                      IEEE, FAST_SILU)
    if HG > 2:
        acc2 = _head3(acc2, q2_, Kd, Vd, krow, h0 + 2, bias, k_ok, inv_n, BLOCK_DQ, BLOCK_DV, DIAG,
                      IEEE, FAST_SILU)
    if HG > 3:
        acc3 = _head3(acc3, q3_, Kd, Vd, krow, h0 + 3, bias, k_ok, inv_n, BLOCK_DQ, BLOCK_DV, DIAG,
                      IEEE, FAST_SILU)
    return acc0, acc1, acc2, acc3


@triton.jit
def _hstu_attn_seq3(
    Qd, Kd, Vd, Out, Tiles, TS, PosTd, Lut64, TimeW, Thr,
    stride_ot, stride_oh, n_grid, n_pos_tiles, num_tb, inv_n, log2_scale,
    HG: tl.constexpr, V_DIM: tl.constexpr,
    BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr, FAST_SILU: tl.constexpr, W_BF16: tl.constexpr, LUT_BASE: tl.constexpr,
    BIAS: tl.constexpr = 2,
):
    pid = tl.program_id(0)
    h0 = tl.program_id(1) * HG
    s, L, q0, safe = ha._tile_entry(Tiles, pid, n_grid)
    if L > 0:
        qpos = q0 + tl.arange(0, BLOCK_M)
        q_ok = qpos < L
        qrow = s + tl.minimum(qpos, L - 1)
        ts_q = tl.load(TS + qrow)
        q_0 = _ld3(Qd, s + q0, h0, BLOCK_DQ)
        q_1 = q_0
        q_2 = q_0
        q_3 = q_0
        if HG > 1:
            q_1 = _ld3(Qd, s + q0, h0 + 1, BLOCK_DQ)
        if HG > 2:
            q_2 = _ld3(Qd, s + q0, h0 + 2, BLOCK_DQ)
        if HG > 3:
            q_3 = _ld3(Qd, s + q0, h0 + 3, BLOCK_DQ)
        acc0 = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        acc3 = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        for j0 in range(0, q0, BLOCK_N):
            acc0, acc1, acc2, acc3 = _tile3(
                acc0, acc1, acc2, acc3, q_0, q_1, q_2, q_3, Kd, Vd, TS, PosTd, Lut64, TimeW, Thr, s, L, q0, qpos,
                ts_q, safe, j0, h0, n_pos_tiles, num_tb, inv_n, log2_scale, HG, BLOCK_M, BLOCK_N, BLOCK_DQ,
                BLOCK_DV, False, IEEE, FAST_SILU, W_BF16, LUT_BASE, BIAS)
        for j0 in range(q0, tl.minimum(q0 + BLOCK_M, L), BLOCK_N):
            acc0, acc1, acc2, acc3 = _tile3(
                acc0, acc1, acc2, acc3, q_0, q_1, q_2, q_3, Kd, Vd, TS, PosTd, Lut64, TimeW, Thr, s, L, q0, qpos,
                ts_q, safe, j0, h0, n_pos_tiles, num_tb, inv_n, log2_scale, HG, BLOCK_M, BLOCK_N, BLOCK_DQ,
                BLOCK_DV, True, IEEE, FAST_SILU, W_BF16, LUT_BASE, BIAS)
        _store_heads(Out, qrow.to(tl.int64) * stride_ot, q_ok, h0, stride_oh, tl.arange(0, BLOCK_DV),
                     acc0, acc1, acc2, acc3, inv_n if FAST_SILU else 1.0, HG, V_DIM)


def attention_tma(q, k, v, offsets, ts_s, pos_w, time_w, attn_n, num_time_buckets, max_seq_len,
                  bm=64, bn=64, nw=4, ns=2, hg=2, bias=2):
    """bias: 2 = the full relative bias, 1 = position only, 0 = none (timing experiments)."""
    T, H, D = q.shape
    DV = v.shape[-1]
    fast = q.dtype != torch.float32 and not ha._dispatch.interpreting()   # the op's fast SiLU (_silu_v)
    thr = ha.bucket_thresholds(num_time_buckets, q.device)
    # the weight-derived tables, kept per weight tensor, as the op keeps them
    pt, nd, lut, _, tw = ha._seq_bias_tables(pos_w, time_w, ha._bias_table(time_w, q.dtype), thr, max_seq_len,
                                             num_time_buckets, bm, bn, fast)
    tiles = ha._seq_tiles(offsets, ts_s, T, bm)
    G = tiles.shape[1]
    out = torch.empty(T, H, DV, dtype=v.dtype, device=v.device)
    qd = TensorDescriptor(q, [T, H * D], [q.stride(0), 1], [bm, D])
    kd = TensorDescriptor(k, [T, H * D], [k.stride(0), 1], [bn, D])
    vd = TensorDescriptor(v, [T, H * DV], [v.stride(0), 1], [bn, DV])
    pd = TensorDescriptor(pt, list(pt.shape), [pt.stride(0), 1], [bm, bn])
    _hstu_attn_seq3[(G, H // hg)](
        qd, kd, vd, out, tiles, ts_s, pd, lut, tw, thr,
        out.stride(0), out.stride(1), G, nd, num_time_buckets, 1.0 / attn_n, ha._LOG2_SCALE,
        HG=hg, V_DIM=DV, BLOCK_DQ=D, BLOCK_DV=DV, BLOCK_M=bm, BLOCK_N=bn, IEEE=q.dtype == torch.float32,
        FAST_SILU=fast, W_BF16=q.dtype == torch.bfloat16,
        LUT_BASE=ha.LUT_BASE, BIAS=bias,
        num_warps=nw, num_stages=ns)
    return out


SHAPES = [(64, 1024, 4, 64), (256, 256, 2, 64), (512, 128, 2, 64)]
CONFIGS = {4: [(64, 64, 4, 2, 1), (64, 64, 4, 2, 2), (64, 32, 4, 2, 4), (128, 64, 8, 2, 1), (128, 128, 8, 2, 1)],
           2: [(64, 32, 4, 2, 1), (64, 64, 4, 2, 1), (64, 16, 4, 2, 2), (64, 64, 4, 2, 2), (128, 64, 8, 2, 1)]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    card = torch.cuda.get_device_name(0)
    bench = lambda fn: float(tt.do_bench_cudagraph(fn, rep=100, return_mode="median"))   # noqa: E731
    rows = []
    for (B, N, H, d) in SHAPES:
        a = random_jagged_attention_inputs(B, N, H, d, d, dtype=torch.bfloat16, device="cuda", seed=B + N,
                                           max_seq_len=N, scale=0.5)
        T = a["q"].shape[0]
        pidx = ha.padded_index(a["offsets"], N, T)
        prod = lambda: ha.hstu_attention_triton(**a)                                     # noqa: E731
        want = prod()
        row = {"card": card, "B": B, "N": N, "H": H, "d": d,
               "padded_ms": bench(lambda: ha.hstu_attention_padded(**a, padded_len=N, with_bias=False,
                                                                   pad_index=pidx)),
               "production_ms": bench(prod), "configs": []}
        print(f"[{card}] B={B} N={N} H={H}: production kernel {row['production_ms']*1e3:.1f} us, "
              f"padded {row['padded_ms']*1e3:.1f} us", flush=True)
        for cfg in CONFIGS[H]:
            bm, bn, nw, ns, hg = cfg
            r = {"cfg": cfg, "rel_diff_vs_production": rel_err(
                attention_tma(**a, bm=bm, bn=bn, nw=nw, ns=ns, hg=hg), want.double())}
            for bias, name in ((0, "no_bias_ms"), (1, "position_only_ms"), (2, "full_bias_ms")):
                r[name] = bench(lambda: attention_tma(**a, bm=bm, bn=bn, nw=nw, ns=ns, hg=hg, bias=bias))
            row["configs"].append(r)
            pad = row["padded_ms"]
            print(f"  TMA {cfg}: no bias {r['no_bias_ms']*1e3:.1f} us (x{pad/r['no_bias_ms']:.1f}), position only "
                  f"{r['position_only_ms']*1e3:.1f}, full {r['full_bias_ms']*1e3:.1f} us "
                  f"(x{pad/r['full_bias_ms']:.1f}); rel. diff vs production {r['rel_diff_vs_production']:.1e}",
                  flush=True)
        rows.append(row)
    path = os.path.join(args.out, f"attention_tma_{card.replace(' ', '_')}.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
