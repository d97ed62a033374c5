"""Random jagged batches for the encoder parity tests, the export check and the benchmark."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from pipeline.hstu import HSTUConfig

__all__ = ["random_jagged", "random_lengths", "random_encoder", "make_model_dir", "shared_exported_model_dir"]


def random_lengths(B: int, max_len: int, seed: int = 0, include_extremes: bool = True) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, max_len + 1, (B,), generator=g).tolist()
    if include_extremes and B >= 2:
        lens[0], lens[1] = 1, max_len
    return lens


def random_jagged(cfg: HSTUConfig, lengths: Sequence[int], seed: int = 0,
                  oov: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(item_idx, action_idx, ts_ms, offsets) with the given lengths; realistic, sorted timestamps.

    Time gaps span seconds to months (so every time bucket is exercised), items include the
    OOV index when ``oov``.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = [int(x) for x in lengths]
    T = sum(lengths)
    hi = cfg.num_items + (1 if oov else 0)
    item = torch.randint(0, hi, (T,), generator=g)
    action = torch.randint(0, cfg.num_actions, (T,), generator=g)
    # log-uniform gaps between 0.1 s and ~100 days, cumulated per sequence
    gaps = torch.exp(torch.empty(T).uniform_(torch.log(torch.tensor(100.0)).item(), 22.9, generator=g)).long()
    ts = torch.empty(T, dtype=torch.long)
    offsets = [0]
    for n in lengths:
        s = offsets[-1]
        start = 1_700_000_000_000 + int(torch.randint(0, 10**9, (1,), generator=g))
        ts[s:s + n] = start + torch.cumsum(gaps[s:s + n], 0) - gaps[s]
        offsets.append(s + n)
    return item, action, ts, torch.tensor(offsets, dtype=torch.long)


def random_encoder(cfg: HSTUConfig, seed: int = 0, device: str = "cpu", bias_std: float = 0.3):
    """An eval-mode ``HSTUEncoder`` on ``device`` with random weights and non-zero relative-bias
    tables (std ``bias_std``) and projection bias (std 0.1): the init zeroes them, which would hide
    a wrong bias in a parity test or a benchmark."""
    from pipeline.hstu import HSTUEncoder

    torch.manual_seed(seed)
    enc = HSTUEncoder(cfg).to(device).eval()
    with torch.no_grad():
        for layer in enc.layers:
            layer.pos_w.normal_(0, bias_std)
            layer.time_w.normal_(0, bias_std)
            layer.uvqk.bias.normal_(0, 0.1)
    return enc


def make_model_dir(out, *, seed: int = 0, num_items: int = 60, dim: int = 32, num_layers: int = 2,
                   max_seq_len: int = 40, num_heads: int = 2, qk_dim: int = 16, v_dim: int = 16):
    """A small verified model directory with random weights, incl. non-zero relative-bias tables
    (they are initialised to 0, which would hide a wrong rab in a parity test). Returns its path."""
    from pathlib import Path

    from pipeline.hstu import HSTUEncoder
    from pipeline.model_dir import save_model_dir

    torch.manual_seed(seed)
    cfg = HSTUConfig(num_items=num_items, dim=dim, num_layers=num_layers, num_heads=num_heads, qk_dim=qk_dim,
                     v_dim=v_dim, max_seq_len=max_seq_len, attn_n=max_seq_len, num_time_buckets=64)
    enc = HSTUEncoder(cfg)
    with torch.no_grad():
        for layer in enc.layers:
            layer.pos_w.normal_(0, 0.5)
            layer.time_w.normal_(0, 0.5)
        enc.item_emb.weight.normal_(0, 0.5)
    items = [f"it{n:04d}" for n in range(num_items)]
    out = Path(out)
    save_model_dir(out, enc, items, {"note": "random weights, encoder backend tests"})
    return out


_SHARED: dict = {}


def shared_exported_model_dir(int8: bool = True):
    """One small model directory per process with its fp32 (and INT8) export, for tests.

    Built on first use under a temp dir (an export costs seconds; several test modules share
    it). Treat it as read-only: copy it (shutil.copytree) before changing anything.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from pipeline.encoders.onnx_export import ensure_export
    from pipeline.model_dir import load_model_dir

    key = "int8" if int8 else "fp32"
    if key not in _SHARED:
        if "dir" not in _SHARED:
            root = Path(tempfile.mkdtemp(prefix="streamrec-enc-test-"))
            import atexit

            atexit.register(shutil.rmtree, root, True)
            d = make_model_dir(root / "model", seed=2, max_seq_len=64)
            ensure_export(load_model_dir(d), "fp32")
            _SHARED["dir"] = d
        d = _SHARED["dir"]
        if int8:
            from pipeline.encoders.onnx_export import find_export
            from pipeline.encoders.quantize import ensure_quantized

            ensure_quantized(load_model_dir(d), find_export(d, "fp32"))
        _SHARED[key] = d
    return _SHARED[key]
