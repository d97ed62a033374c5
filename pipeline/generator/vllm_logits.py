"""vLLM v1 logits processor: never the same item twice in one slate.

``allowed_token_ids`` (a built-in sampling parameter) keeps each request inside its
retrieval candidates minus the items the user just saw; this processor adds the
per-step rule vLLM has no built-in for without a tokenizer (``bad_words`` needs one):
every token a request already generated gets ``-inf``. Active only for requests whose
``SamplingParams.extra_args`` has ``"no_repeat": True``. Loaded by vLLM from its
qualified name ``pipeline.generator.vllm_logits:NoRepeatLogitsProcessor`` inside the
engine process; importing this module needs vLLM.
"""
from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

__all__ = ["NoRepeatLogitsProcessor"]


class NoRepeatLogitsProcessor(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.outputs: dict[int, list[int]] = {}  # batch row -> live reference to the request's output ids

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.outputs.pop(index, None)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            extra = getattr(params, "extra_args", None) or {}
            if extra.get("no_repeat"):
                self.outputs[index] = output_ids
            else:
                self.outputs.pop(index, None)
        for a, b, direction in batch_update.moved:
            ra, rb = self.outputs.pop(a, None), self.outputs.pop(b, None)
            if ra is not None:
                self.outputs[b] = ra
            if direction == MoveDirectionality.SWAP and rb is not None:
                self.outputs[a] = rb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows: list[int] = []
        cols: list[int] = []
        for index, out in self.outputs.items():
            if out and index < logits.shape[0]:
                rows.extend([index] * len(out))
                cols.extend(out)
        if rows:
            logits[torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device)] = float("-inf")
        return logits
