"""Scratch (run 58): the share of (query tile, key tile) pairs of the per-sequence kernel whose time
buckets are one or two, from the corners (timestamps sorted), on the benchmark's inputs.  CPU:
python3 bench/results/run58/tile_buckets.py"""
import torch, sys
sys.path.insert(0,'.')
from kernels.testing import random_jagged_attention_inputs
from kernels.hstu_attention import time_bucket
for (B,N,H,seed) in [(64,1024,4,1088),(64,1024,4,1),(64,1024,4,3),(512,128,2,640),(256,256,2,512)]:
    a = random_jagged_attention_inputs(B,N,H,8,8,seed=seed)
    off=a['offsets'].tolist(); ts=a['ts_s']
    BM=64; BN=32 if H>=3 else 16
    tot=one=two=diag=0
    for b in range(B):
        s,e=off[b],off[b+1]; L=e-s; t=ts[s:e]
        n=(L+BM-1)//BM
        pad=(BM-1-(L+BM-1)%BM)//BN*BN
        for k in range(n):
            q0=k*BM-pad; q1=min(q0+BM,L)-1; qa=max(q0,0)
            for j0 in range(0, min(q0+BM,L), BN):
                tot+=1
                j1=min(j0+BN,L)-1
                if j1>=qa: diag+=1; continue
                lo=int(t[qa]-t[j1]); hi=int(t[q1]-t[j0])
                bl,bh=time_bucket(torch.tensor([lo,hi]),64).tolist()
                if bl==bh: one+=1
                elif bh==bl+1: two+=1
    print(B,N,seed,'tiles',tot,'diag %.3f'%(diag/tot),'single %.3f'%(one/tot),'two %.3f'%(two/tot))
