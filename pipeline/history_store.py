"""User history in Redis: the worker's *state* (never a cache, never evicted).

Layout per user (``{prefix}`` defaults to ``streamrec``):

* ``{prefix}:h:{user_id}`` — a list of the user's recent events, oldest first, each an
  orjson array ``[item_id, action, ts_ms, value]``; trimmed to the model's max sequence length.
* ``{prefix}:s:{user_id}`` — a hash: one field per source ``topic:partition`` holding the
  highest offset applied from it (the idempotency watermark), plus ``applied`` (events ever
  applied) and ``last_ts`` (newest event ts).

Neither key has a TTL: with ``maxmemory-policy volatile-lfu`` Redis never evicts them.
The check "offset above the watermark?" and the append happen in one Lua script, so a
redelivered batch (after a crash, a rebalance or a retry) changes nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import orjson
import redis.asyncio as aioredis

from pipeline.recommender import HistoryEvent

_APPLY_LUA = """
local cap = tonumber(ARGV[1])
local existed = redis.call('EXISTS', KEYS[2])
local applied = 0
local last_ts = tonumber(redis.call('HGET', KEYS[2], 'last_ts') or '-1')
local i = 2
while i <= #ARGV do
  local src = ARGV[i]
  local off = tonumber(ARGV[i + 1])
  local ts = tonumber(ARGV[i + 3])
  local wm = redis.call('HGET', KEYS[2], src)
  if (not wm) or off > tonumber(wm) then
    redis.call('RPUSH', KEYS[1], ARGV[i + 2])
    redis.call('HSET', KEYS[2], src, ARGV[i + 1])
    applied = applied + 1
    if ts > last_ts then last_ts = ts end
  end
  i = i + 4
end
if applied > 0 then
  redis.call('HINCRBY', KEYS[2], 'applied', applied)
  redis.call('HSET', KEYS[2], 'last_ts', string.format('%d', last_ts))
  redis.call('LTRIM', KEYS[1], -cap, -1)
end
return {applied, existed, redis.call('LRANGE', KEYS[1], 0, -1), tonumber(redis.call('HGET', KEYS[2], 'applied') or '0')}
"""


@dataclass(frozen=True)
class SourcedEvent:
    """A validated event with where it came from (for the idempotency watermark)."""

    source: str  # "topic:partition"
    offset: int
    event: HistoryEvent


@dataclass
class UserState:
    user_id: str
    events: list[HistoryEvent]  # stored history after the update, oldest first
    applied: int  # events of this update that were new (0 = a full redelivery)
    existed: bool  # the user had stored state before this update
    cache_present: bool = False  # an embedding cache entry existed when the update ran
    total: int = 0  # events ever applied for the user (the history keeps the newest ``cap``)


@dataclass
class StoredUser:
    """What ``inspect`` reads: the operator's view of one user."""

    user_id: str
    events: list[HistoryEvent]
    watermarks: dict[str, int] = field(default_factory=dict)
    applied_total: int = 0
    last_ts: int | None = None


def pack_event(ev: HistoryEvent) -> bytes:
    return orjson.dumps([ev.item_id, ev.action, ev.ts, ev.value])


def unpack_event(raw: bytes) -> HistoryEvent:
    item_id, action, ts, value = orjson.loads(raw)
    return HistoryEvent(item_id=item_id, action=action, ts=ts, value=value)


class HistoryStore:
    def __init__(self, client: aioredis.Redis, cap: int, prefix: str = "streamrec"):
        if cap < 1:
            raise ValueError("history cap must be >= 1")
        self.client = client
        self.cap = cap
        self.prefix = prefix
        self._apply = client.register_script(_APPLY_LUA)

    def history_key(self, user_id: str) -> str:
        return f"{self.prefix}:h:{user_id}"

    def state_key(self, user_id: str) -> str:
        return f"{self.prefix}:s:{user_id}"

    def embedding_key(self, user_id: str) -> str:
        return f"{self.prefix}:e:{user_id}"

    async def apply(self, updates: dict[str, Sequence[SourcedEvent]]) -> dict[str, UserState]:
        """Apply each user's new events (in offset order) atomically; one round trip for the batch."""
        users = list(updates)
        if not users:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for uid in users:
                args: list[object] = [self.cap]
                for se in updates[uid]:
                    args += [se.source, se.offset, pack_event(se.event), se.event.ts]
                await self._apply(keys=[self.history_key(uid), self.state_key(uid)], args=args, client=pipe)
                pipe.exists(self.embedding_key(uid))
            replies = await pipe.execute()
        out: dict[str, UserState] = {}
        for i, uid in enumerate(users):
            applied, existed, raw_events, total = replies[2 * i]
            out[uid] = UserState(
                user_id=uid,
                events=[unpack_event(r) for r in raw_events],
                applied=int(applied),
                existed=bool(existed),
                cache_present=bool(replies[2 * i + 1]),
                total=max(int(total), len(raw_events)),
            )
        return out

    async def read(self, user_ids: Iterable[str]) -> dict[str, StoredUser | None]:
        users = list(user_ids)
        async with self.client.pipeline(transaction=False) as pipe:
            for uid in users:
                pipe.lrange(self.history_key(uid), 0, -1)
                pipe.hgetall(self.state_key(uid))
            replies = await pipe.execute()
        out: dict[str, StoredUser | None] = {}
        for i, uid in enumerate(users):
            raw_events, state = replies[2 * i], replies[2 * i + 1]
            if not state and not raw_events:
                out[uid] = None
                continue
            state = {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in state.items()}
            applied = state.pop("applied", 0)
            last_ts = state.pop("last_ts", None)
            out[uid] = StoredUser(uid, [unpack_event(r) for r in raw_events], state, applied, last_ts)
        return out
