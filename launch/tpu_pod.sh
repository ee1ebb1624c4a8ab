#!/usr/bin/env bash
# Runs an experiment on a Cloud TPU VM (a single host or a pod slice: every worker runs one process):
#
#   launch/tpu_pod.sh [--dry_run] --name=NAME [--zone=ZONE] [--accelerator=TYPE] [--version=IMAGE]
#                     [--project=PROJECT] [--spot] CONFIG WORKDIR [--config.key=value ...]
#
# 1. reuses the TPU VM NAME, or creates it (TYPE, e.g. v4-32 = 4 workers; IMAGE the runtime),
# 2. copies this working tree (git's tracked and untracked-but-not-ignored files) to every worker,
# 3. installs it there into ~/sdeseg_jax/.venv with jax[tpu] (Python 3.11 through uv: the TPU images
#    ship an older Python),
# 4. runs python -m sdeseg_jax.main --distributed=on on all workers at once; jax.distributed learns
#    the workers from the TPU metadata server.
# WORKDIR is a path on the workers and must be one folder they all share (Orbax writes one
# checkpoint from all of them): e.g. a Filestore NFS share or a gcsfuse mount of a bucket, mounted at
# the same path on every worker.
# --dry_run (or DRY_RUN=1) prints the commands instead of running them.
set -euo pipefail

dry_run=${DRY_RUN:-0}
name=''
zone='us-central2-b'
accelerator='v4-32'
version='tpu-ubuntu2204-base'
project=''
spot=0
while [[ ${1:-} == --* ]]; do
  case $1 in
    --dry_run) dry_run=1 ;;
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator=*) accelerator=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --spot) spot=1 ;;
    *) echo "launch/tpu_pod.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
usage="usage: launch/tpu_pod.sh [options] --name=NAME CONFIG WORKDIR [--config.key=value ...]"
if [[ -z $name ]]; then
  echo "$usage" >&2
  exit 2
fi
config=${1:?$usage}
workdir=${2:?$usage}
shift 2
cd "$(dirname "$0")/.."

# shellcheck source=launch/common.sh
source launch/common.sh

where=(--zone="$zone")
[[ -n $project ]] && where+=(--project="$project")
tpu=(gcloud compute tpus tpu-vm)

# 1. Reuse or create.
create=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator"
        --version="$version")
[[ $spot == 1 ]] && create+=(--spot)
if [[ $dry_run == 1 ]]; then
  run "${tpu[@]}" describe "$name" "${where[@]}"
  echo "# only if the describe above fails (no such TPU VM):"
  run "${create[@]}"
elif ! "${tpu[@]}" describe "$name" "${where[@]}" > /dev/null 2>&1; then
  run "${create[@]}"
fi

# 2. Copy the working tree.
archive=${TMPDIR:-/tmp}/sdeseg_jax_$name.tgz
if [[ $dry_run == 1 ]]; then
  echo "git ls-files -z --cached --others --exclude-standard | tar --null -T - -czf $(quote_words "$archive")"
else
  git ls-files -z --cached --others --exclude-standard | tar --null -T - -czf "$archive"
fi
run "${tpu[@]}" scp "$archive" "$name:sdeseg_jax.tgz" "${where[@]}" --worker=all

# 3. Install (uv makes the Python 3.11 environment; reruns only update the package).
install='mkdir -p ~/sdeseg_jax && tar -xzf ~/sdeseg_jax.tgz -C ~/sdeseg_jax && cd ~/sdeseg_jax'
install+=' && python3 -m pip install --user --quiet uv'
install+=' && (test -x .venv/bin/python || ~/.local/bin/uv venv --python 3.11 .venv)'
install+=" && ~/.local/bin/uv pip install --quiet --python .venv/bin/python -e '.[tpu]'"
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$install"

# 4. Run on every worker.
main=$(quote_words .venv/bin/python -m sdeseg_jax.main --distributed=on --config="$config" \
  --workdir="$workdir" "$@")
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="cd ~/sdeseg_jax && $main"
