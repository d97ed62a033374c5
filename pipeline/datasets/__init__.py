"""Datasets for training and evaluation: per-user chronological event sequences.

``load_dataset("synthetic")`` builds the seeded synthetic world
(:mod:`pipeline.datasets.synthetic`); ``load_dataset("ml-100k")`` reads
MovieLens-100k from an installed wheel (:mod:`pipeline.datasets.movielens`).
Data is never vendored into this repository.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.recommender import HistoryEvent

__all__ = ["SequenceDataset", "DatasetUnavailable", "load_dataset", "DATASETS"]

DATASETS = ("synthetic", "ml-100k")


class DatasetUnavailable(Exception):
    """The dataset cannot be loaded here; the message says what to install."""


@dataclass
class SequenceDataset:
    name: str
    items: list[str]
    user_ids: list[str]
    sequences: list[list[HistoryEvent]]  # one chronological sequence per user, aligned with user_ids
    spec: dict  # enough to rebuild it with load_dataset(spec)
    titles: dict[str, str] | None = None
    # Planted-truth scorer (synthetic only): (user_id, history) -> probabilities over items
    oracle: Callable[[str, Sequence[HistoryEvent]], np.ndarray] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_events(self) -> int:
        return sum(len(s) for s in self.sequences)

    def item_index(self) -> dict[str, int]:
        return {it: i for i, it in enumerate(self.items)}


def load_dataset(spec: str | dict, **overrides: Any) -> SequenceDataset:
    """Load a dataset by name (``synthetic``, ``ml-100k``) or by a recorded spec dict."""
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = {**spec, **overrides}
    name = spec.get("name")
    if name == "synthetic":
        from pipeline.datasets.synthetic import SyntheticWorld

        world_keys = {
            "seed", "num_items", "num_users", "num_clusters", "p_follow",
            "p_new_session", "p_noise", "no_repeat_window",
        }
        world = SyntheticWorld(**{k: v for k, v in spec.items() if k in world_keys})
        min_len = int(spec.get("min_len", 8))
        max_len = int(spec.get("max_len", 40))
        seqs = world.sample_sequences(world.num_users, min_len, max_len)
        full_spec = {**world.spec(), "min_len": min_len, "max_len": max_len}
        return SequenceDataset(
            name="synthetic",
            items=world.item_ids(),
            user_ids=world.user_ids(),
            sequences=seqs,
            spec=full_spec,
            titles=None,
            oracle=lambda user_id, history: world.next_item_distribution(history, user_id),
            extra={"world": world},
        )
    if name in ("ml-100k", "ml100k", "movielens-100k"):
        from pipeline.datasets.movielens import load_ml100k

        return load_ml100k(**{k: v for k, v in spec.items() if k != "name"})
    raise DatasetUnavailable(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
