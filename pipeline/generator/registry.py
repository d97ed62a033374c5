"""Pick the generator backend: ``auto | vllm | torch | retrieval``.

``auto`` takes the first available of ``vllm -> torch -> retrieval`` and logs once which it
took and why the others were skipped. An explicitly named backend that is unavailable is an
error (the operator asked for it), with the reason.

A backend can be switched off by configuration — ``disabled=("vllm",)`` or the environment
variable ``STREAMREC_GENERATOR_DISABLE=vllm[,torch]`` — which is how tests (and operators)
simulate "vLLM unavailable" without uninstalling anything.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pipeline.model_dir import ModelBundle
from pipeline.recommender import Recommender

__all__ = ["BACKENDS", "GeneratorChoice", "available", "choose", "make_recommender", "disabled_backends"]

log = logging.getLogger("streamrec.generator")

BACKENDS = ("vllm", "torch", "retrieval")
DISABLE_ENV = "STREAMREC_GENERATOR_DISABLE"


@dataclass
class GeneratorChoice:
    name: str
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it was not taken

    def describe(self) -> str:
        why = "; ".join(f"{b}: {r}" for b, r in self.skipped.items())
        return f"generator backend {self.name}" + (f" (skipped {why})" if why else "")


def disabled_backends(disabled: Iterable[str] | None = None) -> set[str]:
    out = {d.strip() for d in (disabled or ()) if d.strip()}
    out |= {d.strip() for d in os.environ.get(DISABLE_ENV, "").split(",") if d.strip()}
    unknown = out - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown generator backend(s) to disable: {sorted(unknown)}; choose from {', '.join(BACKENDS)}")
    return out


def available(name: str, model_dir: Path | str, disabled: Iterable[str] | None = None) -> tuple[bool, str]:
    """Whether backend ``name`` can serve the model in ``model_dir`` (cheap: starts nothing)."""
    from pipeline.generator.model import has_generator

    if name not in BACKENDS:
        raise ValueError(f"unknown generator backend {name!r}; choose auto or one of {', '.join(BACKENDS)}")
    if name in disabled_backends(disabled):
        return False, f"disabled by configuration ({DISABLE_ENV} / disabled=)"
    if name == "retrieval":
        return True, "always available"
    if not has_generator(model_dir):
        return False, f"{model_dir} has no generator model (train one: streamrec train)"
    if name == "torch":
        return True, "plain PyTorch"
    from pipeline.generator.vllm_backend import vllm_installed

    return vllm_installed()


def choose(requested: str, model_dir: Path | str, disabled: Iterable[str] | None = None) -> GeneratorChoice:
    if requested == "auto":
        skipped: dict[str, str] = {}
        for name in BACKENDS:
            ok, why = available(name, model_dir, disabled)
            if ok:
                return GeneratorChoice(name, skipped)
            skipped[name] = why
        raise AssertionError("retrieval is always available")
    ok, why = available(requested, model_dir, disabled)
    if not ok:
        raise ValueError(f"generator backend {requested!r} is not available: {why}")
    return GeneratorChoice(requested)


def make_recommender(bundle: ModelBundle, k: int = 10, exclude_recent: int = 50, device: str = "cpu",
                     generator_backend: str = "auto", disabled: Iterable[str] | None = None,
                     num_candidates: int | None = None, vllm_options: dict | None = None,
                     torch_options: dict | None = None, **recommender_kw) -> Recommender:
    """A :class:`Recommender` whose slates come from the chosen generator backend.

    With ``auto``, a vLLM engine that fails to start is skipped too (reason logged), and
    the torch backend serves the same model. ``torch_options`` go to
    :class:`pipeline.generator.torch_backend.TorchGenerator` (e.g. ``dtype=torch.bfloat16``). ``recommender_kw`` (``encoder_backend``, ``encoder_options``)
    go to :class:`pipeline.recommender.Recommender`."""
    from pipeline.generator.recommender import DEFAULT_CANDIDATES, GenerativeRecommender

    choice = choose(generator_backend, bundle.path, disabled)
    rec: Recommender | None = None
    while rec is None:
        if choice.name == "retrieval":
            rec = Recommender(bundle, k=k, exclude_recent=exclude_recent, device=device, **recommender_kw)
            break
        from pipeline.generator.model import load_generator

        gen = load_generator(bundle.path)
        if choice.name == "vllm":
            from pipeline.generator.vllm_backend import VLLMGenerator, VLLMUnavailable

            try:
                backend = VLLMGenerator(bundle.path, vocab_size=gen.cfg.vocab_size,
                                        max_model_len=gen.cfg.max_position_embeddings, device=device,
                                        **(vllm_options or {}))
            except VLLMUnavailable as e:
                if generator_backend != "auto":
                    raise ValueError(f"generator backend 'vllm' is not available: {e}") from None
                choice.skipped["vllm"] = f"engine failed to start: {e}"
                choice.name = "torch" if available("torch", bundle.path, disabled)[0] else "retrieval"
                continue
        else:
            from pipeline.generator.torch_backend import TorchGenerator

            backend = TorchGenerator(gen, device=device, **(torch_options or {}))
        rec = GenerativeRecommender(bundle, gen, backend, k=k, exclude_recent=exclude_recent, device=device,
                                    num_candidates=num_candidates or DEFAULT_CANDIDATES, **recommender_kw)
    log.info(choice.describe(), extra={"generator": choice.name, "requested": generator_backend,
                                       "skipped": dict(choice.skipped)})
    rec.generator_choice = choice  # type: ignore[attr-defined]
    return rec
