#!/usr/bin/env bash
# Runs an experiment on a SLURM GPU cluster: one process per GPU, connected by jax.distributed from
# SLURM's environment (SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID, the step's node list).
#
#   launch/slurm_gpu.sh [--dry_run] [--nodes=N] [--gpus_per_node=G] [--partition=P] [--time=T]
#                       [--account=A] [--deterministic] CONFIG WORKDIR [--config.key=value ...]
#
# submits a batch job (sbatch) that runs this script again with --in_allocation, which starts the
# N x G processes with srun. WORKDIR must be on a file system every node sees. --deterministic sets
# XLA_FLAGS=--xla_gpu_deterministic_ops=true (bitwise-repeatable runs; slower scatter-adds).
# --dry_run (or DRY_RUN=1) prints the commands instead of running them.
# Each task sees all GPUs of its node and JAX keeps the one numbered SLURM_LOCALID, so do not
# bind GPUs per task (no --gpus-per-task, no --gpu-bind) in the site's defaults.
set -euo pipefail

dry_run=${DRY_RUN:-0}
in_allocation=0
nodes=1
gpus_per_node=8
partition=''
time_limit=''
account=''
deterministic=0
while [[ ${1:-} == --* ]]; do
  case $1 in
    --dry_run) dry_run=1 ;;
    --in_allocation) in_allocation=1 ;;
    --nodes=*) nodes=${1#*=} ;;
    --gpus_per_node=*) gpus_per_node=${1#*=} ;;
    --partition=*) partition=${1#*=} ;;
    --time=*) time_limit=${1#*=} ;;
    --account=*) account=${1#*=} ;;
    --deterministic) deterministic=1 ;;
    *) echo "launch/slurm_gpu.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
usage="usage: launch/slurm_gpu.sh [options] CONFIG WORKDIR [--config.key=value ...]"
config=${1:?$usage}
workdir=${2:?$usage}
shift 2

# Inside the allocation this is sbatch's spool copy: common.sh comes from the repository
# (SDESEG_REPO or the current folder) there, from beside this script otherwise.
for common in "$(dirname "$0")/common.sh" "${SDESEG_REPO:-.}/launch/common.sh"; do
  [[ -f $common ]] && break
done
# shellcheck source=launch/common.sh
source "$common"

if [[ $in_allocation == 1 ]]; then
  # sbatch runs a copy of this script from its spool folder: the repository comes from the
  # submitting side (or, from a sweep's job array, the current folder).
  cd "${SDESEG_REPO:-.}"
  environment=()
  if [[ ${SDESEG_DETERMINISTIC:-0} == 1 || $deterministic == 1 ]]; then
    environment=(env "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_deterministic_ops=true")
  fi
  # Every task runs the same command; --kill-on-bad-exit stops the others when one fails.
  run "${environment[@]}" srun --kill-on-bad-exit=1 .venv/bin/python -m sdeseg_jax.main \
    --config="$config" --workdir="$workdir" "$@"
  exit 0
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
options=(--job-name=sdeseg --nodes="$nodes" --ntasks-per-node="$gpus_per_node"
         --gpus-per-node="$gpus_per_node" --chdir="$repo"
         "--export=ALL,SDESEG_REPO=$repo,SDESEG_DETERMINISTIC=$deterministic"
         --output="$workdir/slurm-%j.out")
[[ -n $partition ]] && options+=(--partition="$partition")
[[ -n $time_limit ]] && options+=(--time="$time_limit")
[[ -n $account ]] && options+=(--account="$account")
run mkdir -p "$workdir"
run sbatch "${options[@]}" "$repo/launch/slurm_gpu.sh" --in_allocation "$config" "$workdir" "$@"
