#!/usr/bin/env bash
# The generator benchmark on the lent GPU machine (issue 4, item 6), one call, no network:
#   1. --device cuda: the torch generator (fp32 and bf16) and retrieval, HSTU encoder (with kernels/)
#      and retrieval on the GPU; GPU slates checked against the CPU's on the same prompts;
#   2. --device cpu, 2 torch threads, on the same (quiet) host: torch + retrieval, the CPU baseline
#      for the ratios (the 2-core dev machine is shared and swings 2-30x).
# No vLLM there: it is left out. python3 there has torch (CUDA), triton, numpy, safetensors,
# matplotlib; the repo is imported through PYTHONPATH. models/ is git-ignored: the model directory
# must be carried (carry: ["models/gen-bench"], 1.1 MB).
# Usage (from the repo root):  bash bench/run_gpu_generator.sh [extra generator_bench.py args...]
#   MODEL=DIR (default models/gen-bench), OUT=DIR (default bench/results), CPU_BASELINE=0 to skip step 2.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-bench/results}
MODEL=${MODEL:-models/gen-bench}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ ! -f "$MODEL/manifest.json" ] || [ ! -f "$MODEL/generator/model.safetensors" ]; then
  echo "no model directory with a generator at $MODEL (models/ is git-ignored: carry it, or set MODEL=DIR;" \
       "make one with: python -m pipeline.generator.train DIR)" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv | tee "$OUT/nvidia_smi_generator.txt"
tag=$("$PY" -c 'import re, sys, torch
if not torch.cuda.is_available(): sys.exit(f"torch {torch.__version__} sees no CUDA device: run this on the GPU machine")
print(re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name().replace("NVIDIA ", "")).strip("_"))') || exit 2
t0=$(date +%s)
"$PY" bench/generator_bench.py --model-dir "$MODEL" --device cuda --backends torch,torch-bf16,retrieval \
  --no-quality --min-time 2 --max-calls 2000 --threads 2 --check-users 2000 \
  --out "$OUT/generator_gpu_$tag.json" "$@" 2>&1 | tee "$OUT/generator_gpu.log"
rc=$?
echo "gpu run rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/generator_gpu.log"
if [ "${CPU_BASELINE:-1}" != 0 ]; then
  t0=$(date +%s)
  "$PY" bench/generator_bench.py --model-dir "$MODEL" --device cpu --backends torch,retrieval \
    --no-quality --min-time 2 --threads 2 --out "$OUT/generator_cpu_gpuhost.json" "$@" 2>&1 | tee -a "$OUT/generator_gpu.log"
  rc2=$?
  echo "cpu run rc=$rc2 seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/generator_gpu.log"
  [ $rc -eq 0 ] && rc=$rc2
fi
exit $rc
