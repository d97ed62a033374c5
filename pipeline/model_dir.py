"""Model directory: write it after training, verify it before serving.

Layout (every file but ``manifest.json`` is listed in the manifest with its sha256)::

    DIR/
      manifest.json      {"format": 1, "arch": "hstu", "version": "hstu-<12 hex>",
                          "created_at": "...Z", "files": {"hstu.safetensors": "<sha256>", ...}}
      hstu_config.json   HSTUConfig.to_dict()
      hstu.safetensors   the encoder's state dict
      items.txt          one item id per line; the 0-based line number is the index
      metrics.json       evaluation results + how the model was trained
      titles.json        optional {item_id: human-readable title}

The version string is ``hstu-`` + the first 12 hex digits of the weights' sha256,
so the same weights always have the same version. Other components (e.g. a
generator) may add files; they are verified as long as they are listed in the
manifest's ``files``. :func:`load_model_dir` refuses a directory that does not
verify with a :class:`ModelDirError` that says what is wrong and how to fix it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.hstu import HSTUConfig, HSTUEncoder

__all__ = [
    "ModelDirError",
    "ModelBundle",
    "save_model_dir",
    "load_model_dir",
    "FORMAT_VERSION",
    "MANIFEST",
    "REQUIRED_FILES",
    "sha256_file",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONFIG_FILE = "hstu_config.json"
WEIGHTS_FILE = "hstu.safetensors"
ITEMS_FILE = "items.txt"
METRICS_FILE = "metrics.json"
TITLES_FILE = "titles.json"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, ITEMS_FILE, METRICS_FILE)

_RETRAIN = "run `streamrec train --out DIR` to write a fresh model directory"


class ModelDirError(Exception):
    """A model directory is missing, incomplete, tampered with or inconsistent."""


@dataclass
class ModelBundle:
    path: Path
    version: str
    config: HSTUConfig
    encoder: HSTUEncoder
    items: list[str]
    item_index: dict[str, int]
    metrics: dict
    titles: dict[str, str] | None

    def item_idx(self, item_id: str) -> int:
        """Index of an item id; unknown ids map to the OOV index ``config.num_items``."""
        return self.item_index.get(item_id, self.config.num_items)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _validate_items(items: list[str]) -> None:
    seen: set[str] = set()
    for n, it in enumerate(items, 1):
        if not isinstance(it, str) or not it or it != it.strip() or "\n" in it or "\r" in it:
            raise ValueError(f"item id #{n} ({it!r}) is empty, not a string, or has surrounding whitespace/newlines")
        if it in seen:
            raise ValueError(f"item id {it!r} appears twice")
        seen.add(it)


def save_model_dir(
    out: Path | str,
    encoder: HSTUEncoder,
    items: list[str],
    metrics: dict,
    titles: dict[str, str] | None = None,
) -> str:
    """Write a complete, verifiable model directory to ``out``; returns the version string.

    Files are written first and the manifest last, so a crash mid-write leaves a
    directory that fails verification instead of a half-valid one.
    """
    from safetensors.torch import save_file

    out = Path(out)
    cfg = encoder.cfg
    arch = getattr(encoder, "arch", "hstu")  # issue 3: "hstu" | "sasrec" (same file names for both)
    items = list(items)
    _validate_items(items)
    if len(items) != cfg.num_items:
        raise ValueError(f"{len(items)} item ids for a model with num_items={cfg.num_items}")
    out.mkdir(parents=True, exist_ok=True)
    old_manifest = out / MANIFEST
    if old_manifest.exists():
        old_manifest.unlink()

    _write_json(out / CONFIG_FILE, cfg.to_dict())
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    # ONE metadata key: safetensors keeps metadata in a Rust HashMap whose iteration order varies
    # between calls, so two keys would make the file bytes (and the version string) non-deterministic
    meta = json.dumps({"arch": arch, "format": FORMAT_VERSION}, sort_keys=True)
    save_file(state, str(out / WEIGHTS_FILE), metadata={"streamrec": meta})
    (out / ITEMS_FILE).write_text("".join(f"{it}\n" for it in items), encoding="utf-8")
    _write_json(out / METRICS_FILE, metrics)
    files = list(REQUIRED_FILES)
    if titles is not None:
        _write_json(out / TITLES_FILE, {str(k): str(v) for k, v in titles.items()})
        files.append(TITLES_FILE)
    elif (out / TITLES_FILE).exists():
        (out / TITLES_FILE).unlink()

    hashes = {name: sha256_file(out / name) for name in files}
    version = f"{arch}-{hashes[WEIGHTS_FILE][:12]}"
    manifest = {
        "format": FORMAT_VERSION,
        "arch": arch,
        "version": version,
        "created_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": hashes,
    }
    tmp = out / (MANIFEST + ".tmp")
    _write_json(tmp, manifest)
    os.replace(tmp, out / MANIFEST)
    return version


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{path}: {what} is not valid JSON ({e}); {_RETRAIN}") from None


def load_model_dir(path: Path | str, device: str = "cpu") -> ModelBundle:
    """Load and VERIFY a model directory. Any problem raises :class:`ModelDirError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.exists():
        raise ModelDirError(f"model directory {p} does not exist; {_RETRAIN} or point STREAMREC_MODEL_DIR at one")
    if not p.is_dir():
        raise ModelDirError(f"{p} is not a directory; a model directory holds {MANIFEST}, {', '.join(REQUIRED_FILES)}")
    mpath = p / MANIFEST
    if not mpath.is_file():
        raise ModelDirError(
            f"{p} has no {MANIFEST}: it is not a complete model directory (training may have been interrupted); {_RETRAIN}"
        )
    manifest = _read_json(mpath, MANIFEST)
    if not isinstance(manifest, dict):
        raise ModelDirError(f"{mpath} must hold a JSON object; {_RETRAIN}")
    if manifest.get("format") != FORMAT_VERSION:
        raise ModelDirError(
            f"{mpath}: format {manifest.get('format')!r} is not supported (this streamrec reads format {FORMAT_VERSION}); {_RETRAIN}"
        )
    # --- arch (issue 3): hstu_config.json / hstu.safetensors hold the config / weights of `arch`
    arch = manifest.get("arch")
    if arch not in ("hstu", "sasrec"):
        raise ModelDirError(f"{mpath}: arch {arch!r} is not 'hstu' or 'sasrec'; {_RETRAIN}")
    if arch == "sasrec":
        from pipeline.sasrec import SASRecConfig as _Config, SASRecEncoder as _Encoder
    else:
        _Config, _Encoder = HSTUConfig, HSTUEncoder
    # --- end arch
    version = manifest.get("version")
    if not isinstance(version, str) or not version:
        raise ModelDirError(f"{mpath}: missing model version string; {_RETRAIN}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ModelDirError(f"{mpath}: missing the 'files' table of sha256 digests; {_RETRAIN}")
    for req in REQUIRED_FILES:
        if req not in files:
            raise ModelDirError(f"{mpath} does not list {req}; {_RETRAIN}")
    for name, digest in files.items():
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ModelDirError(f"{mpath}: file name {name!r} escapes the directory")
        fp = p / name
        if not fp.is_file():
            raise ModelDirError(f"{p}: {name} is missing (listed in {MANIFEST}); {_RETRAIN}")
        actual = sha256_file(fp)
        if actual != digest:
            raise ModelDirError(
                f"{fp}: sha256 {actual[:12]}… does not match the manifest ({str(digest)[:12]}…): "
                f"the file was modified or corrupted after training; {_RETRAIN}"
            )

    cfg_raw = _read_json(p / CONFIG_FILE, CONFIG_FILE)
    try:
        cfg = _Config.from_dict(cfg_raw)
    except (ValueError, TypeError) as e:
        raise ModelDirError(f"{p / CONFIG_FILE}: invalid config: {e}; {_RETRAIN}") from None

    try:
        raw = (p / ITEMS_FILE).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelDirError(f"{p / ITEMS_FILE} is not UTF-8 text; {_RETRAIN}") from None
    items = raw.split("\n")
    if items and items[-1] == "":
        items.pop()
    try:
        _validate_items(items)
    except ValueError as e:
        raise ModelDirError(f"{p / ITEMS_FILE}: {e}; {_RETRAIN}") from None
    if len(items) != cfg.num_items:
        raise ModelDirError(
            f"{p / ITEMS_FILE} has {len(items)} item ids but {CONFIG_FILE} says num_items={cfg.num_items}; {_RETRAIN}"
        )

    try:
        state = load_file(str(p / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelDirError(f"{p / WEIGHTS_FILE} cannot be read as safetensors ({e}); {_RETRAIN}") from None
    encoder = _Encoder(cfg)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelDirError(
            f"{p / WEIGHTS_FILE} does not match {CONFIG_FILE}: "
            + (f"missing tensors {missing[:5]} " if missing else "")
            + (f"unexpected tensors {extra[:5]} " if extra else "")
            + f"; {_RETRAIN}"
        )
    for name, t in expected.items():
        if tuple(state[name].shape) != tuple(t.shape):
            raise ModelDirError(
                f"{p / WEIGHTS_FILE}: tensor {name} has shape {tuple(state[name].shape)}, "
                f"the config needs {tuple(t.shape)}; {_RETRAIN}"
            )
        if state[name].dtype != t.dtype:
            raise ModelDirError(f"{p / WEIGHTS_FILE}: tensor {name} has dtype {state[name].dtype}, expected {t.dtype}")
        if state[name].is_floating_point() and not bool(torch.isfinite(state[name]).all()):
            raise ModelDirError(f"{p / WEIGHTS_FILE}: tensor {name} holds NaN/inf values; {_RETRAIN}")
    encoder.load_state_dict(state)
    encoder.to(device).eval()

    metrics = _read_json(p / METRICS_FILE, METRICS_FILE)
    titles = None
    if TITLES_FILE in files:
        titles = _read_json(p / TITLES_FILE, TITLES_FILE)
        if not isinstance(titles, dict):
            raise ModelDirError(f"{p / TITLES_FILE} must be a JSON object {{item_id: title}}; {_RETRAIN}")
    return ModelBundle(
        path=p,
        version=version,
        config=cfg,
        encoder=encoder,
        items=items,
        item_index={it: i for i, it in enumerate(items)},
        metrics=metrics if isinstance(metrics, dict) else {"value": metrics},
        titles=titles,
    )
