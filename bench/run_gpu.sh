#!/usr/bin/env bash
# One call on the lent GPU machine: install the carried nvidia-cutlass wheel, run the benchmark
# and the GPU tests.  The CUTLASS kernel comes from .whl/libsilu_linear_sm90.so when that was
# prebuilt here (nvcc 13.0, same source) and loads there; otherwise (or with BUILD_ON_DEVICE=1)
# it is compiled on the device with its nvcc (about 80 s per variant batch, in the background).
# Usage (from the repo root):  bash bench/run_gpu.sh [kernels_bench.py args...]   (--decode is on; --no-decode turns it off)
#   GPU_TESTS_K=expr runs only the GPU tests matching the pytest -k expression (e.g. GPU_TESTS_K=hstu).
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia_smi.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/nvidia_cutlass-*.whl \
  && export PYTHONPATH=/tmp/site:$PWD
export STREAMREC_KERNEL_CACHE=/tmp/kcache STREAMREC_BUILD_DONE=/tmp/kcache/build.done
mkdir -p /tmp/kcache
if [ -f .whl/libsilu_linear_sm90.so ] && [ -z "$BUILD_ON_DEVICE" ]; then
  export STREAMREC_SILU_LINEAR_LIB=$PWD/.whl/libsilu_linear_sm90.so
  touch /tmp/kcache/build.done
else
  ( t0=$(date +%s); python3 -c "from kernels.silu_linear import build_library; print(build_library(verbose=True))"; \
    echo "build rc=$? seconds=$(( $(date +%s) - t0 ))"; touch /tmp/kcache/build.done ) > "$OUT/cutlass_build.log" 2>&1 &
  [ -f .whl/libsilu_linear_sm90.so ] && export STREAMREC_SILU_LINEAR_LIB=$PWD/.whl/libsilu_linear_sm90.so
fi
python3 bench/kernels_bench.py --out "$OUT" --decode "$@" 2>&1 | tee "$OUT/bench.log"
wait
[ -f "$OUT/cutlass_build.log" ] && tail -5 "$OUT/cutlass_build.log"
timeout 240 python3 -m pytest -q --noconftest -p no:cacheprovider tests/gpu/test_kernels_gpu.py ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} 2>&1 | tail -25 | tee "$OUT/gpu_tests.log"
