"""Jagged causal HSTU pointwise attention with the relative attention bias fused in.

Math (Zhai et al., "Actions Speak Louder than Words", ICML 2024, eq. 2), for a
query token i and a key token j <= i of the same sequence:

    a_ij  = SiLU(q_i . k_j + pos_w[min(i - j, max_seq_len - 1)]
                           + time_w[bucket(ts_i - ts_j)]) / attn_n
    out_i = sum_j a_ij v_j

with no 1/sqrt(d) scaling, a fixed normaliser ``attn_n`` (from the model config,
so one user's output never depends on who else is in the batch), and

    bucket(dt) = min(floor(log(max(|dt|, 1)) / 0.301), num_time_buckets - 1)

computed in float32 on integer seconds.  Pairs across sequences or with j > i
contribute 0.  ``pos_w`` and ``time_w`` are shared by all heads.

Layout: jagged.  q, k: (T, H, qk_dim); v: (T, H, v_dim); ``offsets``: (B + 1,)
int64 with offsets[0] = 0 and offsets[B] = T; ``ts_s``: (T,) int64 seconds.
Result: (T, H, v_dim) in v's dtype.

Queries on the last rows only (``q_offsets``, incremental encoding / "decode"): k, v,
ts_s and offsets describe the KEY sequences; q is (Tq, H, qk_dim) with its own
``q_offsets`` (B + 1,), Lq_b = q_offsets[b+1] - q_offsets[b] <= Lk_b.  Query row i of
sequence b sits at key position p = Lk_b - Lq_b + i (bottom-right aligned causal mask,
like flash-attn varlen with seqlen_q < seqlen_k), with timestamp ts_s[offsets[b] + p]:

    out_i = sum_{j <= p} SiLU(q_i . k_j + pos_w[min(p - j, max_seq_len - 1)]
                                        + time_w[bucket(ts_p - ts_j)]) / attn_n * v_j

Result (Tq, H, v_dim).  ``q_offsets=None`` is q_offsets = offsets (every row a query).

Implementations
* :func:`hstu_attention_reference` - plain PyTorch, one sequence at a time, float32.
* :func:`hstu_attention_padded`    - the issue's "padded reference" (pad to [B, H, N, d],
  two einsums, SiLU, causal + length masks, divide by n); for benchmarks only.
* :func:`hstu_decode_padded`       - padded torch baseline of the decode case (one query per
  sequence, keys padded to N); for benchmarks only.
* :func:`hstu_attention_triton`    - the Triton kernels: per-sequence query tiles when every
  row is a query, token blocks with ``q_offsets`` (decode); see its docstring.
* :func:`hstu_attention`           - the dispatcher.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import weakref

import torch
import torch.nn.functional as F

from . import _dispatch

try:  # Triton is optional: the reference path needs none of it.
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None
    _HAVE_TRITON = False

TIME_BUCKET_DIV = 0.301


# --------------------------------------------------------------------------- reference
def time_bucket(dt: torch.Tensor, num_time_buckets: int) -> torch.Tensor:
    """bucket(dt) = min(floor(log(max(|dt|, 1)) / 0.301), num_time_buckets - 1), in float32."""
    x = dt.abs().clamp(min=1).to(torch.float32)
    b = torch.floor(torch.log(x) / TIME_BUCKET_DIV).to(torch.int64)
    return b.clamp(min=0, max=num_time_buckets - 1)


def relative_bias(ts: torch.Tensor, pos_w: torch.Tensor, time_w: torch.Tensor,
                  num_time_buckets: int, max_seq_len: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(L, L) float32 bias of one sequence: pos_w[min(i-j, max_seq_len-1)] + time_w[bucket(ts_i-ts_j)].

    ``rows`` (optional, (Lq,) positions i) restricts it to those query rows: (Lq, L).
    Entries with j > i are meaningless (masked by the caller).
    """
    L = ts.shape[0]
    j = torch.arange(L, device=ts.device)
    i = j if rows is None else rows
    rel = (i[:, None] - j[None, :]).clamp(min=0, max=max_seq_len - 1)
    dt = (ts if rows is None else ts[rows])[:, None] - ts[None, :]
    return pos_w.float()[rel] + time_w.float()[time_bucket(dt, num_time_buckets)]


def _split_args(max_seq_len, q_offsets):
    """pipeline.hstu's attention signature has ``q_offsets`` as its 10th positional argument where
    ours has ``max_seq_len``: a tensor there is taken as ``q_offsets``."""
    if isinstance(max_seq_len, torch.Tensor):
        if q_offsets is not None:
            raise TypeError("q_offsets given twice (positionally as max_seq_len and by keyword)")
        return None, max_seq_len
    return max_seq_len, q_offsets


def _check_shapes(q, k, v, offsets, q_offsets) -> None:
    """Shape checks that need no host sync (the reference also checks the lengths)."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be (T, H, d); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1:] != k.shape[1:] or v.shape[:2] != k.shape[:2]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q_offsets is None:
        if q.shape[0] != k.shape[0]:
            raise ValueError(f"q has {q.shape[0]} rows but k has {k.shape[0]}: pass q_offsets for "
                             "queries on the last rows only")
    elif q_offsets.shape != offsets.shape:
        raise ValueError(f"q_offsets {tuple(q_offsets.shape)} must have the shape of offsets {tuple(offsets.shape)}")


def hstu_attention_reference(q, k, v, offsets, ts_s, pos_w, time_w, attn_n: int,
                             num_time_buckets: int, max_seq_len: int | None = None, *,
                             q_offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Readable PyTorch reference: loops over the sequences, computes in float32.

    ``max_seq_len`` defaults to ``pos_w.shape[0]`` (so pipeline.hstu's 9-argument call works).
    ``q_offsets`` (B+1,): queries are the last Lq_b rows of each key sequence (module docstring).
    """
    max_seq_len, q_offsets = _split_args(max_seq_len, q_offsets)
    max_seq_len = max_seq_len or pos_w.shape[0]
    _check_shapes(q, k, v, offsets, q_offsets)
    Tq, H, _ = q.shape
    out = torch.zeros(Tq, H, v.shape[-1], dtype=torch.float32, device=q.device)
    offs = offsets.tolist()
    qoffs = offs if q_offsets is None else q_offsets.tolist()
    if qoffs[0] != 0 or qoffs[-1] != Tq:
        raise ValueError(f"q_offsets must run from 0 to Tq={Tq}; got {qoffs[0]}..{qoffs[-1]}")
    for b in range(len(offs) - 1):
        s, e = offs[b], offs[b + 1]
        qs, qe = qoffs[b], qoffs[b + 1]
        L, Lq = e - s, qe - qs
        if Lq < 0 or Lq > L:
            raise ValueError(f"sequence {b}: {Lq} queries for {L} keys (need 0 <= Lq <= Lk)")
        if Lq == 0:
            continue
        qb, kb, vb = q[qs:qe].float(), k[s:e].float(), v[s:e].float()     # (Lq|L, H, d)
        scores = torch.einsum("ihd,jhd->hij", qb, kb)                       # (H, Lq, L)
        p = torch.arange(L - Lq, L, device=q.device)                        # query positions
        scores = scores + relative_bias(ts_s[s:e], pos_w, time_w, num_time_buckets, max_seq_len, rows=p)
        causal = p[:, None] >= torch.arange(L, device=q.device)[None, :]
        a = torch.where(causal, F.silu(scores), torch.zeros((), device=q.device)) / attn_n
        out[qs:qe] = torch.einsum("hij,jhd->ihd", a, vb)
    return out.to(v.dtype)


def hstu_attention_padded(q, k, v, offsets, ts_s, pos_w, time_w, attn_n: int,
                          num_time_buckets: int, max_seq_len: int, padded_len: int,
                          with_bias: bool = True, pad_index: torch.Tensor | None = None) -> torch.Tensor:
    """The issue's padded baseline, for benchmarking: pad to [B, H, N, d], two einsums, SiLU,
    causal and length masks, divide by n; optionally (``with_bias``) the relative bias too,
    materialised as [B, N, N].  Works in the input dtype, like eager PyTorch would.

    ``pad_index`` (T,) = seq * N + position may be passed precomputed (it depends only on offsets).
    """
    T, H, dq = q.shape
    dv = v.shape[-1]
    B = offsets.numel() - 1
    N = padded_len
    if pad_index is None:
        pad_index = padded_index(offsets, N, T)
    qp = q.new_zeros(B * N, H, dq).index_copy_(0, pad_index, q).view(B, N, H, dq).transpose(1, 2)
    kp = k.new_zeros(B * N, H, dq).index_copy_(0, pad_index, k).view(B, N, H, dq).transpose(1, 2)
    vp = v.new_zeros(B * N, H, dv).index_copy_(0, pad_index, v).view(B, N, H, dv).transpose(1, 2)
    scores = torch.einsum("bhid,bhjd->bhij", qp, kp)                        # (B, H, N, N)
    lengths = (offsets[1:] - offsets[:-1])
    pos = torch.arange(N, device=q.device)
    if with_bias:
        tsp = ts_s.new_zeros(B * N).index_copy_(0, pad_index, ts_s).view(B, N)
        rel = (pos[:, None] - pos[None, :]).clamp(min=0, max=max_seq_len - 1)
        bias = pos_w.to(q.dtype)[rel][None] + time_w.to(q.dtype)[
            time_bucket(tsp[:, :, None] - tsp[:, None, :], num_time_buckets)]   # (B, N, N)
        scores = scores + bias[:, None]
    valid = (pos[None, :] < lengths[:, None])                                # (B, N)
    mask = (pos[:, None] >= pos[None, :])[None] & valid[:, None, :] & valid[:, :, None]
    a = F.silu(scores) * mask[:, None].to(scores.dtype) / attn_n
    outp = torch.einsum("bhij,bhjd->bhid", a, vp)                            # (B, H, N, dv)
    return outp.transpose(1, 2).reshape(B * N, H, dv).index_select(0, pad_index)


def padded_index(offsets: torch.Tensor, N: int, T: int) -> torch.Tensor:
    """(T,) index of each jagged token in a [B * N] padded layout (no host sync)."""
    tok = torch.arange(T, device=offsets.device)
    seq = torch.searchsorted(offsets, tok, right=True) - 1
    return seq * N + (tok - offsets[seq])


def pad_keys(k, v, offsets, ts_s, padded_len: int, pad_index: torch.Tensor | None = None):
    """Keys, values and timestamps padded to [B, N, H, d] / [B, N] (the decode baseline's input)."""
    T, H, dq = k.shape
    B, N = offsets.numel() - 1, padded_len
    if pad_index is None:
        pad_index = padded_index(offsets, N, T)
    kp = k.new_zeros(B * N, H, dq).index_copy_(0, pad_index, k).view(B, N, H, dq)
    vp = v.new_zeros(B * N, H, v.shape[-1]).index_copy_(0, pad_index, v).view(B, N, H, v.shape[-1])
    tsp = ts_s.new_zeros(B * N).index_copy_(0, pad_index, ts_s).view(B, N)
    return kp, vp, tsp


def hstu_decode_padded(q, k, v, offsets, ts_s, pos_w, time_w, attn_n: int, num_time_buckets: int,
                       max_seq_len: int, padded_len: int, pad_index: torch.Tensor | None = None,
                       padded: tuple | None = None) -> torch.Tensor:
    """Padded eager-PyTorch baseline of the decode case, for benchmarking: ONE query per sequence
    (q: (B, H, qk) = each sequence's last key position, i.e. q_offsets = arange(B + 1); every
    Lk_b >= 1), keys padded to [B, N, H, d], one einsum for the scores, the relative bias
    gathered as [B, N], SiLU, length mask, divide by n, one einsum for the output.  Works in
    the input dtype.  ``padded`` = :func:`pad_keys`'s result skips the padding copies (a cache
    kept padded); otherwise they are part of the cost."""
    B = offsets.numel() - 1
    N = padded_len
    assert q.shape[0] == B, "hstu_decode_padded takes exactly one query per sequence"
    kp, vp, tsp = padded if padded is not None else pad_keys(k, v, offsets, ts_s, N, pad_index)
    last = offsets[1:] - 1                                                   # (B,) flat key row of p
    p = (offsets[1:] - offsets[:-1] - 1)                                     # (B,) query position
    pos = torch.arange(N, device=q.device)
    scores = torch.einsum("bhd,bnhd->bhn", q, kp)                            # (B, H, N)
    rel = (p[:, None] - pos[None, :]).clamp(min=0, max=max_seq_len - 1)      # (B, N)
    bias = pos_w.to(q.dtype)[rel] + time_w.to(q.dtype)[
        time_bucket(ts_s[last][:, None] - tsp, num_time_buckets)]
    mask = (pos[None, :] <= p[:, None]).to(q.dtype)                          # (B, N)
    a = F.silu(scores + bias[:, None, :]) * mask[:, None, :] / attn_n
    return torch.einsum("bhn,bnhd->bhd", a, vp)                              # (B, H, dv)


# --------------------------------------------------------------------------- Triton
def bucket_thresholds(num_time_buckets: int, device) -> torch.Tensor:
    """thr[b] = the smallest float32 x with floor(log(x) / 0.301) >= b, by the reference's own
    float32 arithmetic on ``device`` (thr[0] = 0, thr[num_time_buckets] = +inf).

    The kernel takes a fast approximate log2 and then corrects its bucket by comparing
    with these thresholds, so its buckets equal :func:`time_bucket` on that device exactly.
    """
    key = (num_time_buckets, str(device))
    hit = _THR_CACHE.get(key)
    if hit is not None:
        return hit
    nb = num_time_buckets
    want = torch.arange(1, nb, device=device, dtype=torch.int64)            # buckets 1..nb-1
    lo = torch.full((nb - 1,), 0x3F800000, dtype=torch.int64, device=device)   # bits of 1.0f
    hi = torch.full((nb - 1,), 0x7F7FFFFF, dtype=torch.int64, device=device)   # max finite
    for _ in range(32):                       # bisection over the (monotone) float32 bit patterns
        mid = (lo + hi) // 2
        x = mid.to(torch.int32).view(torch.float32)
        ok = torch.floor(torch.log(x) / TIME_BUCKET_DIV).to(torch.int64) >= want
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid + 1)
    top = hi.to(torch.int32).view(torch.float32)
    reachable = torch.floor(torch.log(top) / TIME_BUCKET_DIV).to(torch.int64) >= want
    thr = torch.empty(nb + 1, dtype=torch.float32, device=device)
    thr[0] = 0.0
    thr[1:nb] = torch.where(reachable, top, torch.full_like(top, float("inf")))
    thr[nb] = float("inf")
    _THR_CACHE[key] = thr
    return thr


LUT_SHIFT = 21                  # a LUT cell = float32 exponent + top 2 mantissa bits (a quarter octave)
LUT_BASE = 0x3F800000 >> LUT_SHIFT
LUT_CELLS = (0x4F800000 >> LUT_SHIFT) - LUT_BASE   # 128 cells covering [1, 2^32): float32(2^31 - 1) = 2^31
LUT_LOW = (1 << LUT_SHIFT) - 1                     # the bits below the cell index
LUT_MAX_BUCKETS = 1024    # a bucket number takes the LUT entry's low 10 bits


def bucket_lut(num_time_buckets: int, device) -> torch.Tensor:
    """(LUT_CELLS,) int32 table of the per-sequence kernel's int32 bucket path.  A float32
    x >= 1 falls in cell c = (bits(x) >> 21) - LUT_BASE (a quarter octave); the entry is
    (t - 1) << 10 | b with b = the bucket of the cell's lowest value and t = the low 21 bits of
    the one bucket threshold inside the cell (2^21 when none), so

        bucket(x) = (e & 1023) + ((bits(x) & (2^21 - 1)) > (e >> 10)).

    A cell holds at most one threshold (a quarter octave is a factor 1.19, thresholds are a
    factor e^0.301 = 1.35 apart), so this equals :func:`time_bucket` exactly."""
    if num_time_buckets > LUT_MAX_BUCKETS:
        raise ValueError(f"the bucket LUT holds at most {LUT_MAX_BUCKETS} buckets")
    key = ("lut", num_time_buckets, str(device))
    hit = _THR_CACHE.get(key)
    if hit is not None:
        return hit
    thr = bucket_thresholds(num_time_buckets, device)[1:num_time_buckets]          # buckets 1..nb-1
    cell = torch.arange(LUT_CELLS, device=device, dtype=torch.int64) + LUT_BASE
    lo = (cell << LUT_SHIFT).to(torch.int32).view(torch.float32)
    hi = ((cell + 1) << LUT_SHIFT).to(torch.int32).view(torch.float32)
    b_lo = (thr[None, :] <= lo[:, None]).sum(1)
    inside = (thr[None, :] > lo[:, None]) & (thr[None, :] < hi[:, None])
    assert int(inside.sum(1).max()) <= 1, "two bucket thresholds in one LUT cell"
    t = torch.where(inside, thr[None, :], torch.full_like(thr[None, :], float("inf"))).amin(1)
    t_low = torch.where(torch.isfinite(t), t.view(torch.int32).to(torch.int64) & LUT_LOW, LUT_LOW + 1)
    lut = (((t_low - 1) << 10) | b_lo).to(torch.int32)
    _THR_CACHE[key] = lut
    return lut


def bias_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels take the bias tables in float32 for float32 inputs and in the input dtype for
    16-bit inputs (as the padded reference does: it casts the tables to the input dtype)."""
    return torch.float32 if dtype == torch.float32 else dtype


def folded_lut(time_w: torch.Tensor, num_time_buckets: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """(LUT_CELLS,) int64: :func:`bucket_lut` with the time weights folded in, for 16-bit inputs.
    Low word = the cell's threshold test value (low bits of float32(|dt|) above it: next bucket);
    high word = time_w[b + 1] << 16 | time_w[b] as 16-bit patterns (``dtype``), b = the cell's
    lowest bucket.  One gather then gives the weight: time_w[bucket(dt)] exactly (in ``dtype``),
    times ``scale`` (0.5 for the kernel's fast SiLU: exact, a power of two)."""
    e = bucket_lut(num_time_buckets, time_w.device).to(torch.int64)
    b = e & 1023
    w = (time_w.detach().to(dtype) * scale).view(torch.int16).to(torch.int64) & 0xFFFF
    hi = (w[(b + 1).clamp(max=num_time_buckets - 1)] << 16) | w[b]
    return ((hi << 32) | (e >> 10)).contiguous()


def pos_tiles(pos_w: torch.Tensor, max_seq_len: int, block_m: int, block_n: int, dtype: torch.dtype,
              scale: float = 1.0):
    """Position bias of every (BLOCK_M x BLOCK_N) tile the per-sequence kernel can meet, so it loads
    it with coalesced vector loads instead of a gather per pair.  A tile's bias depends only on
    delta = q0 - j0 (a multiple of BLOCK_N, >= BLOCK_N - BLOCK_M):

        tiles[d, i, j] = pos_w[min(delta_d + i - j, max_seq_len - 1)],  delta_d = d * BLOCK_N - (BLOCK_M - BLOCK_N)

    and from d = n_tiles - 1 on every entry is pos_w[max_seq_len - 1] (the kernel clamps d there),
    times ``scale`` (0.5 for the kernel's fast SiLU: exact, a power of two).  Entries with
    delta_d + i - j < 0 (a key after the query) hold -max of ``dtype`` instead, times ``scale``:
    the causal mask.  The kernel adds it to every score; SiLU of a score that far below zero is
    exactly 0 (fast SiLU: h tanh(h) + h with tanh(h) = -1; exact: sigmoid(h) = 0), so its key
    tiles need no mask of their own, the diagonal ones included.  In bf16 and fp32 that holds for
    any score far below 1e38 in magnitude; in fp16 (-65504, halved) for q k^T below about 65,000.
    Returns ((n_tiles * BLOCK_M, BLOCK_N) tensor of ``dtype``, n_tiles)."""
    n = -(-(max_seq_len + block_m - 2) // block_n) + 1
    dev = pos_w.device
    d = torch.arange(n, device=dev)[:, None, None] * block_n - (block_m - block_n)
    rel = d + torch.arange(block_m, device=dev)[None, :, None] - torch.arange(block_n, device=dev)[None, None, :]
    w = pos_w.detach().to(dtype) * scale
    t = w[rel.clamp(0, max_seq_len - 1)].masked_fill(rel < 0, -torch.finfo(dtype).max * scale)
    return t.reshape(n * block_m, block_n).contiguous(), n


_TABLES_CACHE: dict = {}


def _cached(kind: str, src: torch.Tensor, key: tuple, build):
    """``build()`` kept per source tensor (same object, unmodified: weakref + _version), for the
    tables derived from the model's bias weights; inference tensors have no version: no reuse."""
    if src.is_inference():
        return build()
    k = (kind, id(src)) + key
    hit = _TABLES_CACHE.get(k)
    if hit is not None and hit[0]() is src and hit[1] == src._version:
        return hit[2]
    if len(_TABLES_CACHE) > 64:
        _TABLES_CACHE.clear()
    val = build()
    _TABLES_CACHE[k] = (weakref.ref(src), src._version, val)
    return val


def _bias_table(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``w`` in :func:`bias_dtype` (``dtype``), the cast kept per weight tensor (:func:`_cached`)."""
    bdt = bias_dtype(dtype)
    return w if w.dtype == bdt else _cached("cast", w, (bdt,), lambda: w.detach().to(bdt))


def _half_table(w: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``table`` (``w`` in the bias dtype) halved, for the kernels' fast SiLU (exact: a power of
    two), kept per weight tensor (:func:`_cached`)."""
    return _cached("half", w, (table.dtype,), lambda: table * 0.5)


def _seq_bias_tables(pos_w, time_w, tw, thr, max_seq_len: int, num_time_buckets: int, block_m: int,
                     block_n: int, fast: bool, lut_buckets: bool = True):
    """The per-sequence kernels' tables derived from the bias weights, kept per weight tensor
    (:func:`_cached`): the position tiles, the folded LUT when it applies (16-bit tables, at most
    LUT_MAX_BUCKETS buckets, ``lut_buckets``; else ``thr``, the log path's thresholds) and ``tw``
    (``time_w`` in the bias dtype), all halved for the fast SiLU (``fast``; exact, a power of two).
    Returns (pos_tiles, n_pos_tiles, lut or thr, whether it is the LUT, tw)."""
    bdt = tw.dtype
    sc = 0.5 if fast else 1.0
    pos_t, n_pos = _cached("pos", pos_w, (max_seq_len, block_m, block_n, bdt, sc),
                           lambda: pos_tiles(pos_w, max_seq_len, block_m, block_n, bdt, sc))
    lut_w = lut_buckets and bdt != torch.float32 and num_time_buckets <= LUT_MAX_BUCKETS
    lut = _cached("lut", time_w, (num_time_buckets, bdt, sc),
                  lambda: folded_lut(time_w, num_time_buckets, bdt, sc)) if lut_w else thr
    return pos_t, n_pos, lut, lut_w, (_half_table(time_w, tw) if fast else tw)


_THR_CACHE: dict = {}
LAST_COMPILED = None  # diagnostics: the last launched compiled kernel (n_regs, n_spills)
LAST_LAUNCH: dict = {}  # diagnostics: grid, key splits and block sizes of the last launch
_LOG2_SCALE = math.log(2.0) / TIME_BUCKET_DIV


if _HAVE_TRITON:

    @triton.jit
    def _time_bucket_tl(dt, Thr, num_tb, log2_scale):
        """bucket(dt) for int64 second differences: fast log2, then an exact +-1 correction
        against the threshold table (equal to time_bucket() on the same device)."""
        x = tl.maximum(tl.abs(dt).to(tl.float32), 1.0)
        f = tl.log2(x) * log2_scale
        b = tl.floor(f)
        up = (f - b) >= 0.5                       # nearer the upper boundary: check thr[b+1]
        b = tl.minimum(tl.maximum(b.to(tl.int32), 0), num_tb - 1)
        t = tl.load(Thr + b + up.to(tl.int32))    # one gather; the approximation error of f
        b = tl.where(up, b + (x >= t).to(tl.int32), b - (x < t).to(tl.int32))  # is << 0.5
        return tl.minimum(tl.maximum(b, 0), num_tb - 1)

    @triton.jit
    def _time_bucket_kernel(DT, Out, Thr, n, num_tb, log2_scale, BLOCK: tl.constexpr):
        # diagnostics only: the kernel's bucket function on a list of dt values
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        dt = tl.load(DT + offs, mask=m, other=0)
        tl.store(Out + offs, _time_bucket_tl(dt, Thr, num_tb, log2_scale), mask=m)

    @triton.jit
    def _tanh_approx(x):
        # tanh(x) on the MUFU tanh unit (approximate: half precision only)
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)

    @triton.jit
    def _load_kv(K, V, TS, j0, k_hi, T, hh, h_ok, dq, dv, stride_kt, stride_kh, stride_vt, stride_vh,
                 QK_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
        cols = j0 + tl.arange(0, BLOCK_N)
        col_ok = cols < k_hi
        cols_c = tl.minimum(cols, T - 1)
        c64 = cols_c.to(tl.int64)
        kb = tl.load(K + hh[:, None, None] * stride_kh + c64[None, :, None] * stride_kt + dq[None, None, :],
                     mask=h_ok[:, None, None] & col_ok[None, :, None] & (dq[None, None, :] < QK_DIM),
                     other=0.0)                                                  # (HP, BN, DQ)
        vt = tl.load(V + hh[:, None, None] * stride_vh + c64[None, :, None] * stride_vt + dv[None, None, :],
                     mask=h_ok[:, None, None] & col_ok[None, :, None] & (dv[None, None, :] < V_DIM),
                     other=0.0)                                                  # (HP, BN, DV)
        ts_k = tl.load(TS + cols_c)
        return kb, vt, ts_k

    @triton.jit
    def _tile_accumulate(acc, q, kb, vt, bias, cols, start, rows, row_ok, inv_n,
                         IEEE: tl.constexpr, FAST_SILU: tl.constexpr):
        """acc += (SiLU(q k^T + bias) / n, causal and same-sequence masked) @ v for one key tile
        (FAST_SILU: halved bias, 1 / n left to the store, as in _silu_v)."""
        vis = (cols[None, :] >= start[:, None]) & (cols[None, :] <= rows[:, None]) & row_ok[:, None]
        kt = tl.permute(kb, (0, 2, 1))                                              # (HP, DQ, BN)
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        if FAST_SILU:
            s = s * 0.5 + bias[None, :, :]
            a = s * _tanh_approx(s) + s
        else:
            s = s + bias[None, :, :]
            a = s * tl.sigmoid(s) * inv_n
        a = tl.where(vis[None, :, :], a, 0.0)
        if IEEE:
            acc = tl.dot(a, vt, acc, input_precision="ieee")
        else:
            acc = tl.dot(a.to(vt.dtype), vt, acc)
        return acc

    @triton.jit
    def _tile_bias(rows, j0, ts_q, ts_k, PosW, TimeW, Thr, max_pos, num_tb, log2_scale,
                   BLOCK_N: tl.constexpr):
        """(BM, BN) relative bias of one tile, shared by all heads: position + log-bucketed time."""
        cols = j0 + tl.arange(0, BLOCK_N)
        rel = rows[:, None] - cols[None, :]
        pidx = tl.minimum(tl.maximum(rel, 0), max_pos - 1)
        bias = tl.load(PosW + pidx).to(tl.float32)
        bkt = _time_bucket_tl(ts_q[:, None] - ts_k[None, :], Thr, num_tb, log2_scale)
        return bias + tl.load(TimeW + bkt).to(tl.float32)

    @triton.jit
    def _hstu_attn_fwd(
        Q, K, V, Out, Offsets, QOffsets, TS, PosW, TimeW, Thr,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_os,
        T, TQ, n_search, n_iter, max_pos, num_tb, inv_n, log2_scale, n_split,
        H: tl.constexpr, HP: tl.constexpr, QK_DIM: tl.constexpr, V_DIM: tl.constexpr,
        BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        IEEE: tl.constexpr, FAST_SILU: tl.constexpr,
        HAS_QOFF: tl.constexpr, SPLIT: tl.constexpr,
    ):
        # One program = BLOCK_M consecutive query rows of the flattened jagged batch, ALL heads
        # (the relative bias is computed once per tile and shared by the heads; the two
        # matmuls are batched over heads).  A block may hold the tail of one sequence and
        # the heads of the next: each row finds its sequence by binary search over QOffsets
        # (= Offsets unless HAS_QOFF; L1-resident), and key j is visible to the row at key
        # position p iff start <= j <= p.  Without HAS_QOFF p is the row itself; with it,
        # p = row + (Offsets[b+1] - QOffsets[b+1]) (bottom-right aligned: the queries are the
        # last rows of their key sequence).  Keys are visited only from the first row's
        # sequence start to the block's largest p: every tile above the diagonal or before
        # the block's first sequence is skipped without a load.  With HAS_QOFF a tile no row
        # sees (keys of sequences without queries in between) is skipped too.
        # SPLIT: program (m, s) does the s-th of n_split contiguous chunks of that key range and
        # writes its partial sum to Out + s * stride_os (the host adds the chunks: no softmax,
        # so partial sums just add).  This is what gives a decode batch (one query per
        # sequence, few row blocks, long key ranges) enough programs.
        pid_m = tl.program_id(0)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        if HAS_QOFF:
            row_ok = rows < TQ
            rows_c = tl.minimum(rows, TQ - 1)
        else:  # TQ == T
            row_ok = rows < T
            rows_c = tl.minimum(rows, T - 1)

        lo = tl.zeros([BLOCK_M], dtype=tl.int32)
        hi = tl.zeros([BLOCK_M], dtype=tl.int32) + (n_search - 1)
        for _ in range(0, n_iter):
            mid = (lo + hi + 1) // 2
            om = tl.load(QOffsets + mid)
            go = om <= rows_c
            lo = tl.where(go, mid, lo)
            hi = tl.where(go, hi, mid - 1)
        start = tl.load(Offsets + lo).to(tl.int32)
        k_lo = tl.min(start, axis=0)
        if HAS_QOFF:
            kpos = rows_c + (tl.load(Offsets + lo + 1) - tl.load(QOffsets + lo + 1)).to(tl.int32)
            k_hi = tl.max(tl.where(row_ok, kpos, -1), axis=0) + 1
            ts_q = tl.load(TS + kpos)
        else:
            kpos = rows
            k_hi = tl.minimum(pid_m * BLOCK_M + BLOCK_M, T)
            ts_q = tl.load(TS + rows_c)
        if SPLIT:
            chunk = tl.cdiv(tl.cdiv(k_hi - k_lo, BLOCK_N), n_split) * BLOCK_N
            j_begin = k_lo + tl.program_id(1) * chunk
            j_end = tl.minimum(j_begin + chunk, k_hi)
        else:
            j_begin = k_lo
            j_end = k_hi

        hh = tl.arange(0, HP)
        h_ok = hh < H
        dq = tl.arange(0, BLOCK_DQ)
        dv = tl.arange(0, BLOCK_DV)
        r64 = rows_c.to(tl.int64)
        q = tl.load(Q + hh[:, None, None] * stride_qh + r64[None, :, None] * stride_qt + dq[None, None, :],
                    mask=h_ok[:, None, None] & row_ok[None, :, None] & (dq[None, None, :] < QK_DIM),
                    other=0.0)                                                   # (HP, BM, DQ)
        acc = tl.zeros([HP, BLOCK_M, BLOCK_DV], dtype=tl.float32)

        if HAS_QOFF:
            for j0 in range(j_begin, j_end, BLOCK_N):
                seen = (start < j0 + BLOCK_N) & (kpos >= j0) & row_ok
                if tl.max(seen.to(tl.int32), axis=0) > 0:
                    kb, vt, ts_k = _load_kv(K, V, TS, j0, k_hi, T, hh, h_ok, dq, dv, stride_kt, stride_kh,
                                            stride_vt, stride_vh, QK_DIM, V_DIM, BLOCK_N)
                    bias = _tile_bias(kpos, j0, ts_q, ts_k, PosW, TimeW, Thr, max_pos, num_tb, log2_scale,
                                      BLOCK_N)
                    acc = _tile_accumulate(acc, q, kb, vt, bias, j0 + tl.arange(0, BLOCK_N), start, kpos,
                                           row_ok, inv_n, IEEE, FAST_SILU)
        else:
            for j0 in range(j_begin, j_end, BLOCK_N):
                kb, vt, ts_k = _load_kv(K, V, TS, j0, k_hi, T, hh, h_ok, dq, dv, stride_kt, stride_kh,
                                        stride_vt, stride_vh, QK_DIM, V_DIM, BLOCK_N)
                bias = _tile_bias(kpos, j0, ts_q, ts_k, PosW, TimeW, Thr, max_pos, num_tb, log2_scale, BLOCK_N)
                acc = _tile_accumulate(acc, q, kb, vt, bias, j0 + tl.arange(0, BLOCK_N), start, kpos, row_ok,
                                       inv_n, IEEE, FAST_SILU)

        o_base = Out
        if SPLIT:
            o_base = Out + tl.program_id(1).to(tl.int64) * stride_os
        if FAST_SILU:   # _tile_accumulate leaves 1 / n to the store
            acc = acc * inv_n
        tl.store(o_base + hh[:, None, None] * stride_oh + r64[None, :, None] * stride_ot + dv[None, None, :],
                 acc.to(Out.dtype.element_ty),
                 mask=h_ok[:, None, None] & row_ok[None, :, None] & (dv[None, None, :] < V_DIM))

    @triton.jit
    def _tile_k(L, k, BLOCK_M: tl.constexpr, ALIGN_N: tl.constexpr, NB: tl.constexpr):
        """Tiles k (a vector) of a sequence of length L: whether it has them (k < n), their first
        query positions q0, their sort bins, min(number of key tiles, NB - 1), and that number.
        ALIGN_N > 0: the tiles end at L rounded up to a multiple of ALIGN_N (q0 = k * BLOCK_M - pad,
        pad a multiple of ALIGN_N below BLOCK_M), so the partial tile is the first one, which has the
        fewest keys; key tiles count ALIGN_N keys (BLOCK_M without it).  Tile k < n - 1 has
        (k + 1) * BLOCK_M - pad keys, the last one L."""
        SN: tl.constexpr = ALIGN_N if ALIGN_N > 0 else BLOCK_M
        n = (L + BLOCK_M - 1) // BLOCK_M
        pad = 0
        if ALIGN_N > 0:
            pad = (BLOCK_M - 1 - (L + BLOCK_M - 1) % BLOCK_M) // ALIGN_N * ALIGN_N
        keys = tl.where(k == n - 1, L, (k + 1) * BLOCK_M - pad)
        nkt = (keys + SN - 1) // SN
        return k < n, k * BLOCK_M - pad, tl.minimum(nkt, NB - 1), nkt

    @triton.jit
    def _seq_slots_kernel(Offsets, Safe, Tiles, Count, Cursor, Units, G, slots, min_split,
                          BLOCK_M: tl.constexpr, ALIGN_N: tl.constexpr, NB: tl.constexpr, KB: tl.constexpr):
        # one program per sequence: its tiles' columns in the tile table, ordered by decreasing key
        # count (a counting sort: Count = the histogram of the bins from _seq_span_kernel, a tile
        # of bin c goes after every tile of a higher bin, at an atomic cursor of its bin: the order
        # within a bin is not deterministic, what each tile computes is).
        # Key splits (``slots`` > 0, docs/kernels.md): a tile whose bin is above C = max(total key
        # tiles / slots, min_split) takes two columns, the two halves of its key range, both in bin
        # ceil(bin / 2), sharing a unit number (< slots: each split tile has more than total / slots
        # key tiles) under which the kernel adds the halves.  Without splits, C = NB: none.
        SN: tl.constexpr = ALIGN_N if ALIGN_N > 0 else BLOCK_M
        b = tl.program_id(0)
        st = tl.load(Offsets + b).to(tl.int32)
        L = tl.load(Offsets + b + 1).to(tl.int32) - st
        bins = tl.arange(0, NB)
        hist = tl.load(Count + bins, cache_modifier=".cg")
        C = NB
        if slots > 0:
            C = tl.maximum((tl.sum(bins * hist, axis=0) + slots - 1) // slots, min_split)
        # the histogram after the splits: a split tile of bin c counts twice in bin ceil(c / 2), so
        # bin c gains twice the tiles of bins 2c - 1 and 2c above C
        lo, hi = 2 * bins - 1, 2 * bins
        hist = tl.where(bins > C, 0, hist) + 2 * (
            tl.load(Count + lo, mask=(lo > C) & (lo < NB), other=0, cache_modifier=".cg")
            + tl.load(Count + hi, mask=(hi > C) & (hi < NB), other=0, cache_modifier=".cg"))
        total = tl.sum(hist, axis=0)
        safe = tl.load(Safe + b)
        for k0 in range(0, (L + BLOCK_M - 1) // BLOCK_M, KB):
            take, q0, c, nkt = _tile_k(L, k0 + tl.arange(0, KB), BLOCK_M, ALIGN_N, NB)
            sp = take & (c > C)
            c = tl.where(sp, (c + 1) // 2, c)
            upto = tl.sum(tl.where(bins[None, :] <= c[:, None], hist[None, :], 0), axis=1)   # tiles of bins <= c
            idx = total - upto + tl.atomic_add(Cursor + c, tl.where(sp, 2, 1), mask=take)
            unit = tl.where(sp, tl.atomic_add(Units + tl.zeros_like(c), 1, mask=sp), -1)
            kend = tl.minimum(q0 + BLOCK_M, L)
            mid = tl.where(sp, nkt // 2 * SN, kend)         # the first half: full key tiles only
            for part in tl.static_range(2):
                at = take if part == 0 else sp
                i = idx + part
                tl.store(Tiles + i, st + tl.zeros_like(q0), mask=at)
                tl.store(Tiles + G + i, L + tl.zeros_like(q0), mask=at)
                tl.store(Tiles + 2 * G + i, q0, mask=at)
                tl.store(Tiles + 3 * G + i, safe + tl.zeros_like(q0), mask=at)
                tl.store(Tiles + 4 * G + i, 0 if part == 0 else mid, mask=at)
                tl.store(Tiles + 5 * G + i, mid if part == 0 else kend, mask=at)
                tl.store(Tiles + 6 * G + i, unit, mask=at)

    @triton.jit
    def _seq_span_kernel(Offsets, TS, Safe, Count, BLOCK_M: tl.constexpr, ALIGN_N: tl.constexpr, NB: tl.constexpr,
                         KB: tl.constexpr, CHUNK: tl.constexpr):
        # one program per sequence: 1 if max(ts) - min(ts) < 2^31 - 1 (every |dt| fits int32), and
        # its tiles counted in the histogram of sort bins (_tile_k)
        b = tl.program_id(0)
        st = tl.load(Offsets + b)
        en = tl.load(Offsets + b + 1)
        first = tl.load(TS + tl.minimum(st, tl.maximum(en - 1, 0)))
        lo = first
        hi = first
        for c0 in range(st, en, CHUNK):
            c = c0 + tl.arange(0, CHUNK)
            t = tl.load(TS + c, mask=c < en, other=first)
            lo = tl.minimum(lo, tl.min(t, axis=0))
            hi = tl.maximum(hi, tl.max(t, axis=0))
        span = hi - lo                                    # < 0: wrapped around int64
        tl.store(Safe + b, ((span >= 0) & (span < 2147483647)).to(tl.int32))
        L = (en - st).to(tl.int32)
        for k0 in range(0, (L + BLOCK_M - 1) // BLOCK_M, KB):
            take, _, c, _ = _tile_k(L, k0 + tl.arange(0, KB), BLOCK_M, ALIGN_N, NB)
            tl.atomic_add(Count + c, 1, mask=take)

    @triton.jit
    def _seq_qk(q, K, V, kr, h, dq, dv, stride_kt, stride_kh, stride_vt, stride_vh,
                QK_DIM: tl.constexpr, V_DIM: tl.constexpr, IEEE: tl.constexpr):
        """Head h's scores q k^T for the keys at rows ``kr`` (no bias yet), and its V tile."""
        kb = tl.load(K + kr[:, None] * stride_kt + h * stride_kh + dq[None, :], mask=dq[None, :] < QK_DIM,
                     other=0.0)                                                           # (BN, DQ)
        vb = tl.load(V + kr[:, None] * stride_vt + h * stride_vh + dv[None, :], mask=dv[None, :] < V_DIM,
                     other=0.0)                                                           # (BN, DV)
        return _dot_qk(q, kb, IEEE), vb

    @triton.jit
    def _dot_qk(q, kb, IEEE: tl.constexpr):
        if IEEE:
            return tl.dot(q, tl.trans(kb), input_precision="ieee")
        return tl.dot(q, tl.trans(kb))

    @triton.jit
    def _silu_v(acc, s, vb, bias, inv_n, IEEE: tl.constexpr, FAST_SILU: tl.constexpr):
        """acc += (SiLU(s + bias) / n) @ vb, s = q k^T; the causal mask is in ``bias`` (pos_tiles).

        FAST_SILU: the bias tables come halved (``bias`` = bias / 2, exact: a power of two) and the
        1 / n is left to the store (``_store_heads``'s ``scale``): h = (q k^T + bias) / 2 is one
        FMA and SiLU(2h) = 2h (1 + tanh(h)) / 2 = h tanh(h) + h one MUFU op and one FMA, where
        s (1 + tanh(s / 2)) / (2 n) took three besides the MUFU one (docs/perf.md, exploration R).
        P is then rounded to 16 bits before the 1 / n, not after."""
        if FAST_SILU:
            s = s * 0.5 + bias
            a = s * _tanh_approx(s) + s
        else:
            s = s + bias
            a = s * tl.sigmoid(s) * inv_n
        if IEEE:
            return tl.dot(a, vb, acc, input_precision="ieee")
        return tl.dot(a.to(vb.dtype), vb, acc)

    @triton.jit
    def _folded_time_weight(ts_q, ts_k, Lut, W_BF16: tl.constexpr, LUT_BASE: tl.constexpr,
                            ASM_GATHER: tl.constexpr = False):
        """time_w[bucket(ts_q - ts_k)] as a float32 (len(ts_q), len(ts_k)) tile from the folded LUT,
        for a sequence whose time span is < 2^31 s (the low words' difference is exact): the LUT
        cell of float32(|dt|)'s bits holds the cell's threshold and the two weights around it
        (folded_lut): one gather, one compare.

        ASM_GATHER: the gather is an inline-asm ``ld.global.nc``, which Triton treats as an
        elementwise op, not as a load it lays out for coalescing: the tile is then computed in the
        layout of the position tile it is added to, one layout conversion (shared memory and a
        barrier) less per key tile (docs/perf.md, exploration S)."""
        x = tl.maximum(tl.abs(ts_q.to(tl.int32)[:, None] - ts_k.to(tl.int32)[None, :]), 1)
        xb = x.to(tl.float32).to(tl.int32, bitcast=True)
        if ASM_GATHER:
            e = tl.inline_asm_elementwise("ld.global.nc.b64 $0, [$1];", "=l,l", [Lut + ((xb >> 21) - LUT_BASE)],
                                          dtype=tl.int64, is_pure=True, pack=1)
        else:
            e = tl.load(Lut + ((xb >> 21) - LUT_BASE))
        up = (xb & 2097151) > e.to(tl.int32)
        hi = (e >> 32).to(tl.int32)
        if W_BF16:
            return tl.where(up, hi & -65536, hi << 16).to(tl.float32, bitcast=True)
        w = tl.where(up, hi >> 16, hi) & 65535
        return w.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)

    @triton.jit
    def _store_heads(Out, orow64, q_ok, h0, stride_oh, dv, acc0, acc1, acc2, acc3, scale, HG: tl.constexpr,
                     V_DIM: tl.constexpr):
        """Store the accumulators of heads h0 .. h0 + HG - 1, times ``scale``."""
        _store_o(Out, orow64, q_ok, h0, stride_oh, dv, acc0 * scale, V_DIM)
        if HG > 1:
            _store_o(Out, orow64, q_ok, h0 + 1, stride_oh, dv, acc1 * scale, V_DIM)
        if HG > 2:
            _store_o(Out, orow64, q_ok, h0 + 2, stride_oh, dv, acc2 * scale, V_DIM)
        if HG > 3:
            _store_o(Out, orow64, q_ok, h0 + 3, stride_oh, dv, acc3 * scale, V_DIM)

    @triton.jit
    def _tile_entry(Tiles, pid, n_grid):
        """Program ``pid``'s entry of the tile table (_seq_tiles): sequence start, length (0: no
        tile), first query position, int32-safety of its time differences."""
        return (tl.load(Tiles + pid), tl.load(Tiles + n_grid + pid), tl.load(Tiles + 2 * n_grid + pid),
                tl.load(Tiles + 3 * n_grid + pid))

    @triton.jit
    def _tile_keys(Tiles, pid, n_grid):
        """Program ``pid``'s key range [jb, je) and split unit (-1: none) from the tile table."""
        return tl.load(Tiles + 4 * n_grid + pid), tl.load(Tiles + 5 * n_grid + pid), tl.load(Tiles + 6 * n_grid + pid)

    @triton.jit
    def _add_halves(Out, Tiles, Scratch, n_grid, unit, orow64, q_ok, h0, stride_oh, dv, acc0, acc1, acc2, acc3, scale,
                    HG: tl.constexpr, V_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
        """The end of a split tile's half (_seq_tiles): the first half to finish leaves its sums in
        ``Scratch`` and raises the unit's flag; the other waits for the flag (the first is running or
        done: no deadlock), adds them (two fp32 terms: the same sum in either order) and stores, then
        clears the unit's counter and flag for the next launch."""
        Sync = Tiles + 7 * n_grid + 2 * (unit * tl.num_programs(1) + tl.program_id(1))
        HS: tl.constexpr = BLOCK_M * BLOCK_DV
        sp = Scratch + (unit * tl.num_programs(1) * HG + h0).to(tl.int64) * HS \
            + tl.arange(0, BLOCK_M)[:, None] * BLOCK_DV + dv[None, :]
        if tl.atomic_add(Sync, 1) == 0:
            tl.store(sp, acc0)
            if HG > 1:
                tl.store(sp + HS, acc1)
            if HG > 2:
                tl.store(sp + 2 * HS, acc2)
            if HG > 3:
                tl.store(sp + 3 * HS, acc3)
            tl.debug_barrier()              # every thread's stores, then the flag (release)
            tl.atomic_xchg(Sync + 1, 1, sem="release")
        else:
            while tl.atomic_add(Sync + 1, 0, sem="acquire") == 0:
                pass
            tl.debug_barrier()
            acc0 += tl.load(sp, cache_modifier=".cg")
            if HG > 1:
                acc1 += tl.load(sp + HS, cache_modifier=".cg")
            if HG > 2:
                acc2 += tl.load(sp + 2 * HS, cache_modifier=".cg")
            if HG > 3:
                acc3 += tl.load(sp + 3 * HS, cache_modifier=".cg")
            tl.atomic_xchg(Sync, 0)
            tl.atomic_xchg(Sync + 1, 0)
            _store_heads(Out, orow64, q_ok, h0, stride_oh, dv, acc0, acc1, acc2, acc3, scale, HG, V_DIM)

    @triton.jit
    def _ts_rows(TS, rows, LOW: tl.constexpr):
        """TS[rows], or with LOW only their low 32-bit words (the even words: GPUs are little-endian),
        all the folded-LUT path needs: half the registers for the timestamps a program keeps
        (exploration U)."""
        if LOW:
            t = tl.load(TS.to(tl.pointer_type(tl.int32), bitcast=True) + 2 * rows)
        else:
            t = tl.load(TS + rows)
        return t

    @triton.jit
    def _tile_bias_loads(TS, PosT, s, L, j0, tq0, tile_offs, n_pos_tiles, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, LOW: tl.constexpr):
        """The key timestamps and the position-bias tile (pos_tiles: the tile of this q0 - j0) of
        the key tile at j0; positions past the sequence read its last row (the loads for the
        next tile run one tile past the last)."""
        kpos = j0 + tl.arange(0, BLOCK_N)
        kk = tl.minimum(kpos, L - 1)
        if LOW:
            ts_k = _ts_rows(TS, s + kk, True)
        else:   # (TS + s) + kk: the scalar part first, fewer 64-bit address ops than TS + (s + kk)
            ts_k = tl.load(TS + s + kk)
        d = tl.maximum(tl.minimum((tq0 - j0 + BLOCK_M - BLOCK_N) // BLOCK_N, n_pos_tiles - 1), 0)
        return ts_k, tl.load(PosT + d * (BLOCK_M * BLOCK_N) + tile_offs)

    @triton.jit
    def _seq_tile(acc0, acc1, acc2, acc3, q0, q1, q2, q3, K, V, TS, PosT, TimeW, Thr, Lut, s, L, qpos, ts_q,
                  safe, j0, tq0, tile_offs, h0, dq, dv, stride_kt, stride_kh, stride_vt, stride_vh, n_pos_tiles,
                  num_tb, inv_n, log2_scale, ts_k, pos_b, HG: tl.constexpr, QK_DIM: tl.constexpr,
                  V_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  IEEE: tl.constexpr, FAST_SILU: tl.constexpr, LUT_W: tl.constexpr, W_BF16: tl.constexpr,
                  LUT_BASE: tl.constexpr, ASM_GATHER: tl.constexpr, LOW_TS: tl.constexpr):
        """One key tile for the program's HG heads; the relative bias is computed once for all of them.
        ``ts_k`` and ``pos_b`` (its key timestamps and position tile, _tile_bias_loads) were loaded
        one tile ahead; the next tile's are loaded here first and returned with the accumulators.
        Keys past the sequence end read its last row (finite: this user's own data), and the
        position tile masks them with every other key after its query."""
        ts_n, pos_n = _tile_bias_loads(TS, PosT, s, L, j0 + BLOCK_N, tq0, tile_offs, n_pos_tiles, BLOCK_M, BLOCK_N,
                                       LOW_TS)
        kpos = j0 + tl.arange(0, BLOCK_N)                    # key positions in the sequence
        bias = pos_b.to(tl.float32)
        if LUT_W and safe != 0:     # every |dt| of the sequence is < 2^31 (``safe``, from the tile table)
            bias += _folded_time_weight(ts_q, ts_k, Lut, W_BF16, LUT_BASE, ASM_GATHER)
        else:
            if LOW_TS:  # ts_q / ts_k hold only the low words: the full timestamps for the log path
                dt = (tl.load(TS + s + tl.minimum(tl.maximum(qpos, 0), L - 1))[:, None]
                      - tl.load(TS + s + tl.minimum(kpos, L - 1))[None, :])
            else:
                dt = ts_q[:, None] - ts_k[None, :]
            bkt = _time_bucket_tl(dt, Thr, num_tb, log2_scale)
            bias += tl.load(TimeW + bkt).to(tl.float32)
        kr = (s + tl.minimum(kpos, L - 1)).to(tl.int64)
        # The heads skewed by one: head h + 1's QK^T is issued before head h's SiLU and PV, so that
        # the SiLU runs while that wgmma does (Triton waits for each QK^T at once; ptxas moves the
        # independent SiLU above the wait: docs/perf.md, run 53).
        s0, v0 = _seq_qk(q0, K, V, kr, h0, dq, dv, stride_kt, stride_kh, stride_vt, stride_vh, QK_DIM, V_DIM,
                         IEEE)
        if HG > 1:
            s1, v1 = _seq_qk(q1, K, V, kr, h0 + 1, dq, dv, stride_kt, stride_kh, stride_vt, stride_vh, QK_DIM,
                             V_DIM, IEEE)
        acc0 = _silu_v(acc0, s0, v0, bias, inv_n, IEEE, FAST_SILU)
        if HG > 2:
            s2, v2 = _seq_qk(q2, K, V, kr, h0 + 2, dq, dv, stride_kt, stride_kh, stride_vt, stride_vh, QK_DIM,
                             V_DIM, IEEE)
        if HG > 1:
            acc1 = _silu_v(acc1, s1, v1, bias, inv_n, IEEE, FAST_SILU)
        if HG > 3:
            s3, v3 = _seq_qk(q3, K, V, kr, h0 + 3, dq, dv, stride_kt, stride_kh, stride_vt, stride_vh, QK_DIM,
                             V_DIM, IEEE)
        if HG > 2:
            acc2 = _silu_v(acc2, s2, v2, bias, inv_n, IEEE, FAST_SILU)
        if HG > 3:
            acc3 = _silu_v(acc3, s3, v3, bias, inv_n, IEEE, FAST_SILU)
        return acc0, acc1, acc2, acc3, ts_n, pos_n

    @triton.jit
    def _load_q(Q, qr64, q_ok, h, stride_qh, dq, QK_DIM: tl.constexpr):
        return tl.load(Q + qr64[:, None] + h * stride_qh + dq[None, :],
                       mask=q_ok[:, None] & (dq[None, :] < QK_DIM), other=0.0)

    @triton.jit
    def _store_o(Out, orow64, q_ok, h, stride_oh, dv, acc, V_DIM: tl.constexpr):
        tl.store(Out + orow64[:, None] + h * stride_oh + dv[None, :], acc.to(Out.dtype.element_ty),
                 mask=q_ok[:, None] & (dv[None, :] < V_DIM))

    @triton.jit
    def _hstu_attn_seq_fwd(
        Q, K, V, Out, Tiles, TS, PosT, TimeW, Thr, Lut, Scratch,
        stride_qt: tl.constexpr, stride_qh: tl.constexpr, stride_kt: tl.constexpr, stride_kh: tl.constexpr,
        stride_vt: tl.constexpr, stride_vh: tl.constexpr, stride_ot: tl.constexpr, stride_oh: tl.constexpr,
        n_grid, n_pos_tiles, num_tb, inv_n, log2_scale,
        HG: tl.constexpr, QK_DIM: tl.constexpr, V_DIM: tl.constexpr,
        BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        IEEE: tl.constexpr, FAST_SILU: tl.constexpr, LUT_W: tl.constexpr, W_BF16: tl.constexpr,
        LUT_BASE: tl.constexpr, ASM_GATHER: tl.constexpr, LOW_TS: tl.constexpr,
    ):
        # One program = one query tile of ONE sequence (rows q0 .. q0+BLOCK_M-1 of it, q0 < 0 on the
        # first tile: _seq_tiles aligns the tiles to the sequence end) x HG heads
        # (head group program_id(1)); its start, length (0: no tile, the grid is a host-known
        # upper bound), q0 and int32-safety come from the tile table (_seq_tiles).  Keys run
        # from 0 to min(q0 + BLOCK_M, L) in one loop: the causal mask of the BLOCK_M / BLOCK_N
        # diagonal tiles comes with their position tiles (pos_tiles), so no tile is masked
        # apart, and the loop's loads are pipelined across all its tiles (docs/perf.md, run 64).  The
        # relative bias of a tile is computed once and shared by the group's heads: its position
        # part is a precomputed tile (PosT, pos_tiles), its time part one gather from the folded
        # LUT (16-bit inputs, sequences spanning < 2^31 s) or the log path (_time_bucket_tl).
        # The strides are compile-time constants (one compile per memory layout of q, k, v and
        # out: in practice one per model), so the HG heads' addresses share registers and differ
        # by immediates: the 4-head config spills less (docs/perf.md, exploration T).
        pid = tl.program_id(0)
        h0 = tl.program_id(1) * HG
        s, L, q0, safe = _tile_entry(Tiles, pid, n_grid)
        # keys [jb, je): all, or half of a split tile; loaded with the entry, before the branch (a
        # spare column reads zeros): one dependent round trip less before the first loads
        jb, je, unit = _tile_keys(Tiles, pid, n_grid)
        if L == 0:      # a spare column of the table (the grid is an upper bound): nothing to do
            return
        qpos = q0 + tl.arange(0, BLOCK_M)                 # q0 < 0 on a sequence's first tile
        q_ok = (qpos >= 0) & (qpos < L)
        qrow = s + tl.minimum(tl.maximum(qpos, 0), L - 1)
        ts_q = _ts_rows(TS, qrow, LOW_TS)
        dq = tl.arange(0, BLOCK_DQ)
        dv = tl.arange(0, BLOCK_DV)
        qr64 = qrow.to(tl.int64) * stride_qt
        q_0 = _load_q(Q, qr64, q_ok, h0, stride_qh, dq, QK_DIM)
        q_1 = q_0
        q_2 = q_0
        q_3 = q_0
        if HG > 1:
            q_1 = _load_q(Q, qr64, q_ok, h0 + 1, stride_qh, dq, QK_DIM)
        if HG > 2:
            q_2 = _load_q(Q, qr64, q_ok, h0 + 2, stride_qh, dq, QK_DIM)
        if HG > 3:
            q_3 = _load_q(Q, qr64, q_ok, h0 + 3, stride_qh, dq, QK_DIM)
        acc0 = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        acc3 = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        tile_offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        # each key tile's timestamps and position bias are loaded one tile ahead (their latency
        # hides under the previous tile's work: 1-4 % in run 15)
        ts_k, pos_b = _tile_bias_loads(TS, PosT, s, L, jb, q0, tile_offs, n_pos_tiles, BLOCK_M, BLOCK_N, LOW_TS)
        for j0 in range(jb, je, BLOCK_N):   # one loop, one software pipeline: no tile needs a mask of its own
            acc0, acc1, acc2, acc3, ts_k, pos_b = _seq_tile(
                acc0, acc1, acc2, acc3, q_0, q_1, q_2, q_3, K, V, TS, PosT, TimeW, Thr, Lut, s, L, qpos, ts_q,
                safe, j0, q0, tile_offs, h0, dq, dv, stride_kt, stride_kh, stride_vt, stride_vh, n_pos_tiles, num_tb,
                inv_n, log2_scale, ts_k, pos_b, HG, QK_DIM, V_DIM, BLOCK_M, BLOCK_N, IEEE, FAST_SILU, LUT_W,
                W_BF16, LUT_BASE, ASM_GATHER, LOW_TS)
        out_scale = inv_n if FAST_SILU else 1.0          # _silu_v: FAST_SILU leaves 1 / n to the store
        if unit < 0:
            _store_heads(Out, qrow.to(tl.int64) * stride_ot, q_ok, h0, stride_oh, dv, acc0, acc1, acc2, acc3,
                         out_scale, HG, V_DIM)
        else:
            _add_halves(Out, Tiles, Scratch, n_grid, unit, qrow.to(tl.int64) * stride_ot, q_ok, h0, stride_oh, dv,
                        acc0, acc1, acc2, acc3, out_scale, HG, V_DIM, BLOCK_M, BLOCK_DV)


def lut_time_bucket(dt: torch.Tensor, num_time_buckets: int) -> torch.Tensor:
    """The per-sequence kernel's int32 bucket path (:func:`bucket_lut`) in torch, for |dt| < 2^31
    (diagnostics and tests: compare with :func:`time_bucket`)."""
    x = dt.abs().clamp(min=1).to(torch.float32).view(torch.int32)
    e = bucket_lut(num_time_buckets, dt.device)[((x >> LUT_SHIFT) - LUT_BASE).long()]
    return ((e & 1023) + ((x & LUT_LOW) > (e >> 10)).int()).long()


def time_bucket_triton(dt: torch.Tensor, num_time_buckets: int) -> torch.Tensor:
    """The Triton kernel's own bucket function (diagnostics: compare with :func:`time_bucket`)."""
    dt = dt.to(torch.int64).contiguous()
    out = torch.empty(dt.shape, dtype=torch.int32, device=dt.device)
    n = dt.numel()
    if n:
        thr = bucket_thresholds(num_time_buckets, dt.device)
        _time_bucket_kernel[(triton.cdiv(n, 1024),)](dt, out, thr, n, num_time_buckets, _LOG2_SCALE,
                                                     BLOCK=1024)
    return out.to(torch.int64)


def default_config(T: int, H: int, qk_dim: int, v_dim: int, dtype: torch.dtype, *,
                   q_rows: int | None = None, num_seqs: int | None = None) -> dict:
    """Block sizes picked from the GPU sweep in bench/kernels_bench.py (docs/perf.md).

    ``T`` = key rows; ``q_rows`` (Tq) and ``num_seqs`` (B) are given for the q_offsets path.
    A decode batch (on average <= 4 query rows per sequence) gets its own config: 16-row query
    blocks (the smallest tl.dot tile: with one query per sequence a block holds 16 users) and
    longer key tiles (the work there is streaming each user's cached K/V once), plus a key
    split so that the few row blocks still fill the GPU (``num_splits``, see
    :func:`_pick_splits`)."""
    if _dispatch.interpreting():
        return dict(block_m=16, block_n=16, num_warps=4, num_stages=1)
    hp = triton.next_power_of_2(H)
    if q_rows is not None and num_seqs and q_rows <= 4 * num_seqs:
        # decode: untuned first guess (bench/kernels_bench.py --decode sweeps it)
        return dict(block_m=16, block_n=64 if max(qk_dim, v_dim) <= 64 and hp <= 2 else 32,
                    num_warps=4, num_stages=2)
    # kernel="block" on every row (the plain op runs the per-sequence kernel): run 3's defaults
    if hp >= 4 or max(qk_dim, v_dim) > 64:
        return dict(block_m=16, block_n=32, num_warps=4, num_stages=2)
    return dict(block_m=16, block_n=16, num_warps=2, num_stages=2)


def seq_config(H: int, qk_dim: int, v_dim: int, dtype: torch.dtype) -> dict:
    """Config of the per-sequence kernel (every row a query): BLOCK_M query rows of one
    sequence x ``heads`` heads per program (a divisor of H, at most 4), BLOCK_N keys per tile."""
    if _dispatch.interpreting():
        return dict(block_m=16, block_n=16, num_warps=4, num_stages=1,
                    heads=max(g for g in (1, 2, 3, 4) if H % g == 0))
    # from the H200 sweeps (docs/perf.md, runs 5-8): 64-row query tiles (wgmma) and all heads
    # in one program (the bias is computed once for them) as long as the accumulators fit
    if max(qk_dim, v_dim) > 64:
        return dict(block_m=32, block_n=32, num_warps=4, num_stages=2,
                    heads=max(g for g in (1, 2) if H % g == 0))
    hg = max(g for g in (1, 2, 3, 4) if H % g == 0)
    return dict(block_m=64, block_n=32 if hg >= 3 else 16, num_warps=4, num_stages=2, heads=hg)


_TILES_CACHE: dict = {}
_BATCH = threading.local()


@contextlib.contextmanager
def same_batch():
    """Scope of one forward pass over one batch: inside it the per-sequence kernel's tile table
    (:func:`_seq_tiles`) is built once for the ``offsets`` / ``ts_s`` tensors its calls share,
    also for inference tensors (``torch.inference_mode``), which have no version counter to show
    an in-place change. The caller promises not to change them in place inside the scope.
    ``HSTUEncoder`` enters it around its layers (``set_kernels(batch_context=same_batch)``), so
    that the layers share one table; re-entrant; the table is dropped when the outermost scope
    ends."""
    depth = getattr(_BATCH, "depth", 0)
    _BATCH.depth = depth + 1
    try:
        yield
    finally:
        _BATCH.depth = depth
        if depth == 0:
            _TILES_CACHE.pop("last", None)
# Key splits of the per-sequence kernel (_attention_seq): a query tile is split when it has more than
# SPLIT_MIN_KEYS keys and more key tiles than total / (SPLIT_PROGRAMS_PER_SM x SMs).  1.6: the best of
# 1 / 1.33 / 1.6 / 2 programs per SM at B=64 N=1024 H=4 over five length draws (docs/perf.md, run 40):
# two programs sharing an SM progress like about 1.5 alone.  At B=64 N=200 (tiles of at most 13 x 16
# keys) splitting did not pay: hence the floor.
SPLIT_PROGRAMS_PER_SM = 1.6
SPLIT_MIN_KEYS = 512
_TILE_BINS = 128    # the tile table's sort bins (key-tile counts); longer tiles share the last one


def _tile_columns(T: int, B: int, block_m: int) -> int:
    """T // BM + B: a host-known bound on sum_b ceil(L_b / BM), the query tiles of B sequences of T rows."""
    return T // block_m + B


def _seq_tiles(offsets: torch.Tensor, ts_s: torch.Tensor, T: int, block_m: int, align_n: int = 0,
               split_slots: int = 0, n_hg: int = 1, min_split: int = 0) -> torch.Tensor:
    """(7, G) int32 tile table of the per-sequence kernel, built by a memset and two small Triton
    kernels, one program per sequence (no host sync).  Column t = the tile's sequence start, its
    length (0 = no tile), its first query position q0, 1 when the sequence's time span is below
    2^31 s (its int32 bucket path is exact), the key range [jb, je) it covers and its split unit
    (-1: not split).  G = T // BM + B (+ the split units) bounds the number of columns,
    sum_b ceil(L_b / BM) (+ one per split tile), from the shapes alone.

    ``split_slots`` > 0: a tile with more than C = max(total key tiles / split_slots, ``min_split``)
    key tiles (at least 2 BM keys) is split into two columns, the halves of its key range, which the kernel adds
    (:func:`_attention_seq`): so that no program is much longer than the average load of a
    program slot of the GPU.  There are fewer split tiles than ``split_slots``; the table ends
    with 2 int32 per split tile and head group (``n_hg``) for the kernel's adds.

    ``align_n`` = 0: q0 = 0, BM, 2 BM, ...; the last tile is the partial one.  ``align_n`` = BN
    (what the kernel runs): the tiles are shifted back by the largest multiple of BN that keeps
    the last tile's end at or past L, so the first tile starts before row 0 (its rows < 0 are
    masked) and the partial tile is the one with the fewest keys; key tiles stay at multiples
    of BN.  The tiles are ordered by decreasing number of key tiles (of ``align_n`` keys, or
    ``block_m``), a counting sort, so that the GPU's block scheduler runs the longest programs
    first and the short ones fill the tail (docs/kernels.md).

    The last table is kept for the same ``offsets`` and ``ts_s`` tensors (same objects, unmodified:
    their version counters), and inside :func:`same_batch` also for inference tensors, which have
    none: the encoder's layers share one."""
    inference = offsets.is_inference() or ts_s.is_inference()
    cacheable = getattr(_BATCH, "depth", 0) > 0 or not inference
    key = (T, block_m, align_n, split_slots, n_hg) + (() if inference else (offsets._version, ts_s._version))
    hit = _TILES_CACHE.get("last")
    if cacheable and hit is not None and hit[0]() is offsets and hit[1]() is ts_s and hit[2] == key:
        return hit[3]
    B = offsets.numel() - 1
    # a split tile has at least 2 BM keys: both halves whole key tiles, the first without the diagonal
    min_split = max(min_split, 2 * block_m // (align_n or block_m))
    # split tiles: fewer than split_slots; none is the first tile of its sequence (it has the fewest
    # keys), so at most T // BM; none without more than min_split key tiles of (align_n or BM) keys
    units = min(split_slots, T // block_m) if T > min_split * (align_n or block_m) else 0
    G = _tile_columns(T, B, block_m) + units
    n_sync = 2 * units * n_hg
    safe = torch.empty(B, dtype=torch.int32, device=offsets.device)
    # empty columns: length 0; the kernel's add counters and flags start at 0 (and it leaves them at 0)
    buf = torch.zeros(7 * G + n_sync + 2 * _TILE_BINS + 1, dtype=torch.int32, device=offsets.device)
    count = buf[7 * G + n_sync:7 * G + n_sync + _TILE_BINS]
    cursor = buf[7 * G + n_sync + _TILE_BINS:-1]
    meta = dict(BLOCK_M=block_m, ALIGN_N=align_n, NB=_TILE_BINS, KB=16)
    _seq_span_kernel[(B,)](offsets, ts_s, safe, count, **meta, CHUNK=256, num_warps=2)
    _seq_slots_kernel[(B,)](offsets, safe, buf, count, cursor, buf[-1:], G, units, min_split, **meta, num_warps=2)
    tiles = buf[:7 * G].view(7, G)
    if cacheable:
        _TILES_CACHE["last"] = (weakref.ref(offsets), weakref.ref(ts_s), key, tiles)
    return tiles


def _attention_seq(q, k, v, out, offsets, ts_s, pos_w, time_w, tw, thr, attn_n, num_time_buckets, max_seq_len,
                   block_m=None, block_n=None, num_warps=None, num_stages=None, heads=None, fast_silu=True,
                   lut_buckets=True, maxnreg=None, split_slots=None):
    """Launch the per-sequence kernel (every row a query).  ``tw`` = ``time_w`` in the bias dtype;
    the derived tables are kept per ``pos_w`` / ``time_w`` (the caller's tensors).  ``fast_silu``:
    the caller's decision (hstu_attention_triton), taken as is.

    Key splits (``split_slots``; None: ``SPLIT_PROGRAMS_PER_SM`` programs per SM of the device,
    shared by the head groups; 0: none): a query tile with more than ``SPLIT_MIN_KEYS`` keys and
    more key tiles than the average load of a program slot is run as two programs, one per half of
    its keys, whose sums the second to finish adds (:func:`_seq_tiles`).  Without them one long
    tile can outlast the whole grid: at B=64, N=1024 (the benchmark's lengths) the longest tiles
    have 32 key tiles, a slot's average load is 22."""
    T, H, qk_dim = q.shape
    v_dim = v.shape[-1]
    cfg = seq_config(H, qk_dim, v_dim, q.dtype)
    bm, bn = block_m or cfg["block_m"], block_n or cfg["block_n"]
    hg = heads or cfg["heads"]
    if bm % bn or H % hg or not 1 <= hg <= 4:
        raise ValueError(f"need block_n | block_m and heads | H with heads <= 4; got {bm}, {bn}, {hg} (H={H})")
    if T >= 2**31:
        raise ValueError(f"{T} rows: the per-sequence kernel indexes rows in int32")
    n_hg = H // hg
    if split_slots is None:
        split_slots = max(1, int(SPLIT_PROGRAMS_PER_SM * _num_sms(str(q.device))) // n_hg)
    tiles = _seq_tiles(offsets, ts_s, T, bm, bn, split_slots, n_hg, min_split=SPLIT_MIN_KEYS // bn)
    G = tiles.shape[1]
    units = G - _tile_columns(T, offsets.numel() - 1, bm)      # the split units _seq_tiles made room for
    block_dv = max(16, triton.next_power_of_2(v_dim))
    scratch = torch.empty(max(units, 1) * H * bm * block_dv, dtype=torch.float32, device=q.device)
    bdt = tw.dtype
    pos_t, n_pos, lut, lut_w, tw = _seq_bias_tables(pos_w, time_w, tw, thr, max_seq_len, num_time_buckets, bm, bn,
                                                    fast_silu, lut_buckets)
    global LAST_COMPILED, LAST_LAUNCH
    LAST_LAUNCH = {"kernel": "seq", "grid": (G, n_hg), "block_m": bm, "block_n": bn, "heads": hg,
                   "num_warps": num_warps or cfg["num_warps"], "num_stages": num_stages or cfg["num_stages"],
                   "split_slots": split_slots, "tiles": tiles}
    LAST_COMPILED = _hstu_attn_seq_fwd[(G, n_hg)](
        q, k, v, out, tiles, ts_s, pos_t, tw, thr, lut, scratch,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1),
        G, n_pos, num_time_buckets, 1.0 / float(attn_n), _LOG2_SCALE,
        HG=hg, QK_DIM=qk_dim, V_DIM=v_dim,
        BLOCK_DQ=max(16, triton.next_power_of_2(qk_dim)), BLOCK_DV=block_dv,
        BLOCK_M=bm, BLOCK_N=bn, IEEE=(q.dtype == torch.float32),
        FAST_SILU=fast_silu, LUT_W=lut_w, W_BF16=(bdt == torch.bfloat16), LUT_BASE=LUT_BASE,
        ASM_GATHER=lut_w and not _dispatch.interpreting(),
        # the timestamps' low words only: pays where registers are short, 3-4 heads (exploration U)
        LOW_TS=lut_w and hg >= 3,
        num_warps=LAST_LAUNCH["num_warps"], num_stages=LAST_LAUNCH["num_stages"],
        **({"maxnreg": maxnreg} if maxnreg else {}),
    )
    return out


@functools.lru_cache(maxsize=8)
def _num_sms(device: str) -> int:
    if _dispatch.interpreting() or not torch.cuda.is_available():
        return 1
    return torch.cuda.get_device_properties(torch.device(device)).multi_processor_count


def _pick_splits(Tk: int, Tq: int, block_m: int, block_n: int, device,
                 programs_per_sm: int = 4, min_tiles: int = 2) -> int:
    """Key-range chunks per query block for the q_offsets path, with no host sync: a block of
    ``block_m`` query rows spans about block_m * Tk / Tq keys (one query per user: block_m
    users' caches); split it so that the grid reaches ``programs_per_sm`` programs per SM,
    keeping at least ``min_tiles`` key tiles per chunk."""
    grid_m = triton.cdiv(Tq, block_m)
    est_tiles = triton.cdiv(min(Tk, block_m * Tk // max(Tq, 1) + block_m), block_n)
    want = triton.cdiv(programs_per_sm * _num_sms(str(device)), grid_m)
    return max(1, min(want, est_tiles // min_tiles, 128))


def hstu_attention_triton(q, k, v, offsets, ts_s, pos_w, time_w, attn_n: int,
                          num_time_buckets: int, max_seq_len: int | None = None, *,
                          q_offsets: torch.Tensor | None = None,
                          block_m: int | None = None,
                          block_n: int | None = None, num_warps: int | None = None,
                          num_stages: int | None = None, fast_silu: bool = True,
                          num_splits: int | None = None,
                          heads: int | None = None, kernel: str = "auto", lut_buckets: bool = True,
                          maxnreg: int | None = None, split_slots: int | None = None) -> torch.Tensor:
    """The fused Triton kernels; no padding, no host sync, work proportional to the number of
    (query, visible key) tiles, never to B x max_len.

    * Every row a query (``q_offsets`` None; ``kernel="auto"``): ``_hstu_attn_seq_fwd``, one
      program per BLOCK_M-row query tile of ONE sequence x ``heads`` heads (the bias is
      computed once per key tile for them), tiles listed longest first by a tiny on-device
      table (:func:`_seq_tiles`); the causal mask is in the position bias.  The position bias
      comes from precomputed tiles (:func:`pos_tiles`, coalesced loads); with 16-bit inputs
      the time weight from one gather in a LUT with the weights folded in (:func:`folded_lut`)
      when the sequence spans < 2^31 s; both tables are kept per ``pos_w`` / ``time_w`` tensor
      until it changes.  Config: :func:`seq_config` unless given.
    * Queries on the last rows (``q_offsets``), or ``kernel="block"``: ``_hstu_attn_fwd``,
      ceil(Tq / BLOCK_M) programs over the flattened rows (x ``num_splits`` key chunks), each
      doing every head of its rows; a block may span sequences.  Config: :func:`default_config`.

    With 16-bit inputs both kernels take ``pos_w`` and ``time_w`` in the input dtype, as the padded
    reference does (:func:`bias_dtype`).

    ``fast_silu`` (bf16/fp16 only) evaluates the sigmoid with the hardware tanh approximation
    (relative error ~5e-4, below bf16 rounding).  ``split_slots`` sets the per-sequence kernel's key
    splits (:func:`_attention_seq`; 0: none).  ``lut_buckets=False`` and ``maxnreg`` are for
    benchmarks.

    ``q_offsets`` (B+1,): queries are the last Lq_b rows of each key sequence (module
    docstring); q is then (Tq, H, qk_dim) and the result (Tq, H, v_dim).  Lq_b <= Lk_b is
    NOT checked here (it would need a host sync); the reference checks it.  With
    ``num_splits`` > 1 the chunks' fp32 partial sums are added by one torch op (deterministic
    for a given config); ``None`` picks it from the shapes (1 without q_offsets)."""
    if not _HAVE_TRITON:
        raise RuntimeError("triton is not installed")
    if kernel not in ("auto", "seq", "block"):
        raise ValueError(f"kernel must be 'auto', 'seq' or 'block'; got {kernel!r}")
    if isinstance(max_seq_len, torch.Tensor):
        max_seq_len, q_offsets = _split_args(max_seq_len, q_offsets)
    max_seq_len = max_seq_len or pos_w.shape[0]
    if q_offsets is offsets:
        q_offsets = None
    if q_offsets is not None or k.shape != q.shape or v.shape[:2] != q.shape[:2]:
        _check_shapes(q, k, v, offsets, q_offsets)     # raises unless q_offsets is given and fits
    Tq, H, qk_dim = q.shape
    T = k.shape[0]
    v_dim = v.shape[-1]
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1, "last dim must be contiguous"
    out = torch.empty(Tq, H, v_dim, dtype=v.dtype, device=v.device)
    if Tq == 0:
        return out
    has_q = q_offsets is not None
    offsets = offsets.to(torch.int64).contiguous()
    ts_s = ts_s.to(torch.int64).contiguous()
    pos_w = pos_w.contiguous()
    time_w = time_w.contiguous()
    tw = _bias_table(time_w, q.dtype)
    thr = bucket_thresholds(num_time_buckets, q.device)
    # the fast SiLU (16-bit inputs; not under the interpreter, which has no inline asm) takes the
    # bias tables halved and leaves 1 / n to the store (_silu_v, _tile_accumulate)
    fast = q.dtype != torch.float32 and not _dispatch.interpreting() and fast_silu
    if not has_q and kernel in ("auto", "seq"):
        return _attention_seq(q, k, v, out, offsets, ts_s, pos_w, time_w, tw, thr, attn_n, num_time_buckets,
                              max_seq_len, block_m, block_n, num_warps, num_stages, heads, fast, lut_buckets,
                              maxnreg, split_slots)
    B = offsets.shape[0] - 1
    cfg = default_config(T, H, qk_dim, v_dim, q.dtype, q_rows=Tq, num_seqs=B) if has_q else \
        default_config(T, H, qk_dim, v_dim, q.dtype)
    bm = block_m or cfg["block_m"]
    bn = block_n or cfg["block_n"]
    nw = num_warps or cfg["num_warps"]
    ns = num_stages or cfg["num_stages"]
    q_offs = q_offsets.to(device=q.device, dtype=torch.int64).contiguous() if has_q else offsets
    if not has_q:
        splits = 1
    elif num_splits is not None:
        splits = max(1, int(num_splits))
    else:
        splits = _pick_splits(T, Tq, bm, bn, q.device)
    n_search = offsets.numel() - 1  # valid sequence indices are 0 .. B-1
    pw = _bias_table(pos_w, q.dtype)
    if fast:
        pw, tw = _half_table(pos_w, pw), _half_table(time_w, tw)
    dst = out if splits == 1 else torch.empty(splits, Tq, H, v_dim, dtype=torch.float32, device=v.device)
    grid = (triton.cdiv(Tq, bm), splits)
    global LAST_COMPILED, LAST_LAUNCH
    LAST_LAUNCH = {"grid": grid, "splits": splits, "block_m": bm, "block_n": bn, "num_warps": nw, "num_stages": ns}
    LAST_COMPILED = _hstu_attn_fwd[grid](
        q, k, v, dst, offsets, q_offs, ts_s, pw, tw, thr,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        dst.stride(-3), dst.stride(-2), dst.stride(0) if splits > 1 else 0,
        T, Tq, n_search, max(1, int(n_search).bit_length()), max_seq_len, num_time_buckets,
        1.0 / float(attn_n), _LOG2_SCALE, splits,
        H=H, HP=triton.next_power_of_2(H), QK_DIM=qk_dim, V_DIM=v_dim,
        BLOCK_DQ=max(16, triton.next_power_of_2(qk_dim)),
        BLOCK_DV=max(16, triton.next_power_of_2(v_dim)),
        BLOCK_M=bm, BLOCK_N=bn, IEEE=(q.dtype == torch.float32),
        FAST_SILU=fast, HAS_QOFF=has_q, SPLIT=splits > 1,
        num_warps=nw, num_stages=ns,
    )
    if splits > 1:
        if out.dtype == torch.float32:
            torch.sum(dst, 0, out=out)
        else:
            out.copy_(dst.sum(0))
    return out


# --------------------------------------------------------------------------- dispatcher
def hstu_attention(q, k, v, offsets, ts_s, pos_w, time_w, attn_n: int, num_time_buckets: int,
                   max_seq_len: int | None = None, *, q_offsets: torch.Tensor | None = None,
                   impl: str | None = None) -> torch.Tensor:
    """Dispatcher: Triton on CUDA, the reference elsewhere and while exporting.

    ``impl`` (or env ``STREAMREC_KERNELS[_HSTU_ATTENTION]``) = auto | reference | triton.
    ``q_offsets``: queries on the last rows of each key sequence (module docstring); a tensor
    passed positionally as the 10th argument (pipeline.hstu's signature) is taken as it.
    """
    max_seq_len, q_offsets = _split_args(max_seq_len, q_offsets)
    want = _dispatch.requested_impl("hstu_attention", impl)
    if want == "reference":
        return hstu_attention_reference(q, k, v, offsets, ts_s, pos_w, time_w, attn_n,
                                        num_time_buckets, max_seq_len, q_offsets=q_offsets)
    ok, why = _dispatch.triton_usable_for(q, k, v, pos_w, time_w)
    if want == "triton" and not ok:
        raise RuntimeError(f"hstu_attention: Triton path forced but unusable: {why}")
    if ok and want in ("auto", "triton"):
        return hstu_attention_triton(q, k, v, offsets, ts_s, pos_w, time_w, attn_n,
                                     num_time_buckets, max_seq_len, q_offsets=q_offsets)
    return hstu_attention_reference(q, k, v, offsets, ts_s, pos_w, time_w, attn_n,
                                    num_time_buckets, max_seq_len, q_offsets=q_offsets)


def flops(offsets: torch.Tensor, H: int, qk_dim: int, v_dim: int) -> int:
    """Useful (causal, unpadded) matmul FLOPs of one forward."""
    L = (offsets[1:] - offsets[:-1]).double()
    pairs = float((L * (L + 1) / 2).sum())
    return int(2 * pairs * H * (qk_dim + v_dim))


__all__ = [
    "hstu_attention", "hstu_attention_reference", "hstu_attention_triton", "hstu_attention_padded",
    "hstu_decode_padded", "pad_keys", "padded_index", "time_bucket", "relative_bias", "flops", "default_config",
]

