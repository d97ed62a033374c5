"""Experiment (not used by the op): the per-sequence HSTU attention kernel written in Gluon.

Same math, tables and tile table as ``kernels.hstu_attention``'s per-sequence kernel (16-bit
inputs, folded time LUT, position tiles), but with what Triton does not let us control:

* every bias value is computed directly in the wgmma accumulator's register layout (no shared
  memory round trip and barrier to convert it, which the Triton kernel does twice per key tile);
* K/V tiles arrive by cp.async ``STAGES - 1`` tiles ahead; the key timestamps and the position
  tile one tile ahead;
* the MMAs run asynchronously under the CUDA-core work: QK^T of tile j and PV of tile j-1 are
  issued together, the bias of tile j is computed while they run, and the SiLU of tile j runs
  while PV(j-1) finishes (the P tile is carried to the next step).

``ws=True`` is a warp-specialised variant: a second warpgroup computes each key tile's bias into
a shared-memory ring (mbarrier hand-over) while the first runs the MMAs and the SiLU.
``warpgroups=2`` runs two warpgroups that split every tile by columns, so that 4 heads share one
bias computation per pair without 4 full accumulators per thread.

Run on a Hopper GPU:  python bench/attention_gluon_experiment.py [--out DIR]
It checks the output against the op and times both against the padded reference (CUDA graphs),
each config with the full bias, the position bias only and no bias.  Results: docs/perf.md,
"Runs 15-20" (single warpgroup: 7-9 % faster than the op at N=1024, slower at N <= 256; the
warp-specialised and two-warpgroup variants slower everywhere).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import (  # noqa: E402
    async_copy, fence_async_shared, mbarrier, warpgroup_mma, warpgroup_mma_wait)

from kernels import hstu_attention as ha  # noqa: E402
from kernels.testing import rel_err  # noqa: E402


@gluon.jit
def _tile(Tiles, pid, n_grid):
    """Program pid's query tile from the op's tile table (ha._seq_tiles): sequence start, length, q0."""
    return gl.load(Tiles + pid), gl.load(Tiles + n_grid + pid), gl.load(Tiles + 2 * n_grid + pid)


@gluon.jit
def _tanh_half(x):
    return gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x * 0.5], dtype=gl.float32,
                                     is_pure=True, pack=1)


@gluon.jit
def _kv_copy(K, V, k_smem, v_smem, slot, s, L, j0, h0, stride_kt, stride_kh, stride_vt, stride_vh,
             HG: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, ld_layout: gl.constexpr):
    """cp.async of key tile j0's K and V rows for the HG heads into ``slot``; rows past the
    sequence are zero-filled (never another user's rows), then one commit group."""
    rows = j0 + gl.arange(0, BN, layout=gl.SliceLayout(1, ld_layout))
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, ld_layout))
    ok = (rows < L)[:, None] & (cols < D)[None, :]
    r64 = (s + rows).to(gl.int64)
    for h in gl.static_range(HG):
        kp = K + r64[:, None] * stride_kt + (h0 + h) * stride_kh + cols[None, :]
        vp = V + r64[:, None] * stride_vt + (h0 + h) * stride_vh + cols[None, :]
        async_copy.async_copy_global_to_shared(k_smem.index(slot * HG + h), kp, mask=ok)
        async_copy.async_copy_global_to_shared(v_smem.index(slot * HG + h), vp, mask=ok)
    async_copy.commit_group()


@gluon.jit
def _bias_loads(TS, PosT, s, L, j0, q0, n_pos_tiles, BM: gl.constexpr, BN: gl.constexpr, s_layout: gl.constexpr):
    """Key timestamps and the position tile of key tile j0, in the accumulator's layout."""
    kpos = j0 + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
    ts_k = gl.load(TS + s + gl.minimum(kpos, gl.maximum(L - 1, 0)))
    d = gl.maximum(gl.minimum((q0 - j0 + BM - BN) // BN, n_pos_tiles - 1), 0)
    r = gl.arange(0, BM, layout=gl.SliceLayout(1, s_layout))
    c = gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
    return ts_k, gl.load(PosT + d * (BM * BN) + r[:, None] * BN + c[None, :])


@gluon.jit
def _time_w(ts_q, ts_k, Lut, LUT_BASE: gl.constexpr):
    """time_w[bucket(ts_q - ts_k)] (bf16 weights, as float32) from the folded LUT (ha.folded_lut)."""
    x = gl.maximum(gl.abs(ts_q.to(gl.int32)[:, None] - ts_k.to(gl.int32)[None, :]), 1)
    xb = x.to(gl.float32).to(gl.int32, bitcast=True)
    e = gl.load(Lut + ((xb >> 21) - LUT_BASE))
    up = (xb & 2097151) > e.to(gl.int32)
    hi = (e >> 32).to(gl.int32)
    return gl.where(up, hi & -65536, hi << 16).to(gl.float32, bitcast=True)


@gluon.jit
def _silu_p(s, bias, vis, inv_n, DIAG: gl.constexpr, p_layout: gl.constexpr):
    x = s + bias
    a = x * (_tanh_half(x) * (0.5 * inv_n) + 0.5 * inv_n)
    if DIAG:
        a = gl.where(vis, a, 0.0)
    return gl.convert_layout(a.to(gl.bfloat16), p_layout)


@gluon.jit
def _qkv_smem(HG: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
    """Shared memory for Q of the HG heads and STAGES slots of their K and V tiles (wgmma operands)."""
    q_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BM, D], gl.bfloat16)
    kv_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, D], gl.bfloat16)
    return (gl.allocate_shared_memory(gl.bfloat16, [HG, BM, D], q_sl),
            gl.allocate_shared_memory(gl.bfloat16, [STAGES * HG, BN, D], kv_sl),
            gl.allocate_shared_memory(gl.bfloat16, [STAGES * HG, BN, D], kv_sl))


@gluon.jit
def _prologue(Q, K, V, q_smem, k_smem, v_smem, s, L, q0, h0, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt,
              stride_vh, HG: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr,
              STAGES: gl.constexpr, ld_layout: gl.constexpr):
    """The first STAGES - 1 key tiles in flight; Q of the HG heads -> shared memory; the last
    slot's V (read by the first step's deferred PV, whose P is 0) -> 0."""
    for t in gl.static_range(STAGES - 1):
        _kv_copy(K, V, k_smem, v_smem, t, s, L, t * BN, h0, stride_kt, stride_kh, stride_vt, stride_vh,
                 HG, BN, D, ld_layout)
    qr = q0 + gl.arange(0, BM, layout=gl.SliceLayout(1, ld_layout))
    qc = gl.arange(0, D, layout=gl.SliceLayout(0, ld_layout))
    q_ok = (qr < L)[:, None] & (qc < D)[None, :]
    qrow64 = (s + gl.minimum(qr, gl.maximum(L - 1, 0))).to(gl.int64)
    for h in gl.static_range(HG):
        q = gl.load(Q + qrow64[:, None] * stride_qt + (h0 + h) * stride_qh + qc[None, :], mask=q_ok, other=0.0)
        q_smem.index(h).store(q)
        v_smem.index((STAGES - 1) * HG + h).store(gl.zeros([BN, D], gl.bfloat16, ld_layout))
    fence_async_shared()
    gl.thread_barrier()


@gluon.jit
def _issue(j, acc0, acc1, acc2, acc3, p0, p1, p2, p3, q_smem, k_smem, v_smem,
           HG: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr, s_layout: gl.constexpr):
    """Wait for key tile j's K/V, then issue QK^T(j) and PV(j-1) (the carried P) for the HG heads."""
    st = j % STAGES
    prev = (j + STAGES - 1) % STAGES               # tile j-1's slot (zeros before the first tile)
    async_copy.wait_group(STAGES - 2)              # tile j's K/V have landed (this thread's copies)
    fence_async_shared()
    gl.thread_barrier()                            # ... and every other thread's
    zs = gl.zeros([BM, BN], gl.float32, s_layout)
    s0 = warpgroup_mma(q_smem.index(0), k_smem.index(st * HG).permute((1, 0)), zs, use_acc=False, is_async=True)
    s1 = s0
    s2 = s0
    s3 = s0
    if HG > 1:
        s1 = warpgroup_mma(q_smem.index(1), k_smem.index(st * HG + 1).permute((1, 0)), zs, use_acc=False,
                           is_async=True)
    if HG > 2:
        s2 = warpgroup_mma(q_smem.index(2), k_smem.index(st * HG + 2).permute((1, 0)), zs, use_acc=False,
                           is_async=True)
        s3 = warpgroup_mma(q_smem.index(3), k_smem.index(st * HG + 3).permute((1, 0)), zs, use_acc=False,
                           is_async=True)
    acc0 = warpgroup_mma(p0, v_smem.index(prev * HG), acc0, is_async=True)
    if HG > 1:
        acc1 = warpgroup_mma(p1, v_smem.index(prev * HG + 1), acc1, is_async=True)
    if HG > 2:
        acc2 = warpgroup_mma(p2, v_smem.index(prev * HG + 2), acc2, is_async=True)
        acc3 = warpgroup_mma(p3, v_smem.index(prev * HG + 3), acc3, is_async=True)
    return s0, s1, s2, s3, acc0, acc1, acc2, acc3


@gluon.jit
def _finish(j, s0, s1, s2, s3, acc0, acc1, acc2, acc3, bias, qpos, inv_n, K, V, k_smem, v_smem, s, L, h0,
            stride_kt, stride_kh, stride_vt, stride_vh, HG: gl.constexpr, BN: gl.constexpr, D: gl.constexpr,
            STAGES: gl.constexpr, DIAG: gl.constexpr, s_layout: gl.constexpr, p_layout: gl.constexpr,
            ld_layout: gl.constexpr):
    """SiLU of tile j once its QK^T is done (PV(j-1) still running), then PV(j-1) retired and tile
    j + STAGES - 1's copies into tile j-1's slot.  Returns the accumulators and P(j)."""
    kpos = j * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
    vis = qpos[:, None] >= kpos[None, :]
    p0 = gl.zeros([bias.shape[0], BN], gl.bfloat16, p_layout)
    p1 = p0
    p2 = p0
    p3 = p0
    if HG > 2:
        s0, s1, s2, s3, acc0, acc1, acc2, acc3 = warpgroup_mma_wait(4, deps=[s0, s1, s2, s3, acc0, acc1, acc2, acc3])
        p0 = _silu_p(s0, bias, vis, inv_n, DIAG, p_layout)
        p1 = _silu_p(s1, bias, vis, inv_n, DIAG, p_layout)
        p2 = _silu_p(s2, bias, vis, inv_n, DIAG, p_layout)
        p3 = _silu_p(s3, bias, vis, inv_n, DIAG, p_layout)
        acc0, acc1, acc2, acc3 = warpgroup_mma_wait(0, deps=[acc0, acc1, acc2, acc3])
    elif HG > 1:
        s0, s1, acc0, acc1 = warpgroup_mma_wait(2, deps=[s0, s1, acc0, acc1])     # QK^T done, PV in flight
        p0 = _silu_p(s0, bias, vis, inv_n, DIAG, p_layout)
        p1 = _silu_p(s1, bias, vis, inv_n, DIAG, p_layout)
        acc0, acc1 = warpgroup_mma_wait(0, deps=[acc0, acc1])
    else:
        s0, acc0 = warpgroup_mma_wait(1, deps=[s0, acc0])
        p0 = _silu_p(s0, bias, vis, inv_n, DIAG, p_layout)
        acc0 = warpgroup_mma_wait(0, deps=[acc0])
    # every MMA reading tile j-1's slot has retired: tile j + STAGES - 1 goes there
    _kv_copy(K, V, k_smem, v_smem, (j + STAGES - 1) % STAGES, s, L, (j + STAGES - 1) * BN, h0,
             stride_kt, stride_kh, stride_vt, stride_vh, HG, BN, D, ld_layout)
    return acc0, acc1, acc2, acc3, p0, p1, p2, p3


@gluon.jit
def _epilogue(Out, acc0, acc1, acc2, acc3, p0, p1, p2, p3, v_smem, s, L, q0, h0, n_tiles, stride_ot, stride_oh,
              HG: gl.constexpr, BM: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, o_layout: gl.constexpr):
    """The last tile's PV, then the HG heads' outputs (rows past the sequence not stored)."""
    last = ((n_tiles + STAGES - 1) % STAGES) * HG
    acc0 = warpgroup_mma(p0, v_smem.index(last), acc0, is_async=True)
    if HG > 2:
        acc1 = warpgroup_mma(p1, v_smem.index(last + 1), acc1, is_async=True)
        acc2 = warpgroup_mma(p2, v_smem.index(last + 2), acc2, is_async=True)
        acc3 = warpgroup_mma(p3, v_smem.index(last + 3), acc3, is_async=True)
        acc0, acc1, acc2, acc3 = warpgroup_mma_wait(0, deps=[acc0, acc1, acc2, acc3])
    elif HG > 1:
        acc1 = warpgroup_mma(p1, v_smem.index(last + 1), acc1, is_async=True)
        acc0, acc1 = warpgroup_mma_wait(0, deps=[acc0, acc1])
    else:
        acc0 = warpgroup_mma_wait(0, deps=[acc0])
    async_copy.wait_group(0)
    orow = q0 + gl.arange(0, BM, layout=gl.SliceLayout(1, o_layout))
    oc = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
    o_ok = (orow < L)[:, None] & (oc < D)[None, :]
    optr = Out + (s + orow).to(gl.int64)[:, None] * stride_ot + oc[None, :]
    gl.store(optr + h0 * stride_oh, acc0.to(gl.bfloat16), mask=o_ok)
    if HG > 1:
        gl.store(optr + (h0 + 1) * stride_oh, acc1.to(gl.bfloat16), mask=o_ok)
    if HG > 2:
        gl.store(optr + (h0 + 2) * stride_oh, acc2.to(gl.bfloat16), mask=o_ok)
        gl.store(optr + (h0 + 3) * stride_oh, acc3.to(gl.bfloat16), mask=o_ok)


@gluon.jit
def _step(j, acc0, acc1, acc2, acc3, p0, p1, p2, p3, ts_k, pos, q_smem, k_smem, v_smem, K, V, TS, PosT, Lut, s, L,
          q0, h0, ts_q, qpos, stride_kt, stride_kh, stride_vt, stride_vh, n_pos_tiles, inv_n,
          HG: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
          LUT_BASE: gl.constexpr, DIAG: gl.constexpr, POS: gl.constexpr, TIME: gl.constexpr,
          s_layout: gl.constexpr, p_layout: gl.constexpr, ld_layout: gl.constexpr):
    """Key tile j: QK^T(j) and PV(j-1) on the tensor cores under the bias of tile j, the SiLU of
    tile j under PV(j-1); returns the accumulators, P(j) and tile j+1's bias loads."""
    s0, s1, s2, s3, acc0, acc1, acc2, acc3 = _issue(j, acc0, acc1, acc2, acc3, p0, p1, p2, p3, q_smem, k_smem,
                                                    v_smem, HG, BM, BN, STAGES, s_layout)
    # under the MMAs: this tile's bias, the next tile's loads
    ts_n, pos_n = _bias_loads(TS, PosT, s, L, (j + 1) * BN, q0, n_pos_tiles, BM, BN, s_layout)
    bias = gl.zeros([BM, BN], gl.float32, s_layout)
    if POS:
        bias = pos.to(gl.float32)
    if TIME:
        bias = bias + _time_w(ts_q, ts_k, Lut, LUT_BASE)
    acc0, acc1, acc2, acc3, p0, p1, p2, p3 = _finish(
        j, s0, s1, s2, s3, acc0, acc1, acc2, acc3, bias, qpos, inv_n, K, V, k_smem, v_smem, s, L, h0,
        stride_kt, stride_kh, stride_vt, stride_vh, HG, BN, D, STAGES, DIAG, s_layout, p_layout, ld_layout)
    return acc0, acc1, acc2, acc3, p0, p1, p2, p3, ts_n, pos_n


@gluon.jit
def _attn_gluon(Q, K, V, Out, Tiles, TS, PosT, Lut,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                n_grid, n_pos_tiles, inv_n,
                HG: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                LUT_BASE: gl.constexpr, POS: gl.constexpr, TIME: gl.constexpr, WG: gl.constexpr):
    # WG warpgroups split every tile by columns: S (and the bias, computed once per pair) by keys,
    # O by output dims; P goes to the PV operand layout through shared memory when WG > 1
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, WG],
                                                       instr_shape=[16, BN // WG, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, WG],
                                                       instr_shape=[16, D // WG, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    ld_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4 * WG, 1], [1, 0])

    pid = gl.program_id(0)
    h0 = gl.program_id(1) * HG
    s, L, q0 = _tile(Tiles, pid, n_grid)
    q_smem, k_smem, v_smem = _qkv_smem(HG, BM, BN, D, STAGES)
    _prologue(Q, K, V, q_smem, k_smem, v_smem, s, L, q0, h0, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt,
              stride_vh, HG, BM, BN, D, STAGES, ld_layout)

    qpos = q0 + gl.arange(0, BM, layout=gl.SliceLayout(1, s_layout))
    ts_q = gl.load(TS + s + gl.minimum(qpos, gl.maximum(L - 1, 0)))
    ts_k, pos = _bias_loads(TS, PosT, s, L, 0, q0, n_pos_tiles, BM, BN, s_layout)
    acc0 = gl.zeros([BM, D], gl.float32, o_layout)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    p0 = gl.zeros([BM, BN], gl.bfloat16, p_layout)
    p1 = p0
    p2 = p0
    p3 = p0
    n_full = gl.where(L > 0, q0 // BN, 0)                       # key tiles left of the diagonal
    n_tiles = gl.cdiv(gl.minimum(q0 + BM, L), BN)               # all key tiles (0 for an empty program)
    for j in range(0, n_full):
        acc0, acc1, acc2, acc3, p0, p1, p2, p3, ts_k, pos = _step(
            j, acc0, acc1, acc2, acc3, p0, p1, p2, p3, ts_k, pos, q_smem, k_smem, v_smem, K, V, TS, PosT, Lut, s, L,
            q0, h0, ts_q, qpos, stride_kt, stride_kh, stride_vt, stride_vh, n_pos_tiles, inv_n,
            HG, BM, BN, D, STAGES, LUT_BASE, False, POS, TIME, s_layout, p_layout, ld_layout)
    for j in range(n_full, n_tiles):
        acc0, acc1, acc2, acc3, p0, p1, p2, p3, ts_k, pos = _step(
            j, acc0, acc1, acc2, acc3, p0, p1, p2, p3, ts_k, pos, q_smem, k_smem, v_smem, K, V, TS, PosT, Lut, s, L,
            q0, h0, ts_q, qpos, stride_kt, stride_kh, stride_vt, stride_vh, n_pos_tiles, inv_n,
            HG, BM, BN, D, STAGES, LUT_BASE, True, POS, TIME, s_layout, p_layout, ld_layout)
    _epilogue(Out, acc0, acc1, acc2, acc3, p0, p1, p2, p3, v_smem, s, L, q0, h0, n_tiles, stride_ot, stride_oh,
              HG, BM, D, STAGES, o_layout)


# ----------------------------------------------------------------------------- warp-specialised variant
# A second warpgroup (the "bias producer") computes each key tile's bias into a shared-memory ring
# of BS slots; the default warpgroup (the consumer) runs the MMAs, the SiLU and the K/V copies and
# reads the bias with one shared-memory load.  mbarriers hand the slots over (ready / empty).

@gluon.jit
def _ws_producer(TS, PosT, Lut, Tiles, bias_smem, bias_ready, bias_empty, pid, n_grid, n_pos_tiles,
                 BM: gl.constexpr, BN: gl.constexpr, BS: gl.constexpr, LUT_BASE: gl.constexpr,
                 POS: gl.constexpr, TIME: gl.constexpr):
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16])
    s, L, q0 = _tile(Tiles, pid, n_grid)
    qpos = q0 + gl.arange(0, BM, layout=gl.SliceLayout(1, s_layout))
    ts_q = gl.load(TS + s + gl.minimum(qpos, gl.maximum(L - 1, 0)))
    n_tiles = gl.cdiv(gl.minimum(q0 + BM, L), BN)
    for j in range(0, n_tiles):
        slot = j % BS
        ts_k, pos = _bias_loads(TS, PosT, s, L, j * BN, q0, n_pos_tiles, BM, BN, s_layout)
        bias = gl.zeros([BM, BN], gl.float32, s_layout)
        if POS:
            bias = pos.to(gl.float32)
        if TIME:
            bias = bias + _time_w(ts_q, ts_k, Lut, LUT_BASE)
        mbarrier.wait(bias_empty.index(slot), ((j // BS) & 1) ^ 1)   # the consumer is done with it
        bias_smem.index(slot).store(bias)
        gl.thread_barrier()                                           # every producer thread stored
        mbarrier.arrive(bias_ready.index(slot))


@gluon.jit
def _ws_step(j, acc0, acc1, p0, p1, q_smem, k_smem, v_smem, bias_smem, bias_ready, bias_empty, K, V, s, L, h0, qpos,
             stride_kt, stride_kh, stride_vt, stride_vh, inv_n,
             HG: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
             BS: gl.constexpr, DIAG: gl.constexpr, s_layout: gl.constexpr, p_layout: gl.constexpr,
             ld_layout: gl.constexpr):
    s0, s1, s2, s3, acc0, acc1, acc2, acc3 = _issue(j, acc0, acc1, acc0, acc0, p0, p1, p0, p0, q_smem, k_smem,
                                                    v_smem, HG, BM, BN, STAGES, s_layout)
    # every consumer thread has read tile j-1's bias (they all passed _issue's barrier): its slot
    # goes back to the producer
    mbarrier.arrive(bias_empty.index((j + BS - 1) % BS), pred=j > 0)
    slot = j % BS
    mbarrier.wait(bias_ready.index(slot), (j // BS) & 1)
    bias = bias_smem.index(slot).load(s_layout)
    acc0, acc1, acc2, acc3, p0, p1, p2, p3 = _finish(
        j, s0, s1, s2, s3, acc0, acc1, acc2, acc3, bias, qpos, inv_n, K, V, k_smem, v_smem, s, L, h0,
        stride_kt, stride_kh, stride_vt, stride_vh, HG, BN, D, STAGES, DIAG, s_layout, p_layout, ld_layout)
    return acc0, acc1, p0, p1


@gluon.jit
def _ws_consumer(Out, K, V, Tiles, q_smem, k_smem, v_smem, bias_smem, bias_ready, bias_empty, pid, h0,
                 stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, n_grid, inv_n,
                 HG: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                 BS: gl.constexpr):
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    ld_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    s, L, q0 = _tile(Tiles, pid, n_grid)
    qpos = q0 + gl.arange(0, BM, layout=gl.SliceLayout(1, s_layout))
    acc0 = gl.zeros([BM, D], gl.float32, o_layout)
    acc1 = acc0
    p0 = gl.zeros([BM, BN], gl.bfloat16, p_layout)
    p1 = p0
    n_full = gl.where(L > 0, q0 // BN, 0)
    n_tiles = gl.cdiv(gl.minimum(q0 + BM, L), BN)
    for j in range(0, n_full):
        acc0, acc1, p0, p1 = _ws_step(j, acc0, acc1, p0, p1, q_smem, k_smem, v_smem, bias_smem, bias_ready, bias_empty,
                                      K, V, s, L, h0, qpos, stride_kt, stride_kh, stride_vt, stride_vh, inv_n,
                                      HG, BM, BN, D, STAGES, BS, False, s_layout, p_layout, ld_layout)
    for j in range(n_full, n_tiles):
        acc0, acc1, p0, p1 = _ws_step(j, acc0, acc1, p0, p1, q_smem, k_smem, v_smem, bias_smem, bias_ready, bias_empty,
                                      K, V, s, L, h0, qpos, stride_kt, stride_kh, stride_vt, stride_vh, inv_n,
                                      HG, BM, BN, D, STAGES, BS, True, s_layout, p_layout, ld_layout)
    _epilogue(Out, acc0, acc1, acc0, acc0, p0, p1, p0, p0, v_smem, s, L, q0, h0, n_tiles, stride_ot, stride_oh,
              HG, BM, D, STAGES, o_layout)


@gluon.jit
def _attn_gluon_ws(Q, K, V, Out, Tiles, TS, PosT, Lut,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                   n_grid, n_pos_tiles, inv_n,
                   HG: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                   BS: gl.constexpr, LUT_BASE: gl.constexpr, POS: gl.constexpr, TIME: gl.constexpr,
                   PRODUCER_REGS: gl.constexpr):
    ld_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    b_sl: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
    pid = gl.program_id(0)
    h0 = gl.program_id(1) * HG
    s, L, q0 = _tile(Tiles, pid, n_grid)
    q_smem, k_smem, v_smem = _qkv_smem(HG, BM, BN, D, STAGES)
    bias_smem = gl.allocate_shared_memory(gl.float32, [BS, BM, BN], b_sl)
    bias_ready = gl.allocate_shared_memory(gl.int64, [BS, 1], mbarrier.MBarrierLayout())
    bias_empty = gl.allocate_shared_memory(gl.int64, [BS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(BS):
        mbarrier.init(bias_ready.index(i), count=1)
        mbarrier.init(bias_empty.index(i), count=1)
    _prologue(Q, K, V, q_smem, k_smem, v_smem, s, L, q0, h0, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt,
              stride_vh, HG, BM, BN, D, STAGES, ld_layout)
    gl.warp_specialize([
        (_ws_consumer, (Out, K, V, Tiles, q_smem, k_smem, v_smem, bias_smem, bias_ready, bias_empty, pid, h0,
                        stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, n_grid, inv_n,
                        HG, BM, BN, D, STAGES, BS)),
        (_ws_producer, (TS, PosT, Lut, Tiles, bias_smem, bias_ready, bias_empty, pid, n_grid, n_pos_tiles,
                        BM, BN, BS, LUT_BASE, POS, TIME)),
    ], [4], [PRODUCER_REGS])


def attention_gluon(q, k, v, offsets, ts_s, pos_w, time_w, attn_n, num_time_buckets, max_seq_len=None, *,
                    block_m=64, block_n=16, heads=2, stages=3, pos=True, time=True, num_warps=4, check=True,
                    ws=False, bias_stages=2, producer_regs=88, maxnreg=None, warpgroups=1):
    """The op's per-sequence path (bf16, head dim 64, every sequence spanning < 2^31 s) in Gluon."""
    T, H, d = q.shape
    assert q.dtype == torch.bfloat16 and d == 64 and v.shape[-1] == 64 and H % heads == 0 and heads in (1, 2, 4)
    max_seq_len = max_seq_len or pos_w.shape[0]
    offsets = offsets.to(torch.int64).contiguous()
    ts_s = ts_s.to(torch.int64).contiguous()
    tiles = ha._seq_tiles(offsets, ts_s, T, block_m)
    assert not check or bool(((tiles[3] != 0) | (tiles[1] == 0)).all()), "a sequence spans >= 2^31 s: only the LUT path is here"
    # the op's tables, not halved: this kernel keeps the previous SiLU (s (1 + tanh(s / 2)) / (2 n))
    pos_t, n_pos, lut, _, _ = ha._seq_bias_tables(pos_w, time_w, ha._bias_table(time_w, torch.bfloat16), None,
                                                  max_seq_len, num_time_buckets, block_m, block_n, fast=False)
    out = torch.empty(T, H, 64, dtype=v.dtype, device=v.device)
    G = tiles.shape[1]
    if ws:
        assert heads <= 2 and warpgroups == 1
        _attn_gluon_ws[(G, H // heads)](
            q, k, v, out, tiles, ts_s, pos_t, lut,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0),
            out.stride(1), G, n_pos, 1.0 / float(attn_n),
            HG=heads, BM=block_m, BN=block_n, D=64, STAGES=stages, BS=bias_stages, LUT_BASE=ha.LUT_BASE, POS=pos,
            TIME=time, PRODUCER_REGS=producer_regs, num_warps=num_warps, **({"maxnreg": maxnreg} if maxnreg else {}))
        return out
    _attn_gluon[(G, H // heads)](
        q, k, v, out, tiles, ts_s, pos_t, lut,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        G, n_pos, 1.0 / float(attn_n),
        HG=heads, BM=block_m, BN=block_n, D=64, STAGES=stages, LUT_BASE=ha.LUT_BASE, POS=pos, TIME=time,
        WG=warpgroups, num_warps=num_warps * warpgroups, **({"maxnreg": maxnreg} if maxnreg else {}))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write gluon_experiment.json here")
    args = ap.parse_args()
    from bench.kernels_bench import attn_inputs, bench_ms
    card = torch.cuda.get_device_name()
    print(card, flush=True)
    rows = []
    # (BM, BN, heads per program, K/V stages, ws: 0 one warpgroup, 1 warp-specialised, > 1 that and
    # maxnreg, warpgroups splitting each tile by columns)
    for (B, N, H, target, cfgs) in [(64, 1024, 4, 45, [(64, 16, 2, 3, 0, 1), (64, 32, 2, 3, 0, 1), (64, 16, 4, 3, 0, 1),
                                                       (64, 16, 2, 2, 0, 1), (64, 16, 2, 3, 1, 1), (64, 16, 2, 3, 128, 1),
                                                       (64, 32, 4, 3, 0, 2)]),
                                    (512, 128, 2, 25, [(64, 16, 2, 3, 0, 1), (64, 16, 2, 2, 0, 1), (64, 16, 1, 2, 0, 1),
                                                       (64, 16, 2, 3, 1, 1), (64, 16, 2, 3, 128, 1), (64, 32, 2, 3, 0, 2)]),
                                    (256, 256, 2, 20, [(64, 16, 2, 3, 0, 1), (64, 16, 2, 3, 1, 1)])]:
        a = attn_inputs(B, N, H, 64, torch.bfloat16, seed=B + N)
        T = a["q"].shape[0]
        pidx = ha.padded_index(a["offsets"], N, T)
        pad = bench_ms(lambda: ha.hstu_attention_padded(**a, padded_len=N, with_bias=False, pad_index=pidx),
                       graph=True, rep=200)
        op = ha.hstu_attention_triton(**a)
        t_op = bench_ms(lambda: ha.hstu_attention_triton(**a), graph=True, rep=200)
        print(f"B={B} N={N} H={H}: padded {pad * 1e3:.1f} us, op {t_op * 1e3:.2f} us (x{pad / t_op:.1f})", flush=True)
        for (bm, bn, hg, st, ws, wg) in cfgs:
            row = dict(card=card, B=B, N=N, H=H, target=target, cfg=[bm, bn, hg, st], ws=ws, warpgroups=wg,
                       padded_us=pad * 1e3,
                       op_us=t_op * 1e3)
            try:
                wkw = dict(ws=bool(ws), maxnreg=ws if ws > 1 else None, warpgroups=wg)
                o = attention_gluon(**a, block_m=bm, block_n=bn, heads=hg, stages=st, **wkw)
                row["rel_err_vs_op"] = rel_err(o, op)
                row["bitwise_equal_op"] = bool(torch.equal(o, op))
                for name, kw in (("full", {}), ("pos_only", dict(time=False)), ("none", dict(time=False, pos=False))):
                    ms = bench_ms(lambda kw=kw: attention_gluon(**a, block_m=bm, block_n=bn, heads=hg, stages=st, check=False,
                                                                  **wkw, **kw),
                                  graph=True, rep=200)
                    row[f"{name}_us"] = ms * 1e3
                    row[f"{name}_ratio"] = pad / ms
            except Exception as exc:  # an experiment: report, go on
                row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "card"}, flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gluon_experiment.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
