"""What the sequence encoders (HSTU, SASRec) share: config validation and JSON round trip, and the
jagged-batch interface around each model's own ``encode``."""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn


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


class SequenceEncoder(nn.Module):
    """Base of the encoders: a subclass sets ``cfg`` and ``item_emb`` and implements ``encode``
    (every position's output, (T, dim), for a jagged batch of values + offsets)."""

    @staticmethod
    def _check(item_idx: Tensor, action_idx: Tensor, ts_ms: Tensor, offsets: Tensor) -> None:
        T = item_idx.shape[0]
        if item_idx.dim() != 1 or action_idx.shape != (T,) or ts_ms.shape != (T,):
            raise ValueError("item_idx, action_idx and ts_ms must be 1-D tensors of the same length")
        if offsets.dim() != 1 or offsets.shape[0] < 1:
            raise ValueError("offsets must be a 1-D tensor of length B+1")
        if int(offsets[0]) != 0 or int(offsets[-1]) != T:
            raise ValueError(f"offsets must start at 0 and end at T={T}")

    def encode(self, item_idx: Tensor, action_idx: Tensor, ts_ms: Tensor, offsets: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, item_idx: Tensor, action_idx: Tensor, ts_ms: Tensor, offsets: Tensor) -> Tensor:
        """The user embedding: last position of each sequence, L2-normalised, (B, dim)."""
        lengths = offsets[1:] - offsets[:-1]
        if bool((lengths <= 0).any()):
            raise ValueError("every sequence needs at least one event")
        x = self.encode(item_idx, action_idx, ts_ms, offsets)
        return F.normalize(x[offsets[1:] - 1], dim=-1)

    def item_table(self) -> Tensor:
        """L2-normalised item vectors (num_items, dim), the OOV row excluded."""
        return F.normalize(self.item_emb.weight[: self.cfg.num_items], dim=-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
