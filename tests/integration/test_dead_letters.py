"""Every malformed-input class lands in the dead-letter topic, byte for byte, with a reason."""

from __future__ import annotations

import orjson
import pytest

from schemas import DLQHeader
from tests.helpers import (committed_vs_end, consume_all, create_topics, event, produce_raw, running_worker,
                           settings_for, wait_committed)

pytestmark = pytest.mark.integration

GOOD = event("alice", "i0001", 1_732_600_000_000)

MALFORMED: dict[str, tuple[bytes | None, bytes | None, str]] = {
    # name: (key, value, expected reason prefix)
    "not_json": (b"alice", b"{not json", "not JSON"),
    "wrong_json_type": (b"alice", b'["a", "list"]', "not a JSON object"),
    "missing_field": (b"alice", orjson.dumps({k: v for k, v in GOOD.items() if k != "item_id"}), "missing field: item_id"),
    "wrong_type": (b"alice", orjson.dumps({**GOOD, "item_id": 42}), "invalid field item_id"),
    "unknown_action": (b"alice", orjson.dumps({**GOOD, "action": "teleport"}), "invalid field action"),
    "unknown_version": (b"alice", orjson.dumps({**GOOD, "v": 2}), "unsupported schema version"),
    "empty_value": (b"alice", b"", "empty value"),
    "null_value": (b"alice", None, "empty value"),
    "oversize": (b"alice", orjson.dumps({**GOOD, "item_id": "x" * 200, "pad": "y" * 70_000}), "oversize"),
    "bad_ts_negative": (b"alice", orjson.dumps({**GOOD, "ts": -1}), "invalid field ts"),
    "bad_ts_string": (b"alice", orjson.dumps({**GOOD, "ts": "yesterday"}), "invalid field ts"),
    "bad_ts_float": (b"alice", orjson.dumps({**GOOD, "ts": 1.5}), "invalid field ts"),
    "key_mismatch": (b"bob", orjson.dumps(GOOD), "key does not match user_id"),
    "invalid_utf8": (b"alice", b'{"v": 1, "user_id": "\xff\xfe"}', "not JSON"),
}


async def test_each_malformed_class_is_dead_lettered_and_the_stream_keeps_moving(services, names, tiny_model_dir):
    await create_topics(services["bootstrap"], names, partitions=1)
    records = []
    for i, (name, (key, value, _)) in enumerate(MALFORMED.items()):
        records.append((b"carol", orjson.dumps(event("carol", "i0002", 1_732_600_000_000 + i)), []))
        records.append((key, value, [("case", name.encode()), ("raw", b"\x00\x01\xff")]))
    records.append((b"carol", orjson.dumps(event("carol", "i0003", 1_732_700_000_000)), []))
    await produce_raw(services["bootstrap"], names["input_topic"], records)

    s = settings_for(services, names, tiny_model_dir, max_batch_events=7)  # several batches, mixed content
    async with running_worker(s):
        assert await wait_committed(services["bootstrap"], names["group_id"], names["input_topic"], 90)

    dlq = await consume_all(services["bootstrap"], names["dlq_topic"], lambda r: len(r) >= len(MALFORMED), 30)
    assert len(dlq) == len(MALFORMED)
    by_case = {dict(r.headers)["case"].decode(): r for r in dlq}
    for name, (key, value, reason) in MALFORMED.items():
        r = by_case[name]
        h = dict(r.headers)
        assert r.key == key
        assert r.value == value
        assert list(r.headers[:2]) == [("case", name.encode()), ("raw", b"\x00\x01\xff")]  # originals first, byte for byte
        assert h[DLQHeader.STAGE] == b"decode"
        assert h[DLQHeader.REASON].decode().startswith(reason), (name, h[DLQHeader.REASON])
        assert h[DLQHeader.SOURCE_TOPIC] == names["input_topic"].encode()
        assert h[DLQHeader.SOURCE_PARTITION] == b"0"
        assert int(h[DLQHeader.SOURCE_OFFSET]) >= 0

    outs = await consume_all(services["bootstrap"], names["output_topic"],
                             lambda rs: any(orjson.loads(x.value)["source"]["last_event_ts"] == 1_732_700_000_000
                                            for x in rs), 30)
    assert any(orjson.loads(x.value)["source"]["last_event_ts"] == 1_732_700_000_000 for x in outs)
    committed, end = await committed_vs_end(services["bootstrap"], names["group_id"], names["input_topic"])
    assert committed == end == {0: 2 * len(MALFORMED) + 1}
