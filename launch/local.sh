#!/usr/bin/env bash
# Runs an experiment on this machine (all its devices, one process):
#   launch/local.sh [--dry_run] CONFIG WORKDIR [--config.key=value ...]
# e.g. launch/local.sh configs/ssda_gta.py:labels=100 runs/ssda_gta_100
# --dry_run (or DRY_RUN=1) prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=${DRY_RUN:-0}
if [[ ${1:-} == --dry_run ]]; then
  dry_run=1
  shift
fi
usage="usage: launch/local.sh [--dry_run] CONFIG WORKDIR [--config.key=value ...]"
config=${1:?$usage}
workdir=${2:?$usage}
shift 2

# shellcheck source=launch/common.sh
source launch/common.sh

run make install
if [[ $dry_run == 1 ]]; then
  run .venv/bin/python -m sdeseg_jax.main --config="$config" --workdir="$workdir" "$@"
else
  exec .venv/bin/python -m sdeseg_jax.main --config="$config" --workdir="$workdir" "$@"
fi
