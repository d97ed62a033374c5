"""Every available encoder backend gives eager PyTorch's user embeddings (fp32: max abs diff <= 1e-4)
on random jagged batches incl. length-1 and max-length sequences, and the same eval metrics (+-0.002)."""
from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from pipeline.encoders import available, build_encoder
from pipeline.encoders.testing import random_jagged, random_lengths, shared_exported_model_dir
from pipeline.model_dir import load_model_dir
from worker.commands import evaluate as eval_cmd
from worker.commands import train as train_cmd

torch.set_num_threads(2)

FP32_TOL = 1e-4


def _cpu_backends() -> list[str]:
    return [n for n in ("tensorrt", "onnxruntime", "torch") if available(n, "cpu")[0]]


@pytest.fixture(scope="module")
def bundle():
    return load_model_dir(shared_exported_model_dir())


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_backend_matches_eager_torch_fp32(bundle, backend):
    assert available(backend, "cpu")[0], available(backend, "cpu")  # both must work on any CPU machine
    enc = build_encoder(bundle, backend, "cpu")
    assert enc.name == backend
    cfg = bundle.config
    worst = 0.0
    cases = [[1], [cfg.max_seq_len], [1, cfg.max_seq_len]] + [random_lengths(B, cfg.max_seq_len, seed=B) for B in (2, 7, 33)]
    for seed, lens in enumerate(cases):
        batch = random_jagged(cfg, lens, seed=seed)
        with torch.inference_mode():
            ref = bundle.encoder(*batch)
        got = enc(*batch)
        assert got.shape == ref.shape and got.dtype == torch.float32
        worst = max(worst, (got - ref).abs().max().item())
        # embeddings are L2-normalised
        assert torch.allclose(got.norm(dim=-1), torch.ones(len(lens)), atol=1e-5)
    assert worst <= FP32_TOL, f"{backend}: max abs diff {worst:.3g} > {FP32_TOL}"


def test_user_embedding_does_not_depend_on_batch_neighbours(bundle):
    """Padding to the batch max must not leak: a user alone == the same user next to a max-length one."""
    enc = build_encoder(bundle, "onnxruntime", "cpu")
    cfg = bundle.config
    it, ac, ts, off = random_jagged(cfg, [5, cfg.max_seq_len], seed=11)
    alone = enc(it[:5], ac[:5], ts[:5], off[:2])
    together = enc(it, ac, ts, off)
    assert (alone[0] - together[0]).abs().max().item() <= 1e-6


def test_int8_model_stays_close(bundle):
    enc = build_encoder(bundle, "onnxruntime", "cpu", {"onnxruntime": {"quant": "int8"}})
    assert enc.backend.quant == "int8" and "int8" in enc.describe()
    batch = random_jagged(bundle.config, random_lengths(16, bundle.config.max_seq_len, seed=4), seed=4)
    with torch.inference_mode():
        ref = bundle.encoder(*batch)
    cos = torch.nn.functional.cosine_similarity(enc(*batch), ref, dim=-1)
    assert cos.min().item() > 0.98, cos


# ---------------------------------------------------------------- eval metrics through the CLI
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    app = typer.Typer(pretty_exceptions_enable=False)
    train_cmd.register(app)
    eval_cmd.register(app)
    out = tmp_path_factory.mktemp("quick") / "model"
    res = CliRunner().invoke(app, ["train", "--quick", "--out", str(out), "--no-progress", "--seed", "3"])
    assert res.exit_code == 0, res.output
    return app, out


def test_eval_metrics_equal_across_backends(trained):
    app, out = trained
    results = {}
    for backend in _cpu_backends():
        res = CliRunner().invoke(app, ["eval", str(out), "--json", "--encoder", backend])
        assert res.exit_code == 0, res.output
        obj = json.loads(res.stdout.strip().splitlines()[-1])
        assert obj["encoder"] == backend
        results[backend] = obj
    assert set(results) >= {"onnxruntime", "torch"}
    for backend, obj in results.items():
        for k in ("hr@10", "ndcg@10", "hr@50", "ndcg@50"):
            assert obj[k] == pytest.approx(results["torch"][k], abs=0.002), (backend, k)
    # an explicit backend that cannot run here is refused with its reason
    if not available("tensorrt", "cpu")[0]:
        res = CliRunner().invoke(app, ["eval", str(out), "--json", "--encoder", "tensorrt"])
        assert res.exit_code == 2 and "TensorRT" in res.output and "Traceback" not in res.output
