"""Helpers shared by CLI commands: the settings flags, clean error exits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console

from worker.config import ConfigError, Settings, load_settings

err_console = Console(stderr=True, soft_wrap=True)

ConfigOpt = typer.Option(None, "--config", help="TOML file with settings (same names as the env vars, lower case)")
BootstrapOpt = typer.Option(None, "--kafka-bootstrap", help="Kafka bootstrap servers [env STREAMREC_KAFKA_BOOTSTRAP]")
RedisOpt = typer.Option(None, "--redis-url", help="Redis URL [env STREAMREC_REDIS_URL]")
ModelDirOpt = typer.Option(None, "--model-dir", help="model directory [env STREAMREC_MODEL_DIR]")
InputTopicOpt = typer.Option(None, "--input-topic", help="input topic [env STREAMREC_INPUT_TOPIC]")
OutputTopicOpt = typer.Option(None, "--output-topic", help="output topic [env STREAMREC_OUTPUT_TOPIC]")
DlqTopicOpt = typer.Option(None, "--dlq-topic", help="dead-letter topic [env STREAMREC_DLQ_TOPIC]")
GroupOpt = typer.Option(None, "--group-id", help="consumer group [env STREAMREC_GROUP_ID]")


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def settings_or_exit(config: Optional[Path] = None, **overrides) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigError as e:
        fail(str(e))


def is_tty() -> bool:
    return sys.stderr.isatty()
