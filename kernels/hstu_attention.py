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

Implementations
* :func:`hstu_attention_reference` - plain PyTorch, one sequence at a time, float32.
* :func:`hstu_attention_padded`    - the issue's "padded reference" (pad to [B, H, N, d],
  two einsums, SiLU, causal + length masks, divide by n); for benchmarks only.
* :func:`hstu_attention_triton`    - one Triton kernel; see its docstring.
* :func:`hstu_attention`           - the dispatcher.
"""

from __future__ import annotations

import math

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
                  num_time_buckets: int, max_seq_len: int) -> torch.Tensor:
    """(L, L) float32 bias of one sequence: pos_w[min(i-j, max_seq_len-1)] + time_w[bucket(ts_i-ts_j)].

    Entries with j > i are meaningless (masked by the caller).
    """
    L = ts.shape[0]
    i = torch.arange(L, device=ts.device)
    rel = (i[:, None] - i[None, :]).clamp(min=0, max=max_seq_len - 1)
    dt = ts[:, None] - ts[None, :]
    return pos_w.float()[rel] + time_w.float()[time_bucket(dt, num_time_buckets)]


def hstu_attention_reference(q, k, v, offsets, ts_s, pos_w, time_w, attn_n: int,
                             num_time_buckets: int, max_seq_len: int | None = None) -> torch.Tensor:
    """Readable PyTorch reference: loops over the sequences, computes in float32.

    ``max_seq_len`` defaults to ``pos_w.shape[0]`` (so pipeline.hstu's 9-argument call works).
    """
    max_seq_len = max_seq_len or pos_w.shape[0]
    T, H, _ = q.shape
    out = torch.zeros(T, H, v.shape[-1], dtype=torch.float32, device=q.device)
    offs = offsets.tolist()
    for b in range(len(offs) - 1):
        s, e = offs[b], offs[b + 1]
        if e <= s:
            continue
        L = e - s
        qb, kb, vb = q[s:e].float(), k[s:e].float(), v[s:e].float()       # (L, H, d)
        scores = torch.einsum("ihd,jhd->hij", qb, kb)                       # (H, L, L)
        scores = scores + relative_bias(ts_s[s:e], pos_w, time_w, num_time_buckets, max_seq_len)
        causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        a = torch.where(causal, F.silu(scores), torch.zeros((), device=q.device)) / attn_n
        out[s:e] = torch.einsum("hij,jhd->ihd", a, vb)
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


_THR_CACHE: dict = {}
LAST_COMPILED = None  # diagnostics: the last launched compiled kernel (n_regs, n_spills)
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
    def _fast_silu(x):
        # x * sigmoid(x) with sigmoid = 0.5 * tanh(0.5 x) + 0.5 on the MUFU tanh unit (half precision only)
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x * 0.5],
                                      dtype=tl.float32, is_pure=True, pack=1)
        return x * (0.5 * t + 0.5)

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
        """acc += (SiLU(q k^T + bias) / n, causal and same-sequence masked) @ v for one key tile."""
        vis = (cols[None, :] >= start[:, None]) & (cols[None, :] <= rows[:, None]) & row_ok[:, None]
        kt = tl.permute(kb, (0, 2, 1))                                              # (HP, DQ, BN)
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        s = s + bias[None, :, :]
        if FAST_SILU:
            a = _fast_silu(s) * inv_n
        else:
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
        Q, K, V, Out, Offsets, TS, PosW, TimeW, Thr,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
        T, n_search, n_iter, max_pos, num_tb, inv_n, log2_scale,
        H: tl.constexpr, HP: tl.constexpr, QK_DIM: tl.constexpr, V_DIM: tl.constexpr,
        BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        IEEE: tl.constexpr, FAST_SILU: tl.constexpr, PREFETCH: tl.constexpr,
    ):
        # One program = BLOCK_M consecutive tokens of the flattened jagged batch, ALL heads
        # (the relative bias is computed once per tile and shared by the heads; the two
        # matmuls are batched over heads).  A block may hold the tail of one sequence and
        # the heads of the next: each row finds its sequence start by binary search over
        # Offsets (L1-resident), and key j is visible to row i iff start_i <= j <= i.
        # Keys are visited only from the first row's sequence start to the block's last
        # row: every tile above the diagonal or in another sequence is skipped without a
        # load, and every tile visited has at least one visible pair (no empty tiles).
        pid_m = tl.program_id(0)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < T
        rows_c = tl.minimum(rows, T - 1)

        lo = tl.zeros([BLOCK_M], dtype=tl.int32)
        hi = tl.zeros([BLOCK_M], dtype=tl.int32) + (n_search - 1)
        for _ in range(0, n_iter):
            mid = (lo + hi + 1) // 2
            om = tl.load(Offsets + mid)
            go = om <= rows_c
            lo = tl.where(go, mid, lo)
            hi = tl.where(go, hi, mid - 1)
        start = tl.load(Offsets + lo).to(tl.int32)
        k_lo = tl.min(start, axis=0)
        k_hi = tl.minimum(pid_m * BLOCK_M + BLOCK_M, T)

        hh = tl.arange(0, HP)
        h_ok = hh < H
        dq = tl.arange(0, BLOCK_DQ)
        dv = tl.arange(0, BLOCK_DV)
        r64 = rows_c.to(tl.int64)
        q = tl.load(Q + hh[:, None, None] * stride_qh + r64[None, :, None] * stride_qt + dq[None, None, :],
                    mask=h_ok[:, None, None] & row_ok[None, :, None] & (dq[None, None, :] < QK_DIM),
                    other=0.0)                                                   # (HP, BM, DQ)
        ts_q = tl.load(TS + rows_c)
        acc = tl.zeros([HP, BLOCK_M, BLOCK_DV], dtype=tl.float32)

        if PREFETCH:
            # Software pipelining by hand (Triton does not pipeline this loop): the K/V/ts loads
            # of tile t+1 are issued before tile t's matmuls, and tile t+1's bias (the gather
            # chain) is computed after them, so both latencies overlap the tensor-core work.
            kb, vt, ts_k = _load_kv(K, V, TS, k_lo, k_hi, T, hh, h_ok, dq, dv, stride_kt, stride_kh,
                                    stride_vt, stride_vh, QK_DIM, V_DIM, BLOCK_N)
            bias = _tile_bias(rows, k_lo, ts_q, ts_k, PosW, TimeW, Thr, max_pos, num_tb, log2_scale, BLOCK_N)
            for j0 in range(k_lo, k_hi, BLOCK_N):
                jn = j0 + BLOCK_N
                kb_n, vt_n, ts_k_n = _load_kv(K, V, TS, jn, k_hi, T, hh, h_ok, dq, dv, stride_kt, stride_kh,
                                              stride_vt, stride_vh, QK_DIM, V_DIM, BLOCK_N)
                acc = _tile_accumulate(acc, q, kb, vt, bias, j0 + tl.arange(0, BLOCK_N), start, rows, row_ok,
                                       inv_n, IEEE, FAST_SILU)
                bias = _tile_bias(rows, jn, ts_q, ts_k_n, PosW, TimeW, Thr, max_pos, num_tb, log2_scale, BLOCK_N)
                kb = kb_n
                vt = vt_n
        else:
            for j0 in range(k_lo, k_hi, BLOCK_N):
                kb, vt, ts_k = _load_kv(K, V, TS, j0, k_hi, T, hh, h_ok, dq, dv, stride_kt, stride_kh,
                                        stride_vt, stride_vh, QK_DIM, V_DIM, BLOCK_N)
                bias = _tile_bias(rows, j0, ts_q, ts_k, PosW, TimeW, Thr, max_pos, num_tb, log2_scale, BLOCK_N)
                acc = _tile_accumulate(acc, q, kb, vt, bias, j0 + tl.arange(0, BLOCK_N), start, rows, row_ok,
                                       inv_n, IEEE, FAST_SILU)

        tl.store(Out + hh[:, None, None] * stride_oh + r64[None, :, None] * stride_ot + dv[None, None, :],
                 acc.to(Out.dtype.element_ty),
                 mask=h_ok[:, None, None] & row_ok[None, :, None] & (dv[None, None, :] < V_DIM))


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


def default_config(T: int, H: int, qk_dim: int, v_dim: int, dtype: torch.dtype) -> dict:
    """Block sizes picked from the GPU sweep in bench/kernels_bench.py (docs/perf.md)."""
    if _dispatch.interpreting():
        return dict(block_m=16, block_n=16, num_warps=4, num_stages=1, prefetch=False)
    # Small tiles win: the per-pair bias work (3 gathers, log2, masks, SiLU per head) is the
    # cost, and larger tiles spill registers; the hand-prefetched loop variant was slower
    # (runs 2-3 sweeps on H100, docs/perf.md).
    hp = triton.next_power_of_2(H)
    if hp >= 4 or max(qk_dim, v_dim) > 64:
        return dict(block_m=16, block_n=32, num_warps=4, num_stages=2, prefetch=False)
    return dict(block_m=16, block_n=16, num_warps=2, num_stages=2, prefetch=False)


def hstu_attention_triton(q, k, v, offsets, ts_s, pos_w, time_w, attn_n: int,
                          num_time_buckets: int, max_seq_len: int | None = None, *,
                          block_m: int | None = None,
                          block_n: int | None = None, num_warps: int | None = None,
                          num_stages: int | None = None, fast_silu: bool = True,
                          prefetch: bool | None = None) -> torch.Tensor:
    """The fused Triton kernel.  Grid = ceil(T / BLOCK_M) programs, each doing every head of
    its BLOCK_M tokens: work scales with the total number of tokens T, never with
    B x max_len; no padding, no host sync.  ``fast_silu`` (bf16/fp16 only) evaluates the
    sigmoid with the hardware tanh approximation (relative error ~5e-4, below bf16 rounding)."""
    if not _HAVE_TRITON:
        raise RuntimeError("triton is not installed")
    max_seq_len = max_seq_len or pos_w.shape[0]
    T, H, qk_dim = q.shape
    v_dim = v.shape[-1]
    assert k.shape == q.shape and v.shape[:2] == (T, H)
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1, "last dim must be contiguous"
    out = torch.empty(T, H, v_dim, dtype=v.dtype, device=v.device)
    if T == 0:
        return out
    cfg = default_config(T, H, qk_dim, v_dim, q.dtype)
    bm = block_m or cfg["block_m"]
    bn = block_n or cfg["block_n"]
    nw = num_warps or cfg["num_warps"]
    ns = num_stages or cfg["num_stages"]
    offsets = offsets.to(torch.int64).contiguous()
    ts_s = ts_s.to(torch.int64).contiguous()
    pos_w = pos_w.contiguous()
    time_w = time_w.contiguous()
    n_search = offsets.numel() - 1  # valid sequence indices are 0 .. B-1
    thr = bucket_thresholds(num_time_buckets, q.device)
    interp = _dispatch.interpreting()
    grid = (triton.cdiv(T, bm),)
    global LAST_COMPILED
    LAST_COMPILED = _hstu_attn_fwd[grid](
        q, k, v, out, offsets, ts_s, pos_w, time_w, thr,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1),
        T, n_search, max(1, int(n_search).bit_length()), max_seq_len, num_time_buckets,
        1.0 / float(attn_n), _LOG2_SCALE,
        H=H, HP=triton.next_power_of_2(H), QK_DIM=qk_dim, V_DIM=v_dim,
        BLOCK_DQ=max(16, triton.next_power_of_2(qk_dim)),
        BLOCK_DV=max(16, triton.next_power_of_2(v_dim)),
        BLOCK_M=bm, BLOCK_N=bn, IEEE=(q.dtype == torch.float32),
        FAST_SILU=(q.dtype != torch.float32 and not interp and fast_silu),
        PREFETCH=prefetch if prefetch is not None else cfg.get("prefetch", True),
        num_warps=nw, num_stages=ns,
    )
    return out


# --------------------------------------------------------------------------- dispatcher
def hstu_attention(q, k, v, offsets, ts_s, pos_w, time_w, attn_n: int, num_time_buckets: int,
                   max_seq_len: int | None = None, *, impl: str | None = None) -> torch.Tensor:
    """Dispatcher: Triton on CUDA, the reference elsewhere and while exporting.

    ``impl`` (or env ``STREAMREC_KERNELS[_HSTU_ATTENTION]``) = auto | reference | triton.
    """
    want = _dispatch.requested_impl("hstu_attention", impl)
    if want == "reference":
        return hstu_attention_reference(q, k, v, offsets, ts_s, pos_w, time_w, attn_n,
                                        num_time_buckets, max_seq_len)
    ok, why = _dispatch.triton_usable_for(q, k, v, pos_w, time_w)
    if want == "triton" and not ok:
        raise RuntimeError(f"hstu_attention: Triton path forced but unusable: {why}")
    if ok and want in ("auto", "triton"):
        return hstu_attention_triton(q, k, v, offsets, ts_s, pos_w, time_w, attn_n,
                                     num_time_buckets, max_seq_len)
    return hstu_attention_reference(q, k, v, offsets, ts_s, pos_w, time_w, attn_n,
                                    num_time_buckets, max_seq_len)


def flops(offsets: torch.Tensor, H: int, qk_dim: int, v_dim: int) -> int:
    """Useful (causal, unpadded) matmul FLOPs of one forward."""
    L = (offsets[1:] - offsets[:-1]).double()
    pairs = float((L * (L + 1) / 2).sum())
    return int(2 * pairs * H * (qk_dim + v_dim))


__all__ = [
    "hstu_attention", "hstu_attention_reference", "hstu_attention_triton", "hstu_attention_padded",
    "padded_index", "time_bucket", "relative_bias", "flops", "default_config",
]

