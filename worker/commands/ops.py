"""Operator commands: `streamrec topics`, `streamrec inspect-user`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Optional

import orjson
import typer

from worker.commands.common import (BootstrapOpt, ConfigOpt, DlqTopicOpt, InputTopicOpt, OutputTopicOpt, RedisOpt,
                                    fail, settings_or_exit)


async def inspect_user(redis_url: str, prefix: str, user_id: str) -> dict | None:
    import redis.asyncio as aioredis

    from pipeline.embedding_cache import EmbeddingCache
    from pipeline.history_store import HistoryStore

    client = aioredis.from_url(redis_url, socket_connect_timeout=5)
    try:
        store = HistoryStore(client, cap=1, prefix=prefix)
        cache = EmbeddingCache(client, ttl_s=1, prefix=prefix)
        stored = (await store.read([user_id]))[user_id]
        emb = (await cache.get_many([user_id]))[user_id]
        ttl = await cache.ttl_ms_left(user_id) if emb is not None else None
    finally:
        await client.aclose()
    if stored is None and emb is None:
        return None
    now = int(time.time() * 1000)
    out: dict = {"user_id": user_id, "history_length": 0, "applied_total": 0, "newest_event_ts": None,
                 "watermarks": {}, "embedding": None}
    if stored is not None:
        out.update(history_length=len(stored.events), applied_total=stored.applied_total,
                   newest_event_ts=stored.last_ts, watermarks=stored.watermarks,
                   recent_items=[e.item_id for e in stored.events[-10:]])
    if emb is not None:
        out["embedding"] = {"age_ms": now - emb.updated_at, "model_version": emb.model_version,
                            "dim": int(emb.vector.shape[0]), "last_event_ts": emb.last_event_ts,
                            "history_length": emb.history_len, "ttl_ms": ttl}
    return out


def register(app: typer.Typer) -> None:
    @app.command("topics")
    def topics_cmd(
        config: Optional[Path] = ConfigOpt,
        kafka_bootstrap: Optional[str] = BootstrapOpt,
        input_topic: Optional[str] = InputTopicOpt,
        output_topic: Optional[str] = OutputTopicOpt,
        dlq_topic: Optional[str] = DlqTopicOpt,
        partitions: Optional[int] = typer.Option(None, help="partitions of the input and output topics (default 6)"),
    ) -> None:
        """Create the input, output and dead-letter topics if they are missing (the worker also does this at start)."""
        from worker.kafka_io import KafkaUnavailable, ensure_topics

        s = settings_or_exit(config, kafka_bootstrap=kafka_bootstrap, input_topic=input_topic,
                             output_topic=output_topic, dlq_topic=dlq_topic, input_partitions=partitions)
        try:
            created = asyncio.run(ensure_topics(s))
        except KafkaUnavailable as e:
            fail(str(e))
        typer.echo(f"created: {', '.join(created)}" if created else "all topics exist")

    @app.command("inspect-user")
    def inspect_cmd(
        user_id: str = typer.Argument(..., help="the user id (as on the wire)"),
        config: Optional[Path] = ConfigOpt,
        redis_url: Optional[str] = RedisOpt,
        json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
    ) -> None:
        """Show one user's stored state: history length, newest event ts, per-partition offset watermarks,
        and the cached embedding's age and model version. Exit code 1 when the user is unknown."""
        s = settings_or_exit(config, redis_url=redis_url)
        try:
            info = asyncio.run(inspect_user(s.redis_url, s.redis_prefix, user_id))
        except OSError as e:
            fail(f"cannot reach Redis at {s.redis_url}: {e}")
        except Exception as e:
            if type(e).__module__.startswith("redis"):
                fail(f"Redis at {s.redis_url}: {e}")
            raise
        if info is None:
            if json_out:
                typer.echo(orjson.dumps({"user_id": user_id, "found": False}).decode())
            else:
                typer.echo(f"no state for user {user_id!r}")
            raise typer.Exit(1)
        if json_out:
            typer.echo(orjson.dumps({**info, "found": True}).decode())
        else:
            from rich import print_json

            print_json(data=info)
