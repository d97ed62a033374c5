"""Model directory: round trip, and every verification failure is a clear ModelDirError."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.hstu import HSTUConfig, HSTUEncoder
from pipeline.model_dir import ModelDirError, load_model_dir, save_model_dir, sha256_file

torch.set_num_threads(2)

ITEMS = [f"i{n:03d}" for n in range(20)]


def _encoder(seed=0, **kw):
    torch.manual_seed(seed)
    return HSTUEncoder(HSTUConfig(num_items=kw.pop("num_items", 20), dim=8, num_layers=1, num_heads=1, qk_dim=4, v_dim=4,
                                  max_seq_len=6, attn_n=6, num_time_buckets=8, **kw))


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    d = tmp_path / "model"
    save_model_dir(d, _encoder(), ITEMS, {"test": {"hr@10": 0.5}}, titles={"i000": "The Zero"})
    return d


def _rehash(d: Path) -> None:
    """Update the manifest after a deliberate edit, so the NEXT check (not the sha256) is what fails."""
    m = json.loads((d / "manifest.json").read_text())
    m["files"] = {name: sha256_file(d / name) for name in m["files"] if (d / name).exists()}
    (d / "manifest.json").write_text(json.dumps(m))


def test_round_trip(model_dir):
    b = load_model_dir(model_dir)
    enc = _encoder()
    assert b.items == ITEMS and b.item_index["i007"] == 7
    assert b.item_idx("i019") == 19 and b.item_idx("nope") == b.config.num_items == 20
    assert b.titles == {"i000": "The Zero"}
    assert b.metrics["test"]["hr@10"] == 0.5
    assert b.config == enc.cfg
    assert not b.encoder.training
    weights_sha = sha256_file(model_dir / "hstu.safetensors")
    assert b.version == f"hstu-{weights_sha[:12]}"
    x = (torch.tensor([1, 2, 20]), torch.tensor([0, 6, 1]), torch.tensor([1000, 5000, 9_000_000]), torch.tensor([0, 3]))
    with torch.no_grad():
        torch.testing.assert_close(b.encoder(*x), enc.eval()(*x))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["arch"] == "hstu" and manifest["format"] == 1 and manifest["created_at"].endswith("Z")
    assert set(manifest["files"]) == {"hstu_config.json", "hstu.safetensors", "items.txt", "metrics.json", "titles.json"}


def test_same_weights_same_version_and_rewrite_drops_titles(tmp_path):
    enc = _encoder()
    # same weights -> byte-identical safetensors -> same version, every time (safetensors' metadata map
    # has no stable order, so save_model_dir writes a single metadata key)
    versions = {save_model_dir(tmp_path / f"v{n}", enc, ITEMS, {"n": n}) for n in range(6)}
    assert len(versions) == 1
    v1 = versions.pop()
    assert save_model_dir(tmp_path / "b", _encoder(), ITEMS, {"other": 1}) == v1
    save_model_dir(tmp_path / "c", _encoder(), ITEMS, {}, titles={"i001": "x"})
    v3 = save_model_dir(tmp_path / "c", _encoder(seed=1), ITEMS, {})
    assert v3 != v1
    b = load_model_dir(tmp_path / "c")
    assert b.titles is None and b.version == v3


def test_save_rejects_bad_vocab(tmp_path):
    with pytest.raises(ValueError, match="19 item ids"):
        save_model_dir(tmp_path / "x", _encoder(), ITEMS[:-1], {})
    with pytest.raises(ValueError, match="twice"):
        save_model_dir(tmp_path / "x", _encoder(), ITEMS[:-1] + ["i000"], {})


def _expect(path, *fragments):
    with pytest.raises(ModelDirError) as e:
        load_model_dir(path)
    msg = str(e.value)
    for f in fragments:
        assert f in msg, msg
    return msg


def test_missing_directory(tmp_path):
    _expect(tmp_path / "nope", "does not exist", "streamrec train")


def test_not_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    _expect(f, "not a directory")


def test_missing_manifest(model_dir):
    (model_dir / "manifest.json").unlink()
    _expect(model_dir, "manifest.json", "streamrec train")


def test_corrupt_manifest(model_dir):
    (model_dir / "manifest.json").write_text("{not json")
    _expect(model_dir, "not valid JSON")


def test_unsupported_format(model_dir):
    m = json.loads((model_dir / "manifest.json").read_text())
    m["format"] = 99
    (model_dir / "manifest.json").write_text(json.dumps(m))
    _expect(model_dir, "format 99")


def test_tampered_weights(model_dir):
    data = bytearray((model_dir / "hstu.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (model_dir / "hstu.safetensors").write_bytes(bytes(data))
    _expect(model_dir, "hstu.safetensors", "does not match the manifest")


@pytest.mark.parametrize("name", ["items.txt", "hstu.safetensors", "hstu_config.json", "metrics.json", "titles.json"])
def test_missing_file(model_dir, name):
    (model_dir / name).unlink()
    _expect(model_dir, name, "missing")


def test_file_not_listed_in_manifest(model_dir):
    m = json.loads((model_dir / "manifest.json").read_text())
    del m["files"]["items.txt"]
    (model_dir / "manifest.json").write_text(json.dumps(m))
    _expect(model_dir, "does not list items.txt")


def test_tampered_items_file(model_dir):
    (model_dir / "items.txt").write_text("\n".join(reversed(ITEMS)) + "\n")
    _expect(model_dir, "items.txt", "does not match the manifest")


def test_wrong_item_count(model_dir):
    (model_dir / "items.txt").write_text("\n".join(ITEMS[:-2]) + "\n")
    _rehash(model_dir)
    _expect(model_dir, "18 item ids", "num_items=20")


def test_duplicate_and_empty_item_ids(model_dir):
    (model_dir / "items.txt").write_text("\n".join(ITEMS[:-1] + ["i003"]) + "\n")
    _rehash(model_dir)
    _expect(model_dir, "appears twice")
    (model_dir / "items.txt").write_text("\n".join(ITEMS[:5] + [""] + ITEMS[6:]) + "\n")
    _rehash(model_dir)
    _expect(model_dir, "empty")


def test_invalid_config(model_dir):
    cfg = json.loads((model_dir / "hstu_config.json").read_text())
    cfg["num_layers"] = 0
    (model_dir / "hstu_config.json").write_text(json.dumps(cfg))
    _rehash(model_dir)
    _expect(model_dir, "num_layers")


def test_weights_do_not_match_config(model_dir):
    cfg = json.loads((model_dir / "hstu_config.json").read_text())
    cfg["dim"] = 16
    (model_dir / "hstu_config.json").write_text(json.dumps(cfg))
    _rehash(model_dir)
    _expect(model_dir, "shape", "hstu.safetensors")


def test_weights_from_other_architecture(model_dir):
    cfg = json.loads((model_dir / "hstu_config.json").read_text())
    cfg["num_layers"] = 2
    (model_dir / "hstu_config.json").write_text(json.dumps(cfg))
    _rehash(model_dir)
    _expect(model_dir, "missing tensors")


def test_garbage_weights(model_dir):
    (model_dir / "hstu.safetensors").write_bytes(b"\x00" * 64)
    _rehash(model_dir)
    _expect(model_dir, "cannot be read as safetensors")


def test_copy_of_a_valid_dir_verifies(model_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(model_dir, dst)
    assert load_model_dir(dst).version == load_model_dir(model_dir).version
