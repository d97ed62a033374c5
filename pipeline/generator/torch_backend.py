"""The ``torch`` generator backend: the same Llama model in plain PyTorch, its own KV cache,
batched greedy decoding under the same constraints as the vLLM backend.

Every prompt of a batch has the same length (see :mod:`pipeline.generator.model`), so one
prefill of (B, L) fills a preallocated (B, heads, L + k, head_dim) cache per layer and each
further step runs one position for the whole batch. Numerics: fp32 by default, argmax ties
broken towards the lower token id (as ``torch.argmax`` in vLLM's greedy sampler).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor

from pipeline.generator.base import Slate, check_request
from pipeline.generator.model import GeneratorModel

__all__ = ["TorchGenerator"]


class TorchGenerator:
    name = "torch"

    def __init__(self, model: GeneratorModel, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 max_batch: int = 512) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        if self.device.type != "cpu" or dtype != torch.float32:
            # nn.Module.to() works in place: never move or cast the caller's model (GenerativeRecommender
            # keeps the same GeneratorModel on the CPU, fp32, for the prompt projection)
            model = copy.deepcopy(model)
        self.model = model.to(self.device, dtype).eval()
        self.decoder = self.model.decoder
        self.max_batch = max_batch

    @staticmethod
    def available() -> tuple[bool, str]:
        return True, "plain PyTorch"

    def generate(self, prompt_embeds: Tensor, allowed: Sequence[Sequence[int]], k: int,
                 bias: Sequence[Sequence[float]] | None = None) -> list[Slate]:
        V = self.model.cfg.vocab_size
        check_request(prompt_embeds, allowed, k, V, bias)
        out: list[Slate] = []
        for s in range(0, len(allowed), self.max_batch):
            e = s + self.max_batch
            out.extend(self._generate(prompt_embeds[s:e], allowed[s:e], k, None if bias is None else bias[s:e]))
        return out

    @torch.inference_mode()
    def _generate(self, prompt_embeds: Tensor, allowed: Sequence[Sequence[int]], k: int,
                  bias: Sequence[Sequence[float]] | None) -> list[Slate]:
        B, L, _ = prompt_embeds.shape
        V = self.model.cfg.vocab_size
        steps = [min(k, len(set(int(t) for t in row))) for row in allowed]
        n = max(steps, default=0)
        if n == 0:
            return [[] for _ in range(B)]
        ok = torch.zeros((B, V), dtype=torch.bool)
        rows = [b for b, row in enumerate(allowed) for _ in row]
        cols = [int(t) for row in allowed for t in row]
        if cols:
            ok[torch.tensor(rows), torch.tensor(cols)] = True
        ok = ok.to(self.device)
        add = None
        if bias is not None and cols:
            add = torch.zeros((B, V), dtype=torch.float32)
            add[torch.tensor(rows), torch.tensor(cols)] = torch.tensor([float(x) for row in bias for x in row])
            add = add.to(self.device)
        x = prompt_embeds.to(self.device, self.dtype)
        cache = self.decoder.new_cache(B, L + n, dtype=self.dtype, device=self.device)
        logits = self.decoder(x, cache, 0, last_only=True)
        toks: list[Tensor] = []
        lps: list[Tensor] = []
        neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=self.device)
        for t in range(n):
            logp = torch.log_softmax(logits.float(), dim=-1)
            tok = torch.where(ok, logits if add is None else logits.float() + add, neg_inf).argmax(dim=-1)
            toks.append(tok)
            lps.append(logp.gather(1, tok[:, None])[:, 0])
            ok[torch.arange(B, device=self.device), tok] = False  # never the same item twice
            if t + 1 < n:
                logits = self.decoder(self.decoder.embed(tok)[:, None, :], cache, L + t, last_only=True)
        tok_l = torch.stack(toks, 1).cpu().tolist()
        lp_l = torch.stack(lps, 1).cpu().tolist()
        return [[(tok_l[b][i], lp_l[b][i]) for i in range(steps[b])] for b in range(B)]

    def close(self) -> None:
        pass
