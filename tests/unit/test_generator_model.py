"""The generator model: HF Llama layout and math, KV cache, model-directory integration."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.generator.model import (GeneratorConfig, GeneratorModel, HF_DIR, PROMPT_FILE, generator_files,
                                      has_generator, load_generator)
from pipeline.model_dir import ModelDirError, load_model_dir
from tests.unit._generator_fixtures import random_generator_dir


def test_saved_as_a_standard_llama_listed_in_the_manifest():
    d = random_generator_dir()
    cfg = json.loads((d / HF_DIR / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["vocab_size"] == 500 + 4 and cfg["torch_dtype"] == "float32"
    assert sorted(p.name for p in (d / HF_DIR).glob("*.safetensors")) == ["model.safetensors"]  # vLLM globs these
    manifest = json.loads((d / "manifest.json").read_text())
    assert set(generator_files()) <= set(manifest["files"]) and manifest["generator"]["version"].startswith("gen-")
    load_model_dir(d)  # verifies every listed file, generator included
    assert has_generator(d)


def test_tampered_generator_is_refused(tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(random_generator_dir(), d)
    with open(d / PROMPT_FILE, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelDirError, match="generator_prompt.safetensors"):
        load_model_dir(d)


def test_matches_transformers_llama():
    transformers = pytest.importorskip("transformers")
    d = random_generator_dir()
    ours = load_generator(d).decoder
    hf = transformers.LlamaForCausalLM.from_pretrained(str(d / HF_DIR), dtype=torch.float32).eval()
    x = torch.randn(3, 15, ours.cfg.hidden_size) * 0.5
    with torch.no_grad():
        a = ours(x)
        b = hf(inputs_embeds=x).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_kv_cache_steps_equal_full_forward():
    torch.manual_seed(1)
    m = GeneratorModel(GeneratorConfig(num_items=50, hstu_dim=8, hidden_size=32, intermediate_size=64,
                                       num_attention_heads=2, num_key_value_heads=1, recent_len=4)).eval()
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        full = m.decoder(x)
        cache = m.decoder.new_cache(2, 12)
        parts = [m.decoder(x[:, :7], cache, 0), m.decoder(x[:, 7:8], cache, 7), m.decoder(x[:, 8:12], cache, 8)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


def test_prompt_layout():
    m = GeneratorModel(GeneratorConfig(num_items=10, hstu_dim=4, hidden_size=8, intermediate_size=16,
                                       num_attention_heads=2, num_key_value_heads=2, soft_prompt_len=3, recent_len=4))
    rec = m.recent_tokens([[1, 2], [1, 2, 3, 4, 5, 6], [], [7, 10, -1]])
    c = m.cfg
    assert rec.tolist() == [[c.pad_id, c.pad_id, 1, 2], [3, 4, 5, 6], [c.pad_id] * 4, [c.pad_id, 7, c.unk_id, c.unk_id]]
    pe = m.prompt_embeds(torch.randn(4, 4), rec)
    assert pe.shape == (4, c.prompt_len, 8) == (4, 3 + 4 + 1, 8)
    torch.testing.assert_close(pe[:, -1], m.decoder.embed(torch.tensor([c.bos_id] * 4)))


def test_config_validation():
    with pytest.raises(ValueError):
        GeneratorConfig(num_items=10, hstu_dim=4, hidden_size=10, num_attention_heads=3)
    with pytest.raises(ValueError):
        GeneratorConfig.from_dict({"num_items": 10, "hstu_dim": 4, "bogus": 1})
