"""Scratch (run 63): simulate the block scheduler over the per-sequence kernel's tile table at B=64 N=1024 (CPU).
    python3 bench/results/run63/split_sim_fit.py   # calibrate on run 40's timings
    python3 bench/results/run63/split_sim_pol.py   # split policies against a perfectly balanced grid"""
import heapq, math, sys, itertools
sys.path.insert(0, '.')
import torch
from kernels.testing import random_lengths

BM, BN, NB, SMS = 64, 32, 128, 132

def lengths(seed, B=64, N=1024):
    g = torch.Generator().manual_seed(seed)
    return random_lengths(B, N, g).tolist()

def tiles_of(L):
    n = (L + BM - 1) // BM
    pad = (BM - 1 - (L + BM - 1) % BM) // BN * BN
    out = []
    for k in range(n):
        keys = L if k == n - 1 else (k + 1) * BM - pad
        q0 = k * BM - pad
        nkt = (keys + BN - 1) // BN
        nfull = max(0, -(-max(q0, 0) // BN)) if q0 > 0 else 0   # key tiles left of diagonal: j0 < q0
        nfull = min(nfull, nkt)
        out.append((nkt, nfull))
    return out

def table(lens, slots, kway=None, cmult=1.0):
    """programs: list of (bin, full_tiles, diag_tiles, parts)."""
    ts = [t for L in lens for t in tiles_of(L)]
    total = sum(min(n, NB - 1) for n, _ in ts)
    C = NB if slots == 0 else max(math.ceil(total / slots), 2 * BM // BN)
    progs = []
    for n, nf in ts:
        if n > C:
            if kway is None:   # current: halves; first half full tiles only
                h = n // 2
                progs.append(((n + 1) // 2, h, 0))
                progs.append(((n + 1) // 2, max(0, nf - h), n - nf))
            else:
                k = math.ceil(n / (C * cmult))
                k = max(2, k)
                cuts = [round(i * n / k) for i in range(k + 1)]
                for i in range(k):
                    a, b = cuts[i], cuts[i + 1]
                    fa = max(0, min(b, nf) - a)
                    progs.append((math.ceil(n / k), fa, (b - a) - fa))
        else:
            progs.append((n, nf, n - nf))
    progs.sort(key=lambda p: -p[0])
    return progs

def simulate(progs, t=2.0, td=2.3, a=1.0, rho=1.3, c0=3.0, per_sm=2):
    # event-driven: each SM has up to per_sm programs; progress rate per program = 1 if shared, rho if alone
    sms = [[] for _ in range(SMS)]   # list of remaining work per running program
    now = 0.0
    queue = list(progs)
    qi = 0
    # initial dispatch round-robin
    for r in range(per_sm):
        for s in range(SMS):
            if qi < len(queue):
                _, f, d = queue[qi]; qi += 1
                sms[s].append(a + f * t + d * td)
    while True:
        # find next completion
        best = None
        for s, lst in enumerate(sms):
            if not lst: continue
            rate = 1.0 if len(lst) > 1 else rho
            m = min(lst)
            dt = m / rate
            if best is None or dt < best[0]:
                best = (dt, s)
        if best is None:
            break
        dt = best[0]
        now += dt
        for s, lst in enumerate(sms):
            if not lst: continue
            rate = 1.0 if len(lst) > 1 else rho
            sms[s] = [w - dt * rate for w in lst]
        for s, lst in enumerate(sms):
            done = [w for w in lst if w <= 1e-9]
            sms[s] = [w for w in lst if w > 1e-9]
            for _ in done:
                if qi < len(queue):
                    _, f, d = queue[qi]; qi += 1
                    sms[s].append(a + f * t + d * td)
    return now + c0

RUN40 = {1088: [58.36, 51.15, 58.03, 65.55, 65.69], 1: [68.92, 67.26, 67.27, 67.49, 67.44],
         2: [62.90, 57.60, 66.99, 66.90, 66.95], 3: [76.77, 76.29, 76.27, 76.37, 76.29],
         4: [63.72, 61.10, 66.81, 66.83, 66.62]}
FACT = [2.0, 1.6, 1.33, 1.0, 0]

if __name__ == '__main__':
    L = {s: lengths(s) for s in RUN40}
    tabs = {(s, f): table(L[s], int(f * SMS) if f else 0) for s in RUN40 for f in FACT}
    best = []
    for t in [1.8, 1.9, 2.0, 2.1]:
        for tdr in [1.0, 1.15, 1.3]:
            for a in [0.5, 1.5, 3.0]:
                for rho in [1.0, 1.3, 1.6]:
                    for c0 in [0, 2, 4]:
                        err = 0
                        for s in RUN40:
                            for i, f in enumerate(FACT):
                                err += (simulate(tabs[(s, f)], t, t * tdr, a, rho, c0) - RUN40[s][i]) ** 2
                        best.append((err, t, tdr, a, rho, c0))
    best.sort()
    for b in best[:5]:
        print(b)
