#!/usr/bin/env bash
# Train a recipe on every GPU of this machine, or on N processes, resuming an unfinished run.
#   cli/launch.sh RECIPE [pecft train options...]
#   PROCESSES=2 cli/launch.sh recipes/quickstart.yaml    # 2 processes (gloo ranks on a CPU host)
# PROCESSES defaults to the number of GPUs (1 without GPUs). Exit codes are pecft's: 0 done,
# 2 bad input, 75 stopped by SIGTERM/SIGUSR1 with a checkpoint (run the same line again), 1 other.
set -euo pipefail

recipe="${1:?usage: cli/launch.sh RECIPE [pecft train options]}"
shift
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pecft="${PECFT:-$root/.venv/bin/pecft}"
[ -x "$pecft" ] || pecft="pecft"

if [ -z "${PROCESSES:-}" ]; then
  PROCESSES=0
  if command -v nvidia-smi >/dev/null 2>&1; then
    PROCESSES="$(nvidia-smi -L | wc -l)"
  fi
  [ "$PROCESSES" -ge 1 ] || PROCESSES=1
fi

exec "$pecft" train "$recipe" --num-processes "$PROCESSES" "$@"
