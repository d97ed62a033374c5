"""The micro-batcher: a bounded buffer between the Kafka fetch loop and the processing loop.

Pure asyncio, no Kafka types beyond duck-typed records (``.topic``, ``.partition``, ``.offset``),
so it is unit-tested on its own. A batch closes at ``max_events`` or ``max_wait`` after its first
record, whichever comes first. The fetch loop asks :attr:`RecordBuffer.full` to decide when to
pause partitions (backpressure) and :attr:`RecordBuffer.drained` when to resume them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Iterable


class RecordBuffer:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._items: deque[Any] = deque()
        self._changed = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    @property
    def drained(self) -> bool:
        """Below half capacity: safe to resume fetching."""
        return len(self._items) <= self.capacity // 2

    def put_many(self, records: Iterable[Any]) -> None:
        self._items.extend(records)
        self._changed.set()

    def close(self) -> None:
        """Wake any waiter; ``next_batch`` returns what is left, then empty lists."""
        self._closed = True
        self._changed.set()

    def drop(self, partitions: set[tuple[str, int]]) -> int:
        """Remove buffered records of the given (topic, partition)s (they were revoked)."""
        before = len(self._items)
        self._items = deque(r for r in self._items if (r.topic, r.partition) not in partitions)
        return before - len(self._items)

    def clear(self) -> int:
        n = len(self._items)
        self._items.clear()
        return n

    async def _wait_change(self, timeout: float | None) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def next_batch(self, max_events: int, max_wait_s: float, idle_timeout_s: float | None = None) -> list[Any]:
        """Wait for a first record, then up to ``max_wait_s`` for the batch to fill.

        Returns an empty list when closed and empty, or when ``idle_timeout_s`` passes with no record.
        """
        loop = asyncio.get_running_loop()
        idle_deadline = None if idle_timeout_s is None else loop.time() + idle_timeout_s
        while not self._items:
            if self._closed:
                return []
            remaining = None if idle_deadline is None else idle_deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return []
            await self._wait_change(remaining)
        deadline = loop.time() + max_wait_s
        while len(self._items) < max_events and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await self._wait_change(remaining)
        n = min(max_events, len(self._items))
        return [self._items.popleft() for _ in range(n)]
