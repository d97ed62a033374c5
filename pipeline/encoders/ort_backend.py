"""The ``onnxruntime`` encoder backend: the ONNX export run by ONNX Runtime.

Execution providers: ``providers=[...]`` or env ``STREAMREC_ORT_PROVIDERS`` (comma separated,
e.g. ``TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider``); by default the
CUDA EP on a CUDA device and the CPU EP otherwise, keeping only the providers this
onnxruntime build has (``onnxruntime-gpu`` brings CUDA/TensorRT EPs). On a CUDA device the
inputs and the output are bound to torch CUDA tensors with IOBinding (no host round trip).

The session runs the padded graph of :mod:`pipeline.encoders.onnx_export`; the jagged batch
is right-padded to its max length first (:func:`jagged_to_padded`).
``dtype`` picks the export (fp32 | fp16 | bf16; default env ``STREAMREC_ENCODER_DTYPE`` or fp32);
``quant="int8"`` (default env ``STREAMREC_ORT_QUANT``) the dynamically quantised fp32 export
(:mod:`pipeline.encoders.quantize`, CPU).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import Tensor

from pipeline.encoders.base import BackendUnavailable, EncoderBackend
from pipeline.encoders.onnx_export import INPUT_NAMES, OUTPUT_NAME, ExportError, ensure_export, jagged_to_padded

log = logging.getLogger("streamrec.encoders")


def default_providers(device: torch.device) -> list[str]:
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    env = os.environ.get("STREAMREC_ORT_PROVIDERS")
    if env:
        want = [p.strip() for p in env.split(",") if p.strip()]
    elif device.type == "cuda":
        want = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        want = ["CPUExecutionProvider"]
    return [p for p in want if p in have] or ["CPUExecutionProvider"]


class OrtBackend(EncoderBackend):
    name = "onnxruntime"

    def __init__(self, bundle, device="cpu", *, dtype: str | None = None, quant: str | None = None,
                 providers: list[str] | None = None, threads: int | None = None,
                 export_if_missing: bool = True, io_binding: bool | None = None, **options) -> None:
        super().__init__(bundle, device, **options)
        import onnxruntime as ort

        dtype = dtype or os.environ.get("STREAMREC_ENCODER_DTYPE") or "fp32"
        quant = quant or os.environ.get("STREAMREC_ORT_QUANT") or None
        if quant not in (None, "int8"):
            raise ValueError(f"quant must be None or 'int8', got {quant!r}")
        if quant and dtype != "fp32":
            raise ValueError("the INT8 model is quantised from the fp32 export; use dtype='fp32'")
        try:
            info = ensure_export(bundle, dtype, export_if_missing=export_if_missing)
            if quant == "int8":
                from pipeline.encoders.quantize import ensure_quantized

                info = ensure_quantized(bundle, info, export_if_missing=export_if_missing)
        except ExportError as e:
            raise BackendUnavailable(str(e)) from e
        self.export = info
        self.dtype = dtype
        self.quant = quant
        self.providers = providers or default_providers(self.device)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(threads or torch.get_num_threads())
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        prov_opts = []
        for p in self.providers:
            if p == "CUDAExecutionProvider":
                prov_opts.append({"device_id": str(self.device.index or 0)})
            elif p == "TensorrtExecutionProvider":
                cache = info.path.parent / "ort_trt_cache"
                prov_opts.append({"device_id": str(self.device.index or 0), "trt_engine_cache_enable": "True",
                                  "trt_engine_cache_path": str(cache)})
            else:
                prov_opts.append({})
        self.session = ort.InferenceSession(str(info.path), so, providers=self.providers, provider_options=prov_opts)
        self.active_providers = self.session.get_providers()
        on_gpu = self.device.type == "cuda" and any(p != "CPUExecutionProvider" for p in self.active_providers)
        self.io_binding = on_gpu if io_binding is None else bool(io_binding and on_gpu)

    @classmethod
    def available(cls, device="cpu") -> tuple[bool, str]:
        try:
            import onnx  # noqa: F401
            import onnxruntime as ort
        except Exception as e:
            return False, f"onnxruntime/onnx not installed ({type(e).__name__}: {e}); pip install 'streamrec[onnx]'"
        dev = torch.device(device)
        provs = ort.get_available_providers()
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                return False, "device is cuda but torch sees no CUDA device"
            if "CUDAExecutionProvider" not in provs and "TensorrtExecutionProvider" not in provs:
                return False, f"onnxruntime {ort.__version__} has no CUDA/TensorRT EP (CPU build; install onnxruntime-gpu)"
        return True, f"onnxruntime {ort.__version__} ({', '.join(provs)})"

    def encode(self, item_idx: Tensor, action_idx: Tensor, ts_ms: Tensor, offsets: Tensor) -> Tensor:
        d = self.device
        if self.io_binding:
            return self._run_bound(*(t.to(d) for t in (item_idx, action_idx, ts_ms, offsets)))
        padded = jagged_to_padded(item_idx.cpu(), action_idx.cpu(), ts_ms.cpu(), offsets.cpu())
        feeds = {n: t.numpy() for n, t in zip(INPUT_NAMES, padded)}
        (out,) = self.session.run([OUTPUT_NAME], feeds)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(d)

    def _run_bound(self, item_idx, action_idx, ts_ms, offsets) -> Tensor:
        """GPU: bind torch CUDA tensors directly (IOBinding), output into a torch tensor."""
        padded = [t.contiguous() for t in jagged_to_padded(item_idx, action_idx, ts_ms, offsets)]
        B = padded[3].shape[0]
        out = torch.empty((B, self.config.dim), dtype=torch.float32, device=self.device)
        binding = self.session.io_binding()
        dev_id = self.device.index or 0
        for n, t in zip(INPUT_NAMES, padded):
            binding.bind_input(n, "cuda", dev_id, np.int64, list(t.shape), t.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", dev_id, np.float32, list(out.shape), out.data_ptr())
        # ORT runs on its own CUDA stream: make the inputs visible to it first
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)  # synchronises its stream before returning
        return out

    def describe(self) -> str:
        q = f"+{self.quant}" if self.quant else ""
        return f"onnxruntime, {self.dtype}{q}, {', '.join(self.active_providers)}, {self.export.path}" + (
            ", IOBinding" if self.io_binding else "")
