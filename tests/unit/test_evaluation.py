"""Metric code on hand-made cases, the leave-one-out split, and the synthetic world's planted truth."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.datasets import DatasetUnavailable, load_dataset
from pipeline.datasets.synthetic import SyntheticWorld
from pipeline.evaluation import (
    EvalCase,
    evaluate,
    hit_rate,
    leave_one_out,
    metrics_from_ranks,
    ndcg,
    oracle_scorer,
    popularity_scorer,
    random_scorer,
    target_ranks,
)
from pipeline.recommender import HistoryEvent


def test_target_ranks_hand_cases():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.3],  # target 2 -> one item above it -> rank 1
            [0.9, 0.1, 0.5, 0.3],  # target 0 -> rank 0
            [0.9, 0.1, 0.5, 0.3],  # target 1 -> rank 3
        ]
    )
    assert target_ranks(scores, torch.tensor([2, 0, 1])).tolist() == [1, 0, 3]


def test_target_ranks_exclusion_and_never_the_target():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.9, 0.1, 0.5, 0.3]])
    # row 0: item 0 (above target 2) excluded -> rank 0; row 1: target itself "excluded" -> still ranked
    r = target_ranks(scores, torch.tensor([2, 2]), [[0], [2, 3]])
    assert r.tolist() == [0, 1]


def test_ties_count_against_the_target():
    scores = torch.zeros(2, 5)
    assert target_ranks(scores, torch.tensor([0, 4])).tolist() == [4, 4]
    scores = torch.tensor([[1.0, 1.0, 0.0]])
    assert target_ranks(scores, torch.tensor([1])).tolist() == [1]


def test_hr_and_ndcg_hand_values():
    ranks = torch.tensor([0, 1, 9, 10, 49, 50])
    assert hit_rate(ranks, 10) == pytest.approx(3 / 6)
    assert hit_rate(ranks, 50) == pytest.approx(5 / 6)
    assert ndcg(ranks, 10) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 6)
    assert ndcg(ranks, 50) == pytest.approx(
        (1 + 1 / math.log2(3) + 1 / math.log2(11) + 1 / math.log2(12) + 1 / math.log2(51)) / 6
    )
    m = metrics_from_ranks(ranks)
    assert set(m) == {"hr@10", "ndcg@10", "hr@50", "ndcg@50", "users"} and m["users"] == 6
    assert metrics_from_ranks(torch.zeros(0, dtype=torch.long))["hr@10"] == 0.0


def _ev(i, t):
    return HistoryEvent(f"i{i}", "view", t)


def test_leave_one_out_split():
    seqs = [[_ev(1, 1), _ev(2, 2), _ev(3, 3), _ev(4, 4)], [_ev(5, 1), _ev(6, 2)]]
    sp = leave_one_out(["a", "b"], seqs)
    assert [e.item_id for e in sp.train[0]] == ["i1", "i2"]
    assert [e.item_id for e in sp.train[1]] == ["i5", "i6"]  # too short to evaluate: training only
    assert len(sp.valid) == len(sp.test) == 1
    assert sp.valid[0].target == "i3" and [e.item_id for e in sp.valid[0].history] == ["i1", "i2"]
    assert sp.test[0].target == "i4" and [e.item_id for e in sp.test[0].history] == ["i1", "i2", "i3"]


def test_evaluate_excludes_own_history():
    index = {f"i{n}": n for n in range(5)}
    fixed = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])

    def scorer(users, histories):
        return fixed.expand(len(histories), -1)

    cases = [
        EvalCase("a", [_ev(0, 1), _ev(1, 2)], "i2"),  # items 0, 1 are history -> target ranks first
        EvalCase("b", [_ev(4, 1)], "i2"),  # rank 2
    ]
    m = evaluate(scorer, cases, index, ks=(1, 3))
    assert m["hr@1"] == pytest.approx(0.5)
    assert m["hr@3"] == pytest.approx(1.0)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / 2)


def test_popularity_and_random_scorers():
    index = {"a": 0, "b": 1, "c": 2}
    pop = popularity_scorer([[HistoryEvent("b", "view", 1), HistoryEvent("b", "view", 2), HistoryEvent("c", "view", 3)]], index)
    s = pop(["u"], [[]])
    assert s.shape == (1, 3) and s[0].argmax().item() == 1 and s[0, 2] > s[0, 0]
    r = random_scorer(3, seed=0)(["u", "v"], [[], []])
    assert r.shape == (2, 3)


# ------------------------------------------------------------- synthetic world
@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(seed=3, num_items=60, num_users=150, num_clusters=4)


def test_world_is_deterministic(world):
    other = SyntheticWorld(seed=3, num_items=60, num_users=150, num_clusters=4)
    assert world.sample_sequences(20, 5, 15) == other.sample_sequences(20, 5, 15)
    assert world.sample_sequences(5, 5, 15) != SyntheticWorld(seed=4, num_items=60, num_users=150, num_clusters=4).sample_sequences(5, 5, 15)
    assert world.item_ids()[0] == "i0001" and len(set(world.item_ids())) == 60
    assert len(set(world.user_ids())) == 150


def test_sequences_are_chronological_and_never_repeat_items(world):
    for seq in world.sample_sequences(150, 5, 30):
        assert 5 <= len(seq) <= 30
        assert all(a.ts < b.ts for a, b in zip(seq, seq[1:]))
        assert len({e.item_id for e in seq}) == len(seq)
        for e in seq:
            assert (e.value is not None) == (e.action == "rate")


def test_event_stream_increasing_timestamps_and_zipf_users(world):
    it = world.event_stream(7)
    events = [next(it) for _ in range(3000)]
    ts = [e.ts for _, e in events]
    assert all(a < b for a, b in zip(ts, ts[1:]))
    counts = sorted(np.bincount([world.user_ids().index(u) for u, _ in events], minlength=150), reverse=True)
    assert counts[0] > 5 * max(counts[75], 1)  # a few users are much more active
    again = world.event_stream(7)
    assert [next(again) for _ in range(50)] == events[:50]


def test_planted_truth_is_a_distribution_and_beats_popularity(world):
    seqs = world.sample_sequences(150, 8, 25)
    users = world.user_ids()
    p = world.next_item_distribution(seqs[0][:5], users[0])
    assert p.shape == (60,) and p.sum() == pytest.approx(1.0) and (p >= 0).all()
    assert all(p[world.item_index(e.item_id)] == 0 for e in seqs[0][:5])  # no repeats
    assert world.oracle_next(seqs[0][:5], users[0]) in world.item_ids()
    assert world.oracle_next(seqs[0][:5]) in world.item_ids()  # unknown user: preferences from history
    sp = leave_one_out(users, seqs)
    index = {it: i for i, it in enumerate(world.item_ids())}
    oracle = evaluate(oracle_scorer(lambda u, h: world.next_item_distribution(h, u)), sp.test, index)
    pop = evaluate(popularity_scorer(sp.train, index), sp.test, index)
    assert oracle["hr@10"] > pop["hr@10"] + 0.2


def test_load_dataset_errors():
    with pytest.raises(DatasetUnavailable, match="unknown dataset"):
        load_dataset("nope")
    ds = load_dataset({"name": "synthetic", "num_items": 30, "num_users": 20, "num_clusters": 3, "min_len": 4, "max_len": 6})
    assert len(ds.sequences) == 20 and ds.spec["num_items"] == 30 and ds.oracle is not None
    assert load_dataset(ds.spec).sequences == ds.sequences  # the recorded spec rebuilds the same data
