#!/usr/bin/env bash
# CPU that four idle SuperNodes and their SuperLink use in 30 s, with Flower's own polling
# schedule (3 s idle wait, SuperExec every 1 s) and with fedcmr's (support/flower_patches.py:
# 1 s when no message came for 5 minutes, the SuperExec woken by its SuperNode), and, for
# comparison, Flower's SuperNode with a SuperExec polling every 0.1 s. Prints a line per
# schedule and writes benchmarks/results/idle_polling.txt.
# Usage: bash benchmarks/idle_polling.sh   (from the repository root, .venv installed)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin; OUT=benchmarks/results/idle_polling.txt; TMP=$(mktemp -d)
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 PATH=$BIN:$PATH
busy() { awk '{print $2+$3+$4}' <(head -1 /proc/stat); }
measure() {  # label, fedcmr's SuperNode (yes, empty: Flower's), SuperExec poll (s)
  local port=$((20000 + RANDOM % 20000)); export FLWR_HOME=$TMP/$1
  "$BIN/flower-superlink" --insecure --host 127.0.0.1 --port $port >"$TMP/$1.log" 2>&1 &
  local link=$!; sleep 8
  for i in 1 2 3 4; do
    if [ -n "$2" ]; then
      FLWR_SUPEREXEC_TASK_POLL_INTERVAL=$3 setsid "$BIN/python" -c "from fedcmr.client.runtime.supernode_main import main; main()" \
        flower-supernode --insecure --superlink 127.0.0.1:$port --port $((port + 10 + i)) >>"$TMP/$1.log" 2>&1 &
    else
      FLWR_SUPEREXEC_TASK_POLL_INTERVAL=$3 setsid "$BIN/flower-supernode" --insecure --superlink 127.0.0.1:$port \
        --port $((port + 10 + i)) >>"$TMP/$1.log" 2>&1 &
    fi
  done
  # 60 s to settle: fedcmr's SuperExecs import torch when they start
  sleep 60; local a; a=$(busy); sleep 30; local b; b=$(busy)
  local cores; cores=$(nproc)
  printf '%-34s %5.1f %% of %d cores\n' "$1" "$(echo "($b - $a) / (30 * $cores)" | bc -l | awk '{print $1*1}')" "$cores" | tee -a "$OUT"
  pkill -f "127.0.0.1:$port" || true; kill $link || true; sleep 2; pkill -f flower-superexec || true; sleep 1
}
: > "$OUT"; date -u +"%F %T UTC, $(nproc) cores" | tee -a "$OUT"
measure "flower (3 s idle, SuperExec 1 s)" "" 1.0
measure "fedcmr (1 s idle, SuperExec woken)" yes 1.0
measure "flower, SuperExec every 0.1 s" "" 0.1
rm -rf "$TMP"
