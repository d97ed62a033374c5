import sys; sys.path.insert(0,'bench/results/run63'); sys.path.insert(0,'.')
from split_sim import *
t, tdr, a, rho, c0 = 2.0, 1.15, 4.5, 1.6, 4
seeds = [1088, 1, 2, 3, 4, 10, 11, 12]
for s in seeds:
    L = lengths(s)
    kt = sum(n for Lx in L for n, _ in tiles_of(Lx))
    row = [f'{s}: {kt} tiles']
    row.append('cur %.1f' % simulate(table(L, int(1.6 * SMS)), t, t*tdr, a, rho, c0))
    for slots, m in [(int(1.6*SMS), 1.0), (int(2*SMS), 1.0), (int(2*SMS), 0.75), (int(2*SMS), 0.5), (int(2*SMS), 0.34)]:
        p = table(L, slots, kway=True, cmult=m)
        row.append('k%.1f/%.2f %.1f(%d)' % (slots / SMS, m, simulate(p, t, t*tdr, a, rho, c0), len(p)))
    progs = table(L, 0)
    work = sum(a + f*t + d*t*tdr for _, f, d in progs)
    row.append('ideal %.1f' % (work / (2*SMS) + c0))
    print('  '.join(row))
