#!/usr/bin/env bash
# CUTLASS's Hopper FMHA example (examples/88_hopper_fmha in the carried nvidia-cutlass wheel: plain
# causal softmax attention, fp16, no bias) at the attention targets' B and H with every sequence of
# length L, d = 64, beside this repo's HSTU kernel at the same lengths (bench/attention_fixed_lengths.py):
# how fast a CUTLASS-built kernel runs the same matmul work.  Then the example's fastest d = 64
# kernel (TMA, 64 x 128 tiles) with HSTU's SiLU in place of the softmax: without a bias, with a
# per-score relative bias in two forms, with its position or time weight only
# (bench/cutlass_fmha_hstu.hpp: a timing experiment, not the op; docs/perf.md, exploration W).
# On the lent GPU machine (nvcc there):
#   OUT=<dir> bash bench/cutlass_fmha_compare.sh
# The example is compiled with its head-dim-64 forward kernels only (the others' bodies are cut).
set -eo pipefail
OUT=${OUT:-bench/results}
W=${FMHA_WORK:-/tmp/fmha88}
mkdir -p "$OUT" "$W"
NVCC=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
[ -z "$NVCC" ] && { echo "no nvcc here"; exit 1; }
python3 -m zipfile -e .whl/nvidia_cutlass-*.whl "$W"
S=$W/cutlass_library/source
python3 - "$S/examples/88_hopper_fmha" <<'PY'
import sys
d = sys.argv[1]
s = open(f"{d}/88_hopper_fmha.cu").read()
for name in ["run_fwd_32", "run_fwd_128", "run_fwd_256", "run_bwd_32", "run_bwd_64", "run_bwd_128"]:
    i = s.index("{", s.index(f"void {name}("))
    depth, k = 0, i
    while True:
        depth += {"{": 1, "}": -1}.get(s[k], 0)
        if depth == 0:
            break
        k += 1
    s = s[:i] + "{}" + s[k + 1:]
open(f"{d}/fwd64.cu", "w").write(s)
PY
# the HSTU variant's sources: the TMA kernel only, CollectiveSilu in place of CollectiveSoftmax
H=$W/hstu_fmha
rm -rf "$H" && cp -r "$S/examples/88_hopper_fmha" "$H"
grep -v '"tma ws' "$H/fwd64.cu" > "$H/fwd64_hstu.cu"
sed -i -e 's/CollectiveSoftmax</CollectiveSilu</' \
  -e "s|#include \"../collective/fmha_collective_softmax.hpp\"|&\n#include \"$PWD/bench/cutlass_fmha_hstu.hpp\"|" \
  "$H/collective/fmha_collective_tma.hpp"
grep -q CollectiveSilu "$H/collective/fmha_collective_tma.hpp" && grep -q cutlass_fmha_hstu "$H/collective/fmha_collective_tma.hpp"
build() {   # output, source, defines...
  local out=$1 src=$2; shift 2
  "$NVCC" -std=c++17 -arch=sm_90a -O3 --use_fast_math -DNDEBUG --expt-relaxed-constexpr "$@" -I"$S/include" \
    -I"$S/tools/util/include" -I"$S/examples/common" -o "$out" "$src"
}
t0=$(date +%s)
build "$W/fmha64" "$S/examples/88_hopper_fmha/fwd64.cu" & p1=$!
build "$W/fmha64_silu" "$H/fwd64_hstu.cu" & p2=$!
build "$W/fmha64_silu_bias" "$H/fwd64_hstu.cu" -DHSTU_BIAS=1 & p3=$!
build "$W/fmha64_silu_bias2" "$H/fwd64_hstu.cu" -DHSTU_BIAS=2 & p4=$!
build "$W/fmha64_silu_pos" "$H/fwd64_hstu.cu" -DHSTU_BIAS=3 & p5=$!
build "$W/fmha64_silu_time" "$H/fwd64_hstu.cu" -DHSTU_BIAS=4 & p6=$!
wait $p1 && wait $p2 && wait $p3 && wait $p4 && wait $p5 && wait $p6
echo "built in $(( $(date +%s) - t0 )) s"
{
  "$W/fmha64" --b=4 --h=4 --q=512 --k=512 --d=64 --mask=causal --iterations=5 --verify
  for s in "64 4 1024" "64 4 512" "256 2 256" "512 2 128"; do
    set -- $s
    for v in fmha64 fmha64_silu fmha64_silu_bias fmha64_silu_bias2 fmha64_silu_pos fmha64_silu_time; do
      echo "== $v"
      "$W/$v" --b=$1 --h=$2 --q=$3 --k=$3 --d=64 --mask=causal --iterations=200 --verbose
    done
  done
} 2>&1 | tee "$OUT/cutlass_fmha.txt"
python3 bench/attention_fixed_lengths.py --out "$OUT"
