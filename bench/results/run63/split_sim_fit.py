import sys; sys.path.insert(0,'bench/results/run63'); sys.path.insert(0,'.')
from split_sim import *
L = {s: lengths(s) for s in RUN40}
tabs = {(s, f): table(L[s], int(f * SMS) if f else 0) for s in RUN40 for f in FACT}
best = []
for t in [2.0, 2.1, 2.2, 2.3]:
    for tdr in [1.0, 1.15]:
        for a in [3.0, 4.5, 6.0]:
            for rho in [1.6, 2.0]:
                for c0 in [2, 4, 6]:
                    err = sum((simulate(tabs[(s, f)], t, t * tdr, a, rho, c0) - RUN40[s][i]) ** 2
                              for s in RUN40 for i, f in enumerate(FACT))
                    best.append((err, t, tdr, a, rho, c0))
best.sort()
for b in best[:5]: print(b)
e, t, tdr, a, rho, c0 = best[0]
for s in RUN40:
    print(s, ' '.join('%.1f/%.1f' % (simulate(tabs[(s, f)], t, t*tdr, a, rho, c0), RUN40[s][i]) for i, f in enumerate(FACT)))
