"""Run 63 (scratch): the per-sequence kernel's cost per program vs per key tile, from sequences of one
length L0 (B chosen for about 6000 key tiles: the median N=1024 draw's work), H=4 d=64 bf16, splits off
and on; the working tree's kernel and a baseline copy (argv[1]: git show <rev>:kernels/hstu_attention.py > f).  Writes $OUT/prog_cost.json."""
import json, os, sys
sys.path.insert(0, '.')
import torch
from bench.kernels_bench import bench_ms
from bench.attention_ab import load_baseline
from kernels import hstu_attention as ha
from kernels.testing import random_jagged_attention_inputs
base = load_baseline(sys.argv[1], 0)
BM, BN = 64, 32
def counts(L):
    n = (L + BM - 1) // BM
    pad = (BM - 1 - (L + BM - 1) % BM) // BN * BN
    P = F = D = 0
    for k in range(n):
        keys = L if k == n - 1 else (k + 1) * BM - pad
        q0 = k * BM - pad
        nkt = -(-keys // BN)
        nf = min(nkt, -(-q0 // BN)) if q0 > 0 else 0
        P += 1; F += nf; D += nkt - nf
    return P, F, D
rows = []
for L0 in [32, 64, 96, 128, 192, 256, 384, 512, 768, 1024]:
    P, F, D = counts(L0)
    B = max(1, round(6000 / (F + D)))
    a = random_jagged_attention_inputs(B, L0, 4, 64, 64, dtype=torch.bfloat16, device='cuda', seed=L0,
                                       lengths=torch.full((B,), L0))
    r = {"L0": L0, "B": B, "programs": P * B, "full": F * B, "diag": D * B}
    for name, mod in (("head", base), ("cur", ha)):
        for sp, kw in (("nosplit", {"split_slots": 0}), ("split", {})):
            fn = lambda mod=mod, kw=kw: mod.hstu_attention_triton(**a, **kw)
            r[f"{name}_{sp}_us"] = [bench_ms(fn, graph=True) * 1e3 for _ in range(3)]
    o1 = base.hstu_attention_triton(**a); o2 = ha.hstu_attention_triton(**a)
    r["equal"] = bool(torch.equal(o1, o2))
    print(json.dumps(r), flush=True)
    rows.append(r)
json.dump(rows, open(os.path.join(os.environ.get('OUT', '/tmp'), 'prog_cost.json'), 'w'), indent=1)
