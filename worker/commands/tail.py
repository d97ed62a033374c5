"""`streamrec tail`: watch recommendations arrive, as a readable live table."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import typer

from worker.commands.common import BootstrapOpt, ConfigOpt, ModelDirOpt, OutputTopicOpt, settings_or_exit


def _titles(model_dir: Path) -> dict[str, str]:
    import orjson

    p = model_dir / "titles.json"
    try:
        return orjson.loads(p.read_bytes()) if p.exists() else {}
    except Exception:
        return {}


async def tail(bootstrap: str, topic: str, count: int | None, from_beginning: bool, as_json: bool,
               titles: dict[str, str], rows: int) -> int:
    from aiokafka import AIOKafkaConsumer
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from schemas import RecommendationRecord

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest" if from_beginning else "latest",
                                isolation_level="read_committed")
    await consumer.start()
    seen: list[RecommendationRecord] = []
    n = 0

    def table() -> Table:
        t = Table(title=f"recommendations on {topic} ({n} seen)", expand=True)
        t.add_column("user", overflow="fold", max_width=24)
        t.add_column("top items (score)", overflow="fold")
        t.add_column("events", justify="right")
        t.add_column("latency ms", justify="right")
        t.add_column("model", overflow="fold", max_width=28)
        for r in seen[-rows:]:
            items = ", ".join(f"{titles.get(i.item_id, i.item_id)} ({i.score:.2f})" for i in r.items[:5])
            t.add_row(r.user_id, items, str(r.source.events), f"{r.latency_ms:.0f}",
                      f"{r.model.version} {r.model.encoder}/{r.model.generator}")
        return t

    try:
        live = None if as_json else Live(table(), console=Console(), refresh_per_second=4)
        if live:
            live.start()
        try:
            while count is None or n < count:
                batch = await consumer.getmany(timeout_ms=500)
                for recs in batch.values():
                    for msg in recs:
                        n += 1
                        if as_json:
                            print(msg.value.decode(), flush=True)
                        else:
                            seen.append(RecommendationRecord.from_bytes(msg.value))
                            del seen[:-rows]
                if live:
                    live.update(table())
        finally:
            if live:
                live.stop()
    finally:
        await consumer.stop()
    return n


def register(app: typer.Typer) -> None:
    @app.command("tail")
    def tail_cmd(
        config: Optional[Path] = ConfigOpt,
        kafka_bootstrap: Optional[str] = BootstrapOpt,
        output_topic: Optional[str] = OutputTopicOpt,
        model_dir: Optional[Path] = ModelDirOpt,
        count: Optional[int] = typer.Option(None, help="exit after this many recommendations"),
        from_beginning: bool = typer.Option(False, help="start at the topic's beginning instead of its end"),
        json_out: bool = typer.Option(False, "--json", help="print each record's JSON on a line"),
        rows: int = typer.Option(15, help="rows in the live table"),
    ) -> None:
        """Show recommendations as they are published (user, top items with scores, events, latency, model).
        Item titles come from the model directory's titles.json when it has one (MovieLens)."""
        s = settings_or_exit(config, kafka_bootstrap=kafka_bootstrap, output_topic=output_topic, model_dir=model_dir)
        try:
            asyncio.run(tail(s.kafka_bootstrap, s.output_topic, count, from_beginning, json_out,
                             _titles(s.model_dir), rows))
        except KeyboardInterrupt:
            pass
