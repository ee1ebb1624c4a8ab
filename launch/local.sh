#!/usr/bin/env bash
# Runs an experiment on this machine: launch/local.sh configs/demo.py WORKDIR [--config.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
shift 2
make install
exec .venv/bin/python -m sdeseg_jax.main --config="$config" --workdir="$workdir" "$@"
