"""The generator backend interface.

A backend turns a batch of prompts into slates::

    generate(prompt_embeds (B, L, hidden) float32, allowed: B lists of token ids, k) -> B slates
    slate = [(token_id, logprob), ...]  at most min(k, len(allowed[b])) entries, no repeats

Decoding is greedy: at every step the highest-logit token among ``allowed[b]`` minus
the tokens already in the slate. ``bias`` (optional; B lists of floats aligned with
``allowed``) is added to those tokens' logits before the choice (vLLM's ``logit_bias``):
the recommender passes ``retrieval_weight x retrieval score`` there. ``logprob`` is the token's log-probability under
the model's full softmax at that step (vLLM's default ``raw_logprobs``), i.e. the
model's own belief before any constraint is applied. Callers (the recommender)
build ``allowed`` from the retrieval candidates, which already exclude the items
the user just interacted with.
"""
from __future__ import annotations

from typing import Protocol, Sequence

from torch import Tensor

__all__ = ["GeneratorBackend", "Slate", "MAX_ALLOWED", "check_request"]

Slate = list[tuple[int, float]]

# vLLM's CUDA model runner caps allowed_token_ids / logit_bias at 1,024 ids per request (DESIGN §8)
MAX_ALLOWED = 1023


class GeneratorBackend(Protocol):
    name: str

    def generate(self, prompt_embeds: Tensor, allowed: Sequence[Sequence[int]], k: int,
                 bias: Sequence[Sequence[float]] | None = None) -> list[Slate]: ...

    def close(self) -> None: ...


def check_request(prompt_embeds: Tensor, allowed: Sequence[Sequence[int]], k: int, vocab_size: int,
                  bias: Sequence[Sequence[float]] | None = None) -> None:
    if prompt_embeds.dim() != 3:
        raise ValueError(f"prompt_embeds must be (B, L, hidden), got {tuple(prompt_embeds.shape)}")
    if len(allowed) != prompt_embeds.shape[0]:
        raise ValueError(f"{len(allowed)} allowed lists for {prompt_embeds.shape[0]} prompts")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for row in allowed:
        if len(row) > MAX_ALLOWED:
            raise ValueError(f"{len(row)} allowed tokens in one request; keep candidate sets below {MAX_ALLOWED + 1}")
        for t in row:
            if not 0 <= int(t) < vocab_size:
                raise ValueError(f"allowed token {t} outside the vocabulary (0..{vocab_size - 1})")
    if bias is not None:
        if len(bias) != len(allowed) or any(len(b) != len(a) for b, a in zip(bias, allowed)):
            raise ValueError("bias must hold one float per allowed token")
