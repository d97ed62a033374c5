"""One registry for the encoder backends: ``auto | tensorrt | onnxruntime | torch``.

* Every backend answers ``available(device) -> (ok, reason)``.
* ``auto`` tries tensorrt -> onnxruntime -> torch and takes the first that is available
  *and starts* (for onnxruntime/tensorrt: an up-to-date ONNX export is in the model
  directory -- ``streamrec export DIR``; ``auto`` never exports a missing one, so a
  worker start stays fast and never writes into a model directory nobody exported; a
  *stale* export is refused and re-exported). It logs once what it took and why each
  other backend was skipped.
* An explicit name is a requirement: if that backend cannot start, :func:`build_encoder`
  raises :class:`BackendUnavailable` with the reason (it exports/quantises on demand).
* At run time, :class:`FallbackEncoder` runs a batch on the current backend; if that
  raises, the SAME batch runs on the next backend of the chain (… -> torch), so no batch
  is lost, and a warning says so. If the next backend succeeds, the failing one is
  dropped for good (``encoder_name`` changes); if every backend fails on the batch, the
  input is the problem: the first error is raised and nothing is dropped.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import torch
from torch import Tensor

from pipeline.encoders.base import BACKEND_NAMES, BackendUnavailable, EncoderBackend

log = logging.getLogger("streamrec.encoders")

__all__ = ["BACKENDS", "ORDER", "CHOICES", "backend_class", "available", "available_all", "build_encoder",
           "FallbackEncoder", "encoder_scorer"]

ORDER = BACKEND_NAMES  # tensorrt -> onnxruntime -> torch
CHOICES = ("auto",) + ORDER


def _classes() -> dict[str, type[EncoderBackend]]:
    from pipeline.encoders.ort_backend import OrtBackend
    from pipeline.encoders.tensorrt_backend import TensorRTBackend
    from pipeline.encoders.torch_backend import TorchBackend

    return {"tensorrt": TensorRTBackend, "onnxruntime": OrtBackend, "torch": TorchBackend}


BACKENDS = ORDER


def backend_class(name: str) -> type[EncoderBackend]:
    try:
        return _classes()[name]
    except KeyError:
        raise ValueError(f"unknown encoder backend {name!r}; expected one of {', '.join(CHOICES)}") from None


def available(name: str, device: str | torch.device = "cpu") -> tuple[bool, str]:
    """``(ok, reason)`` of one backend on ``device``; never raises."""
    try:
        return backend_class(name).available(device)
    except Exception as e:  # a broken install must not break the choice
        return False, f"availability check failed: {type(e).__name__}: {e}"


def available_all(device: str | torch.device = "cpu") -> dict[str, tuple[bool, str]]:
    return {n: available(n, device) for n in ORDER}


_logged: set[tuple] = set()
_logged_lock = threading.Lock()


def _log_once(key: tuple, level: int, msg: str, *args) -> None:
    with _logged_lock:
        if key in _logged:
            return
        _logged.add(key)
    log.log(level, msg, *args)


class FallbackEncoder:
    """The chosen backend plus the rest of the chain after it, with run-time fallback."""

    def __init__(self, bundle, device: torch.device, chain: list[EncoderBackend], rest: list[str],
                 options: dict[str, dict[str, Any]], skipped: dict[str, str], requested: str) -> None:
        self.bundle = bundle
        self.device = device
        self._chain = chain  # started backends, current first
        self._rest = list(rest)  # names after the current one, started on demand
        self._options = options
        self.skipped = dict(skipped)  # name -> why it is not (or no longer) in use
        self.requested = requested
        self.fallbacks = 0
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._chain[0].name

    @property
    def backend(self) -> EncoderBackend:
        return self._chain[0]

    def describe(self) -> str:
        return self._chain[0].describe()

    def _next(self, idx: int) -> EncoderBackend | None:
        """The started backend after position ``idx`` of the chain (starting it if needed)."""
        if idx + 1 < len(self._chain):
            return self._chain[idx + 1]
        while self._rest:
            name = self._rest.pop(0)
            ok, why = available(name, self.device)
            if not ok:
                self.skipped[name] = why
                continue
            try:
                b = backend_class(name)(self.bundle, self.device, **self._options.get(name, {}))
            except Exception as e:
                self.skipped[name] = f"failed to start: {type(e).__name__}: {e}"
                continue
            self._chain.append(b)
            return b
        return None

    def __call__(self, item_idx: Tensor, action_idx: Tensor, ts_ms: Tensor, offsets: Tensor) -> Tensor:
        with self._lock:
            first_error: BaseException | None = None
            failed: list[tuple[int, str]] = []
            idx = 0
            backend: EncoderBackend | None = self._chain[0]
            while backend is not None:
                try:
                    out = backend.encode(item_idx, action_idx, ts_ms, offsets)
                except Exception as e:
                    first_error = first_error or e
                    failed.append((idx, f"{type(e).__name__}: {e}"))
                    nxt = self._next(idx)
                    if nxt is not None:
                        log.warning("encoder backend %s failed on a batch of %d users (%s: %s); "
                                    "running the same batch on %s", backend.name, offsets.shape[0] - 1,
                                    type(e).__name__, e, nxt.name)
                    backend, idx = nxt, idx + 1
                    continue
                if failed:  # a later backend did what the earlier ones could not: drop those
                    self.fallbacks += 1
                    for i, why in reversed(failed):
                        dead = self._chain.pop(i)
                        self.skipped[dead.name] = f"failed at run time: {why}"
                        dead.close()
                    log.warning("encoder backend is now %s (%s)", self.name, "; ".join(
                        f"{n} {w}" for n, w in self.skipped.items()))
                return out
            assert first_error is not None
            raise first_error


def build_encoder(bundle, backend: str = "auto", device: str | torch.device = "cpu",
                  options: dict[str, dict[str, Any]] | None = None) -> FallbackEncoder:
    """Start the encoder backend ``backend`` (``auto`` = first that works of tensorrt, onnxruntime, torch).

    ``options``: per backend name, keyword arguments for its constructor, e.g.
    ``{"onnxruntime": {"quant": "int8"}, "torch": {"compile": True}}``.
    """
    if backend not in CHOICES:
        raise ValueError(f"unknown encoder backend {backend!r}; expected one of {', '.join(CHOICES)}")
    device = torch.device(device)
    options = {k: dict(v) for k, v in (options or {}).items()}
    skipped: dict[str, str] = {}
    names = list(ORDER) if backend == "auto" else list(ORDER[ORDER.index(backend):])
    for i, name in enumerate(names):
        ok, why = available(name, device)
        if ok:
            opts = dict(options.get(name, {}))
            if backend == "auto" and name != "torch":
                opts.setdefault("export_if_missing", False)
            try:
                b = backend_class(name)(bundle, device, **opts)
            except Exception as e:
                why = f"failed to start: {type(e).__name__}: {e}" if not isinstance(e, BackendUnavailable) else str(e)
                ok = False
        if not ok:
            if backend != "auto" and name == backend:
                raise BackendUnavailable(f"encoder backend {backend!r} is not usable here: {why}")
            skipped[name] = why
            continue
        # the chain after the chosen one: start on demand, exporting if it must
        rest = names[i + 1:]
        if backend == "auto":
            for n in rest:
                if n != "torch":
                    options.setdefault(n, {}).setdefault("export_if_missing", False)
        enc = FallbackEncoder(bundle, device, [b], rest, options, skipped, backend)
        level = logging.INFO
        _log_once((str(bundle.path), backend, str(device), name), level,
                  "encoder backend: %s (requested %s) -> %s%s", name, backend, b.describe(),
                  "".join(f"; skipped {n}: {w}" for n, w in skipped.items()))
        return enc
    raise BackendUnavailable("no encoder backend is usable: " + "; ".join(f"{n}: {w}" for n, w in skipped.items()))


def encoder_scorer(encoder: Callable[..., Tensor], bundle) -> Callable:
    """An evaluation scorer (pipeline.evaluation.Scorer) that embeds users with ``encoder``."""
    from pipeline.recommender import build_jagged

    cfg = bundle.config
    with torch.inference_mode():
        items = bundle.encoder.item_table().detach().float().cpu()

    def score(user_ids, histories):
        b = build_jagged(histories, bundle.item_index, cfg.num_items, cfg.max_seq_len)
        with torch.inference_mode():
            emb = encoder(b.item_idx, b.action_idx, b.ts_ms, b.offsets).float().cpu()
            return emb @ items.T

    return score
