"""ONNX export of the HSTU encoder (``streamrec export DIR``).

The exported graph
------------------
Inputs (all int64)::

    item_idx   (B, L)   item index per event, right-padded (pad value: anything in range, e.g. 0)
    action_idx (B, L)   action index per event, right-padded
    ts_s       (B, L)   event time in whole epoch SECONDS = floor(ts_ms / 1000), right-padded
    lengths    (B,)     number of real events of each user, 1 <= lengths[b] <= L

Output: ``user_emb`` (B, dim) float32, L2-normalised -- the same number as
``HSTUEncoder.forward`` on the jagged batch (values + offsets) of the same users.

Why padded inside the graph (docs/backends.md says the same): the torch path is
jagged (values + offsets) end to end. A jagged ONNX graph would need the batch's
max length as a *data-dependent* shape (ReduceMax -> Range), which TensorRT cannot
cover with optimisation profiles and ONNX Runtime cannot plan for, or a
block-diagonal (T, T) attention, which is quadratic in the total number of events
of the batch. So the backends take the jagged batch, right-pad it to the batch's
max length on the host (one scatter, :func:`jagged_to_padded`), and the graph
runs the same math on [B, L]. Right padding + the causal mask means a padded key
j >= length[b] is never seen by a real query i < length[b] (j <= i), so padding
cannot change a real position's output; the user embedding is read at
``lengths - 1``. The normaliser is the config's fixed ``attn_n``, as in hstu.py.

The graph computes the last layer only for the last real position of each user
(the other positions of the last layer are never read), which is the same math
row by row and halves the attention work of a 2-layer model.

Files, inside the model directory (not listed in manifest.json: derived artefacts)::

    DIR/onnx/encoder.<dtype>.onnx          dtype = fp32 | fp16 | bf16
    DIR/onnx/encoder.<dtype>.json          {"weights_sha256": ..., "model_version": ..., "opset": ...,
                                            "dtype": ..., "onnx_sha256": ..., "torch": ..., ...}
    DIR/onnx/encoder.fp32.int8.onnx/.json  dynamic INT8 variant (pipeline/encoders/quantize.py)

An export whose ``weights_sha256`` is not the sha256 of the directory's current
``hstu.safetensors`` (or whose own file hash does not match) is *stale*: it is refused
and, where asked, re-exported.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.hstu import HSTUEncoder, time_bucket

__all__ = [
    "PaddedHSTU",
    "ExportError",
    "ExportInfo",
    "DTYPES",
    "OPSET",
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "jagged_to_padded",
    "export_onnx",
    "export_path",
    "find_export",
    "ensure_export",
    "weights_sha256",
]

log = logging.getLogger("streamrec.encoders.export")

OPSET = 18
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INPUT_NAMES = ("item_idx", "action_idx", "ts_s", "lengths")
OUTPUT_NAME = "user_emb"
ONNX_SUBDIR = "onnx"
FORMAT = 2


class ExportError(RuntimeError):
    """The encoder could not be exported, or an export on disk is missing/stale/corrupt."""


# ---------------------------------------------------------------------------- the graph
class PaddedHSTU(nn.Module):
    """The export-friendly twin of :meth:`HSTUEncoder.forward`: right-padded [B, L] + lengths.

    Takes ``ts_s`` (whole seconds, int64: see :func:`jagged_to_padded`), not ts_ms.
    Shares the encoder's parameters (no copy). Same math as ``hstu.py`` (LayerNorm ->
    SiLU(uvqk) -> SiLU(QK^T + rab) / attn_n under the causal mask -> U * LayerNorm(AV) ->
    out + residual; final LayerNorm; last position; L2 normalise), batched over [B, L]
    instead of looping over sequences. No Python loop over sequences, no ``.item()``:
    it exports with dynamic B and L.
    """

    def __init__(self, encoder: HSTUEncoder) -> None:
        super().__init__()
        self.enc = encoder
        self.cfg = encoder.cfg

    def forward(self, item_idx: Tensor, action_idx: Tensor, ts_s: Tensor, lengths: Tensor) -> Tensor:
        cfg = self.cfg
        enc = self.enc
        H, dqk, dv = cfg.num_heads, cfg.qk_dim, cfg.v_dim
        B, L = item_idx.shape
        x = enc.item_emb(item_idx) + enc.action_emb(action_idx)  # (B, L, D)
        # relative-bias indices, shared by the layers (each layer has its own tables)
        pos = torch.arange(L, device=item_idx.device)
        rel = (pos[:, None] - pos[None, :]).clamp(min=0, max=cfg.max_seq_len - 1)  # (L, L)
        causal = pos[:, None] >= pos[None, :]  # (L, L)
        bucket = time_bucket(ts_s[:, :, None] - ts_s[:, None, :], cfg.num_time_buckets)  # (B, L, L)
        last = (lengths - 1).clamp(min=0)  # (B,)
        # (B, 1) index of the last real event, and its (B, 1, L) slice of the bias indices
        last_b1 = last[:, None]
        n_layers = len(enc.layers)
        for li, layer in enumerate(enc.layers):
            h = F.silu(layer.uvqk(layer.norm(x)))
            u, v, q, k = torch.split(h, [H * dv, H * dv, H * dqk, H * dqk], dim=-1)
            k = k.reshape(B, L, H, dqk)
            v = v.reshape(B, L, H, dv)
            if li < n_layers - 1:
                q = q.reshape(B, L, H, dqk)
                # plain MatMuls (not Einsum): what ORT and TensorRT fuse best
                scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1))  # (B, H, L, L)
                rab = layer.pos_w[rel][None] + layer.time_w[bucket]  # (B, L, L)
                scores = scores + rab.to(scores.dtype)[:, None]
                a = (F.silu(scores) / cfg.attn_n).masked_fill(~causal[None, None], 0.0)
                av = torch.matmul(a, v.transpose(1, 2)).transpose(1, 2).reshape(B, L, H * dv)
                y = u * F.layer_norm(av, (H * dv,), eps=1e-6)
                x = x + layer.out(y)
            else:
                # only the last real position of each user is read from the last layer
                xl = torch.gather(x, 1, last_b1[:, :, None].expand(B, 1, x.shape[-1]))  # (B, 1, D)
                ql = torch.gather(q, 1, last_b1[:, :, None].expand(B, 1, q.shape[-1])).reshape(B, 1, H, dqk)
                ul = torch.gather(u, 1, last_b1[:, :, None].expand(B, 1, u.shape[-1]))  # (B, 1, H*dv)
                rel_l = (last_b1 - pos[None, :]).clamp(min=0, max=cfg.max_seq_len - 1)  # (B, L)
                bucket_l = torch.gather(bucket, 1, last_b1[:, :, None].expand(B, 1, L))[:, 0]  # (B, L)
                rab = layer.pos_w[rel_l] + layer.time_w[bucket_l]  # (B, L)
                scores = torch.matmul(ql.transpose(1, 2), k.permute(0, 2, 3, 1))  # (B, H, 1, L)
                scores = scores + rab.to(scores.dtype)[:, None, None, :]
                keep = pos[None, :] <= last_b1  # (B, L)
                a = (F.silu(scores) / cfg.attn_n).masked_fill(~keep[:, None, None, :], 0.0)
                av = torch.matmul(a, v.transpose(1, 2)).transpose(1, 2).reshape(B, 1, H * dv)
                y = ul * F.layer_norm(av, (H * dv,), eps=1e-6)
                x = xl + layer.out(y)  # (B, 1, D)
        x = enc.final_norm(x[:, 0])
        return F.normalize(x.float(), dim=-1)


def jagged_to_padded(
    item_idx: Tensor, action_idx: Tensor, ts_ms: Tensor, offsets: Tensor, pad_to: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Jagged (values + offsets, ts in ms) -> right-padded (B, L) int64 item, action, ts_s + lengths (B,).

    ``ts_s = floor(ts_ms / 1000)`` is computed here, in int64, and not in the graph: the
    ONNX exporter lowers int64 division through a float32 Cast + Div + Floor, which rounds
    epoch timestamps (~1.7e12 ms) to float32's 24-bit mantissa and moves events into
    wrong time buckets (seen: 7e-4 embedding error before this was moved out).

    ``L`` is the batch's max length, or ``pad_to`` when given (must be >= the max).
    Pad slots hold item 0, action 0 and the sequence's last timestamp (any value works:
    causal masking hides them; a real timestamp keeps the bucket arithmetic tame).
    """
    lengths = offsets[1:] - offsets[:-1]
    B = lengths.shape[0]
    T = item_idx.shape[0]
    if B == 0:
        raise ValueError("empty batch")
    if bool((lengths <= 0).any()):
        raise ValueError("every sequence needs at least one event")
    max_len = int(lengths.max())
    L = max_len if pad_to is None else int(pad_to)
    if L < max_len:
        raise ValueError(f"pad_to={L} is shorter than the longest sequence ({max_len})")
    dev = item_idx.device
    seq = torch.repeat_interleave(torch.arange(B, device=dev), lengths, output_size=T)
    pos = torch.arange(T, device=dev) - offsets[:-1][seq]
    flat = seq * L + pos
    it = torch.zeros(B * L, dtype=torch.long, device=dev)
    ac = torch.zeros(B * L, dtype=torch.long, device=dev)
    ts_s = torch.div(ts_ms, 1000, rounding_mode="floor")
    ts = ts_s[offsets[1:] - 1].repeat_interleave(L)
    it[flat] = item_idx
    ac[flat] = action_idx
    ts[flat] = ts_s
    return it.view(B, L), ac.view(B, L), ts.view(B, L), lengths.contiguous()


# ---------------------------------------------------------------------------- files
@dataclass(frozen=True)
class ExportInfo:
    path: Path  # the .onnx file
    meta: dict  # the json next to it

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]


def weights_sha256(model_dir: Path | str) -> str:
    """The sha256 of the model directory's weights, as recorded in its (verified) manifest."""
    from pipeline.model_dir import MANIFEST, WEIGHTS_FILE, sha256_file

    p = Path(model_dir)
    try:
        manifest = json.loads((p / MANIFEST).read_text(encoding="utf-8"))
        digest = manifest["files"][WEIGHTS_FILE]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{p}: cannot read the weights' sha256 from {MANIFEST} ({e})") from None
    actual = sha256_file(p / WEIGHTS_FILE)
    if actual != digest:
        raise ExportError(f"{p / WEIGHTS_FILE}: sha256 does not match {MANIFEST}; the model directory does not verify")
    return digest


def export_path(model_dir: Path | str, dtype: str = "fp32", quant: str | None = None, root: Path | None = None) -> Path:
    """Where the export of ``dtype`` (and quantisation ``quant``) lives: DIR/onnx/encoder.<dtype>[.<quant>].onnx."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    base = Path(root) if root is not None else Path(model_dir) / ONNX_SUBDIR
    return base / (f"encoder.{dtype}" + (f".{quant}" if quant else "") + ".onnx")


def _meta_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def _file_sha256(path: Path) -> str:
    from pipeline.model_dir import sha256_file

    return sha256_file(path)


def find_export(
    model_dir: Path | str, dtype: str = "fp32", quant: str | None = None, weights: str | None = None,
    root: Path | None = None,
) -> ExportInfo:
    """The up-to-date export of ``dtype``; raises :class:`ExportError` if missing, stale or corrupt."""
    path = export_path(model_dir, dtype, quant, root)
    meta_p = _meta_path(path)
    if not path.is_file() or not meta_p.is_file():
        raise ExportError(f"no ONNX export at {path} (run `streamrec export {model_dir} --dtype {dtype}`)")
    try:
        meta = json.loads(meta_p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"{meta_p}: unreadable ({e})") from None
    want = weights if weights is not None else weights_sha256(model_dir)
    if not isinstance(meta, dict) or meta.get("weights_sha256") != want:
        raise ExportError(
            f"{path} is stale: exported from weights {str(meta.get('weights_sha256'))[:12]}…, "
            f"the model directory holds {want[:12]}… (re-export with `streamrec export {model_dir}`)"
        )
    if meta.get("format") != FORMAT or meta.get("dtype") != dtype or meta.get("quant") != quant:
        raise ExportError(f"{meta_p}: describes format/dtype/quant {meta.get('format')}/{meta.get('dtype')}/{meta.get('quant')}, expected {FORMAT}/{dtype}/{quant}")
    if _file_sha256(path) != meta.get("onnx_sha256"):
        raise ExportError(f"{path}: file hash does not match {meta_p.name} (corrupt or modified); re-export")
    return ExportInfo(path, meta)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _example_inputs(encoder: HSTUEncoder, B: int = 3, L: int = 7) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    cfg = encoder.cfg
    it = torch.randint(0, cfg.num_items + 1, (B, L), generator=g)
    ac = torch.randint(0, cfg.num_actions, (B, L), generator=g)
    ts = 1_700_000_000 + torch.sort(torch.randint(0, 10**7, (B, L), generator=g), dim=1).values
    lengths = torch.tensor([L, max(1, L - 2), 1][:B] + [L] * max(0, B - 3), dtype=torch.long)
    return it, ac, ts, lengths


def export_onnx(
    encoder: HSTUEncoder,
    out_path: Path | str,
    dtype: str = "fp32",
    opset: int = OPSET,
    meta: dict | None = None,
) -> ExportInfo:
    """Export ``encoder`` (as :class:`PaddedHSTU`) to ``out_path`` with dynamic batch and length axes.

    ``torch.onnx.export(..., dynamo=True)``; weights embedded in the .onnx file. Writes the json
    (``meta`` + dtype, opset, hashes, versions) next to it. Atomic: temp file + rename.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if opset < 17:
        raise ValueError("opset must be >= 17")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    import copy

    enc = copy.deepcopy(encoder).to("cpu").eval()
    enc = enc.to(DTYPES[dtype])
    model = PaddedHSTU(enc).eval()
    args = _example_inputs(enc)
    B = torch.export.Dim("batch", min=1, max=65536)
    L = torch.export.Dim("seq", min=1, max=enc.cfg.max_seq_len)
    dynamic_shapes = {"item_idx": {0: B, 1: L}, "action_idx": {0: B, 1: L}, "ts_s": {0: B, 1: L}, "lengths": {0: B}}
    t0 = time.monotonic()
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", category=FutureWarning)
            prog = torch.onnx.export(
                model,
                args,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                external_data=False,
                optimize=True,
                verbose=False,
            )
        prog.save(str(tmp), external_data=False)
        import onnx

        onnx.checker.check_model(str(tmp), full_check=True)
        os.replace(tmp, out_path)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {e}") from e
    info = {
        **(meta or {}),
        "format": FORMAT,
        "dtype": dtype,
        "quant": None,
        "opset": opset,
        "inputs": {n: "int64 (B, L)" for n in INPUT_NAMES[:3]} | {"lengths": "int64 (B,)"},
        "output": f"{OUTPUT_NAME} float32 (B, {enc.cfg.dim})",
        "dynamic_axes": {"batch": [1, 65536], "seq": [1, enc.cfg.max_seq_len]},
        "max_seq_len": enc.cfg.max_seq_len,
        "dim": enc.cfg.dim,
        "onnx_sha256": _file_sha256(out_path),
        "torch": torch.__version__,
        "exported_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "export_wall_s": round(time.monotonic() - t0, 2),
    }
    _write_json(_meta_path(out_path), info)
    log.info("exported the HSTU encoder to %s (%s, opset %d) in %.1f s", out_path, dtype, opset, info["export_wall_s"])
    return ExportInfo(out_path, info)


def ensure_export(
    bundle, dtype: str = "fp32", export_if_missing: bool = True, root: Path | None = None
) -> ExportInfo:
    """An up-to-date export for ``bundle`` (a verified ModelBundle): found, or (re-)exported.

    A stale or corrupt export is refused (logged) and, if ``export_if_missing``, replaced.
    Writes into ``DIR/onnx/`` unless ``root`` is given; a read-only model directory falls back
    to ``$STREAMREC_CACHE_DIR`` (default ``~/.cache/streamrec``)/onnx/<version>/.
    """
    weights = weights_sha256(bundle.path)
    roots = [root] if root is not None else [None, _cache_root(bundle)]
    first_error: ExportError | None = None
    for r in roots:
        try:
            return find_export(bundle.path, dtype, None, weights, root=r)
        except ExportError as e:
            first_error = first_error or e
    if not export_if_missing:
        raise first_error  # type: ignore[misc]
    log.warning("%s; exporting now", first_error)
    meta = {"weights_sha256": weights, "model_version": bundle.version, "model_dir": str(bundle.path)}
    last: Exception | None = None
    for r in roots:
        path = export_path(bundle.path, dtype, None, r)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(path.parent, os.W_OK):
                raise PermissionError(f"{path.parent} is not writable")
        except OSError as e:
            last = e
            continue
        return export_onnx(bundle.encoder, path, dtype, meta=meta)
    raise ExportError(f"no writable place for the ONNX export ({last})")


def _cache_root(bundle) -> Path:
    base = Path(os.environ.get("STREAMREC_CACHE_DIR") or Path.home() / ".cache" / "streamrec")
    return base / ONNX_SUBDIR / bundle.version
