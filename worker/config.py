"""One settings object for the worker: defaults < config file (TOML) < env vars < CLI flags.

Env vars are ``STREAMREC_<FIELD>`` (e.g. ``STREAMREC_KAFKA_BOOTSTRAP``); the file is given by
``--config FILE`` or ``STREAMREC_CONFIG`` and holds the same field names at top level.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """Bad configuration: the message says which setting and what to do."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_", extra="forbid", validate_default=True)

    # where things are
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL for user history and the embedding cache")
    model_dir: Path = Field(Path("models/default"), description="model directory written by `streamrec train`")
    input_topic: str = "user-events"
    output_topic: str = "recommendations"
    dlq_topic: str = "user-events.dlq"
    group_id: str = "streamrec"
    group_instance_id: str | None = Field(None, description="static membership id (rolling restarts without rebalance)")
    create_topics: bool = Field(True, description="create missing topics at start")
    input_partitions: int = Field(6, ge=1, description="partitions when the worker creates the input topic")
    redis_prefix: str = "streamrec"

    # delivery and batching
    delivery: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once", description="exactly_once: transactional producer per input partition, outputs and "
                                     "offsets in one transaction; readers must use isolation.level=read_committed")
    max_batch_events: int = Field(512, ge=1, le=100_000)
    max_wait_ms: int = Field(20, ge=0, le=60_000)
    queue_max_events: int = Field(8192, ge=1, description="buffered events before partitions are paused")
    max_event_bytes: int = Field(64 * 1024, ge=64)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    session_timeout_ms: int = Field(30_000, ge=6_000)
    retry_backoff_max_s: float = Field(5.0, gt=0)

    # model
    top_k: int = Field(10, ge=1, le=1000)
    exclude_recent: int = Field(50, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(
        1, ge=0, description="intra-op threads of the model thread (0 = torch's default). 1 is right for CPU "
                             "workers: the encoder's ops on jagged batches are small, and on a busy host "
                             "OpenMP spinning across threads made a 400-user batch 30x slower (docs/perf.md)")
    encoder_backend: Literal["auto", "tensorrt", "onnxruntime", "torch"] = "auto"
    generator_backend: Literal["auto", "vllm", "torch", "retrieval"] = "auto"
    embedding_ttl_s: float = Field(900.0, gt=0, description="TTL of cached user embeddings")
    encoder_state_mb: int = Field(
        -1, ge=-1, description="memory budget (MiB, on the model's device) for per-user HSTU encoder states: a "
                               "user who keeps one costs a decode step per new event instead of a full re-encode "
                               "(docs/incremental.md); 0 turns incremental encoding off; -1 (auto) = 256 on the "
                               "CPU, and on CUDA 256 only for models with max_seq_len >= 512 (below that a full "
                               "re-encode on the GPU is as fast as the decode step's overhead)")
    window_slack: int = Field(
        0, ge=0, description="past max_seq_len events the encoder window restarts at max_seq_len - slack + 1 "
                             "events so that it moves once per `slack` events; 0 = max_seq_len // 4, 1 = exact "
                             "sliding window (docs/incremental.md)")

    # operations
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9100, ge=0, le=65535, description="0 disables /metrics, /healthz, /readyz")
    shutdown_timeout_s: float = Field(25.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    chaos_fail_users: str = Field(
        "", description="fault drills: comma-separated user ids for which the model stage raises; their events "
                        "must land in the DLQ with stage=model while the rest of the batch is published")

    @property
    def chaos_fail_user_set(self) -> frozenset[str]:
        return frozenset(u for u in (p.strip() for p in self.chaos_fail_users.split(",")) if u)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, v: str) -> str:
        for part in v.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {v!r}")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"expected redis://host:port/db, got {v!r}")
        return v

    @model_validator(mode="after")
    def _topics_distinct(self) -> "Settings":
        if len({self.input_topic, self.output_topic, self.dlq_topic}) != 3:
            raise ValueError("input_topic, output_topic and dlq_topic must be three different topics")
        return self


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; raise :class:`ConfigError` with a readable message on any problem."""
    file_values: dict[str, Any] = {}
    path = config_file or (Path(os.environ["STREAMREC_CONFIG"]) if os.environ.get("STREAMREC_CONFIG") else None)
    if path is not None:
        try:
            file_values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    env_fields = {n for n in Settings.model_fields if f"STREAMREC_{n.upper()}" in os.environ}
    values = {k: v for k, v in file_values.items() if k not in env_fields}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as e:
        lines = []
        for err in e.errors(include_url=False):
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            env = f" (env STREAMREC_{name.upper()})" if name in Settings.model_fields else ""
            lines.append(f"  {name}{env}: {err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
