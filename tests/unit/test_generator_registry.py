"""Backend choice: auto takes the first available of vllm -> torch -> retrieval and says why it skipped
the others; "vLLM unavailable" is simulated by configuration (STREAMREC_GENERATOR_DISABLE / disabled=)."""
from __future__ import annotations

import logging

import pytest

from pipeline.generator.registry import DISABLE_ENV, available, choose, make_recommender
from pipeline.model_dir import load_model_dir
from tests.unit._generator_fixtures import random_generator_dir, requests_for


def test_no_generator_model_means_retrieval(tiny_model_dir, monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    c = choose("auto", tiny_model_dir)
    assert c.name == "retrieval"
    assert "no generator model" in c.skipped["vllm"] and "no generator model" in c.skipped["torch"]
    with pytest.raises(ValueError, match="not available"):
        choose("torch", tiny_model_dir)


def test_vllm_disabled_by_configuration_falls_back_to_torch(monkeypatch, caplog):
    monkeypatch.setenv(DISABLE_ENV, "vllm")
    d = random_generator_dir()
    assert available("vllm", d) == (False, f"disabled by configuration ({DISABLE_ENV} / disabled=)")
    with caplog.at_level(logging.INFO, logger="streamrec.generator"):
        rec = make_recommender(load_model_dir(d), k=5, generator_backend="auto")
    assert rec.generator_name == "torch"
    msgs = [r.getMessage() for r in caplog.records if r.name == "streamrec.generator"]
    assert len(msgs) == 1 and "generator backend torch" in msgs[0] and "vllm: disabled by configuration" in msgs[0]
    out = rec.recommend(requests_for(d, 3))
    assert all(len(r.items) == 5 for r in out)
    with pytest.raises(ValueError, match="'vllm' is not available"):
        make_recommender(load_model_dir(d), generator_backend="vllm")


def test_disable_both_model_backends_by_argument(monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    d = random_generator_dir()
    rec = make_recommender(load_model_dir(d), k=4, generator_backend="auto", disabled=("vllm", "torch"))
    assert rec.generator_name == "retrieval"
    assert len(rec.recommend(requests_for(d, 1))[0].items) == 4


def test_explicit_backends_and_errors(monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    d = random_generator_dir()
    assert make_recommender(load_model_dir(d), generator_backend="retrieval").generator_name == "retrieval"
    assert make_recommender(load_model_dir(d), generator_backend="torch").generator_name == "torch"
    with pytest.raises(ValueError, match="unknown generator backend"):
        choose("beam", d)
    monkeypatch.setenv(DISABLE_ENV, "tensorrt")
    with pytest.raises(ValueError, match="unknown generator backend"):
        choose("auto", d)


def test_vllm_engine_that_fails_to_start_is_skipped_by_auto(monkeypatch):
    """vLLM 'installed' but its engine cannot start (simulated: the child gets a Python that cannot run) ->
    auto serves from torch and records why."""
    import pipeline.generator.registry as reg
    import pipeline.generator.vllm_backend as vb

    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.setattr(vb, "vllm_installed", lambda: (True, "pretend"))
    monkeypatch.setattr(vb.sys, "executable", "/bin/false")
    rec = reg.make_recommender(load_model_dir(random_generator_dir()), generator_backend="auto",
                               vllm_options={"startup_timeout_s": 30})
    assert rec.generator_name == "torch"
    assert "engine failed to start" in rec.generator_choice.skipped["vllm"]


def test_worker_settings_accept_generator_backends():
    from worker.config import load_settings

    for b in ("auto", "vllm", "torch", "retrieval"):
        assert load_settings(None, generator_backend=b).generator_backend == b


def test_engine_reports_the_generator(monkeypatch):
    from worker.engine import ModelEngine

    monkeypatch.setenv(DISABLE_ENV, "vllm")
    eng = ModelEngine.from_dir(random_generator_dir(), top_k=10, exclude_recent=50, device="cpu", encoder_backend="torch")
    try:
        assert eng.generator_name == "torch"
    finally:
        eng.close()
