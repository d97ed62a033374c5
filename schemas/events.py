"""Wire formats of DESIGN §2: the input event, the output recommendation, the DLQ headers.

Every model is strict: no type coercion (``"5"`` is not an int, ``true`` is not 1),
no unknown fields, bounded sizes. ``decode_event`` is the one entry point the worker
uses for input bytes; it raises :class:`InvalidEvent` with a short, stable ``reason``
that ends up in the dead-letter record's ``x-error-reason`` header.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

MAX_EVENT_BYTES = 64 * 1024
MAX_ID_CHARS = 256
SCHEMA_VERSION = 1


class Action(str, Enum):
    """User actions. The order is the model's action index (0..7): never reorder."""

    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    LIKE = "like"
    RATE = "rate"
    SKIP = "skip"
    SHARE = "share"


ACTIONS: tuple[str, ...] = tuple(a.value for a in Action)
ACTION_INDEX: dict[str, int] = {a: i for i, a in enumerate(ACTIONS)}

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, strict=True)]


class UserEvent(BaseModel):
    """One user-behaviour event (input topic value)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    v: Literal[1]
    event_id: Id
    user_id: Id
    item_id: Id
    action: Action
    ts: Annotated[int, Field(ge=0, le=2**53, description="event time, epoch milliseconds")]
    value: float | None = None

    @field_validator("action", mode="before")
    @classmethod
    def _action_is_string(cls, v: object) -> object:
        # strict mode accepts the enum's values only as the enum itself; on the wire they are strings
        if isinstance(v, str):
            try:
                return Action(v)
            except ValueError:
                raise ValueError(f"unknown action {v!r}; expected one of {', '.join(ACTIONS)}") from None
        return v

    @field_validator("value", mode="before")
    @classmethod
    def _value_is_finite_number(cls, v: object) -> object:
        if v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("value must be a number")
        if not math.isfinite(v):
            raise ValueError("value must be finite")
        return float(v)


class InvalidEvent(ValueError):
    """An input record that cannot be processed. ``reason`` is short and machine-greppable."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _first_error(err: ValidationError) -> str:
    e = err.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in e["loc"]) or "event"
    kind = e["type"]
    if kind == "missing":
        return f"missing field: {loc}"
    if kind == "extra_forbidden":
        return f"unknown field: {loc}"
    if loc == "v" and kind == "literal_error":
        return f"unsupported schema version: {e.get('input')!r} (expected {SCHEMA_VERSION})"
    msg = e["msg"].removeprefix("Value error, ")
    return f"invalid field {loc}: {msg}"


def decode_event(value: bytes | None, key: bytes | None = None, max_bytes: int = MAX_EVENT_BYTES) -> UserEvent:
    """Parse and validate one input record. Raises :class:`InvalidEvent` with the reason."""
    if value is None or len(value) == 0:
        raise InvalidEvent("empty value")
    if len(value) > max_bytes:
        raise InvalidEvent(f"oversize: {len(value)} bytes > limit {max_bytes}")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise InvalidEvent(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(f"not a JSON object: got {type(obj).__name__}")
    if "v" in obj and obj["v"] != SCHEMA_VERSION or isinstance(obj.get("v"), bool):
        raise InvalidEvent(f"unsupported schema version: {obj['v']!r} (expected {SCHEMA_VERSION})")
    try:
        ev = UserEvent.model_validate(obj)
    except ValidationError as e:
        raise InvalidEvent(_first_error(e)) from None
    if key is not None:
        try:
            k = key.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent("key is not UTF-8") from None
        if k != ev.user_id:
            raise InvalidEvent("key does not match user_id")
    return ev


def encode_event(ev: UserEvent) -> bytes:
    return orjson.dumps(ev.model_dump(mode="json", exclude_none=True))


class ScoredItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str
    score: float


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    encoder: Literal["tensorrt", "onnxruntime", "torch"]
    generator: Literal["vllm", "torch", "retrieval"]


class SourceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: int = Field(ge=0, description="events of this user in the batch that produced this slate")
    last_event_ts: int = Field(ge=0, description="ts of the newest event in the user's stored history")
    offsets: dict[str, int] = Field(description="input partition -> highest offset of this user's events in the batch")


class RecommendationRecord(BaseModel):
    """Output topic value."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    user_id: str
    items: list[ScoredItem]
    model: ModelInfo
    source: SourceInfo
    generated_at: int = Field(description="epoch ms when the slate was published")
    latency_ms: float = Field(description="generated_at minus the newest source event's ts")

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, data: bytes) -> "RecommendationRecord":
        return cls.model_validate(orjson.loads(data))


class DLQHeader:
    """Headers the worker adds to a dead-lettered record (the original headers are kept first)."""

    STAGE = "x-error-stage"
    REASON = "x-error-reason"
    SOURCE_TOPIC = "x-source-topic"
    SOURCE_PARTITION = "x-source-partition"
    SOURCE_OFFSET = "x-source-offset"


class ErrorStage(str, Enum):
    DECODE = "decode"
    MODEL = "model"
