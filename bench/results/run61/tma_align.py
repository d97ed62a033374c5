"""Is the TMA experiment's 2.5e-5 difference from the op only the tile alignment? The op with its
tile table forced to start-aligned tiles (align_n=0) and no key splits, against the experiment."""
import sys, torch  # run from the repo root: python3 bench/results/run61/tma_align.py
sys.path.insert(0, "."); sys.path.insert(0, "bench")  # the repo root is the working directory
from kernels import hstu_attention as ha
from kernels.testing import random_jagged_attention_inputs, rel_err
import attention_tma_experiment as ex
orig = ha._seq_tiles
for (B, N, H, cfg) in [(64, 1024, 4, (64, 32, 4, 2, 4)), (512, 128, 2, (64, 32, 4, 2, 1)), (256, 256, 2, (64, 64, 4, 2, 2))]:
    a = random_jagged_attention_inputs(B, N, H, 64, 64, dtype=torch.bfloat16, device="cuda", seed=B + N, max_seq_len=N, scale=0.5)
    bm, bn, nw, ns, hg = cfg
    t = ex.attention_tma(**a, bm=bm, bn=bn, nw=nw, ns=ns, hg=hg)
    op = ha.hstu_attention_triton(**a, block_m=bm, block_n=bn, heads=hg)
    ha._seq_tiles = lambda offsets, ts_s, T, block_m, align_n=0, split_slots=0, n_hg=1, min_split=0: orig(offsets, ts_s, T, block_m, 0, 0, n_hg, min_split)
    ha._TILES_CACHE.clear()
    op0 = ha.hstu_attention_triton(**a, block_m=bm, block_n=bn, heads=hg)
    ha._seq_tiles = orig; ha._TILES_CACHE.clear()
    print(B, N, H, cfg, "op vs tma rel", f"{rel_err(op, t.double()):.2e}", "equal", torch.equal(op, t),
          "| op(start-aligned, no splits) vs tma equal", torch.equal(op0, t), f"{rel_err(op0, t.double()):.2e}", flush=True)
