"""Dynamic INT8 quantisation of the fp32 ONNX export (CPU path of ONNX Runtime).

``onnxruntime.quantization.quantize_dynamic`` with int8 weights (per-tensor, symmetric)
on the MatMul/Gemm nodes, i.e. the four projections of a 2-layer model
(uvqk and out of each layer): weights are stored as int8, activations are quantised
at run time (DynamicQuantizeLinear -> MatMulInteger). The attention products
(activation x activation), the embedding tables, LayerNorms and the relative bias stay
fp32. Measured accuracy and speed: docs/backends.md and bench/results/.

Output: DIR/onnx/encoder.fp32.int8.onnx + .json (the source export's sha256 and the
weights' sha256; a stale one is refused and rebuilt like the fp32 export).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from pipeline.encoders.onnx_export import FORMAT, ExportError, ExportInfo, _file_sha256, _write_json, find_export

log = logging.getLogger("streamrec.encoders.export")

METHOD = "onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, op_types=[MatMul, Gemm], per_channel=False)"


def quantize_int8(src: ExportInfo, out_path: Path | None = None) -> ExportInfo:
    """Write the dynamic INT8 model of the fp32 export ``src``; returns its ExportInfo."""
    if src.meta.get("dtype") != "fp32" or src.meta.get("quant"):
        raise ExportError("INT8 quantisation starts from the plain fp32 export")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path) if out_path else src.path.with_name("encoder.fp32.int8.onnx")
    with tempfile.TemporaryDirectory(dir=out_path.parent) as td:
        pre = Path(td) / "pre.onnx"
        tmp = Path(td) / "q.onnx"
        try:
            # ORT's symbolic shape inference cannot follow the dynamic Expand of the export; plain
            # ONNX shape inference + graph optimisation is enough for dynamic quantisation
            quant_pre_process(str(src.path), str(pre), skip_symbolic_shape=True)
            quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                             per_channel=False)
        except Exception as e:
            raise ExportError(f"INT8 quantisation failed: {type(e).__name__}: {e}") from e
        os.replace(tmp, out_path)
    meta = {
        **{k: v for k, v in src.meta.items() if k in ("weights_sha256", "model_version", "model_dir", "opset", "inputs",
                                                     "output", "dynamic_axes", "max_seq_len", "dim", "torch")},
        "format": FORMAT,
        "dtype": "fp32",
        "quant": "int8",
        "method": METHOD,
        "source_onnx_sha256": src.meta["onnx_sha256"],
        "onnx_sha256": _file_sha256(out_path),
    }
    _write_json(out_path.with_suffix(".json"), meta)
    log.info("wrote the INT8 model %s", out_path)
    return ExportInfo(out_path, meta)


def ensure_quantized(bundle, src: ExportInfo, export_if_missing: bool = True) -> ExportInfo:
    """The INT8 model next to ``src`` if up to date (same weights, same source export), else rebuilt."""
    root = src.path.parent
    try:
        info = find_export(bundle.path, "fp32", "int8", src.meta["weights_sha256"], root=root)
        if info.meta.get("source_onnx_sha256") == src.meta["onnx_sha256"]:
            return info
        reason = f"{info.path} was quantised from another fp32 export"
    except ExportError as e:
        reason = str(e)
    if not export_if_missing:
        raise ExportError(reason)
    log.warning("%s; quantising now", reason)
    return quantize_int8(src)


__all__ = ["quantize_int8", "ensure_quantized", "METHOD"]
