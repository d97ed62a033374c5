"""`streamrec produce`: sample traffic (synthetic or a file replay) into the input topic."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import orjson
import typer

from worker.commands.common import BootstrapOpt, ConfigOpt, InputTopicOpt, fail, settings_or_exit

# Malformed payloads for --invalid-ratio: one of each class the worker must dead-letter.
MALFORMED: list[bytes] = [
    b"this is not json",
    b"[1, 2, 3]",
    b'{"v": 1, "event_id": "x", "user_id": "u", "action": "view", "ts": 1}',
    b'{"v": 1, "event_id": "x", "user_id": "u", "item_id": 7, "action": "view", "ts": 1}',
    b'{"v": 1, "event_id": "x", "user_id": "u", "item_id": "i", "action": "teleport", "ts": 1}',
    b'{"v": 9, "event_id": "x", "user_id": "u", "item_id": "i", "action": "view", "ts": 1}',
    b'{"v": 1, "event_id": "x", "user_id": "u", "item_id": "i", "action": "view", "ts": -5}',
]


def synthetic_events(seed: int, users: int | None) -> Iterator[dict]:
    from pipeline.datasets.synthetic import SyntheticWorld

    world = SyntheticWorld(seed=seed) if users is None else SyntheticWorld(seed=seed, num_users=users)
    for user_id, ev in world.event_stream(seed):
        yield {"v": 1, "event_id": uuid.uuid4().hex, "user_id": user_id, "item_id": ev.item_id,
               "action": ev.action, "ts": ev.ts, **({"value": ev.value} if ev.value is not None else {})}


def file_events(path: Path) -> Iterator[dict]:
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield orjson.loads(line)


async def produce(bootstrap: str, topic: str, events: Iterator[dict], count: int | None, rate: float,
                  invalid_ratio: float, now_ts: bool, progress: bool, seed: int) -> tuple[int, int]:
    from aiokafka import AIOKafkaProducer
    from opentelemetry.trace import SpanKind
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from worker.telemetry import context_headers, setup_tracing, tracer

    setup_tracing("streamrec-producer")
    rng = random.Random(seed)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    sent = bad = 0
    t0 = time.perf_counter()
    pending: list[asyncio.Future] = []
    bar = Progress(TextColumn("producing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[rate]:.0f} ev/s"), disable=not progress)
    try:
        with bar:
            task = bar.add_task("produce", total=count, rate=0.0)
            for ev in itertools.islice(events, count):
                if now_ts:
                    ev["ts"] = int(time.time() * 1000)
                if invalid_ratio and rng.random() < invalid_ratio:
                    value, key = MALFORMED[bad % len(MALFORMED)], str(ev["user_id"]).encode()
                    bad += 1
                else:
                    value, key = orjson.dumps(ev), str(ev["user_id"]).encode()
                with tracer().start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER,
                                                    attributes={"messaging.system": "kafka",
                                                                "messaging.destination.name": topic}):
                    pending.append(await producer.send(topic, value=value, key=key, headers=context_headers()))
                sent += 1
                if len(pending) >= 1000:
                    await asyncio.gather(*pending)
                    pending.clear()
                if rate > 0:
                    ahead = sent / rate - (time.perf_counter() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if sent % 100 == 0:
                    bar.update(task, completed=sent, rate=sent / max(1e-9, time.perf_counter() - t0))
            await asyncio.gather(*pending)
            bar.update(task, completed=sent, rate=sent / max(1e-9, time.perf_counter() - t0))
    finally:
        await producer.stop()
    return sent, bad


def register(app: typer.Typer) -> None:
    @app.command("produce")
    def produce_cmd(
        config: Optional[Path] = ConfigOpt,
        kafka_bootstrap: Optional[str] = BootstrapOpt,
        input_topic: Optional[str] = InputTopicOpt,
        rate: float = typer.Option(100.0, help="events per second; 0 = as fast as possible"),
        count: Optional[int] = typer.Option(None, help="stop after this many events (default: run until Ctrl-C)"),
        file: Optional[Path] = typer.Option(None, "--file", help="replay JSON lines (one event object per line) "
                                                                "instead of the synthetic stream"),
        users: Optional[int] = typer.Option(None, help="synthetic users (default: the synthetic world's)"),
        seed: int = typer.Option(0, help="seed of the synthetic stream"),
        invalid_ratio: float = typer.Option(0.0, min=0.0, max=1.0,
                                            help="fraction of malformed records (to see the dead-letter topic work)"),
        keep_ts: bool = typer.Option(False, help="keep the events' own ts (default: stamp each with now, so "
                                                 "end-to-end latency is meaningful)"),
    ) -> None:
        """Produce user events to the input topic: the seeded synthetic stream (the world the default model
        was trained on) or a file replay, keyed by user id, each with its own producer span and traceparent."""
        s = settings_or_exit(config, kafka_bootstrap=kafka_bootstrap, input_topic=input_topic)
        if file is not None and not file.exists():
            fail(f"{file} does not exist")
        events = file_events(file) if file is not None else synthetic_events(seed, users)
        try:
            sent, bad = asyncio.run(produce(s.kafka_bootstrap, s.input_topic, events, count, rate, invalid_ratio,
                                            now_ts=not keep_ts, progress=True, seed=seed))
        except KeyboardInterrupt:
            raise typer.Exit(0)
        except Exception as e:  # connection problems: one clear line
            fail(f"producing to {s.kafka_bootstrap}/{s.input_topic} failed: {e}")
        typer.echo(f"produced {sent} events to {s.input_topic} ({bad} malformed on purpose)")
