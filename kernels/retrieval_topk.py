"""Retrieval: top-k items per user by dot product, without materialising the (B, N) scores.

    retrieval_topk(user_emb (B, D), items (N, D), k) -> (scores (B, k), idx (B, k))

Reference: ``torch.topk(user_emb @ items.T, k)``.

Fused path (three steps, no host sync except an overflow check):
1. *Threshold*: score the users against a strided sample of S items (S << N) and take
   each user's k-th best sample score, lowered by a small margin.  The k-th best of a
   subset can never exceed the k-th best of the whole table, so every true top-k item
   scores >= that threshold: the filter below loses nothing.
2. *Filter* (Triton): one GEMM pass over the item table in tiles; each tile's scores
   stay in registers, and only the (user, item) pairs at or above the user's threshold
   are appended to a per-user candidate buffer (about k * N / S entries per user) with
   one atomic per (user, tile).
3. *Select*: ``torch.topk`` over the small candidate buffers.
If a user's candidates overflow the buffer (a badly unrepresentative sample), those
users are recomputed with the reference, so the answer is always exact.
Scores are computed with float32 accumulation and returned in float32 for the fused
path ranking; the returned scores are cast to the input dtype like the reference's.
"""

from __future__ import annotations

import torch

from . import _dispatch

try:
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except Exception:  # pragma: no cover
    triton = None
    tl = None
    _HAVE_TRITON = False

# The fused path does not beat torch.topk(user @ items.T) yet on any measured shape (H100/H200,
# B 64..512, N 1e5..1e6: x0.2-0.9, docs/perf.md): the filter kernel runs 5-11x slower than the
# plain GEMM.  So "auto" takes the reference; impl="triton" (or STREAMREC_KERNELS_RETRIEVAL_TOPK=triton)
# forces the fused path.  Set a finite item count here once the kernel wins.
MIN_ITEMS_FOR_KERNEL = float("inf")


def retrieval_topk_reference(user_emb: torch.Tensor, items: torch.Tensor, k: int):
    """torch.topk(user_emb @ items.T, k): the readable version (materialises (B, N))."""
    res = torch.topk(user_emb @ items.T, k, dim=1)
    return res.values, res.indices


if _HAVE_TRITON:

    @triton.jit
    def _retrieval_filter(U, I, Thr, Cnt, CandS, CandI, B, N, D, stride_u, stride_i, cap,
                          items_per_prog,
                          BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          IEEE: tl.constexpr):
        pid_b = tl.program_id(0)          # user block: fastest axis, so programs that share
        pid_c = tl.program_id(1)          # an item chunk run together and share it in L2
        users = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        umask = users < B
        d = tl.arange(0, BLOCK_D)
        dmask = d < D
        u = tl.load(U + users[:, None].to(tl.int64) * stride_u + d[None, :],
                    mask=umask[:, None] & dmask[None, :], other=0.0)
        thr = tl.load(Thr + users, mask=umask, other=float("inf"))
        n_start = pid_c * items_per_prog
        n_end = tl.minimum(n_start + items_per_prog, N)
        for n0 in range(n_start, n_end, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            cmask = cols < n_end
            itr = tl.load(I + cols[:, None].to(tl.int64) * stride_i + d[None, :],
                          mask=cmask[:, None] & dmask[None, :], other=0.0)   # (BN, D): row loads
            it = tl.trans(itr)
            if IEEE:
                s = tl.dot(u, it, input_precision="ieee")
            else:
                s = tl.dot(u, it)
            keep = (s >= thr[:, None]) & cmask[None, :] & umask[:, None]
            keep_i = keep.to(tl.int32)
            n_keep = tl.sum(keep_i, axis=1)                       # per user in this tile
            if tl.max(n_keep, axis=0) > 0:
                rank = tl.cumsum(keep_i, axis=1) - 1              # position among kept
                base = tl.atomic_add(Cnt + users, n_keep, mask=umask & (n_keep > 0))
                slot = base[:, None] + rank
                ok = keep & (slot < cap)
                dst = users[:, None].to(tl.int64) * cap + slot
                tl.store(CandS + dst, s, mask=ok)
                tl.store(CandI + dst, cols[None, :] + tl.zeros_like(slot), mask=ok)


def _sample_threshold(user_emb, items, k, sample_size):
    N = items.shape[0]
    # the sample's top-k costs ~B*S; the candidates ~B*k*N/S: S ~ N/32 balances them
    S = min(N, max(4 * k, min(sample_size, max(4096, N // 32))))
    stride = max(1, N // S)
    sample = items[::stride][:S].float()
    sc = user_emb.float() @ sample.T                               # (B, S), small
    kth = torch.topk(sc, k, dim=1).values[:, -1]
    # margin for the summation-order difference between this GEMM and the kernel's
    return (kth - (kth.abs() * 1e-3 + 1e-4)).contiguous(), S


def _filter(user_emb, items, k, thr, cap, block_b=None, block_n=None, num_warps=None):
    """Step 2: the Triton GEMM + threshold filter into per-user candidate buffers."""
    B, D = user_emb.shape
    N = items.shape[0]
    dev = user_emb.device
    cnt = torch.zeros(B, dtype=torch.int32, device=dev)
    cand_s = torch.full((B, cap), float("-inf"), dtype=torch.float32, device=dev)
    cand_i = torch.zeros((B, cap), dtype=torch.int32, device=dev)
    interp = _dispatch.interpreting()
    bb = block_b or (16 if interp else (128 if B >= 256 else max(16, min(64, triton.next_power_of_2(B)))))
    bn = block_n or (16 if interp else 128)
    nw = num_warps or (1 if interp else (8 if bb >= 128 else 4))
    n_ub = triton.cdiv(B, bb)
    if interp:
        n_chunks = min(triton.cdiv(N, bn), 4)
    else:
        sms = torch.cuda.get_device_properties(dev).multi_processor_count
        n_chunks = max(1, min(triton.cdiv(N, bn), (4 * sms) // n_ub))
    per = triton.cdiv(triton.cdiv(N, n_chunks), bn) * bn
    n_chunks = triton.cdiv(N, per)
    _retrieval_filter[(n_ub, n_chunks)](
        user_emb, items, thr, cnt, cand_s, cand_i, B, N, D, user_emb.stride(0), items.stride(0),
        cap, per, BLOCK_B=bb, BLOCK_N=bn, BLOCK_D=max(16, triton.next_power_of_2(D)),
        IEEE=(user_emb.dtype == torch.float32), num_warps=nw)
    return cnt, cand_s, cand_i


def retrieval_topk_triton(user_emb: torch.Tensor, items: torch.Tensor, k: int, *,
                          sample_size: int = 16384, cap_factor: float = 2.5,
                          block_b: int | None = None, block_n: int | None = None,
                          num_warps: int | None = None, return_stats: bool = False,
                          check_overflow: bool = True):
    """The fused path.  ``check_overflow=False`` skips the one host sync (and the exact
    fallback): only for timing under CUDA graphs."""
    if not _HAVE_TRITON:
        raise RuntimeError("triton is not installed")
    B, D = user_emb.shape
    N = items.shape[0]
    if k > N:
        raise ValueError(f"k={k} > number of items {N}")
    user_emb = user_emb.contiguous()
    items = items.contiguous()
    thr, S = _sample_threshold(user_emb, items, k, sample_size)
    cap = min(int(cap_factor * k * N / S) + 256, N)
    cnt, cand_s, cand_i = _filter(user_emb, items, k, thr, cap, block_b, block_n, num_warps)
    top = torch.topk(cand_s, k, dim=1)
    scores = top.values
    idx = torch.gather(cand_i, 1, top.indices).to(torch.int64)
    n_over = 0
    if check_overflow:
        over = cnt > cap
        n_over = int(over.sum())                       # the one host sync: overflow check
        if n_over:
            rows = over.nonzero().squeeze(1)
            s2, i2 = retrieval_topk_reference(user_emb[rows].float(), items.float(), k)
            scores[rows] = s2
            idx[rows] = i2
    scores = scores.to(user_emb.dtype)
    if return_stats:
        return scores, idx, {"sample": S, "cap": cap, "max_candidates": int(cnt.max()), "overflow_users": n_over}
    return scores, idx


def retrieval_topk(user_emb: torch.Tensor, items: torch.Tensor, k: int, *, impl: str | None = None):
    """Dispatcher: torch.topk(user_emb @ items.T) unless the fused Triton path is forced
    (impl="triton") or the table has >= MIN_ITEMS_FOR_KERNEL items (currently never: it is
    slower, docs/perf.md); always the reference on CPU and while exporting."""
    want = _dispatch.requested_impl("retrieval_topk", impl)
    if want == "reference":
        return retrieval_topk_reference(user_emb, items, k)
    ok, why = _dispatch.triton_usable_for(user_emb, items)
    if want == "triton" and not ok:
        raise RuntimeError(f"retrieval_topk: Triton path forced but unusable: {why}")
    if ok and (want == "triton" or items.shape[0] >= MIN_ITEMS_FOR_KERNEL):
        return retrieval_topk_triton(user_emb, items, k)
    return retrieval_topk_reference(user_emb, items, k)


__all__ = ["retrieval_topk", "retrieval_topk_reference", "retrieval_topk_triton", "MIN_ITEMS_FOR_KERNEL"]
