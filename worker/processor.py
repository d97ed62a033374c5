"""Processing of one micro-batch, apart from Kafka I/O (Quix Streams style).

``BatchProcessor.process`` takes consumed records and returns what must be published (outputs and
dead letters) and the offsets that may be committed once all of it is acknowledged. Stages, each a
child span and a latency histogram: decode -> history (Redis, idempotent) -> model (executor thread)
-> cache (Redis, best effort). Redis errors in the history stage propagate: the caller retries the
whole batch, which is safe because history updates are idempotent per source offset.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

from redis.exceptions import RedisError

from pipeline.embedding_cache import CachedEmbedding, EmbeddingCache
from pipeline.history_store import HistoryStore, SourcedEvent
from pipeline.recommender import HistoryEvent, UserRequest
from schemas import ErrorStage, InvalidEvent, ModelInfo, RecommendationRecord, ScoredItem, SourceInfo, decode_event
from worker import metrics as m
from worker.engine import ModelEngine
from worker.kafka_io import dlq_headers
from worker.telemetry import context_headers, tracer

log = logging.getLogger("streamrec.processor")


@dataclass(frozen=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class BatchOutcome:
    outputs: list[OutRecord] = field(default_factory=list)
    dead_letters: list[OutRecord] = field(default_factory=list)
    commit: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> next offset
    newest_ts: list[int] = field(default_factory=list)  # per output, for the end-to-end latency metric


@dataclass
class _UserBatch:
    events: list[SourcedEvent] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    newest_ts: int = 0


class _Stage:
    """A child span plus the per-stage latency histogram."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self._span = tracer().start_as_current_span(self.name)
        self._span.__enter__()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        m.STAGE_LATENCY.labels(self.name).observe(time.perf_counter() - self._t0)
        return self._span.__exit__(*exc)


class BatchProcessor:
    def __init__(self, *, store: HistoryStore, cache: EmbeddingCache, engine: ModelEngine, output_topic: str,
                 dlq_topic: str, max_event_bytes: int):
        self.store = store
        self.cache = cache
        self.engine = engine
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.max_event_bytes = max_event_bytes

    def _dead_letter(self, rec: Any, stage: ErrorStage, reason: str) -> OutRecord:
        m.EVENTS_INVALID.labels(stage.value).inc()
        return OutRecord(self.dlq_topic, rec.key, rec.value,
                         dlq_headers(rec, stage, reason))

    async def process(self, records: Sequence[Any]) -> BatchOutcome:
        out = BatchOutcome()
        for r in records:
            tp = (r.topic, r.partition)
            out.commit[tp] = max(out.commit.get(tp, 0), r.offset + 1)

        with _Stage("decode"):
            users: dict[str, _UserBatch] = defaultdict(_UserBatch)
            for r in records:
                try:
                    ev = decode_event(r.value, r.key, self.max_event_bytes)
                except InvalidEvent as e:
                    out.dead_letters.append(self._dead_letter(r, ErrorStage.DECODE, e.reason))
                    continue
                ub = users[ev.user_id]
                src = f"{r.topic}:{r.partition}"
                ub.events.append(SourcedEvent(src, r.offset, HistoryEvent(ev.item_id, ev.action.value, ev.ts, ev.value)))
                ub.records.append(r)
                ub.offsets[str(r.partition)] = max(ub.offsets.get(str(r.partition), -1), r.offset)
                ub.newest_ts = max(ub.newest_ts, ev.ts)
        if not users:
            return out

        with _Stage("history"):
            states = await self.store.apply({u: ub.events for u, ub in users.items()})
        applied = sum(s.applied for s in states.values())
        m.EVENTS_APPLIED.inc(applied)
        m.EVENTS_DUPLICATE.inc(sum(len(ub.events) for ub in users.values()) - applied)
        m.USERS_WITHOUT_HISTORY.inc(sum(1 for s in states.values() if not s.existed))
        hits = sum(1 for s in states.values() if s.cache_present)
        m.CACHE_LOOKUPS.labels("hit").inc(hits)
        m.CACHE_LOOKUPS.labels("miss").inc(len(states) - hits)
        m.BATCH_USERS.observe(len(users))

        with _Stage("model"):
            oov_before = self.engine.recommender.oov_count
            result = await self.engine.recommend([UserRequest(u, states[u].events, states[u].total) for u in users])
            m.OOV_ITEMS.inc(self.engine.recommender.oov_count - oov_before)
        for uid, reason in result.failures.items():
            for r in users[uid].records:
                out.dead_letters.append(self._dead_letter(r, ErrorStage.MODEL, reason))

        now_ms = int(time.time() * 1000)
        with _Stage("cache"):
            entries = {}
            for uid, rec in result.recommendations.items():
                hist = states[uid].events
                entries[uid] = CachedEmbedding(rec.embedding, self.engine.version, now_ms,
                                               max(e.ts for e in hist), len(hist))
            try:
                await self.cache.put_many(entries)
            except RedisError as e:  # a cache: never fail the batch for it
                m.CACHE_WRITE_ERRORS.inc(len(entries))
                log.warning("embedding cache write failed", extra={"error": repr(e)})

        headers = context_headers()
        # read per batch: a backend that failed at run time falls back, and records must say who made them
        model_info = ModelInfo(version=self.engine.version, encoder=self.engine.encoder_name,
                               generator=self.engine.generator_name)
        for uid, rec in result.recommendations.items():
            ub, hist = users[uid], states[uid].events
            record = RecommendationRecord(
                user_id=uid,
                items=[ScoredItem(item_id=i, score=float(s)) for i, s in rec.items],
                model=model_info,
                source=SourceInfo(events=len(ub.events), last_event_ts=max(e.ts for e in hist), offsets=ub.offsets),
                generated_at=now_ms,
                latency_ms=float(max(0, now_ms - ub.newest_ts)),
            )
            out.outputs.append(OutRecord(self.output_topic, uid.encode(), record.to_bytes(), headers))
            out.newest_ts.append(ub.newest_ts)
        return out
