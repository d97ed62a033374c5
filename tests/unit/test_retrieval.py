"""Retrieval top-k and the Recommender facade the worker calls."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.hstu import HSTUConfig, HSTUEncoder
from pipeline.model_dir import load_model_dir, save_model_dir
from pipeline.recommender import HistoryEvent, Recommender, UserRequest
from pipeline.retrieval import top_k_items

torch.set_num_threads(2)


def test_top_k_matches_brute_force_without_exclusions():
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(5, 8, generator=g), torch.randn(50, 8, generator=g)
    scores, idx = top_k_items(users, items, 7, None)
    full = users @ items.T
    for b in range(5):
        expect = sorted(range(50), key=lambda i: -float(full[b, i]))[:7]
        assert idx[b].tolist() == expect
        torch.testing.assert_close(scores[b], full[b, expect])


def test_excluded_items_are_never_returned():
    g = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    for trial in range(30):
        B, N, k = 6, 40, int(rng.integers(1, 15))
        users, items = torch.randn(B, 4, generator=g), torch.randn(N, 4, generator=g)
        exclude = [rng.choice(N, size=int(rng.integers(0, 30)), replace=False).tolist() for _ in range(B)]
        # the best items are the ones most likely to leak: exclude them for some users
        best = (users @ items.T).argmax(1).tolist()
        exclude[0].append(best[0])
        scores, idx = top_k_items(users, items, k, exclude)
        assert idx.shape == (B, k)
        for b in range(B):
            got = [i for i in idx[b].tolist() if i >= 0]
            assert not set(got) & set(exclude[b])
            assert len(got) == min(k, N - len(set(exclude[b])))
            assert len(set(got)) == len(got)
            assert (scores[b, :-1] >= scores[b, 1:]).all()


def test_fewer_eligible_items_than_k_are_marked():
    users, items = torch.randn(1, 3), torch.randn(4, 3)
    scores, idx = top_k_items(users, items, 10, [[0, 1, 2]])  # k clipped to 4, only item 3 eligible
    assert idx.shape == (1, 4)
    assert idx[0, 0].item() == 3
    assert idx[0, 1:].tolist() == [-1, -1, -1]
    assert torch.isneginf(scores[0, 1:]).all()


def test_out_of_range_exclusions_are_ignored_and_bad_shapes_raise():
    users, items = torch.randn(2, 3), torch.randn(5, 3)
    _, idx = top_k_items(users, items, 5, [[5, 99], []])  # 5 = the OOV index of a 5-item model
    assert sorted(idx[0].tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        top_k_items(users, torch.randn(5, 4), 3, None)
    with pytest.raises(ValueError):
        top_k_items(users, items, 0, None)
    with pytest.raises(ValueError):
        top_k_items(users, items, 3, [[1]])  # one row for two users


# ------------------------------------------------------------- Recommender
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    cfg = HSTUConfig(num_items=30, dim=16, num_layers=1, num_heads=2, qk_dim=8, v_dim=8, max_seq_len=8, attn_n=8)
    enc = HSTUEncoder(cfg)
    items = [f"item-{i}" for i in range(30)]
    out = tmp_path_factory.mktemp("m")
    save_model_dir(out, enc, items, {"note": "test"})
    return load_model_dir(out)


def _events(ids, t0=1_700_000_000_000):
    actions = ["view", "click", "skip", "purchase"]
    return [HistoryEvent(i, actions[n % 4], t0 + 5000 * n) for n, i in enumerate(ids)]


def test_recommend_excludes_recent_items_and_counts_oov(bundle):
    rec = Recommender(bundle, k=10, exclude_recent=5)
    hist_a = _events([f"item-{i}" for i in range(12)])
    hist_b = _events(["item-3", "unknown-1", "unknown-2", "item-4"])
    out = rec.recommend([UserRequest("a", hist_a), UserRequest("b", hist_b)])
    assert [r.user_id for r in out] == ["a", "b"]
    recent_a = {e.item_id for e in hist_a[-5:]}
    assert len(out[0].items) == 10 and not recent_a & {i for i, _ in out[0].items}
    assert not {"item-3", "item-4"} & {i for i, _ in out[1].items}
    for r in out:
        scores = [s for _, s in r.items]
        assert scores == sorted(scores, reverse=True)
        assert r.embedding.dtype == np.float32 and r.embedding.shape == (16,)
    assert rec.oov_count == 2
    # older items (beyond exclude_recent) may be recommended again: exclusion is only the recent window
    assert rec.encoder_name == "torch" and rec.generator_name == "retrieval"


def test_recommend_is_batch_independent_and_matches_embed(bundle):
    rec = Recommender(bundle, k=5)
    reqs = [
        UserRequest("x", _events(["item-1", "item-2", "item-9"])),
        UserRequest("y", _events([f"item-{i}" for i in range(10, 30)])),  # longer than max_seq_len: capped
        UserRequest("z", _events(["item-7"])),
    ]
    together = rec.recommend(reqs)
    alone = [rec.recommend([r])[0] for r in reqs]
    for t, a in zip(together, alone):
        assert [i for i, _ in t.items] == [i for i, _ in a.items]
        np.testing.assert_allclose(t.embedding, a.embedding, atol=1e-5)
    emb = rec.embed(reqs)
    assert emb.shape == (3, 16)
    np.testing.assert_allclose(emb[1], together[1].embedding, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_recommend_rejects_empty_history_and_unknown_action(bundle):
    rec = Recommender(bundle)
    with pytest.raises(ValueError, match="no events"):
        rec.recommend([UserRequest("a", _events(["item-1"])), UserRequest("b", [])])
    with pytest.raises(ValueError, match="teleport"):
        rec.recommend([UserRequest("a", [HistoryEvent("item-1", "teleport", 1)])])
    assert rec.recommend([]) == []
    assert rec.embed([]).shape == (0, 16)
