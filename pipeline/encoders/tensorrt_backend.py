"""The ``tensorrt`` encoder backend: a TensorRT engine built from the ONNX export.

Written to the documented TensorRT Python API (10.x / 11.x); it needs the ``tensorrt``
package and a CUDA device. Where TensorRT is not installed (these CPU machines: the
``tensorrt-cu12/13-libs`` wheels download from a vendor index at install time, which is
unreachable, DESIGN §8) ``available()`` says so and the registry moves on.
tests/gpu/test_tensorrt.py runs wherever TensorRT is present.

* **Precision** comes from the ONNX itself: TensorRT 11 networks are strongly typed (no
  FP16/BF16 builder flags), so ``dtype="fp16"|"bf16"`` builds from ``encoder.fp16.onnx`` /
  ``encoder.bf16.onnx`` (``streamrec export DIR --dtype fp16``). The network is created
  with ``STRONGLY_TYPED`` where the flag exists (10.x) and as is on 11.x.
* **Optimisation profiles**: one per sequence-length bucket (default upper bounds
  32, 64, 128, max_seq_len), each covering batch 1..``max_batch`` (opt = ``opt_batch``)
  and lengths (previous bound + 1)..bound (opt = bound). A batch is padded to its own max
  length and runs on the execution context of the smallest bucket that holds it (one
  context per profile, created up front). A batch larger than ``max_batch`` is split.
* **Engine cache**: the serialized engine is stored under ``DIR/onnx/trt/`` (or
  ``$STREAMREC_CACHE_DIR/tensorrt``) named by sha256 of (weights sha256, export sha256,
  dtype, TensorRT version, GPU name + compute capability, profiles); a later start with the
  same key deserialises it instead of building (minutes -> ~1 s).
* **Execution**: inputs/outputs are torch CUDA tensors; ``set_input_shape`` +
  ``set_tensor_address`` per tensor, ``execute_async_v3`` on the current torch CUDA stream,
  so it orders with the surrounding torch work without a host sync.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from pipeline.encoders.base import BackendUnavailable, EncoderBackend
from pipeline.encoders.onnx_export import INPUT_NAMES, OUTPUT_NAME, ExportError, ensure_export, jagged_to_padded

log = logging.getLogger("streamrec.encoders")

NOT_INSTALLED = "TensorRT not installed (DESIGN §8: vendor-hosted libs)"
DEFAULT_BUCKETS = (32, 64, 128)


def _import_trt():
    import tensorrt as trt  # noqa: F401  (the import is the availability test)

    return trt


def seq_buckets(max_seq_len: int, bounds=DEFAULT_BUCKETS) -> list[tuple[int, int]]:
    """[(lo, hi), ...] inclusive length ranges, the last ending at ``max_seq_len``."""
    edges = sorted({b for b in bounds if 0 < b < max_seq_len} | {max_seq_len})
    out, lo = [], 1
    for hi in edges:
        out.append((lo, hi))
        lo = hi + 1
    return out


class TensorRTBackend(EncoderBackend):
    name = "tensorrt"

    def __init__(self, bundle, device="cuda", *, dtype: str | None = None, max_batch: int = 512, opt_batch: int = 64,
                 buckets=DEFAULT_BUCKETS, workspace_mb: int = 1024, export_if_missing: bool = True,
                 cache_dir: str | os.PathLike | None = None, tf32: bool = False, **options) -> None:
        super().__init__(bundle, device, **options)
        ok, why = self.available(self.device)
        if not ok:
            raise BackendUnavailable(why)
        trt = _import_trt()
        self.trt = trt
        if self.device.type != "cuda":
            raise BackendUnavailable("TensorRT needs a CUDA device")
        dtype = dtype or os.environ.get("STREAMREC_ENCODER_DTYPE") or "fp32"
        try:
            self.export = ensure_export(bundle, dtype, export_if_missing=export_if_missing)
        except ExportError as e:
            raise BackendUnavailable(str(e)) from e
        self.dtype = dtype
        self.tf32 = bool(tf32)
        self.max_batch = int(max_batch)
        self.buckets = seq_buckets(bundle.config.max_seq_len, buckets)
        self.opt_batch = max(1, min(int(opt_batch), self.max_batch))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine_path = self._engine_path(cache_dir)
        self.engine = self._load_or_build(workspace_mb)
        # one execution context per optimisation profile
        self.contexts = []
        with torch.cuda.device(self.device):
            for i in range(len(self.buckets)):
                ctx = self.engine.create_execution_context()
                if ctx is None:
                    raise BackendUnavailable("TensorRT could not create an execution context (out of device memory?)")
                ctx.set_optimization_profile_async(i, torch.cuda.current_stream(self.device).cuda_stream)
                self.contexts.append(ctx)
            torch.cuda.current_stream(self.device).synchronize()

    # ------------------------------------------------------------------ availability
    @classmethod
    def available(cls, device="cuda") -> tuple[bool, str]:
        try:
            trt = _import_trt()
        except Exception:
            return False, NOT_INSTALLED
        dev = torch.device(device)
        if dev.type != "cuda":
            return False, f"TensorRT {trt.__version__} needs a CUDA device (device is {dev.type})"
        if not torch.cuda.is_available():
            return False, f"TensorRT {trt.__version__} is installed but torch sees no CUDA device"
        return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(dev)}"

    # ------------------------------------------------------------------ engine cache
    def cache_key(self) -> str:
        trt = self.trt
        props = torch.cuda.get_device_properties(self.device)
        key = {
            "weights": self.export.meta["weights_sha256"],
            "onnx": self.export.meta["onnx_sha256"],
            "dtype": self.dtype,
            "tensorrt": trt.__version__,
            "gpu": f"{props.name} sm{props.major}{props.minor}",
            "profiles": [self.buckets, self.opt_batch, self.max_batch],
            "tf32": self.tf32,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def _engine_path(self, cache_dir) -> Path:
        name = f"encoder.{self.dtype}.{self.cache_key()[:24]}.engine"
        if cache_dir is not None:
            return Path(cache_dir) / name
        here = self.export.path.parent / "trt"
        try:
            here.mkdir(parents=True, exist_ok=True)
            if os.access(here, os.W_OK):
                return here / name
        except OSError:
            pass
        base = Path(os.environ.get("STREAMREC_CACHE_DIR") or Path.home() / ".cache" / "streamrec")
        return base / "tensorrt" / name

    def _load_or_build(self, workspace_mb: int):
        trt = self.trt
        runtime = trt.Runtime(self.logger)
        self.runtime = runtime
        if self.engine_path.is_file():
            engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is not None:
                log.info("tensorrt: loaded cached engine %s", self.engine_path)
                return engine
            log.warning("tensorrt: cached engine %s does not deserialise; rebuilding", self.engine_path)
        data = self.build_serialized(workspace_mb)
        self.engine_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.engine_path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.engine_path)
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendUnavailable("TensorRT built an engine it cannot deserialise")
        return engine

    def build_serialized(self, workspace_mb: int = 1024) -> bytes:
        """Parse the ONNX export and build a serialized engine with one profile per length bucket."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if strongly is not None:  # 10.x: opt in; 11.x: always strongly typed
            flags |= 1 << int(strongly)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(self.export.path.read_bytes()):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailable(f"TensorRT cannot parse {self.export.path}: {errs}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
        if tf32_flag is not None and not self.tf32:
            # fp32 parity (<= 1e-4) needs true fp32 GEMMs; TF32 is on by default on Ampere+
            config.clear_flag(tf32_flag)
        for lo, hi in self.buckets:
            profile = builder.create_optimization_profile()
            for name in INPUT_NAMES[:3]:
                profile.set_shape(name, (1, lo), (self.opt_batch, hi), (self.max_batch, hi))
            profile.set_shape("lengths", (1,), (self.opt_batch,), (self.max_batch,))
            config.add_optimization_profile(profile)
        log.info("tensorrt: building the engine for %s (profiles %s); this takes a while once", self.export.path,
                 self.buckets)
        data = builder.build_serialized_network(network, config)
        if data is None:
            raise BackendUnavailable("TensorRT failed to build the engine (see its log above)")
        return bytes(data)

    # ------------------------------------------------------------------ run
    def _bucket(self, L: int) -> int:
        for i, (lo, hi) in enumerate(self.buckets):
            if lo <= L <= hi:
                return i
        raise ValueError(f"sequence length {L} exceeds max_seq_len {self.buckets[-1][1]}")

    def encode(self, item_idx: Tensor, action_idx: Tensor, ts_ms: Tensor, offsets: Tensor) -> Tensor:
        d = self.device
        item_idx, action_idx, ts_ms, offsets = (t.to(d) for t in (item_idx, action_idx, ts_ms, offsets))
        B = offsets.shape[0] - 1
        if B <= self.max_batch:
            return self._run(item_idx, action_idx, ts_ms, offsets)
        outs = []
        for s in range(0, B, self.max_batch):
            e = min(B, s + self.max_batch)
            lo, hi = offsets[s], offsets[e]
            outs.append(self._run(item_idx[lo:hi], action_idx[lo:hi], ts_ms[lo:hi], offsets[s : e + 1] - lo))
        return torch.cat(outs)

    def _run(self, item_idx, action_idx, ts_ms, offsets) -> Tensor:
        padded = [t.contiguous() for t in jagged_to_padded(item_idx, action_idx, ts_ms, offsets)]
        B, L = padded[0].shape
        ctx = self.contexts[self._bucket(L)]
        out = torch.empty((B, self.config.dim), dtype=torch.float32, device=self.device)
        for name, t in zip(INPUT_NAMES, padded):
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        ctx.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        # the padded inputs were allocated on this stream: the caching allocator will not
        # reuse their memory before the engine's kernels (queued on the same stream) have run
        return out

    def describe(self) -> str:
        return f"tensorrt {self.trt.__version__}, {self.dtype}, profiles {self.buckets}, engine {self.engine_path}"
