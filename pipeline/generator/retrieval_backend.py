"""The ``retrieval`` generator backend: no generator model, the slate is retrieval's top-K.

It is the plain :class:`pipeline.recommender.Recommender` (dot product + top-k, recent items
excluded); this module only gives it the same ``available()`` face as the other backends.
"""
from __future__ import annotations

__all__ = ["RetrievalGenerator"]


class RetrievalGenerator:
    name = "retrieval"

    @staticmethod
    def available() -> tuple[bool, str]:
        return True, "always available (no generator model needed)"
