"""The slate generator (DESIGN §4): a small Llama-architecture decoder over the item
vocabulary, prompted with soft-prompt vectors projected from the HSTU user embedding
plus the user's recent items, decoding the K-item slate greedily inside the retrieval
candidates. Backends: ``vllm`` (own process) -> ``torch`` -> ``retrieval``; see
:mod:`pipeline.generator.registry` and docs/generator.md.

Nothing here imports vLLM at import time; ``pipeline.generator.vllm_logits`` (loaded by
vLLM inside its engine process) is the only module that needs it.
"""
from pipeline.generator.model import GeneratorConfig, GeneratorModel, has_generator, load_generator, save_generator
from pipeline.generator.registry import BACKENDS, available, choose, make_recommender

__all__ = [
    "GeneratorConfig",
    "GeneratorModel",
    "has_generator",
    "load_generator",
    "save_generator",
    "BACKENDS",
    "available",
    "choose",
    "make_recommender",
    "train_generator",
]


def __getattr__(name):
    if name == "train_generator":
        from pipeline.generator.train import train_generator

        return train_generator
    raise AttributeError(name)
