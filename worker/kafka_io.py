"""Kafka I/O: building the consumer and producer, creating topics, dead-letter records.

Only this module and :mod:`worker.service` touch aiokafka; processing code receives plain records.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from schemas import DLQHeader, ErrorStage
from worker.config import Settings

log = logging.getLogger("streamrec.kafka")


class KafkaUnavailable(Exception):
    pass


def make_consumer(s: Settings, isolation_level: str = "read_uncommitted") -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=s.kafka_bootstrap,
        group_id=s.group_id,
        group_instance_id=s.group_instance_id,
        client_id=f"streamrec-{s.group_instance_id or 'worker'}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
        max_poll_interval_ms=s.max_poll_interval_ms,
        session_timeout_ms=s.session_timeout_ms,
        heartbeat_interval_ms=max(1000, s.session_timeout_ms // 10),
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_wait_ms=100,
        request_timeout_ms=40_000,
        retry_backoff_ms=200,
    )


def make_producer(s: Settings, transactional_id: str | None = None) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap,
        client_id="streamrec-producer",
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id,
        linger_ms=2,
        max_batch_size=256 * 1024,
        max_request_size=2 * 1024 * 1024,
        request_timeout_ms=30_000,
        retry_backoff_ms=200,
    )


async def ensure_topics(s: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the input, output and dead-letter topics when missing. Returns the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await admin.start()
    except KafkaConnectionError as e:
        raise KafkaUnavailable(f"cannot reach Kafka at {s.kafka_bootstrap}: {e}") from None
    created = []
    try:
        existing = set(await admin.list_topics())
        wanted = {s.input_topic: s.input_partitions, s.output_topic: s.input_partitions, s.dlq_topic: 1}
        for name, parts in wanted.items():
            if name in existing:
                continue
            try:
                await admin.create_topics([NewTopic(name, num_partitions=parts, replication_factor=1)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    if created:
        log.info("created topics", extra={"topics": created})
    return created


def dlq_headers(record, stage: ErrorStage, reason: str) -> list[tuple[str, bytes]]:
    """Original headers byte for byte, then the error headers of DESIGN §2."""
    reason = reason if len(reason) <= 1000 else reason[:997] + "..."
    return list(record.headers or ()) + [
        (DLQHeader.STAGE, stage.value.encode()),
        (DLQHeader.REASON, reason.encode("utf-8", "replace")),
        (DLQHeader.SOURCE_TOPIC, record.topic.encode()),
        (DLQHeader.SOURCE_PARTITION, str(record.partition).encode()),
        (DLQHeader.SOURCE_OFFSET, str(record.offset).encode()),
    ]


__all__ = [
    "AIOKafkaConsumer", "AIOKafkaProducer", "ConsumerRebalanceListener", "KafkaError", "KafkaUnavailable",
    "dlq_headers", "ensure_topics", "make_consumer", "make_producer",
]
