"""Incremental HSTU encoding: prefill and decode for users, over a paged state arena.

HSTU is causal: row i of every layer depends only on rows <= i. So, like an LLM's decode
step, a user's new events need only their own projections plus attention over the keys and
values the earlier events left in each layer. The *state* of a user is therefore, per layer,
the keys and values of every event in the user's window, plus the events' timestamps (the
relative attention bias needs them). Prefill is ``extend`` from an empty state.

States live in a :class:`StateArena`: one preallocated block per layer (keys, values) and one
for timestamps, cut into pages of ``page_rows`` rows, like vLLM's paged KV cache. A user's
state is a row of a page table; appending rows writes into its pages with one scatter per layer
for the whole batch, and reading them is one gather. The arena's size is the memory budget:
its bytes are allocated once, on the encoder's device. ``extend`` does all its index work on
the device without host syncs, so on a GPU a decode step costs a few dozen kernel launches.

Exactness: ``extend(state, new)`` computes the same numbers as a full encode of
``old events + new`` (tests/unit/test_encoder_state.py checks fp32 to 1e-5).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.hstu import HSTUEncoder, _rows_of, hstu_attention_padded, hstu_attention_reference

__all__ = ["StateArena", "extend", "to_device"]


class StateArena:
    """Preallocated, paged keys/values/timestamps (+ one embedding per state) for many users."""

    def __init__(self, encoder: HSTUEncoder, budget_bytes: int, page_rows: int = 16,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        cfg = encoder.cfg
        if page_rows < 1:
            raise ValueError("page_rows must be >= 1")
        self.page_rows = page_rows
        el = torch.empty((), dtype=dtype).element_size()
        row_bytes = cfg.num_layers * cfg.num_heads * (cfg.qk_dim + cfg.v_dim) * el + 8  # + int64 ts
        self.page_bytes = row_bytes * page_rows + 4 * cfg.dim  # + the state's embedding (first page only)
        self.num_pages = int(budget_bytes // self.page_bytes)
        if self.num_pages < 1:
            raise ValueError(f"a state budget of {budget_bytes} bytes holds no page of {self.page_bytes} bytes")
        rows = self.num_pages * page_rows + 1  # + a trash row: writes of rows nobody keeps go there
        self.trash_row = rows - 1
        # one row = a layer's keys then values of one event (one gather reads both);
        # empty, not zeros: rows are written before they are read, and untouched CPU pages cost no RAM
        self.kv = torch.empty((cfg.num_layers, rows, cfg.num_heads * (cfg.qk_dim + cfg.v_dim)), dtype=dtype,
                              device=device)
        self.ts = torch.empty(rows, dtype=torch.long, device=device)
        self.emb = torch.empty((self.num_pages + 1, cfg.dim), dtype=torch.float32, device=device)
        self._free = list(range(self.num_pages - 1, -1, -1))

    @property
    def free_pages(self) -> int:
        return len(self._free)

    @property
    def bytes_in_use(self) -> int:
        return (self.num_pages - len(self._free)) * self.page_bytes

    def pages_for(self, rows: int) -> int:
        return -(-rows // self.page_rows)

    def alloc(self, n: int) -> list[int] | None:
        if n > len(self._free):
            return None
        out = self._free[len(self._free) - n:]
        del self._free[len(self._free) - n:]
        return out

    def free(self, pages) -> None:
        self._free.extend(int(p) for p in pages)


def _jagged_index(lengths: Tensor, total: int) -> tuple[Tensor, Tensor, Tensor]:
    """(sequence, position) of each of ``total`` jagged rows, and the (B+1) offsets; no host sync."""
    off = torch.zeros(lengths.shape[0] + 1, dtype=torch.long, device=lengths.device)
    torch.cumsum(lengths, 0, out=off[1:])
    seq = torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device), lengths, output_size=total)
    return seq, torch.arange(total, device=lengths.device) - off[seq], off


def extend(
    encoder: HSTUEncoder,
    arena: StateArena,
    old_lengths: Sequence[int] | np.ndarray,
    page_table: np.ndarray,
    keep: Sequence[bool] | np.ndarray,
    item_idx: Tensor,
    action_idx: Tensor,
    ts_ms: Tensor,
    new_lengths: Sequence[int] | np.ndarray,
) -> Tensor:
    """Encode the new events of B users on top of their states; return their embeddings (B, dim).

    User b has ``old_lengths[b]`` events in its state (0: prefill) and ``new_lengths[b]`` (>= 1)
    new events, consecutive in the jagged ``item_idx``/``action_idx``/``ts_ms`` (on the arena's
    device). Row b of ``page_table`` (B, max pages; int) lists its arena pages: they hold its old
    rows, and when ``keep[b]`` they must also have room for the new rows, which are then written
    there together with the new embedding (the caller records the new length). A user with
    ``keep[b]`` false is computed without writing anything of it. All index work runs on the
    device, without host syncs.
    """
    cfg = encoder.cfg
    dev = arena.kv.device
    B = len(old_lengths)
    if B == 0:
        return torch.empty((0, cfg.dim), device=dev)
    old_h, new_h = np.asarray(old_lengths, dtype=np.int64), np.asarray(new_lengths, dtype=np.int64)
    if new_h.min() < 1:
        raise ValueError("every user needs at least one new event")
    page_table = np.asarray(page_table, dtype=np.int64).reshape(B, -1)
    if page_table.shape[1] == 0:  # nobody keeps anything
        page_table = np.zeros((B, 1), dtype=np.int64)
    P, width = arena.page_rows, page_table.shape[1]
    Tn = int(new_h.sum())
    Tk = Tn + int(old_h.sum())
    host = np.concatenate([old_h, new_h, np.asarray(keep, dtype=np.int64), page_table.ravel()])
    dev_host = to_device(host, dev)
    old, new_len, keep_t = dev_host[: 3 * B].view(3, B)
    ptab = dev_host[3 * B:].view(B, width)
    keep_t = keep_t.bool()

    def arena_row(seq: Tensor, pos: Tensor) -> Tensor:
        page = ptab[seq, torch.div(pos, P, rounding_mode="floor").clamp(max=width - 1)]
        return page * P + pos % P

    kseq, kpos, kv_off = _jagged_index(old + new_len, Tk)
    gather = torch.where(kpos < old[kseq], arena_row(kseq, kpos), 0)  # new rows: overwritten below
    nseq, npos, _ = _jagged_index(new_len, Tn)
    new_at = kv_off[nseq] + old[nseq] + npos  # where the new rows sit among the keys
    dst = torch.where(keep_t[nseq], arena_row(nseq, old[nseq] + npos), arena.trash_row)

    ts_s = torch.div(ts_ms, 1000, rounding_mode="floor")
    ts_all = arena.ts.index_select(0, gather).index_copy_(0, new_at, ts_s)
    arena.ts.index_copy_(0, dst, ts_s)
    x = encoder.embed_events(item_idx, action_idx)
    attention = encoder.attention
    if getattr(attention, "__name__", "") == "hstu_attention_reference":
        attention = _cpu_attention
    q_off = _offsets(new_len)
    H, dk = cfg.num_heads, cfg.num_heads * cfg.qk_dim
    for li, layer in enumerate(encoder.layers):
        u, v, q, k = layer.project(x, encoder.silu_linear)
        kv = torch.cat([k.reshape(Tn, dk), v.reshape(Tn, -1)], 1).to(arena.kv.dtype)
        kv_all = arena.kv[li].index_select(0, gather).index_copy_(0, new_at, kv).to(q.dtype)
        arena.kv[li].index_copy_(0, dst, kv)
        av = attention(q, kv_all[:, :dk].view(Tk, H, -1), kv_all[:, dk:].view(Tk, H, -1), kv_off, ts_all,
                       layer.pos_w, layer.time_w, cfg.attn_n, cfg.num_time_buckets, q_offsets=q_off)
        x = layer.combine(x, u, av, encoder.norm_mul)
    last = torch.cumsum(new_len, 0) - 1
    emb = F.normalize(encoder.final_norm(x[last]), dim=-1).float()
    first_page = torch.where(keep_t, ptab[:, 0], arena.num_pages)
    arena.emb.index_copy_(0, first_page, emb)
    return emb


# users with at most this many new events are decoded together, padded to the batch's longest state
_DECODE_ROWS = 8


def _cpu_attention(q, k, v, offsets, ts_s, pos_w, time_w, attn_n, num_time_buckets, q_offsets):
    """The encoder's reference attention, except that users with few new rows (decode steps) go through
    one padded batched op instead of a Python loop per user. Same numbers either way."""
    lq = (q_offsets[1:] - q_offsets[:-1]).tolist()
    small = [b for b, n in enumerate(lq) if 0 < n <= _DECODE_ROWS]
    if len(small) < 2:
        return hstu_attention_reference(q, k, v, offsets, ts_s, pos_w, time_w, attn_n, num_time_buckets, q_offsets)
    big = [b for b, n in enumerate(lq) if n > _DECODE_ROWS]
    out = q.new_zeros((q.shape[0], q.shape[1], v.shape[-1]))
    for users, fn in ((small, hstu_attention_padded), (big, hstu_attention_reference)):
        if not users:
            continue
        idx = torch.tensor(users, dtype=torch.long)
        krows, koff = _rows_of(offsets, idx)
        qrows, qoff = _rows_of(q_offsets, idx)
        out[qrows] = fn(q[qrows], k[krows], v[krows], koff, ts_s[krows], pos_w, time_w, attn_n, num_time_buckets, qoff)
    return out


class _Staging:
    """A reusable pinned host buffer per (device, slot): host -> device copies that do not wait for the
    kernels already queued (a copy from pageable memory would), without pinning memory per call."""

    def __init__(self) -> None:
        self.buf: Tensor | None = None
        self.done: torch.cuda.Event | None = None

    def copy(self, a: np.ndarray, dev: torch.device) -> Tensor:
        if self.done is not None:
            self.done.synchronize()  # the previous copy out of the buffer has finished
        if self.buf is None or self.buf.numel() < a.size:
            self.buf = torch.empty(max(a.size, 1 << 16), dtype=torch.long).pin_memory()
        host = self.buf[: a.size]
        host.numpy()[:] = a
        out = host.to(dev, non_blocking=True)
        self.done = torch.cuda.Event()
        self.done.record()
        return out


_STAGING: dict[tuple[str, str], _Staging] = {}


def to_device(a: np.ndarray, dev: torch.device, slot: str = "extend") -> Tensor:
    """Host int64 array -> device tensor (asynchronous on CUDA)."""
    if dev.type != "cuda":
        return torch.from_numpy(a)
    return _STAGING.setdefault((str(dev), slot), _Staging()).copy(a, dev)


def _offsets(lengths: Tensor) -> Tensor:
    off = torch.zeros(lengths.shape[0] + 1, dtype=torch.long, device=lengths.device)
    torch.cumsum(lengths, 0, out=off[1:])
    return off
