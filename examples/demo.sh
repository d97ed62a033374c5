#!/usr/bin/env bash
# The real thing on one machine: Kafka + Redis (infra/local), the worker, sample traffic, and a live
# table of recommendations. Ctrl-C stops everything this script started. DEMO_SECONDS=N ends it after N s.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
MODEL_DIR=${MODEL_DIR:-models/default}
RATE=${DEMO_RATE:-50}
LOGS=${STREAMREC_RUN_DIR:-/tmp/streamrec-local}/demo
mkdir -p "$LOGS"

started_services=0
if ! infra/local/status >/dev/null 2>&1; then started_services=1; fi
infra/local/up

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping the demo..."
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$started_services" = 1 ]; then infra/local/down; fi
  echo "worker log: $LOGS/worker.log"
}
trap cleanup INT TERM EXIT

export STREAMREC_MODEL_DIR="$MODEL_DIR" STREAMREC_LOG_FORMAT=json
$BIN/streamrec worker >"$LOGS/worker.log" 2>&1 &
pids+=($!)
echo "worker started (pid ${pids[0]}, log $LOGS/worker.log, metrics http://127.0.0.1:9100/metrics)"
for _ in $(seq 1 60); do
  grep -q '"worker started"' "$LOGS/worker.log" && break
  if ! kill -0 "${pids[0]}" 2>/dev/null; then cat "$LOGS/worker.log"; exit 1; fi
  sleep 1
done
$BIN/streamrec produce --rate "$RATE" --invalid-ratio 0.02 >"$LOGS/produce.log" 2>&1 &
pids+=($!)
echo "producing $RATE events/s of synthetic traffic (2% malformed on purpose -> user-events.dlq)"
if [ -n "${DEMO_SECONDS:-}" ]; then
  timeout "$DEMO_SECONDS" $BIN/streamrec tail --model-dir "$MODEL_DIR" || true
else
  $BIN/streamrec tail --model-dir "$MODEL_DIR"
fi
