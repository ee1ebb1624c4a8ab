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

# Quotes words for a POSIX shell: plain words as they are, others in single quotes.
quote_words() {
  local word out=()
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("$word")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${out[*]}"
}

# Prints a command, shell-quoted, or runs it.
run() {
  if [[ $dry_run == 1 ]]; then
    quote_words "$@"
  else
    "$@"
  fi
}

run make install
if [[ $dry_run == 1 ]]; then
  run .venv/bin/python -m sdeseg_jax.main --config="$config" --workdir="$workdir" "$@"
else
  exec .venv/bin/python -m sdeseg_jax.main --config="$config" --workdir="$workdir" "$@"
fi
