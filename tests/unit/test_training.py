"""A tiny real training run (through the CLI) must beat popularity and random; eval/train CLI errors are clean."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from pipeline.datasets import DatasetUnavailable
from pipeline.datasets.movielens import find_ml100k, load_ml100k
from pipeline.model_dir import load_model_dir
from pipeline.recommender import Recommender, UserRequest
from worker.commands import evaluate as eval_cmd
from worker.commands import train as train_cmd

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    a = typer.Typer(pretty_exceptions_enable=False)
    train_cmd.register(a)
    eval_cmd.register(a)
    return a


@pytest.fixture(scope="module")
def trained(app, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("quick") / "model"
    res = CliRunner().invoke(app, ["train", "--quick", "--out", str(out), "--no-progress", "--seed", "1"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_quick_training_beats_popularity_and_random(trained):
    out, output = trained
    m = json.loads((out / "metrics.json").read_text())
    hstu, pop, rnd, oracle = m["test"], m["baselines"]["popularity"], m["baselines"]["random"], m["baselines"]["oracle"]
    assert m["test"]["users"] == 400
    for k in ("hr@10", "ndcg@10"):
        assert hstu[k] > 2.0 * pop[k], (k, hstu, pop)
        assert hstu[k] > 2.0 * rnd[k], (k, hstu, rnd)
        assert hstu[k] <= oracle[k] + 0.05  # the planted truth is the ceiling (up to noise)
    assert m["train"]["best_epoch"] >= 1 and m["train"]["history"][0]["loss"] > m["train"]["history"][-1]["loss"]
    assert "HSTU" in output and "planted truth" in output


def test_trained_dir_serves_recommendations(trained):
    out, _ = trained
    bundle = load_model_dir(out)
    from pipeline.datasets import load_dataset

    ds = load_dataset(bundle.metrics["data"])
    assert ds.items == bundle.items
    rec = Recommender(bundle, k=10)
    reqs = [UserRequest(u, s) for u, s in zip(ds.user_ids[:5], ds.sequences[:5])]
    for r, req in zip(rec.recommend(reqs), reqs):
        assert len(r.items) == 10
        assert not {e.item_id for e in req.events} & {i for i, _ in r.items}


def test_eval_json(app, trained):
    out, _ = trained
    res = CliRunner().invoke(app, ["eval", str(out), "--json", "--baselines"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "users", "encoder", "generator"):
        assert key in obj
    assert obj["encoder"] == "torch" and obj["generator"] == "retrieval" and obj["users"] == 400
    m = json.loads((out / "metrics.json").read_text())
    # the served (jagged reference) path reproduces the training-time (padded) evaluation
    assert obj["hr@10"] == pytest.approx(m["test"]["hr@10"], abs=0.01)
    assert obj["ndcg@10"] == pytest.approx(m["test"]["ndcg@10"], abs=0.01)
    assert obj["baselines"]["oracle"]["hr@10"] >= obj["baselines"]["popularity"]["hr@10"]


def test_eval_refuses_bad_dir_cleanly(app, tmp_path, trained):
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "missing"), "--json"])
    assert res.exit_code == 2
    assert "does not exist" in res.output and "Traceback" not in res.output
    bad = tmp_path / "tampered"
    import shutil

    shutil.copytree(trained[0], bad)
    (bad / "items.txt").write_text("x\n")
    res = CliRunner().invoke(app, ["eval", str(bad)])
    assert res.exit_code == 2 and "items.txt" in res.output and "Traceback" not in res.output


def test_train_cli_errors(app, tmp_path):
    res = CliRunner().invoke(app, ["train", "--data", "imagenet", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown --data" in res.output
    res = CliRunner().invoke(app, ["train", "--help"])
    assert res.exit_code == 0 and "planted" in res.output


def test_ml100k_missing_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.delenv("STREAMREC_ML100K_DIR", raising=False)
    with pytest.raises(DatasetUnavailable, match="pip install --no-deps recbole"):
        find_ml100k(packages=("no_such_package_streamrec",))
    monkeypatch.setenv("STREAMREC_ML100K_DIR", str(tmp_path))
    with pytest.raises(DatasetUnavailable, match="STREAMREC_ML100K_DIR"):
        find_ml100k()


def test_ml100k_loader_on_a_small_file(tmp_path):
    (tmp_path / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t4\t300\n1\t20\t5\t100\n1\t30\t3\t200\n2\t10\t1\t50\n2\t20\t2\t60\n"
    )
    (tmp_path / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n10\tTen\t1990\tDrama\n20\tTwenty\t\tComedy\n"
    )
    ds = load_ml100k(tmp_path, min_events=3)
    assert ds.user_ids == ["1"]  # user 2 has fewer than 3 ratings
    assert [(e.item_id, e.ts, e.value, e.action) for e in ds.sequences[0]] == [
        ("20", 100_000, 5.0, "rate"), ("30", 200_000, 3.0, "rate"), ("10", 300_000, 4.0, "rate")
    ]
    assert ds.items == ["10", "20", "30"]
    assert ds.titles == {"10": "Ten (1990)", "20": "Twenty"}


def test_long_sequences_are_windowed_so_every_event_is_a_target_once():
    import numpy as np

    from pipeline.train import _windows

    a = np.arange(12)
    ws = _windows((a, a, a), 4)
    assert all(len(w[0]) <= 5 for w in ws)
    assert ws[-1][0][-1] == 11  # the most recent window ends at the last event
    targets = [t for w in ws for t in w[0][1:].tolist()]
    assert sorted(targets) == list(range(1, 12))
    short = _windows((a[:5], a[:5], a[:5]), 4)
    assert len(short) == 1 and len(short[0][0]) == 5
