#!/usr/bin/env bash
# Train on all GPUs of one machine.
#
#   bash launch/multi_gpu.sh CONFIG WORKDIR [more flags...]
#
# Default: one process that drives every visible GPU (data parallel over a 'data' mesh).
# NUM_PROCESSES=N starts N processes instead, one GPU each, joined by jax.distributed through a
# coordinator on localhost (the same code path as multi-node runs). Global batch
# (config.training.batch_size) must divide by the total number of GPUs.
set -euo pipefail
CONFIG=${1:?usage: multi_gpu.sh CONFIG WORKDIR [flags...]}
WORKDIR=${2:?usage: multi_gpu.sh CONFIG WORKDIR [flags...]}
shift 2
NUM_PROCESSES=${NUM_PROCESSES:-1}
cd "$(dirname "$0")/.."

if [[ "$NUM_PROCESSES" == 1 ]]; then
  exec python -m score_sde.main --config "$CONFIG" --workdir "$WORKDIR" "$@"
fi

PORT=${PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  CUDA_VISIBLE_DEVICES=$i python -m score_sde.main --config "$CONFIG" --workdir "$WORKDIR" \
    --coordinator_address "localhost:$PORT" --num_processes "$NUM_PROCESSES" --process_id "$i" \
    "$@" &
  pids+=($!)
done
# SIGTERM to this script reaches every process, so all of them save at one step and exit 75
# (pre-empted, resume me). Ctrl-C needs no forwarding: the terminal signals them all itself.
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM
wait_for() {  # $1's exit status; a trapped signal interrupts `wait`, so wait again
  local rc=0
  while true; do
    wait "$1" && return 0 || rc=$?
    kill -0 "$1" 2>/dev/null || return "$rc"
  done
}
status=0
for pid in "${pids[@]}"; do wait_for "$pid" || status=$?; done
exit "$status"
