"""Pure logic of the worker: micro-batcher, embedding record format, settings, DLQ headers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest

from pipeline.embedding_cache import CachedEmbedding, pack_embedding, unpack_embedding
from schemas import DLQHeader, ErrorStage
from worker.batcher import RecordBuffer
from worker.config import ConfigError, load_settings
from worker.kafka_io import dlq_headers


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    headers: tuple = ()


async def test_batch_closes_at_max_events():
    buf = RecordBuffer(100)
    buf.put_many(Rec("t", 0, i) for i in range(10))
    batch = await buf.next_batch(4, max_wait_s=10)
    assert [r.offset for r in batch] == [0, 1, 2, 3]
    assert len(buf) == 6


async def test_batch_closes_at_max_wait():
    buf = RecordBuffer(100)
    buf.put_many([Rec("t", 0, 0)])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    batch = await buf.next_batch(50, max_wait_s=0.05)
    assert len(batch) == 1 and 0.04 <= loop.time() - t0 < 1.0


async def test_batch_waits_for_first_record_then_fills():
    buf = RecordBuffer(100)

    async def later():
        await asyncio.sleep(0.02)
        buf.put_many([Rec("t", 0, 0)])
        await asyncio.sleep(0.02)
        buf.put_many([Rec("t", 0, 1), Rec("t", 0, 2)])

    task = asyncio.create_task(later())
    batch = await buf.next_batch(3, max_wait_s=1.0)
    await task
    assert [r.offset for r in batch] == [0, 1, 2]


async def test_full_drained_drop_and_close():
    buf = RecordBuffer(4)
    buf.put_many([Rec("t", 0, 0), Rec("t", 1, 0), Rec("t", 0, 1), Rec("t", 1, 1)])
    assert buf.full and not buf.drained
    assert buf.drop({("t", 1)}) == 2
    assert not buf.full and buf.drained
    buf.close()
    assert len(await buf.next_batch(10, 5)) == 2
    assert await buf.next_batch(10, 5) == []
    assert await RecordBuffer(1).next_batch(1, 1, idle_timeout_s=0.01) == []


def test_embedding_record_round_trip_and_validation():
    vec = np.arange(8, dtype=np.float32) / 7
    e = CachedEmbedding(vec, "hstu-abc", 123, 456, 7)
    raw = pack_embedding(e)
    back = unpack_embedding(raw)
    assert np.array_equal(back.vector, vec) and back.model_version == "hstu-abc"
    assert (back.updated_at, back.last_event_ts, back.history_len) == (123, 456, 7)
    with pytest.raises(ValueError):
        unpack_embedding(raw[:-1])
    with pytest.raises(ValueError):
        unpack_embedding(b"XXXX" + raw[4:])


def test_settings_precedence_and_errors(tmp_path, monkeypatch):
    cfg = tmp_path / "s.toml"
    cfg.write_text('max_batch_events = 64\ninput_topic = "from-file"\n')
    monkeypatch.setenv("STREAMREC_INPUT_TOPIC", "from-env")
    s = load_settings(cfg, group_id="from-flag")
    assert (s.max_batch_events, s.input_topic, s.group_id) == (64, "from-env", "from-flag")
    with pytest.raises(ConfigError, match="kafka_bootstrap"):
        load_settings(None, kafka_bootstrap="no-port")
    with pytest.raises(ConfigError, match="three different topics"):
        load_settings(None, output_topic="from-env")
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    cfg.write_text("nonsense = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(cfg)
    cfg.write_text("no_such_setting = 1")
    with pytest.raises(ConfigError, match="no_such_setting"):
        load_settings(cfg)


def test_dlq_headers_keep_originals_first():
    rec = Rec("events", 3, 42, headers=(("traceparent", b"00-abc"), ("bin", b"\x00\xff")))
    h = dlq_headers(rec, ErrorStage.DECODE, "not JSON: x")
    assert h[:2] == [("traceparent", b"00-abc"), ("bin", b"\x00\xff")]
    d = dict(h)
    assert d[DLQHeader.STAGE] == b"decode" and d[DLQHeader.REASON] == b"not JSON: x"
    assert d[DLQHeader.SOURCE_TOPIC] == b"events" and d[DLQHeader.SOURCE_PARTITION] == b"3"
    assert d[DLQHeader.SOURCE_OFFSET] == b"42"
