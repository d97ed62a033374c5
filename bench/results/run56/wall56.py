"""Scratch (run 56): wall and host time of HSTUEncoder.encode under four wirings, interleaved (60 rounds), and per-op host cost.
Run on a CUDA machine from the repo root, with the CUTLASS library loadable:  python3 bench/results/run56/wall56.py OUT.json"""
import contextlib, json, statistics, sys, time
import torch, torch.nn.functional as F
sys.path.insert(0, ".")
from pipeline import hstu as ph
from pipeline.encoders.torch_backend import wire_kernels
from kernels import hstu_attention as ha, norm_mul as nm, silu_linear as sl

def batch(B, S, cfg, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, S + 1, (B,), generator=g)
    off = torch.zeros(B + 1, dtype=torch.int64); off[1:] = lengths.cumsum(0)
    T = int(off[-1])
    return (torch.randint(0, cfg.num_items, (T,), generator=g).cuda(), torch.randint(0, cfg.num_actions, (T,), generator=g).cuda(),
            (1_700_000_000_000 + torch.cumsum(torch.randint(0, 10**8, (T,), generator=g), 0)).cuda(), off.cuda()), T

rows = []
for B, S in ((8, 50), (64, 200), (512, 200), (64, 1024)):
    cfg = ph.HSTUConfig(num_items=100_000, dim=256, num_layers=2, num_heads=2, qk_dim=64, v_dim=64, max_seq_len=S, attn_n=S, num_time_buckets=64)
    torch.manual_seed(0)
    m = ph.HSTUEncoder(cfg).cuda().eval().to(torch.bfloat16)
    args, T = batch(B, S, cfg, B + S)
    base = dict(attention=ph.hstu_attention_reference, silu_linear=ph.silu_linear_torch, norm_mul=ph.norm_mul_torch, batch_context=contextlib.nullcontext)
    variants = {"attention_only": dict(attention=ha.hstu_attention),
                "kernels_torch_projection": dict(attention=ha.hstu_attention, norm_mul=nm.norm_mul, batch_context=ha.same_batch),
                "kernels_no_scope": dict(attention=ha.hstu_attention, norm_mul=nm.norm_mul, silu_linear=sl.silu_linear),
                "kernels": None}
    wall = {k: [] for k in variants}; host = {k: [] for k in variants}
    with torch.inference_mode():
        for r in range(60):
            for k, kw in variants.items():
                m.set_kernels(**base)
                if kw is None: wire_kernels(m)
                else: m.set_kernels(**kw)
                torch.cuda.synchronize()
                t0 = time.perf_counter(); m.encode(*args); t1 = time.perf_counter(); torch.cuda.synchronize(); t2 = time.perf_counter()
                if r >= 5:
                    host[k].append((t1 - t0) * 1e3); wall[k].append((t2 - t0) * 1e3)
    row = {"B": B, "S": S, "T": T}
    for k in variants:
        row[k] = {"wall_ms": statistics.median(wall[k]), "host_ms": statistics.median(host[k])}
    print(json.dumps(row), flush=True); rows.append(row)

# per-op host cost at B=64 S=200 shapes (launch only, GPU idle), and GPU time
M = 6037
x = torch.randn(M, 256, device="cuda", dtype=torch.bfloat16); w = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16) / 16
b = torch.randn(512, device="cuda", dtype=torch.bfloat16); av = torch.randn(M, 128, device="cuda", dtype=torch.bfloat16); u = torch.randn(M, 128, device="cuda", dtype=torch.bfloat16)
ops = {"silu_linear dispatcher (cutlass)": lambda: sl.silu_linear(x, w, b), "F.silu(F.linear)": lambda: F.silu(F.linear(x, w, b)),
       "norm_mul dispatcher (triton)": lambda: nm.norm_mul(av, u), "u * F.layer_norm": lambda: u * F.layer_norm(av, (128,), eps=1e-6)}
res = {}
with torch.inference_mode():
    for k, f in ops.items():
        f(); torch.cuda.synchronize()
        ts = []
        for _ in range(200):
            torch.cuda.synchronize(); t0 = time.perf_counter(); f(); ts.append((time.perf_counter() - t0) * 1e6)
        res[k] = statistics.median(ts)
print(json.dumps({"host_us_per_call": res}), flush=True)
json.dump({"card": torch.cuda.get_device_name(), "rows": rows, "host_us_per_call": res}, open(sys.argv[1], "w"), indent=1)
