"""Shared fixtures. Integration tests talk to the real Kafka broker and redis-server started by
``infra/local/up`` (``make test`` starts them; this file starts them too if they are down)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

# Triton fixes a kernel's mode (compiled vs CPU interpreter) when it is decorated. Without a GPU the
# interpreter is the only mode that can run, so the whole test process uses it from the start: a kernel
# module imported early by other code then agrees with the kernel tests (DESIGN §5, §8).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
KAFKA_PORT = int(os.environ.get("KAFKA_PORT", "9092"))
REDIS_PORT = int(os.environ.get("REDIS_PORT", "6379"))
BOOTSTRAP = f"127.0.0.1:{KAFKA_PORT}"
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def services() -> dict:
    """Real Kafka + Redis; started with infra/local/up when not already running."""
    if not (_port_open(KAFKA_PORT) and _port_open(REDIS_PORT)):
        subprocess.run([str(ROOT / "infra/local/up")], check=True)
    return {"bootstrap": BOOTSTRAP, "redis_url": REDIS_URL}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A small real HSTU model directory (random weights over the synthetic world's items): fast to build,
    exercises the real encoder and retrieval. Quality is the training tests' business."""
    import torch

    from pipeline.datasets.synthetic import SyntheticWorld
    from pipeline.hstu import HSTUConfig, HSTUEncoder
    from pipeline.model_dir import save_model_dir

    torch.manual_seed(0)
    items = SyntheticWorld(seed=0).item_ids()
    enc = HSTUEncoder(HSTUConfig(num_items=len(items), dim=32, num_layers=1, num_heads=2, qk_dim=16, v_dim=16,
                                 max_seq_len=50, attn_n=50))
    out = tmp_path_factory.mktemp("model") / "tiny"
    save_model_dir(out, enc, items, {"note": "random weights, for worker tests"})
    return out


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def names() -> dict:
    """Unique topics, group and Redis prefix per test, so tests never see each other's data."""
    tag = uuid.uuid4().hex[:10]
    return {
        "input_topic": f"t-{tag}-in",
        "output_topic": f"t-{tag}-out",
        "dlq_topic": f"t-{tag}-dlq",
        "group_id": f"g-{tag}",
        "redis_prefix": f"test:{tag}",
    }


def streamrec_cmd() -> list[str]:
    return [sys.executable, "-m", "worker.cli"]


@pytest.fixture(scope="session")
def span_exporter():
    """The process-wide tracer provider (as the worker installs it), exporting to memory for assertions."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from worker.telemetry import setup_tracing

    exporter = InMemorySpanExporter()
    provider = setup_tracing("streamrec-tests")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(autouse=True)
def _tracing(span_exporter):
    yield


@pytest.fixture
def reaper():
    """Processes a test starts; any still running at teardown is killed (a failed assertion leaves none)."""
    procs: list = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)
