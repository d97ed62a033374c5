"""HSTU encoder: the attention math, jagged/padded equivalence, batch independence, causality."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.hstu import (
    HSTUConfig,
    HSTUEncoder,
    hstu_attention_padded,
    hstu_attention_reference,
    time_bucket,
)

torch.set_num_threads(2)


def _offsets(lengths):
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.long)


def _random_batch(lengths, num_items, seed=0, num_actions=8):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    items = torch.randint(0, num_items + 1, (T,), generator=g)  # includes the OOV index
    actions = torch.randint(0, num_actions, (T,), generator=g)
    ts = []
    for L in lengths:  # chronological per sequence, gaps from 0 s to ~days
        gaps = torch.randint(0, 3, (L,), generator=g) * torch.randint(0, 200_000_000, (L,), generator=g)
        ts.append(1_700_000_000_000 + gaps.cumsum(0))
    return items, actions, torch.cat(ts), _offsets(lengths)


def _encoder(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = HSTUConfig(num_items=kw.pop("num_items", 40), **{"max_seq_len": 16, "attn_n": 16, "num_time_buckets": 24, **kw})
    enc = HSTUEncoder(cfg).eval()
    # non-zero relative bias so rab is really exercised
    with torch.no_grad():
        for layer in enc.layers:
            layer.pos_w.normal_(0, 0.5)
            layer.time_w.normal_(0, 0.5)
    return enc


def naive_attention(q, k, v, offsets, ts_s, pos_w, time_w, attn_n, nb):
    """Per-pair loop straight from the formula."""
    T, H, _ = q.shape
    out = torch.zeros(T, H, v.shape[-1], dtype=torch.float64)
    P = pos_w.shape[0]
    for b in range(len(offsets) - 1):
        s, e = int(offsets[b]), int(offsets[b + 1])
        for i in range(s, e):
            for j in range(s, i + 1):
                dt = abs(int(ts_s[i]) - int(ts_s[j]))
                bucket = min(int(math.floor(math.log(max(dt, 1)) / 0.301)), nb - 1)
                rab = float(pos_w[min(i - j, P - 1)]) + float(time_w[bucket])
                for h in range(H):
                    x = float(q[i, h] @ k[j, h]) + rab
                    a = x / (1 + math.exp(-x)) / attn_n
                    out[i, h] += a * v[j, h].double()
    return out


def _attn_inputs(lengths, H=2, dqk=4, dv=3, P=5, nb=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q = torch.randn(T, H, dqk, generator=g)
    k = torch.randn(T, H, dqk, generator=g)
    v = torch.randn(T, H, dv, generator=g)
    ts_s = torch.cat([torch.randint(0, 10**6, (L,), generator=g).sort().values for L in lengths])
    pos_w = torch.randn(P, generator=g)
    time_w = torch.randn(nb, generator=g)
    return q, k, v, _offsets(lengths), ts_s, pos_w, time_w


@pytest.mark.parametrize("lengths", [[1], [3, 7, 1], [8, 2, 5, 6]])
def test_reference_matches_per_pair_loop(lengths):
    q, k, v, off, ts, pw, tw = _attn_inputs(lengths)
    ref = hstu_attention_reference(q, k, v, off, ts, pw, tw, 11, 8)
    naive = naive_attention(q, k, v, off, ts, pw, tw, 11, 8)
    torch.testing.assert_close(ref.double(), naive, atol=1e-5, rtol=1e-5)


def test_padded_attention_equals_reference():
    lengths = [5, 1, 12, 3, 9]
    q, k, v, off, ts, pw, tw = _attn_inputs(lengths, P=6, nb=12, seed=3)
    ref = hstu_attention_reference(q, k, v, off, ts, pw, tw, 20, 12)
    pad = hstu_attention_padded(q, k, v, off, ts, pw, tw, 20, 12)
    torch.testing.assert_close(pad, ref, atol=1e-5, rtol=1e-5)


def test_time_bucket_values():
    dt = torch.tensor([0, 1, -1, 2, 3600, -3600, 10**12])
    b = time_bucket(dt, 64)
    expected = [0, 0, 0, math.floor(math.log(2) / 0.301), math.floor(math.log(3600) / 0.301)] * 1
    assert b[:5].tolist() == expected
    assert b[5].item() == expected[4]  # |dt|
    assert b[6].item() == min(math.floor(math.log(1e12) / 0.301), 63)
    assert time_bucket(torch.tensor([10**12]), 10).item() == 9  # clamped


def test_encoder_jagged_equals_padded_path():
    enc = _encoder(num_layers=2)
    items, actions, ts, off = _random_batch([4, 1, 16, 9], enc.cfg.num_items, seed=1)
    with torch.no_grad():
        jag = enc.encode(items, actions, ts, off)
        enc.set_attention(hstu_attention_padded)
        pad = enc.encode(items, actions, ts, off)
    assert jag.shape == (sum([4, 1, 16, 9]), enc.cfg.dim)
    torch.testing.assert_close(pad, jag, atol=1e-5, rtol=1e-4)


def test_encoder_matches_dense_padded_reimplementation():
    """An independent dense (B, L) implementation of the whole layer stack gives the same numbers."""
    enc = _encoder(num_layers=2, num_heads=2, qk_dim=8, v_dim=6, dim=16)
    lengths = [3, 6, 2]
    items, actions, ts, off = _random_batch(lengths, enc.cfg.num_items, seed=2)
    cfg = enc.cfg
    with torch.no_grad():
        jag = enc.encode(items, actions, ts, off)
        B, L = len(lengths), max(lengths)
        x = torch.zeros(B, L, cfg.dim)
        tsp = torch.zeros(B, L, dtype=torch.long)
        valid = torch.zeros(B, L, dtype=torch.bool)
        for b in range(B):
            s, e = int(off[b]), int(off[b + 1])
            x[b, : e - s] = enc.item_emb(items[s:e]) + enc.action_emb(actions[s:e])
            tsp[b, : e - s] = ts[s:e] // 1000
            valid[b, : e - s] = True
        idx = torch.arange(L)
        rel = (idx[:, None] - idx[None, :]).clamp(0, cfg.max_seq_len - 1)
        dt = (tsp[:, :, None] - tsp[:, None, :]).abs().clamp(min=1).float()
        bucket = torch.floor(torch.log(dt) / 0.301).long().clamp(max=cfg.num_time_buckets - 1)
        mask = torch.ones(L, L).tril().bool()[None] & valid[:, None, :]
        for layer in enc.layers:
            h = F.silu(layer.uvqk(layer.norm(x)))
            Hv, Hq = cfg.num_heads * cfg.v_dim, cfg.num_heads * cfg.qk_dim
            u, v, q, k = h.split([Hv, Hv, Hq, Hq], -1)
            q = q.view(B, L, cfg.num_heads, cfg.qk_dim).transpose(1, 2)
            k = k.view(B, L, cfg.num_heads, cfg.qk_dim).transpose(1, 2)
            v = v.view(B, L, cfg.num_heads, cfg.v_dim).transpose(1, 2)
            rab = layer.pos_w[rel][None] + layer.time_w[bucket]
            a = F.silu(q @ k.transpose(-1, -2) + rab[:, None]) / cfg.attn_n
            a = a * mask[:, None]
            av = (a @ v).transpose(1, 2).reshape(B, L, Hv)
            x = x + layer.out(u * F.layer_norm(av, (Hv,), eps=1e-6))
        x = enc.final_norm(x)
        dense = torch.cat([x[b, :n] for b, n in enumerate(lengths)])
    torch.testing.assert_close(jag, dense, atol=1e-5, rtol=1e-4)


def test_user_embedding_independent_of_batch():
    enc = _encoder()
    n = enc.cfg.num_items
    a = _random_batch([7], n, seed=10)
    others = _random_batch([16, 2, 11], n, seed=11)
    with torch.no_grad():
        alone = enc(*a)[0]
        # the same user placed between other (longer and shorter) users
        items = torch.cat([others[0][:16], a[0], others[0][16:]])
        actions = torch.cat([others[1][:16], a[1], others[1][16:]])
        ts = torch.cat([others[2][:16], a[2], others[2][16:]])
        off = _offsets([16, 7, 2, 11])
        batched = enc(items, actions, ts, off)[1]
        enc.set_attention(hstu_attention_padded)
        batched_padded = enc(items, actions, ts, off)[1]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched_padded, alone, atol=1e-5, rtol=1e-4)
    assert abs(float(alone.norm()) - 1.0) < 1e-5


def test_causality_appending_events_keeps_earlier_outputs():
    enc = _encoder()
    items, actions, ts, _ = _random_batch([12], enc.cfg.num_items, seed=4)
    with torch.no_grad():
        full = enc.encode(items, actions, ts, _offsets([12]))
        for n in (1, 5, 11):
            prefix = enc.encode(items[:n], actions[:n], ts[:n], _offsets([n]))
            torch.testing.assert_close(prefix, full[:n], atol=1e-5, rtol=1e-4)
        # and the last position does depend on the newest event
        changed = items.clone()
        changed[-1] = (changed[-1] + 1) % enc.cfg.num_items
        assert not torch.allclose(enc.encode(changed, actions, ts, _offsets([12]))[-1], full[-1])


def test_relative_bias_and_actions_matter():
    enc = _encoder()
    items, actions, ts, off = _random_batch([9], enc.cfg.num_items, seed=5)
    with torch.no_grad():
        base = enc(items, actions, ts, off)
        assert not torch.allclose(enc(items, (actions + 1) % 8, ts, off), base)
        enc.layers[0].time_w.add_(torch.linspace(-1, 1, enc.cfg.num_time_buckets))
        assert not torch.allclose(enc(items, actions, ts, off), base)
        enc.layers[0].pos_w.add_(torch.linspace(-1, 1, enc.cfg.max_seq_len))


def test_sequences_longer_than_table_use_last_bias_and_gradients_flow():
    enc = _encoder()
    enc.train()
    enc.set_attention(hstu_attention_padded)
    items, actions, ts, off = _random_batch([20, 3], enc.cfg.num_items, seed=6)  # 20 > max_seq_len 16
    out = enc.encode(items, actions, ts, off)
    out.sum().backward()
    for layer in enc.layers:
        assert layer.pos_w.grad is not None and layer.pos_w.grad.abs().sum() > 0
        assert layer.time_w.grad is not None and layer.time_w.grad.abs().sum() > 0
    assert enc.item_emb.weight.grad.abs().sum() > 0


def test_item_table_excludes_oov_and_is_normalised():
    enc = _encoder(num_items=30)
    table = enc.item_table()
    assert table.shape == (30, enc.cfg.dim)
    torch.testing.assert_close(table.norm(dim=1), torch.ones(30))


def test_bad_inputs_raise():
    enc = _encoder()
    items, actions, ts, off = _random_batch([3, 2], enc.cfg.num_items)
    with pytest.raises(ValueError):
        enc.encode(items, actions, ts, torch.tensor([0, 3, 4]))
    with pytest.raises(ValueError):
        enc(items, actions, ts, torch.tensor([0, 3, 3, 5]))  # an empty sequence


def test_config_round_trip_and_validation():
    cfg = HSTUConfig(num_items=10, dim=16)
    assert HSTUConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="num_heads"):
        HSTUConfig.from_dict({**cfg.to_dict(), "num_heads": 0})
    with pytest.raises(ValueError, match="dim"):
        HSTUConfig.from_dict({**cfg.to_dict(), "dim": "64"})
    with pytest.raises(ValueError, match="bogus"):
        HSTUConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="num_items"):
        HSTUConfig.from_dict({"dim": 8})
    with pytest.raises(ValueError, match="dropout"):
        HSTUConfig(num_items=3, dropout=1.5)
