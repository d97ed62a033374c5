"""Launch the per-sequence HSTU attention kernel a few times for a profiler (bench/attention_ncu.sh).

    python bench/attention_profile.py B N H BLOCK_M BLOCK_N NUM_WARPS HEADS LUT   (bf16, d = 64, lengths 1..N)
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels import hstu_attention as ha  # noqa: E402
from kernels.testing import random_jagged_attention_inputs  # noqa: E402

B, N, H, bm, bn, nw, hg, lut = map(int, sys.argv[1:9])
a = random_jagged_attention_inputs(B, N, H, 64, 64, dtype=torch.bfloat16, device="cuda", seed=B + N,
                                   max_seq_len=N, scale=0.5)
for _ in range(3):
    ha.hstu_attention_triton(**a, block_m=bm, block_n=bn, num_warps=nw, num_stages=2, heads=hg,
                             lut_buckets=bool(lut))
torch.cuda.synchronize()
print("regs", ha.LAST_COMPILED.n_regs, "spills", ha.LAST_COMPILED.n_spills)
