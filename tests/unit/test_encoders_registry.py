"""The backend registry: availability reasons, `auto`, explicit choices, run-time fallback, Recommender."""
from __future__ import annotations

import logging

import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from pipeline.encoders import BackendUnavailable, available, available_all, build_encoder
from pipeline.encoders.onnx_export import ensure_export
from pipeline.encoders.registry import CHOICES, ORDER
from pipeline.encoders.tensorrt_backend import NOT_INSTALLED, seq_buckets
from pipeline.encoders.testing import make_model_dir, random_jagged, shared_exported_model_dir
from pipeline.model_dir import load_model_dir
from pipeline.recommender import HistoryEvent, Recommender, UserRequest

torch.set_num_threads(2)

try:
    import tensorrt  # noqa: F401

    HAVE_TRT = True
except Exception:
    HAVE_TRT = False


@pytest.fixture(scope="module")
def model_dir():
    return shared_exported_model_dir()


@pytest.fixture(scope="module")
def exported_bundle(model_dir):
    bundle = load_model_dir(model_dir)
    ensure_export(bundle, "fp32", export_if_missing=False)
    return bundle


def test_order_and_choices():
    assert ORDER == ("tensorrt", "onnxruntime", "torch")
    assert CHOICES == ("auto", "tensorrt", "onnxruntime", "torch")


def test_available_reports_reasons():
    res = available_all("cpu")
    assert set(res) == set(ORDER)
    for name, (ok, why) in res.items():
        assert isinstance(ok, bool) and isinstance(why, str) and why
    assert res["torch"][0] and res["onnxruntime"][0]
    if not HAVE_TRT:
        assert res["tensorrt"] == (False, NOT_INSTALLED)
    else:
        assert not res["tensorrt"][0] and "CUDA" in res["tensorrt"][1]  # TensorRT never runs on a CPU device
    with pytest.raises(ValueError):
        build_encoder(None, "openvino")


def test_auto_without_export_takes_torch_and_says_why(tmp_path, caplog):
    d = make_model_dir(tmp_path / "fresh", seed=4, num_layers=1, max_seq_len=20)
    bundle = load_model_dir(d)
    with caplog.at_level(logging.INFO, logger="streamrec.encoders"):
        enc = build_encoder(bundle, "auto", "cpu")
        build_encoder(bundle, "auto", "cpu")  # logged once only
    assert enc.name == "torch"
    assert "streamrec export" in enc.skipped["onnxruntime"]
    assert enc.skipped["tensorrt"] == available("tensorrt", "cpu")[1]
    msgs = [r.getMessage() for r in caplog.records if "encoder backend: torch" in r.getMessage()]
    assert len(msgs) == 1 and "skipped tensorrt" in msgs[0] and "skipped onnxruntime" in msgs[0]
    assert not (d / "onnx").exists()  # auto never writes an export nobody asked for


def test_auto_with_export_takes_onnxruntime(exported_bundle):
    enc = build_encoder(exported_bundle, "auto", "cpu")
    assert enc.name == "onnxruntime"
    assert "CPUExecutionProvider" in enc.describe()


@pytest.mark.skipif(HAVE_TRT, reason="checks the refusal where TensorRT is absent")
def test_explicit_unavailable_backend_is_refused(exported_bundle):
    with pytest.raises(BackendUnavailable, match="TensorRT not installed"):
        build_encoder(exported_bundle, "tensorrt", "cpu")


def _broken_session() -> ort.InferenceSession:
    """A real ORT session whose inputs do not match the encoder graph: run() raises inside ORT."""
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_runtime_failure_falls_back_without_losing_the_batch(exported_bundle, caplog):
    enc = build_encoder(exported_bundle, "onnxruntime", "cpu")
    assert enc.name == "onnxruntime"
    batch = random_jagged(exported_bundle.config, [3, 1, 64], seed=7)
    good = enc(*batch)
    enc.backend.session = _broken_session()
    with caplog.at_level(logging.WARNING, logger="streamrec.encoders"):
        out = enc(*batch)  # same batch, answered by the next backend
    assert (out - good).abs().max().item() <= 1e-4
    assert enc.name == "torch" and enc.fallbacks == 1
    assert "failed at run time" in enc.skipped["onnxruntime"]
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "onnxruntime failed" in text and "running the same batch on torch" in text


def test_bad_input_is_raised_not_blamed_on_the_backend(exported_bundle):
    enc = build_encoder(exported_bundle, "onnxruntime", "cpu")
    it, ac, ts, off = random_jagged(exported_bundle.config, [4], seed=1)
    with pytest.raises(Exception):
        enc(it, ac, ts, torch.tensor([0, 2]))  # offsets do not cover the values: every backend refuses
    assert enc.name == "onnxruntime" and enc.fallbacks == 0


def _requests(bundle, n=4):
    items = bundle.items
    reqs = []
    for u in range(n):
        evs = [HistoryEvent(items[(u * 7 + i) % len(items)], "click" if i % 2 else "view", 1_732_600_000_000 + i * 37_000)
               for i in range(1 + u * 9)]
        reqs.append(UserRequest(f"u{u}", evs))
    return reqs


def test_recommender_uses_the_backend_and_reports_it(exported_bundle):
    reqs = _requests(exported_bundle)
    base = Recommender(exported_bundle, k=5)
    assert base.encoder_name == "torch"  # the constructor's default stays torch
    rec = Recommender(exported_bundle, k=5, encoder_backend="auto")
    assert rec.encoder_name == "onnxruntime"
    a, b = base.recommend(reqs), rec.recommend(reqs)
    for x, y in zip(a, b):
        assert [i for i, _ in x.items] == [i for i, _ in y.items]
        assert abs(x.embedding - y.embedding).max() <= 1e-4
    # a run-time failure: same answers, and the name in the output records becomes torch
    rec._user_encoder.backend.session = _broken_session()
    c = rec.recommend(reqs)
    assert rec.encoder_name == "torch"
    assert [[i for i, _ in r.items] for r in c] == [[i for i, _ in r.items] for r in a]


def test_worker_setting_accepts_every_backend():
    from worker.config import ConfigError, load_settings

    for name in CHOICES:
        assert load_settings(encoder_backend=name).encoder_backend == name
    with pytest.raises(ConfigError):
        load_settings(encoder_backend="openvino")


def test_tensorrt_buckets():
    assert seq_buckets(200) == [(1, 32), (33, 64), (65, 128), (129, 200)]
    assert seq_buckets(50) == [(1, 32), (33, 50)]
    assert seq_buckets(16) == [(1, 16)]


def test_torch_backend_compile_flag_is_wired(model_dir):
    """torch.compile is opt-in; without it the backend is the eager encoder itself."""
    bundle = load_model_dir(model_dir)
    enc = build_encoder(bundle, "torch", "cpu")
    assert "eager" in enc.describe() and enc.backend.encoder is bundle.encoder
    # compiling is lazy (first call); it is correct but recompiles per length pattern on the jagged
    # path (docs/backends.md), so it is measured by hand, not in CI
    comp = build_encoder(bundle, "torch", "cpu", {"torch": {"compile": True}})
    assert "torch.compile" in comp.describe() and comp.name == "torch"
