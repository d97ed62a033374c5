"""Recommendations whose slate is decoded by the generator.

HSTU encodes the batch (one jagged call) -> retrieval takes each user's top
``num_candidates`` items, excluding the user's last ``exclude_recent`` items -> the
generator decodes the K-item slate restricted to those candidates, never repeating an
item -> each item's score is its log-probability at the step it was picked.
"""
from __future__ import annotations

from typing import Sequence

import torch

from pipeline.generator.base import MAX_ALLOWED, GeneratorBackend
from pipeline.generator.model import GeneratorModel
from pipeline.model_dir import ModelBundle
from pipeline.recommender import Recommendation, Recommender, UserRequest
from pipeline.retrieval import top_k_items

__all__ = ["GenerativeRecommender", "DEFAULT_CANDIDATES"]

DEFAULT_CANDIDATES = 100


class GenerativeRecommender(Recommender):
    def __init__(self, bundle: ModelBundle, generator: GeneratorModel, backend: GeneratorBackend, k: int = 10,
                 exclude_recent: int = 50, device: str = "cpu", num_candidates: int = DEFAULT_CANDIDATES,
                 **recommender_kw) -> None:
        """``recommender_kw`` (e.g. ``encoder_backend``, ``encoder_options``) go to :class:`Recommender`."""
        super().__init__(bundle, k=k, exclude_recent=exclude_recent, device=device, **recommender_kw)
        if not 1 <= num_candidates <= MAX_ALLOWED:
            raise ValueError(f"num_candidates must be in 1..{MAX_ALLOWED} (vLLM's allowed_token_ids cap), got {num_candidates}")
        if generator.cfg.num_items != bundle.config.num_items:
            raise ValueError(f"generator has {generator.cfg.num_items} items, the HSTU model {bundle.config.num_items}")
        if k > generator.cfg.max_slate:
            raise ValueError(f"k={k} exceeds the generator's max_slate={generator.cfg.max_slate}")
        self.generator = generator.to("cpu").eval()
        self.backend = backend
        self.generator_name = backend.name
        self.num_candidates = max(num_candidates, k)

    def prompts(self, requests: Sequence[UserRequest]):
        """(user embeddings, prompt_embeds (B, L, hidden), allowed token ids per user, logit bias per
        allowed token = ``retrieval_weight`` x retrieval score, or None when the weight is 0)."""
        emb, batch = self._encode(requests)
        item_idx = batch.item_idx.tolist()
        offs = batch.offsets.tolist()
        recent, exclude = [], []
        for b in range(len(requests)):
            s, e = offs[b], offs[b + 1]
            recent.append(item_idx[s:e])
            exclude.append(item_idx[max(s, e - self.exclude_recent) : e] if self.exclude_recent else [])
        with torch.inference_mode():
            scores, cand = top_k_items(emb, self._item_table, self.num_candidates, exclude)
            cand_l = cand.cpu().tolist()
            allowed = [[i for i in row if i >= 0] for row in cand_l]
            w = self.generator.cfg.retrieval_weight
            bias = None
            if w:
                sc = (w * scores.float()).cpu().tolist()
                bias = [[x for x, i in zip(srow, row) if i >= 0] for srow, row in zip(sc, cand_l)]
            emb_cpu = emb.float().cpu()
            pe = self.generator.prompt_embeds(emb_cpu, self.generator.recent_tokens(recent))
        return emb_cpu, pe, allowed, bias

    def recommend(self, requests: Sequence[UserRequest]) -> list[Recommendation]:
        if not requests:
            return []
        emb, pe, allowed, bias = self.prompts(requests)
        slates = self.backend.generate(pe, allowed, self.k, bias)
        items = self.bundle.items
        emb_np = emb.numpy()
        return [
            Recommendation(user_id=r.user_id, items=[(items[t], float(lp)) for t, lp in slate], embedding=emb_np[b].copy())
            for b, (r, slate) in enumerate(zip(requests, slates))
        ]

    def close(self) -> None:
        self.backend.close()
