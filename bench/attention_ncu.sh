#!/usr/bin/env bash
# Nsight Compute summary of the per-sequence attention kernel at the shapes (one launch each,
# after warm-up) with the warps' stall reasons (% of active warp cycles), on the lent GPU machine:
#   bash bench/attention_ncu.sh > prof.txt
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
[ -z "$NCU" ] && { echo "no ncu here"; exit 0; }
for args in "64 1024 4 64 32 4 4 1" "256 256 2 64 16 4 2 1" "512 128 2 64 16 4 2 1"; do
  echo "=== B N H BLOCK_M BLOCK_N WARPS HEADS LUT = $args"
  timeout 120 "$NCU" --kernel-name regex:_hstu_attn_seq --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section LaunchStats \
    --metrics 'regex:smsp__warp_issue_stalled_.*_per_warp_active\.pct' python3 bench/attention_profile.py $args 2>&1 | \
    grep -v "^==PROF==" | grep -E "Duration|Throughput|Occupancy|Warp Cycles|Registers|Executed Ipc|Hit Rate|Block Limit|Shared Memory|regs|stalled"
done
