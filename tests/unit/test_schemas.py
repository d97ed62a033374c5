from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (ACTIONS, InvalidEvent, ModelInfo, RecommendationRecord, ScoredItem, SourceInfo, UserEvent,
                     decode_event, encode_event)
from schemas.jsonschema import JSON_DIR, render, schemas

GOOD = {"v": 1, "event_id": "e1", "user_id": "ユーザー", "item_id": "i1", "action": "click", "ts": 1732600000000,
        "value": 4.0}


def test_valid_event_round_trips():
    ev = decode_event(orjson.dumps(GOOD), "ユーザー".encode())
    assert ev.user_id == "ユーザー" and ev.action.value == "click" and ev.value == 4.0
    assert decode_event(encode_event(ev)) == ev


def test_value_is_optional_and_ints_are_numbers():
    assert decode_event(orjson.dumps({k: v for k, v in GOOD.items() if k != "value"})).value is None
    assert decode_event(orjson.dumps({**GOOD, "value": 3})).value == 3.0


@pytest.mark.parametrize("payload,reason", [
    (b"", "empty value"),
    (None, "empty value"),
    (b"{", "not JSON"),
    (b'"a string"', "not a JSON object"),
    (b"12", "not a JSON object"),
    (orjson.dumps({**GOOD, "v": 2}), "unsupported schema version"),
    (orjson.dumps({**GOOD, "v": True}), "unsupported schema version"),
    (orjson.dumps({**GOOD, "v": "1"}), "unsupported schema version"),
    (orjson.dumps({k: v for k, v in GOOD.items() if k != "v"}), "missing field: v"),
    (orjson.dumps({k: v for k, v in GOOD.items() if k != "ts"}), "missing field: ts"),
    (orjson.dumps({**GOOD, "ts": -1}), "invalid field ts"),
    (orjson.dumps({**GOOD, "ts": "1"}), "invalid field ts"),
    (orjson.dumps({**GOOD, "ts": 1.0}), "invalid field ts"),
    (orjson.dumps({**GOOD, "ts": True}), "invalid field ts"),
    (orjson.dumps({**GOOD, "ts": 2**60}), "invalid field ts"),
    (orjson.dumps({**GOOD, "action": "buy"}), "invalid field action"),
    (orjson.dumps({**GOOD, "action": 1}), "invalid field action"),
    (orjson.dumps({**GOOD, "item_id": ""}), "invalid field item_id"),
    (orjson.dumps({**GOOD, "item_id": 5}), "invalid field item_id"),
    (orjson.dumps({**GOOD, "user_id": "u" * 257}), "invalid field user_id"),
    (orjson.dumps({**GOOD, "value": "4"}), "invalid field value"),
    (orjson.dumps({**GOOD, "value": True}), "invalid field value"),
    (orjson.dumps({**GOOD, "extra": 1}), "unknown field: extra"),
])
def test_invalid_events_have_a_reason(payload, reason):
    with pytest.raises(InvalidEvent) as e:
        decode_event(payload)
    assert e.value.reason.startswith(reason), e.value.reason


def test_size_limit_and_key_checks():
    big = orjson.dumps({**GOOD, "item_id": "x" * 200})
    with pytest.raises(InvalidEvent, match="oversize"):
        decode_event(big, max_bytes=100)
    with pytest.raises(InvalidEvent, match="key does not match"):
        decode_event(orjson.dumps(GOOD), b"someone-else")
    with pytest.raises(InvalidEvent, match="key is not UTF-8"):
        decode_event(orjson.dumps(GOOD), b"\xff")
    assert decode_event(orjson.dumps(GOOD), None).user_id == "ユーザー"  # unkeyed records are accepted


def test_nan_value_rejected():
    raw = orjson.dumps(GOOD).replace(b"4.0", b"NaN")
    with pytest.raises(InvalidEvent):
        decode_event(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_either_decode_or_raise_invalid(raw):
    try:
        ev = decode_event(raw)
    except InvalidEvent as e:
        assert e.reason
    else:
        assert isinstance(ev, UserEvent)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list(GOOD) + ["x"]), json_values, max_size=8))
def test_arbitrary_json_objects_either_decode_or_raise_invalid(obj):
    try:
        raw = orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        ev = decode_event(raw)
    except InvalidEvent as e:
        assert e.reason
    else:
        assert ev.v == 1 and ev.action.value in ACTIONS and ev.ts >= 0
        assert ev.value is None or math.isfinite(ev.value)


def test_recommendation_record_round_trip():
    r = RecommendationRecord(user_id="u", items=[ScoredItem(item_id="i", score=0.5)],
                             model=ModelInfo(version="hstu-x", encoder="torch", generator="retrieval"),
                             source=SourceInfo(events=2, last_event_ts=5, offsets={"0": 12}),
                             generated_at=10, latency_ms=5.0)
    assert RecommendationRecord.from_bytes(r.to_bytes()) == r


def test_committed_json_schemas_match_the_models():
    for name, schema in schemas().items():
        assert (JSON_DIR / name).read_bytes() == render(schema), f"run `python -m schemas.jsonschema` ({name})"
