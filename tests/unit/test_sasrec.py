"""SASRec baseline (pipeline/sasrec.py): jagged/padded equivalence, batch independence,
the --arch sasrec training round trip, and the model-info parameter calculator."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import typer
from typer.testing import CliRunner

from pipeline.hstu import HSTUConfig, HSTUEncoder
from pipeline.model_dir import load_model_dir
from pipeline.model_info import activation_memory, flops, parameter_breakdown
from pipeline.recommender import HistoryEvent, Recommender, UserRequest
from pipeline.sasrec import (
    SASRecConfig,
    SASRecEncoder,
    jagged_positions,
    sasrec_attention_padded,
    sasrec_attention_reference,
)
from worker.commands import evaluate as eval_cmd
from worker.commands import model_info as model_info_cmd
from worker.commands import train as train_cmd

torch.set_num_threads(1)


def _cfg(**kw) -> SASRecConfig:
    base = dict(num_items=40, dim=16, num_layers=2, num_heads=2, ffn_dim=24, max_seq_len=12, dropout=0.0)
    base.update(kw)
    return SASRecConfig(**base)


def _batch(lengths, num_items=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    items = torch.randint(0, num_items + 1, (T,), generator=g)
    actions = torch.randint(0, 8, (T,), generator=g)
    ts = torch.cumsum(torch.randint(1, 10_000_000, (T,), generator=g), 0)
    offsets = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.long)
    return items, actions, ts, offsets


def _dense_sasrec(enc: SASRecEncoder, items, actions) -> torch.Tensor:
    """Independent dense re-implementation for ONE left-padded-free sequence (L,), straight from the paper."""
    cfg = enc.cfg
    L = items.shape[0]
    x = enc.item_emb(items) * math.sqrt(cfg.dim) + enc.action_emb(actions)
    x = x + enc.pos_emb.weight[cfg.max_seq_len - L : cfg.max_seq_len]
    mask = torch.ones(L, L, dtype=torch.bool).triu(1)
    H, dh = cfg.num_heads, cfg.dim // cfg.num_heads
    for blk in enc.blocks:
        q_in = blk.attn_norm(x)
        q = blk.q(q_in).view(L, H, dh).transpose(0, 1)
        k, v = blk.kv(x).view(L, 2, H, dh).permute(1, 2, 0, 3)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        a = torch.softmax(s.masked_fill(mask, float("-inf")), -1) @ v
        x = q_in + blk.out(a.transpose(0, 1).reshape(L, cfg.dim))
        z = blk.ffn_norm(x)
        x = z + blk.ffn2(F.relu(blk.ffn1(z)))
    return enc.final_norm(x)


def test_attention_padded_equals_reference():
    torch.manual_seed(0)
    offsets = torch.tensor([0, 1, 6, 6, 13])
    q, k, v = (torch.randn(13, 2, 8) for _ in range(3))
    ref = sasrec_attention_reference(q, k, v, offsets)
    pad = sasrec_attention_padded(q, k, v, offsets)
    torch.testing.assert_close(pad, ref, atol=1e-5, rtol=1e-5)


def test_jagged_encoder_matches_dense_and_reference():
    torch.manual_seed(1)
    enc = SASRecEncoder(_cfg()).eval()
    lengths = [5, 1, 12, 3]
    it, ac, ts, off = _batch(lengths)
    with torch.no_grad():
        padded = enc.encode(it, ac, ts, off)
        enc.attention_impl = "reference"
        ref = enc.encode(it, ac, ts, off)
        torch.testing.assert_close(padded, ref, atol=1e-5, rtol=1e-5)
        for b in range(len(lengths)):
            s, e = int(off[b]), int(off[b + 1])
            torch.testing.assert_close(padded[s:e], _dense_sasrec(enc, it[s:e], ac[s:e]), atol=1e-5, rtol=1e-5)


def test_user_embedding_is_batch_independent():
    torch.manual_seed(2)
    enc = SASRecEncoder(_cfg()).eval()
    it, ac, ts, off = _batch([4, 11, 2, 7], seed=3)
    with torch.no_grad():
        together = enc(it, ac, ts, off)
        for b in range(4):
            s, e = int(off[b]), int(off[b + 1])
            alone = enc(it[s:e], ac[s:e], ts[s:e], torch.tensor([0, e - s]))
            torch.testing.assert_close(together[b : b + 1], alone, atol=1e-5, rtol=1e-5)
    assert torch.allclose(together.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_positions_match_left_padded_reference():
    # the last event of every sequence gets position max_seq_len - 1, as in the left-padded reference code
    pos = jagged_positions(torch.tensor([0, 3, 4]), 10)
    assert pos.tolist() == [7, 8, 9, 9]


def test_gradients_reach_every_parameter():
    enc = SASRecEncoder(_cfg(dropout=0.1)).train()
    it, ac, ts, off = _batch([6, 3])
    enc.encode(it, ac, ts, off).pow(2).sum().backward()
    assert [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


# ------------------------------------------------------------------ model-info
def test_parameter_calculator_by_hand():
    # SASRec: N=10 items, d=4, A=8 actions, 1 layer, f=6, P=5 positions
    cfg = SASRecConfig(num_items=10, num_actions=8, dim=4, num_layers=1, num_heads=2, ffn_dim=6, max_seq_len=5)
    p = parameter_breakdown(cfg)
    # items 11*4=44, actions 32, positions 20; layer: LNs 16, qkv 3*16+12=60, out 16+4=20, ffn 24+6+24+4=58 -> 154; final 8
    assert p["components"] == {"item_embedding": 44, "action_embedding": 32, "position_embedding": 20,
                               "layers": 154, "final_norm": 8}
    assert p["total"] == 258 == SASRecEncoder(cfg).num_parameters()
    # HSTU: d=4, H=2, dqk=3, dv=2, P=5, buckets=7
    h = HSTUConfig(num_items=10, num_actions=8, dim=4, num_layers=1, num_heads=2, qk_dim=3, v_dim=2,
                   max_seq_len=5, attn_n=5, num_time_buckets=7)
    hp = parameter_breakdown(h)
    # uvqk width 2*(4+6)=20: 4*20+20=100; LN 8; rab 12; out 2*2*4+4=20 -> 140; items 44, actions 32, final 8
    assert hp["per_layer"] == {"layer_norm": 8, "uvqk_projection": 100, "rab": 12, "output_projection": 20}
    assert hp["total"] == 224 == HSTUEncoder(h).num_parameters()


def test_flops_and_memory_by_hand():
    h = HSTUConfig(num_items=10, num_actions=8, dim=4, num_layers=1, num_heads=2, qk_dim=3, v_dim=2,
                   max_seq_len=5, attn_n=5, num_time_buckets=7)
    f = flops(h, 3)
    # projections per event: 2*4*20 + 2*2*2*4 = 160 + 32 = 192; attention per pair 2*2*(3+2) = 20
    assert f["per_new_event"] == {"projections": 192, "attention": 60, "encoder": 252, "output": 80, "total": 332}
    # full L=3: 3*192 = 576; pairs 6 -> 120; dense 9 pairs -> 180
    full = f["per_full_sequence"]
    assert (full["projections"], full["attention"], full["attention_dense"], full["total"]) == (576, 120, 180, 776)
    s = SASRecConfig(num_items=10, dim=4, num_layers=2, num_heads=2, ffn_dim=6, max_seq_len=5)
    fs = flops(s, 2)
    # per event per layer: 2*16 + 2*4*8 + 2*16 + 2*2*4*6 = 32+64+32+96 = 224; pair 16; 2 layers
    assert fs["per_new_event"]["projections"] == 448 and fs["per_new_event"]["attention"] == 2 * 16 * 2
    assert fs["per_full_sequence"]["attention"] == 2 * 16 * 3
    m = activation_memory(h, B=2, L=3)
    # per event: x 4 + ln 4 + uvqk 20 + AV 4 + y 4 + out 4 = 40; per layer 2*3*40 + 2*2*2*9 = 240 + 72 = 312; input 24
    assert m["per_layer_elements"] == 312
    assert m["inference_peak_bytes"] == 4 * (312 + 24) and m["training_saved_bytes"] == 4 * (312 + 24)


# ------------------------------------------------------------------ CLI round trip
@pytest.fixture(scope="module")
def app() -> typer.Typer:
    a = typer.Typer(pretty_exceptions_enable=False)
    train_cmd.register(a)
    eval_cmd.register(a)
    model_info_cmd.register(a)
    return a


def test_train_arch_sasrec_round_trip(app, tmp_path):
    out = tmp_path / "sasrec"
    res = CliRunner().invoke(app, ["train", "--quick", "--arch", "sasrec", "--epochs", "3", "--threads", "1",
                                   "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arch"] == "sasrec" and manifest["version"].startswith("sasrec-")
    assert json.loads((out / "metrics.json").read_text())["arch"] == "sasrec"
    bundle = load_model_dir(out)
    assert isinstance(bundle.encoder, SASRecEncoder)
    rec = Recommender(bundle, k=5)
    r = rec.recommend([UserRequest("u", [HistoryEvent(bundle.items[1], "click", 1_000), HistoryEvent(bundle.items[2], "view", 2_000)])])
    assert len(r[0].items) == 5
    res = CliRunner().invoke(app, ["eval", str(out), "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    assert ev["version"] == manifest["version"] and 0.0 <= ev["hr@10"] <= 1.0
    res = CliRunner().invoke(app, ["model-info", str(out), "--json", "-L", "8", "-B", "4"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["arch"] == "sasrec" and info["parameters"]["matches_weights"]
    assert info["flops"]["seq_len"] == 8 and info["activation_memory"]["batch"] == 4
    res = CliRunner().invoke(app, ["train", "--quick", "--arch", "gru", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "arch" in res.output


def test_model_info_refuses_bad_dir(app, tmp_path):
    res = CliRunner().invoke(app, ["model-info", str(tmp_path / "missing")])
    assert res.exit_code == 2


def test_model_info_agrees_with_hstu_flops_per_event():
    from pipeline.hstu import flops_per_event

    h = HSTUConfig(num_items=100, dim=64, num_layers=2, num_heads=2, qk_dim=32, v_dim=32, max_seq_len=50, attn_n=50)
    assert flops(h, 50)["per_new_event"]["encoder"] == flops_per_event(h, 50)
