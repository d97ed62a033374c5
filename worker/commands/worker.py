"""`streamrec worker`: run the stream worker."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Optional

import typer

from worker.commands.common import (BootstrapOpt, ConfigOpt, DlqTopicOpt, GroupOpt, InputTopicOpt, ModelDirOpt,
                                    OutputTopicOpt, RedisOpt, fail, settings_or_exit)
from worker.config import Settings

log = logging.getLogger("streamrec.worker")


class StartupError(Exception):
    """Something the operator must fix before the worker can run (message says what)."""


async def connect_redis(url: str, timeout_s: float = 5.0):
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    client = aioredis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=10, health_check_interval=15)
    try:
        await asyncio.wait_for(client.ping(), timeout_s)
    except (RedisError, OSError, asyncio.TimeoutError) as e:
        await client.aclose()
        raise StartupError(f"cannot reach Redis at {url}: {e or type(e).__name__}. "
                           "Start it (infra/local/up redis) or set STREAMREC_REDIS_URL.") from None
    return client


async def build_worker(s: Settings):
    """Load the model, check Redis and Kafka, create topics; return a started :class:`Worker`."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from pipeline.model_dir import ModelDirError
    from worker.engine import ModelEngine
    from worker.kafka_io import KafkaUnavailable, ensure_topics
    from worker.service import Worker

    try:
        engine = ModelEngine.from_dir(s.model_dir, top_k=s.top_k, exclude_recent=s.exclude_recent, device=s.device,
                                      torch_threads=s.torch_threads, chaos_fail_users=s.chaos_fail_user_set,
                                      encoder_backend=s.encoder_backend, generator_backend=s.generator_backend,
                                      encoder_state_bytes=s.encoder_state_mb << 20 if s.encoder_state_mb >= 0 else -1, window_slack=s.window_slack)
    except ModelDirError as e:
        raise StartupError(f"model directory {s.model_dir}: {e}") from None
    except ValueError as e:
        raise StartupError(str(e)) from None
    redis_client = await connect_redis(s.redis_url)
    try:
        if s.create_topics:
            await ensure_topics(s)
        w = Worker(s, engine, redis_client, history_cap=engine.bundle.config.max_seq_len)
        await w.start()
    except (KafkaUnavailable, KafkaConnectionError) as e:
        await redis_client.aclose()
        raise StartupError(f"{e}. Start Kafka (infra/local/up kafka) or set STREAMREC_KAFKA_BOOTSTRAP.") from None
    except KafkaError as e:
        await redis_client.aclose()
        raise StartupError(f"Kafka at {s.kafka_bootstrap}: {e}") from None
    log.info("worker started", extra={
        "model_version": engine.version, "encoder": engine.encoder_name, "generator": engine.generator_name,
        "device": engine.device, "input_topic": s.input_topic, "group_id": s.group_id,
        "group_instance_id": s.group_instance_id, "bootstrap": s.kafka_bootstrap})
    return w


async def run_worker(s: Settings) -> int:
    from worker.http import serve_http
    from worker.telemetry import setup_tracing

    setup_tracing()
    server = None
    holder: list = []  # the worker, once built: /healthz and /readyz answer 503 until then
    if s.metrics_port:  # bind first: a taken port is a start-up error, not a traceback after joining the group
        try:
            server = await serve_http(s.metrics_host, s.metrics_port, lambda: bool(holder) and holder[0].alive,
                                      lambda: bool(holder) and holder[0].ready)
        except OSError as e:
            raise StartupError(f"cannot serve /metrics on {s.metrics_host}:{s.metrics_port}: {e.strerror}. "
                               "Set STREAMREC_METRICS_PORT to a free port (0 disables it).") from None
    try:
        w = await build_worker(s)
        holder.append(w)
    except BaseException:
        if server is not None:
            server.close()
        raise
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signame: str) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second signal: exiting now; uncommitted events will be reprocessed on restart")
            os._exit(130)
        log.info("signal received", extra={"signal": signame})
        w.request_stop()
        loop.call_later(s.shutdown_timeout_s, lambda: (log.error("shutdown timed out"), os._exit(1)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        await w.run()
    finally:
        if server is not None:
            server.close()
        await w.redis.aclose()
    return 0


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker_cmd(
        config: Optional[Path] = ConfigOpt,
        kafka_bootstrap: Optional[str] = BootstrapOpt,
        redis_url: Optional[str] = RedisOpt,
        model_dir: Optional[Path] = ModelDirOpt,
        input_topic: Optional[str] = InputTopicOpt,
        output_topic: Optional[str] = OutputTopicOpt,
        dlq_topic: Optional[str] = DlqTopicOpt,
        group_id: Optional[str] = GroupOpt,
        group_instance_id: Optional[str] = typer.Option(
            None, help="static group membership id: a restart within the session timeout keeps the partitions "
                       "[env STREAMREC_GROUP_INSTANCE_ID]"),
        max_batch_events: Optional[int] = typer.Option(None, help="a micro-batch closes at this many events "
                                                                  "[env STREAMREC_MAX_BATCH_EVENTS, default 512]"),
        max_wait_ms: Optional[int] = typer.Option(None, help="... or this long after its first event "
                                                             "[env STREAMREC_MAX_WAIT_MS, default 20]"),
        metrics_port: Optional[int] = typer.Option(None, help="port of /metrics, /healthz, /readyz; 0 = off "
                                                              "[env STREAMREC_METRICS_PORT, default 9100]"),
        device: Optional[str] = typer.Option(None, help="auto|cpu|cuda [env STREAMREC_DEVICE]"),
        log_format: Optional[str] = typer.Option(None, help="json|console [env STREAMREC_LOG_FORMAT]"),
    ) -> None:
        """Consume events, keep user history in Redis, publish recommendations (at-least-once).

        Offsets are committed per partition only after every output and dead letter of a batch is
        acknowledged by the broker; redelivered events change no history twice. SIGTERM/SIGINT finish
        the current batch, commit and exit 0; a second signal exits at once. Bad configuration, a model
        directory that does not verify, or an unreachable Kafka/Redis stop the worker at start with
        exit code 2 and a message saying what to fix.
        """
        from worker.logs import setup_logging

        s = settings_or_exit(config, kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, model_dir=model_dir,
                             input_topic=input_topic, output_topic=output_topic, dlq_topic=dlq_topic,
                             group_id=group_id, group_instance_id=group_instance_id,
                             max_batch_events=max_batch_events, max_wait_ms=max_wait_ms, metrics_port=metrics_port,
                             device=device, log_format=log_format)
        setup_logging(s.log_level, s.log_format)
        try:
            code = asyncio.run(run_worker(s))
        except StartupError as e:
            fail(str(e))
        raise typer.Exit(code)
