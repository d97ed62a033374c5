"""Wire formats (DESIGN §2). Imported by every other package; imports none of them."""

from schemas.events import (
    ACTION_INDEX,
    ACTIONS,
    MAX_EVENT_BYTES,
    MAX_ID_CHARS,
    SCHEMA_VERSION,
    Action,
    DLQHeader,
    ErrorStage,
    InvalidEvent,
    ModelInfo,
    RecommendationRecord,
    ScoredItem,
    SourceInfo,
    UserEvent,
    decode_event,
    encode_event,
)

__all__ = [
    "ACTIONS", "ACTION_INDEX", "MAX_EVENT_BYTES", "MAX_ID_CHARS", "SCHEMA_VERSION", "Action", "DLQHeader",
    "ErrorStage", "InvalidEvent", "ModelInfo", "RecommendationRecord", "ScoredItem", "SourceInfo", "UserEvent",
    "decode_event", "encode_event",
]
