"""Incremental encoding on CUDA (arena on the GPU, Triton attention with query offsets) equals a full
re-encode with the same kernels, on random streams with evictions and window moves (skipped without CUDA).

fp32 within 1e-5 max abs (as on the CPU); bf16 within 3e-2 (the embeddings are L2-normalised, so
entries are below 1; bf16 keeps 8 mantissa bits).  Run: pytest tests/gpu/test_encoder_state_gpu.py
"""
import random

import pytest
import torch

from tests.unit.test_encoder_state import INDEX, Stream, _encoder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("budget,slack", [(1 << 20, 6), (6_000, 6), (1 << 20, 1)],
                         ids=["roomy", "tiny-budget-evictions", "exact-sliding-window"])
def test_random_streams_on_cuda_equal_full_reencode(dtype, tol, budget, slack):
    from pipeline.encoders.torch_backend import wire_kernels
    from pipeline.hot_states import HotStates
    from pipeline.recommender import build_jagged

    enc = _encoder(dtype=dtype).cuda()
    wire_kernels(enc)   # as the torch backend: every layer op through kernels/
    hot = HotStates(enc, budget, device="cuda", page_rows=4)
    rng = random.Random(budget + slack)
    stream = Stream(12, cap=24, seed=budget)
    worst = 0.0
    for _ in range(80):
        users = rng.sample(sorted(stream.stored), rng.randint(1, 6))
        for u in users:
            if rng.random() < 0.85:
                stream.act(u, rng.randint(1, 3))
        users = [u for u in users if stream.total[u] > 0]
        if not users:
            continue
        wins, starts = stream.windows(users, slack)
        batch = build_jagged(wins, INDEX, 60)
        d = batch.to("cuda")
        with torch.inference_mode():
            got = hot.embed(users, starts, batch).float()
            full = enc(d.item_idx, d.action_idx, d.ts_ms, d.offsets).float()
        worst = max(worst, float((got - full).abs().max()))
    assert worst <= tol, worst
    st = hot.stats
    assert st.lookups["hit"] > 0 and st.events_decoded > 0
    if budget < 10_000:
        assert st.evictions > 0
