"""Validation and the JSON round trip shared by the encoder configs (HSTU, SASRec)."""

from __future__ import annotations

import dataclasses


class EncoderConfig:
    """Mixin for a frozen dataclass whose fields are integers >= 1, except ``dropout`` in [0, 1).

    Row ``num_items`` of the item embedding table is the out-of-vocabulary index."""

    def _validate_fields(self) -> None:
        name = type(self).__name__
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "dropout":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{name}.dropout must be a number, got {value!r}")
                if not 0.0 <= float(value) < 1.0:
                    raise ValueError(f"{name}.dropout must be in [0, 1), got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}.{f.name} must be an integer, got {value!r}")
            if value < 1:
                raise ValueError(f"{name}.{f.name} must be >= 1, got {value!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        name = cls.__name__
        if not isinstance(d, dict):
            raise ValueError(f"{name} must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{name}: unknown field(s) {', '.join(unknown)}")
        if "num_items" not in d:
            raise ValueError(f"{name}.num_items is missing")
        return cls(**d)

    @property
    def oov_index(self) -> int:
        return self.num_items
