"""User embeddings in Redis: a *cache* (short TTL, first to be evicted), never state.

Value layout (little endian), readable from any language::

    magic  b"SREM"   4 bytes
    fmt    u8        format version (1)
    dtype  u8        1 = float32
    dim    u16
    updated_at  u64  epoch ms when written
    last_event_ts u64  newest event ts the embedding was computed from
    history_len u32  number of events it was computed from
    ver_len u16, then the model version (UTF-8)
    dim * 4 bytes of float32 data

Keys: ``{prefix}:e:{user_id}``, always written with a TTL so ``volatile-lfu`` evicts them first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import redis.asyncio as aioredis

MAGIC = b"SREM"
FORMAT_VERSION = 1
DTYPE_FLOAT32 = 1
_HEADER = struct.Struct("<4sBBHQQIH")


@dataclass(frozen=True)
class CachedEmbedding:
    vector: np.ndarray
    model_version: str
    updated_at: int
    last_event_ts: int
    history_len: int


def pack_embedding(e: CachedEmbedding) -> bytes:
    vec = np.ascontiguousarray(e.vector, dtype="<f4")
    if vec.ndim != 1:
        raise ValueError("embedding must be 1-D")
    ver = e.model_version.encode()
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, DTYPE_FLOAT32, vec.shape[0], e.updated_at, e.last_event_ts,
                        e.history_len, len(ver))
    return head + ver + vec.tobytes()


def unpack_embedding(raw: bytes) -> CachedEmbedding:
    if len(raw) < _HEADER.size:
        raise ValueError("embedding record too short")
    magic, fmt, dtype, dim, updated_at, last_ts, hist_len, ver_len = _HEADER.unpack_from(raw)
    if magic != MAGIC or fmt != FORMAT_VERSION or dtype != DTYPE_FLOAT32:
        raise ValueError(f"not a streamrec embedding record (magic={magic!r}, fmt={fmt}, dtype={dtype})")
    start = _HEADER.size + ver_len
    if len(raw) != start + 4 * dim:
        raise ValueError("embedding record length does not match its header")
    version = raw[_HEADER.size:start].decode()
    vec = np.frombuffer(raw, dtype="<f4", count=dim, offset=start).copy()
    return CachedEmbedding(vec, version, updated_at, last_ts, hist_len)


class EmbeddingCache:
    def __init__(self, client: aioredis.Redis, ttl_s: float, prefix: str = "streamrec"):
        if ttl_s <= 0:
            raise ValueError("embedding cache TTL must be > 0 (cache keys must be evictable)")
        self.client = client
        self.ttl_ms = int(ttl_s * 1000)
        self.prefix = prefix

    def key(self, user_id: str) -> str:
        return f"{self.prefix}:e:{user_id}"

    async def put_many(self, entries: Mapping[str, CachedEmbedding]) -> None:
        if not entries:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for uid, e in entries.items():
                pipe.set(self.key(uid), pack_embedding(e), px=self.ttl_ms)
            await pipe.execute()

    async def get_many(self, user_ids: Iterable[str]) -> dict[str, CachedEmbedding | None]:
        users = list(user_ids)
        if not users:
            return {}
        raws = await self.client.mget([self.key(u) for u in users])
        return {u: (unpack_embedding(r) if r is not None else None) for u, r in zip(users, raws)}

    async def ttl_ms_left(self, user_id: str) -> int:
        return int(await self.client.pttl(self.key(user_id)))
