"""Action vocabulary shared by the model side.

The order is the wire order of DESIGN §2 / ``schemas``: view, click, add_to_cart,
purchase, like, rate, skip, share -> 0..7. It is part of a trained model (the
action embedding rows), so never reorder it; append new actions at the end.
"""
from __future__ import annotations

ACTIONS: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", "like", "rate", "skip", "share")
ACTION_INDEX: dict[str, int] = {a: i for i, a in enumerate(ACTIONS)}


def action_idx(action: str) -> int:
    try:
        return ACTION_INDEX[action]
    except KeyError:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}") from None
