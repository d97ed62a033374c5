"""`streamrec export`: ONNX export of a model directory's HSTU encoder (issue 5, docs/backends.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from worker.commands.common import fail

_HELP = """Export the HSTU encoder of a model directory to ONNX (and optionally INT8).

DIR is verified first (manifest sha256 of every file). The export is written to
DIR/onnx/encoder.<dtype>.onnx with DIR/onnx/encoder.<dtype>.json recording the
sha256 of the weights it came from; the onnxruntime and tensorrt encoder backends
refuse an export whose weights hash is not the directory's (stale) and re-export.
An up-to-date export is kept unless --force.

Graph: torch.onnx.export(dynamo=True), opset 18, dynamic batch and sequence axes;
inputs item_idx/action_idx/ts_ms (B, L) int64 right-padded + lengths (B,) int64,
output user_emb (B, dim) float32 (docs/backends.md says why the graph is padded).

--dtype fp16|bf16 exports a half-precision graph (for TensorRT, whose networks are
strongly typed, and the CUDA EP). --quantize int8 also writes the dynamically
quantised fp32 model DIR/onnx/encoder.fp32.int8.onnx (ONNX Runtime, CPU).

After writing, the export is checked against eager PyTorch on a random jagged
batch (lengths 1 .. max_seq_len) with ONNX Runtime's CPU EP and the max abs
difference is printed (fp32 must be <= 1e-4, or the command fails).

Examples:

  streamrec export models/default

  streamrec export models/default --dtype fp16

  streamrec export models/default --quantize int8 --json
"""

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1, "int8": None}


def register(app: typer.Typer) -> None:
    @app.command("export", help=_HELP)
    def export_cmd(
        model_dir: Path = typer.Argument(..., metavar="DIR", help="model directory written by `streamrec train`"),
        dtype: str = typer.Option("fp32", "--dtype", help="fp32 | fp16 | bf16"),
        quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: also write the dynamic INT8 model (from fp32)"),
        force: bool = typer.Option(False, "--force", help="re-export even if an up-to-date export exists"),
        check: bool = typer.Option(True, "--check/--no-check", help="compare with eager PyTorch after exporting"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    ) -> None:
        import logging

        import orjson

        from pipeline.encoders.onnx_export import DTYPES, ExportError, ensure_export, export_onnx, export_path, weights_sha256
        from pipeline.model_dir import ModelDirError, load_model_dir

        if dtype not in DTYPES:
            fail(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if quantize not in (None, "int8"):
            fail(f"--quantize must be int8, got {quantize!r}")
        if quantize and dtype != "fp32":
            fail("--quantize int8 starts from the fp32 export; use --dtype fp32")
        logging.getLogger("streamrec").setLevel(logging.WARNING)
        try:
            bundle = load_model_dir(model_dir)
        except ModelDirError as e:
            fail(str(e))
        out: dict = {"model_dir": str(model_dir), "version": bundle.version}
        try:
            if force:
                meta = {"weights_sha256": weights_sha256(bundle.path), "model_version": bundle.version,
                        "model_dir": str(bundle.path)}
                info = export_onnx(bundle.encoder, export_path(bundle.path, dtype), dtype, meta=meta)
            else:
                info = ensure_export(bundle, dtype, export_if_missing=True, root=bundle.path / "onnx")
            out["onnx"] = {"path": str(info.path), **{k: info.meta.get(k) for k in ("dtype", "opset", "weights_sha256", "onnx_sha256", "export_wall_s")}}
            infos = {dtype: info}
            if quantize:
                from pipeline.encoders.quantize import ensure_quantized, quantize_int8

                q = quantize_int8(info) if force else ensure_quantized(bundle, info)
                out["int8"] = {"path": str(q.path), "onnx_sha256": q.meta["onnx_sha256"], "method": q.meta["method"]}
                infos["int8"] = q
        except ExportError as e:
            fail(str(e))
        if check:
            out["check"] = {}
            for name, inf in infos.items():
                diff = _check(bundle, inf.path)
                tol = TOLERANCE[name]
                out["check"][name] = {"max_abs_diff": diff, "tolerance": tol}
                if tol is not None and not diff <= tol:
                    if as_json:
                        typer.echo(orjson.dumps(out).decode())
                    fail(f"{inf.path}: max abs diff {diff:.3g} vs eager PyTorch exceeds {tol:g}")
        if as_json:
            typer.echo(orjson.dumps(out).decode())
            return
        typer.echo(f"exported {bundle.version} -> {info.path} ({dtype}, opset {info.meta.get('opset')})")
        if "int8" in out:
            typer.echo(f"quantised -> {out['int8']['path']}")
        for name, c in out.get("check", {}).items():
            typer.echo(f"check {name}: max abs diff vs eager PyTorch {c['max_abs_diff']:.3g}"
                       + (f" (tolerance {c['tolerance']:g})" if c["tolerance"] is not None else " (quantised: see docs/backends.md)"))


def _check(bundle, onnx_path: Path) -> float:
    """Max abs difference ORT (CPU EP) vs eager torch on a random jagged batch incl. lengths 1 and max."""
    import onnxruntime as ort
    import torch

    from pipeline.encoders.onnx_export import INPUT_NAMES, jagged_to_padded
    from pipeline.encoders.testing import random_jagged

    batch = random_jagged(bundle.config, [1, bundle.config.max_seq_len, 2, 17, 5], seed=0)
    with torch.inference_mode():
        ref = bundle.encoder(*batch)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {n: t.numpy() for n, t in zip(INPUT_NAMES, jagged_to_padded(*batch))}
    got = torch.from_numpy(sess.run(None, feeds)[0]).float()
    return float((got - ref).abs().max())
