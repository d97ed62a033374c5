"""JSON Schema files for other languages, generated from the Python models.

``python -m schemas.jsonschema`` rewrites ``schemas/json/``; a unit test fails when the
committed files drift from the models.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from schemas.events import MAX_EVENT_BYTES, DLQHeader, RecommendationRecord, UserEvent

JSON_DIR = Path(__file__).parent / "json"


def _titled(schema: dict, sid: str, description: str) -> dict:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": sid, "description": description, **schema}


def schemas() -> dict[str, dict]:
    event = _titled(
        UserEvent.model_json_schema(),
        "streamrec/user-event.v1.json",
        f"Input topic value (key = user_id, UTF-8). At most {MAX_EVENT_BYTES} bytes of JSON (configurable).",
    )
    rec = _titled(
        RecommendationRecord.model_json_schema(),
        "streamrec/recommendation.v1.json",
        "Output topic value (key = user_id). W3C traceparent travels in the record headers.",
    )
    dlq = _titled(
        {
            "title": "DeadLetterHeaders",
            "type": "object",
            "properties": {
                DLQHeader.STAGE: {"type": "string", "enum": ["decode", "model"]},
                DLQHeader.REASON: {"type": "string"},
                DLQHeader.SOURCE_TOPIC: {"type": "string"},
                DLQHeader.SOURCE_PARTITION: {"type": "string", "pattern": "^[0-9]+$"},
                DLQHeader.SOURCE_OFFSET: {"type": "string", "pattern": "^[0-9]+$"},
            },
            "required": [DLQHeader.STAGE, DLQHeader.REASON, DLQHeader.SOURCE_TOPIC,
                         DLQHeader.SOURCE_PARTITION, DLQHeader.SOURCE_OFFSET],
        },
        "streamrec/dlq-headers.v1.json",
        "Headers added to a dead-lettered record (UTF-8 values). Key, value and original headers are kept byte for byte.",
    )
    return {"user-event.v1.json": event, "recommendation.v1.json": rec, "dlq-headers.v1.json": dlq}


def render(schema: dict) -> bytes:
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> int:
    JSON_DIR.mkdir(exist_ok=True)
    for name, schema in schemas().items():
        (JSON_DIR / name).write_bytes(render(schema))
        print(f"wrote {JSON_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
