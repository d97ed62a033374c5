#!/usr/bin/env bash
# One call on the lent GPU machine: install the carried nvidia-cutlass wheel, build the CUTLASS
# kernel there in the background (checks the on-device build path), run the GPU tests and the
# benchmark (which uses the library prebuilt here with nvcc 13.0 if it loads, else the on-device
# build).  Usage (from the repo root):  bash bench/run_gpu.sh [bench args...]
# Needs .whl/nvidia_cutlass-4.2.0.0-py3-none-any.whl (and optionally .whl/libsilu_linear_sm90.so).
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia_smi.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/nvidia_cutlass-*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
export STREAMREC_KERNEL_CACHE=/tmp/kcache STREAMREC_BUILD_DONE=/tmp/kcache/build.done
mkdir -p /tmp/kcache
( t0=$(date +%s); python3 -c "from kernels.silu_linear import build_library; print(build_library(verbose=True))"; \
  echo "build rc=$? seconds=$(( $(date +%s) - t0 ))"; touch /tmp/kcache/build.done ) > "$OUT/cutlass_build.log" 2>&1 &
BUILD_PID=$!
if [ -f .whl/libsilu_linear_sm90.so ]; then export STREAMREC_SILU_LINEAR_LIB=$PWD/.whl/libsilu_linear_sm90.so; fi
python3 bench/kernels_bench.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
wait $BUILD_PID
cat "$OUT/cutlass_build.log" | tail -5
# the GPU tests, against the library built on this machine
unset STREAMREC_SILU_LINEAR_LIB
timeout 200 python3 -m pytest -q -x --noconftest -p no:cacheprovider tests/gpu/test_kernels_gpu.py 2>&1 | tail -25 | tee "$OUT/gpu_tests.log"
