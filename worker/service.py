"""The worker service: fetch loop -> micro-batcher -> processing loop -> publish -> commit.

Delivery (at-least-once), exactly when offsets are committed, and what happens on rebalance and
shutdown are written down in docs/delivery.md; this module is that document in code:

* The fetch loop polls Kafka (``getmany``) and fills a bounded :class:`RecordBuffer`. When the buffer
  is full it pauses every assigned partition but keeps polling, so the consumer keeps its group
  membership while the model or Redis is slow.
* The processing loop takes micro-batches and, under the batch lock: processes (decode, Redis state,
  model on its own thread), publishes outputs and dead letters, waits for every broker ack, and only
  then commits the batch's offsets per partition. A transient failure (Redis, Kafka) retries the
  same batch with backoff; the worker reports not-ready meanwhile. History updates are idempotent,
  so a retry or a redelivery changes nothing twice.
* On revocation the rebalance listener takes the batch lock (so the in-flight batch finishes and
  commits, or is abandoned uncommitted if it is stuck retrying), drops buffered records of revoked
  partitions and bumps the generation, so a batch taken from the buffer before the revocation is
  dropped too. Records that ``getmany`` returns are never dropped: aiokafka returns only records of
  the current assignment and has already moved the position past them (dropping them loses them).
  Nothing uncommitted is lost: the partition's next owner starts from the committed offset.
* SIGTERM/SIGINT: stop fetching, finish the current batch, publish, commit, leave the group, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError, ProducerFenced
from opentelemetry.trace import SpanKind
from redis.exceptions import RedisError

from pipeline.embedding_cache import EmbeddingCache
from pipeline.history_store import HistoryStore
from worker import metrics as m
from worker.batcher import RecordBuffer
from worker.config import Settings
from worker.engine import ModelEngine
from worker.kafka_io import ConsumerRebalanceListener, make_consumer, make_producer
from worker.processor import BatchOutcome, BatchProcessor
from worker.telemetry import links_from_headers, tracer

log = logging.getLogger("streamrec.worker")

TRANSIENT = (RedisError, KafkaError, OSError, asyncio.TimeoutError)


@dataclass
class _Fetched:
    generation: int
    record: object

    # the buffer drops by (topic, partition)
    @property
    def topic(self) -> str:
        return self.record.topic

    @property
    def partition(self) -> int:
        return self.record.partition


class _Listener(ConsumerRebalanceListener):
    def __init__(self, worker: "Worker"):
        self.worker = worker

    async def on_partitions_revoked(self, revoked):
        await self.worker._on_revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned):
        m.REBALANCES.labels("assigned").inc()
        log.info("partitions assigned", extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)})


class Worker:
    def __init__(self, settings: Settings, engine: ModelEngine, redis_client: aioredis.Redis, history_cap: int):
        self.s = settings
        self.engine = engine
        self.redis = redis_client
        self.processor = BatchProcessor(
            store=HistoryStore(redis_client, cap=history_cap, prefix=settings.redis_prefix),
            cache=EmbeddingCache(redis_client, ttl_s=settings.embedding_ttl_s, prefix=settings.redis_prefix),
            engine=engine,
            output_topic=settings.output_topic,
            dlq_topic=settings.dlq_topic,
            max_event_bytes=settings.max_event_bytes,
        )
        self.buffer = RecordBuffer(settings.queue_max_events)
        self.exactly_once = settings.delivery == "exactly_once"
        self.consumer = make_consumer(settings, "read_committed" if self.exactly_once else "read_uncommitted")
        self.producer = make_producer(settings)
        self._txn_producers: dict[tuple[str, int], object] = {}  # exactly-once: one per input partition
        self._batch_lock = asyncio.Lock()
        self._generation = 0
        self._revoking = False
        self._stopping = asyncio.Event()
        self._committed: dict[tuple[str, int], int] = {}
        self._batch_ok = False
        self._redis_ok = True
        self.alive = False
        self.batches_done = 0

    @property
    def ready(self) -> bool:
        """/readyz: running, no batch failing (the last one succeeded, or went to another worker in a
        rebalance), and Redis answers (probed every 2 s, so an idle worker reports a Redis outage too)."""
        return self.alive and self._batch_ok and self._redis_ok

    def _set_batch_ok(self, ok: bool) -> None:
        self._batch_ok = ok
        m.READY.set(1 if self.ready else 0)

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.producer.start()
        try:
            self.consumer.subscribe([self.s.input_topic], listener=_Listener(self))
            await self.consumer.start()
        except BaseException:
            await self.producer.stop()
            raise
        self._export_backends()
        m.MODEL_INFO.labels(self.engine.version).set(1)

    def _export_backends(self) -> None:
        """The backends in use (they can change at run time when one fails and the next takes over)."""
        m.BACKEND.clear()
        m.BACKEND.labels("encoder", self.engine.encoder_name).set(1)
        m.BACKEND.labels("generator", self.engine.generator_name).set(1)

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stop requested: finishing the current batch")
            self._stopping.set()
            self.buffer.close()

    async def run(self) -> None:
        """Run until :meth:`request_stop`; then finish the batch, commit, and close."""
        self.alive = True
        self._set_batch_ok(True)
        fetch = asyncio.create_task(self._fetch_loop(), name="fetch")
        process = asyncio.create_task(self._process_loop(), name="process")
        lag = asyncio.create_task(self._lag_loop(), name="lag")
        try:
            done, _ = await asyncio.wait({fetch, process}, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()
            await asyncio.gather(fetch, process)
        finally:
            self.alive = False
            self._set_batch_ok(False)
            for t in (fetch, process, lag):
                t.cancel()
            await asyncio.gather(fetch, process, lag, return_exceptions=True)
            dropped = self.buffer.clear()
            if dropped:
                log.info("left uncommitted buffered events for redelivery", extra={"events": dropped})
            await self.consumer.stop()
            for p in self._txn_producers.values():
                await p.stop()
            await self.producer.stop()
            self.engine.close()
            log.info("worker stopped", extra={"batches": self.batches_done})

    # ---- fetch -----------------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        paused = False
        while not self._stopping.is_set():
            assignment = self.consumer.assignment()
            if self.buffer.full and assignment:
                self.consumer.pause(*assignment)
                paused = True
                m.PAUSED.set(1)
            elif paused and self.buffer.drained:
                self.consumer.resume(*assignment)
                paused = False
                m.PAUSED.set(0)
            data = await self.consumer.getmany(timeout_ms=100, max_records=self.s.max_batch_events)
            # getmany only returns records of the assignment current at its return (aiokafka checks), and
            # the position has moved past them: never drop them here. Tag them with the generation of
            # that assignment, so a batch taken before a later revocation is recognised as stale.
            generation = self._generation
            for tp, records in data.items():
                m.EVENTS_IN.labels(tp.topic).inc(len(records))
                self.buffer.put_many(_Fetched(generation, r) for r in records)
            m.BUFFERED.set(len(self.buffer))

    # ---- process ---------------------------------------------------------------------------
    async def _process_loop(self) -> None:
        while True:
            batch = await self.buffer.next_batch(self.s.max_batch_events, self.s.max_wait_ms / 1000)
            if not batch:
                if self._stopping.is_set():
                    return
                continue
            async with self._batch_lock:
                records = [f.record for f in batch if f.generation == self._generation]
                if records:
                    await self._handle(records)
            if self._stopping.is_set():
                return

    async def _handle(self, records: list) -> None:
        if not self.exactly_once:
            await self._handle_unit(records)
            return
        by_partition: dict[tuple[str, int], list] = {}
        for r in records:
            by_partition.setdefault((r.topic, r.partition), []).append(r)
        for tp, recs in by_partition.items():  # one transaction per input partition
            if tp not in self._txn_producers:
                await self._fence_and_rewind(tp)
                continue
            await self._handle_unit(recs, tp)

    async def _fence_and_rewind(self, tp: tuple[str, int]) -> None:
        """First batch of a partition since it was assigned (or since its producer failed): initialise its
        transactional producer FIRST — that fences a zombie holding the same id and settles any transaction
        it left open — and only THEN read the committed offset and re-read from it. The other order can
        read an offset that a zombie's commit-in-progress is about to move, and publish duplicates."""
        await self._txn_producer(tp)
        dropped = self.buffer.drop({tp})
        part = TopicPartition(*tp)
        committed = await self.consumer.committed(part)  # fetched from the group coordinator, not cached
        if committed is None:
            await self.consumer.seek_to_beginning(part)  # auto_offset_reset=earliest: nothing committed yet
        else:
            self.consumer.seek(part, committed)
        log.info("exactly-once: partition fenced, re-reading from its committed offset",
                 extra={"partition": f"{tp[0]}:{tp[1]}", "dropped_buffered": dropped})

    async def _handle_unit(self, records: list, txn_tp: tuple[str, int] | None = None) -> None:
        attempt = 0
        topic = self.s.input_topic
        links = links_from_headers(r.headers for r in records)
        while True:
            t0 = time.perf_counter()
            try:
                with tracer().start_as_current_span(f"process {topic}", kind=SpanKind.CONSUMER, links=links,
                                                    attributes={"messaging.system": "kafka",
                                                                "messaging.destination.name": topic,
                                                                "messaging.batch.message_count": len(records)}):
                    outcome = await self.processor.process(records)
                    if txn_tp is None:
                        with tracer().start_as_current_span("publish"):
                            await self._publish(outcome)
                        with tracer().start_as_current_span("commit"):
                            await self._commit(outcome)
                    else:
                        with tracer().start_as_current_span("publish"):
                            await self._publish_transaction(txn_tp, outcome)
                break
            except ProducerFenced as e:
                log.warning("transactional producer fenced: another worker owns this partition now",
                            extra={"partition": f"{txn_tp[0]}:{txn_tp[1]}" if txn_tp else None, "error": str(e)})
                await self._drop_txn_producer(txn_tp)
                self._set_batch_ok(True)     # the batch is the new owner's now: nothing is failing here
                return
            except CommitFailedError as e:
                log.warning("commit failed after a rebalance; the partitions' new owner reprocesses the batch",
                            extra={"error": str(e)})
                self._set_batch_ok(True)
                return
            except TRANSIENT as e:
                attempt += 1
                self._set_batch_ok(False)
                m.BATCH_RETRIES.labels(type(e).__name__).inc()
                if self._revoking or (self._stopping.is_set() and attempt > 3):
                    log.warning("abandoning a failed batch uncommitted (it will be redelivered)",
                                extra={"error": repr(e), "events": len(records)})
                    # handed to the partition's next owner: without this an idle worker stays not-ready
                    # until its next batch (a persisting outage still shows: Redis is probed on its own)
                    self._set_batch_ok(self._revoking)
                    return
                delay = min(self.s.retry_backoff_max_s, 0.1 * 2 ** attempt)
                log.warning("batch failed, retrying", extra={"error": repr(e), "attempt": attempt, "delay_s": delay})
                await asyncio.sleep(delay)
        self._set_batch_ok(True)
        self.batches_done += 1
        if log.isEnabledFor(logging.DEBUG):
            spans: dict[str, list[int]] = {}
            for r in records:
                lo_hi = spans.setdefault(f"{r.topic}:{r.partition}", [r.offset, r.offset])
                lo_hi[0], lo_hi[1] = min(lo_hi[0], r.offset), max(lo_hi[1], r.offset)
            log.debug("batch done", extra={"offsets": spans, "generation": self._generation})
        m.BATCH_SIZE.observe(len(records))
        m.STAGE_LATENCY.labels("batch").observe(time.perf_counter() - t0)

    async def _publish(self, outcome: BatchOutcome) -> None:
        await self._send_all(self.producer, outcome)
        self._published(outcome)

    @staticmethod
    async def _send_all(producer, outcome: BatchOutcome) -> None:
        """Send dead letters and outputs; return once the broker acknowledged every one."""
        futures = [await producer.send(r.topic, value=r.value, key=r.key, headers=r.headers)
                   for r in (*outcome.dead_letters, *outcome.outputs)]
        if futures:
            await asyncio.gather(*futures)

    @staticmethod
    def _published(outcome: BatchOutcome) -> None:
        now = time.time()
        for ts in outcome.newest_ts:
            m.E2E_LATENCY.observe(max(0.0, now - ts / 1000))
        m.RECS_OUT.inc(len(outcome.outputs))

    async def _txn_producer(self, tp: tuple[str, int]):
        p = self._txn_producers.get(tp)
        if p is None:
            # one transactional id per input partition: the next owner's init fences a zombie (DESIGN §3)
            p = make_producer(self.s, transactional_id=f"{self.s.group_id}.{tp[0]}.{tp[1]}")
            await p.start()
            self._txn_producers[tp] = p
        return p

    async def _drop_txn_producer(self, tp: tuple[str, int] | None) -> None:
        p = self._txn_producers.pop(tp, None) if tp is not None else None
        if p is not None:
            try:
                await p.stop()
            except Exception:  # a fenced producer may fail to close cleanly; it is gone either way
                pass

    async def _publish_transaction(self, tp: tuple[str, int], outcome: BatchOutcome) -> None:
        """Outputs, dead letters and the consumed offset commit in one transaction (exactly-once)."""
        producer = await self._txn_producer(tp)
        try:
            async with producer.transaction():
                await self._send_all(producer, outcome)
                await producer.send_offsets_to_transaction(
                    {TopicPartition(t, p): off for (t, p), off in outcome.commit.items()}, self.s.group_id)
        except ProducerFenced:
            raise
        except KafkaError:
            await self._drop_txn_producer(tp)  # a fresh producer (same id) resumes cleanly after an abort failure
            raise
        self._committed.update(outcome.commit)
        self._published(outcome)

    async def _commit(self, outcome: BatchOutcome) -> None:
        offsets = {TopicPartition(t, p): off for (t, p), off in outcome.commit.items()}
        await self.consumer.commit(offsets)
        self._committed.update(outcome.commit)

    # ---- rebalance -------------------------------------------------------------------------
    async def _on_revoked(self, revoked: set[tuple[str, int]]) -> None:
        m.REBALANCES.labels("revoked").inc()
        self._revoking = True
        try:
            async with self._batch_lock:
                dropped = self.buffer.drop(revoked)
                self._generation += 1
                for tp in revoked:
                    self._committed.pop(tp, None)
                    await self._drop_txn_producer(tp)
        finally:
            self._revoking = False
        log.info("partitions revoked", extra={"partitions": sorted(f"{t}:{p}" for t, p in revoked),
                                              "dropped_buffered": dropped})

    # ---- lag -------------------------------------------------------------------------------
    async def _lag_loop(self) -> None:
        while True:
            await asyncio.sleep(2)
            self._export_backends()
            try:
                await asyncio.wait_for(self.redis.ping(), 1.5)
                self._redis_ok = True
            except (RedisError, OSError, asyncio.TimeoutError):
                self._redis_ok = False
            m.READY.set(1 if self.ready else 0)
            for tp in self.consumer.assignment():
                hw = self.consumer.highwater(tp)
                if hw is None:
                    continue
                done = self._committed.get((tp.topic, tp.partition))
                if done is None:
                    continue
                m.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, hw - done))
            try:
                import torch

                if torch.cuda.is_available():
                    m.DEVICE_MEMORY.set(torch.cuda.memory_allocated())
            except Exception:  # pragma: no cover - metrics must never kill the worker
                pass
