"""Shared, cached model directories for the generator tests (built once per test process)."""
from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import torch

_ROOT = Path(tempfile.mkdtemp(prefix="streamrec-gen-tests-"))


@functools.lru_cache(maxsize=None)
def random_generator_dir() -> Path:
    """Random-weight HSTU + random-weight generator over the default synthetic world's items (fast)."""
    from pipeline.datasets.synthetic import SyntheticWorld
    from pipeline.generator.model import GeneratorConfig, GeneratorModel, save_generator
    from pipeline.hstu import HSTUConfig, HSTUEncoder
    from pipeline.model_dir import save_model_dir

    torch.manual_seed(0)
    items = SyntheticWorld(seed=0).item_ids()
    enc = HSTUEncoder(HSTUConfig(num_items=len(items), dim=32, num_layers=1, num_heads=2, qk_dim=16, v_dim=16,
                                 max_seq_len=50, attn_n=50))
    out = _ROOT / "random"
    save_model_dir(out, enc, items, {"note": "random weights"})
    gen = GeneratorModel(GeneratorConfig(num_items=len(items), hstu_dim=32, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         soft_prompt_len=2, recent_len=8))
    save_generator(out, gen)
    return out


@functools.lru_cache(maxsize=None)
def trained_generator_dir() -> Path:
    """A quickly trained HSTU + generator on a small synthetic world (~tens of seconds on 2 cores):
    peaked next-item distributions, so greedy decoding has few near-ties (parity tests)."""
    from pipeline.generator.train import GeneratorTrainConfig, train_generator
    from pipeline.train import TrainConfig, train

    out = _ROOT / "trained"
    if out.exists():
        shutil.rmtree(out)
    train(TrainConfig.quick(max_minutes=0.5, seed=3), out, progress=False)
    train_generator(out, cfg=GeneratorTrainConfig.quick(epochs=4, max_minutes=0.75, seed=3))
    return out


def requests_for(model_dir: Path, n: int, seed: int = 0):
    """n user requests with random histories over the model's items (lengths 1..30)."""
    import random

    from pipeline.model_dir import load_model_dir
    from pipeline.recommender import HistoryEvent, UserRequest
    from pipeline.vocab import ACTIONS

    items = load_model_dir(model_dir).items
    rng = random.Random(seed)
    reqs = []
    for u in range(n):
        ts = 1_732_600_000_000 + rng.randint(0, 10**6)
        evs = []
        for _ in range(rng.randint(1, 30)):
            ts += rng.randint(1, 10**5)
            evs.append(HistoryEvent(rng.choice(items), rng.choice(ACTIONS), ts))
        reqs.append(UserRequest(f"u{u}", evs))
    return reqs
