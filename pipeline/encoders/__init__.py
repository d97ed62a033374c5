"""Encoder backends for the HSTU model: ``tensorrt`` -> ``onnxruntime`` -> ``torch``.

Entry point: :func:`build_encoder(bundle, backend="auto", device=...)` returns a
:class:`FallbackEncoder` -- call it with a jagged batch (item_idx, action_idx, ts_ms,
offsets) to get the (B, dim) float32 L2-normalised user embeddings; its ``name`` is the
backend in use (what output records carry as ``model.encoder``). See docs/backends.md.
Heavy imports (onnxruntime, tensorrt) happen only when a backend is asked for.
"""
from pipeline.encoders.base import BACKEND_NAMES, BackendUnavailable, EncoderBackend
from pipeline.encoders.registry import CHOICES, ORDER, FallbackEncoder, available, available_all, build_encoder

__all__ = [
    "BACKEND_NAMES",
    "BackendUnavailable",
    "EncoderBackend",
    "CHOICES",
    "ORDER",
    "FallbackEncoder",
    "available",
    "available_all",
    "build_encoder",
]
