"""ONNX export of the HSTU encoder: graph properties, files, stale/corrupt exports, the CLI."""
from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch
import typer
from typer.testing import CliRunner

from pipeline.encoders.onnx_export import (
    INPUT_NAMES,
    OPSET,
    OUTPUT_NAME,
    ExportError,
    PaddedHSTU,
    ensure_export,
    export_onnx,
    export_path,
    find_export,
    jagged_to_padded,
    weights_sha256,
)
from pipeline.encoders.testing import random_jagged, random_lengths, shared_exported_model_dir
from pipeline.model_dir import load_model_dir, save_model_dir
from worker.commands import export as export_cmd

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A copy of the shared exported model (this module writes into it)."""
    d = tmp_path_factory.mktemp("enc") / "model"
    shutil.copytree(shared_exported_model_dir(), d)
    return d


@pytest.fixture(scope="module")
def exported(model_dir):
    bundle = load_model_dir(model_dir)
    return bundle, ensure_export(bundle, "fp32", export_if_missing=False)


def test_jagged_to_padded_roundtrip():
    from pipeline.hstu import HSTUConfig

    cfg = HSTUConfig(num_items=10, max_seq_len=9, attn_n=9)
    lens = [1, 9, 3]
    it, ac, ts, off = random_jagged(cfg, lens, seed=3)
    pit, pac, pts, plen = jagged_to_padded(it, ac, ts, off)
    assert pit.shape == (3, 9) and plen.tolist() == lens
    for b, n in enumerate(lens):
        s = int(off[b])
        assert pit[b, :n].tolist() == it[s:s + n].tolist()
        assert pac[b, :n].tolist() == ac[s:s + n].tolist()
        assert pts[b, :n].tolist() == torch.div(ts[s:s + n], 1000, rounding_mode="floor").tolist()
    assert jagged_to_padded(it, ac, ts, off, pad_to=12)[0].shape == (3, 12)
    with pytest.raises(ValueError):
        jagged_to_padded(it, ac, ts, off, pad_to=4)
    with pytest.raises(ValueError):
        jagged_to_padded(it, ac, ts, torch.tensor([0, 0, 13]))


def test_padded_graph_module_matches_jagged_torch(model_dir):
    """The export twin (eager) gives the same numbers as HSTUEncoder.forward, incl. lengths 1 and max."""
    bundle = load_model_dir(model_dir)
    cfg = bundle.config
    for seed in range(3):
        batch = random_jagged(cfg, random_lengths(9, cfg.max_seq_len, seed=seed), seed=seed)
        with torch.inference_mode():
            ref = bundle.encoder(*batch)
            got = PaddedHSTU(bundle.encoder)(*jagged_to_padded(*batch))
            # padding beyond the batch max changes nothing either
            got2 = PaddedHSTU(bundle.encoder)(*jagged_to_padded(*batch, pad_to=cfg.max_seq_len))
        assert (got - ref).abs().max().item() <= 1e-5
        assert (got2 - ref).abs().max().item() <= 1e-5


def test_export_graph_is_dynamic_and_recorded(model_dir, exported):
    bundle, info = exported
    assert info.path == model_dir / "onnx" / "encoder.fp32.onnx"
    m = onnx.load(str(info.path))
    onnx.checker.check_model(m)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in m.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in m.graph.output] == [OUTPUT_NAME]
    for inp in m.graph.input[:3]:
        dims = inp.type.tensor_type.shape.dim
        assert len(dims) == 2 and all(d.dim_param and not d.dim_value for d in dims), inp  # symbolic B and L
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    meta = json.loads((model_dir / "onnx" / "encoder.fp32.json").read_text())
    assert meta["weights_sha256"] == weights_sha256(model_dir) == info.meta["weights_sha256"]
    assert meta["opset"] == OPSET >= 17 and meta["dtype"] == "fp32" and meta["model_version"] == bundle.version
    # the model directory itself still verifies (exports are not in the manifest)
    load_model_dir(model_dir)


def test_stale_export_is_refused_and_reexported(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(shared_exported_model_dir(), d)
    bundle = load_model_dir(d)
    first = ensure_export(bundle, "fp32", export_if_missing=False)
    # new weights in the same directory -> the export on disk is stale
    enc = bundle.encoder
    with torch.no_grad():
        enc.final_norm.bias.add_(0.1)
    save_model_dir(d, enc, bundle.items, {"note": "retrained"})
    bundle2 = load_model_dir(d)
    with pytest.raises(ExportError, match="stale"):
        find_export(d, "fp32")
    with pytest.raises(ExportError, match="stale"):
        ensure_export(bundle2, "fp32", export_if_missing=False)
    second = ensure_export(bundle2, "fp32")
    assert second.meta["weights_sha256"] == weights_sha256(d) != first.meta["weights_sha256"]
    # a modified .onnx file is refused too
    with open(second.path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportError, match="corrupt"):
        find_export(d, "fp32")


def test_missing_export_message_says_how(tmp_path, model_dir):
    with pytest.raises(ExportError, match="streamrec export"):
        find_export(model_dir, "bf16")
    with pytest.raises(ValueError):
        export_path(model_dir, "fp8")


def test_export_cli_json_with_int8_and_check(model_dir):
    app = typer.Typer(pretty_exceptions_enable=False)
    export_cmd.register(app)
    app.command("noop")(lambda: None)  # a second command, so `export` stays a sub-command
    res = CliRunner().invoke(app, ["export", str(model_dir), "--quantize", "int8", "--json"])  # up to date: kept
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout.strip().splitlines()[-1])
    assert obj["onnx"]["path"].endswith("encoder.fp32.onnx")
    assert obj["int8"]["path"].endswith("encoder.fp32.int8.onnx")
    assert obj["check"]["fp32"]["max_abs_diff"] <= 1e-4
    assert obj["check"]["int8"]["max_abs_diff"] < 0.2
    qm = onnx.load(obj["int8"]["path"])
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in qm.graph.node)
    res = CliRunner().invoke(app, ["export", str(model_dir), "--dtype", "fp8"])
    assert res.exit_code == 2 and "--dtype" in res.output
    res = CliRunner().invoke(app, ["export", str(model_dir / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_fp16_export_runs_on_ort_cpu(tmp_path, model_dir):
    """Half precision comes from the graph itself (TensorRT 11 is strongly typed)."""
    import onnxruntime as ort

    bundle = load_model_dir(model_dir)
    info = export_onnx(bundle.encoder, tmp_path / "encoder.fp16.onnx", "fp16", meta={"weights_sha256": "-"})
    m = onnx.load(str(info.path))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch = random_jagged(bundle.config, [1, bundle.config.max_seq_len, 7], seed=5)
    sess = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {n: t.numpy() for n, t in zip(INPUT_NAMES, jagged_to_padded(*batch))})[0])
    with torch.inference_mode():
        ref = bundle.encoder(*batch)
    assert (got - ref).abs().max().item() <= 2e-2
