#!/usr/bin/env bash
# The one-shot GPU check, for a machine with an NVIDIA GPU (meant to end within 8 minutes: its
# benchmark rows stop at --budget_s; it has not yet run on a GPU, only as its CPU dry run):
#   benchmarks/gpu_check.sh [--dry_run] [--out=DIR] [--budget_s=SECONDS]
# 1. installs the package with the cuda and test extras into .venv (from the package registry);
# 2. runs the tests that matter on a GPU: ops parity with torch, the networks, bf16 agreement,
#    remat / micro-batch equivalence, and one tiny run of every stage with exact resume;
# 3. benchmarks every train-step and inference row of benchmarks/run_all.py at the reference
#    batch (512x512), float32 then bfloat16, while the time budget lasts (default 480 s from the
#    start; rows not reached are named at the end: rerun with the same --out to add them, finished
#    rows are kept);
# and writes everything under DIR (default benchmarks/results/gpu_check): tests.log, junit.xml,
# float32/ and bfloat16/ (one JSON per row), float32.md and bfloat16.md (the tables).
# --dry_run: the same on the CPU (JAX_PLATFORMS=cpu, no cuda extra) with tiny networks at 64x64,
# to check the script itself on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
out=benchmarks/results/gpu_check
budget_s=
for arg in "$@"; do
  case $arg in
    --dry_run) dry_run=1 ;;
    --out=*) out=${arg#--out=} ;;
    --budget_s=*) budget_s=${arg#--budget_s=} ;;
    *) echo "usage: benchmarks/gpu_check.sh [--dry_run] [--out=DIR] [--budget_s=SECONDS]" >&2
       exit 2 ;;
  esac
done
mkdir -p "$out"
py=.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1

if [[ $dry_run == 1 ]]; then
  export JAX_PLATFORMS=cpu
  make install
  rows_args=(--tiny --size=64x64 --repeats=1)
  budget_s=${budget_s:-100000}  # a dry run checks every row
else
  budget_s=${budget_s:-480}
  test -x "$py" || python3 -m venv .venv
  "$py" -m pip install --quiet --upgrade pip
  "$py" -m pip install --quiet -e '.[test,cuda]'
  "$py" -c 'import jax; assert jax.default_backend() == "gpu", f"no GPU for JAX: {jax.devices()}"'
  rows_args=(--size=512x512 --repeats=5)
fi
"$py" -c 'import jax; print("devices:", jax.devices())' | tee "$out/devices.txt"

echo "== tests ($(date +%T))"
# -p no:cacheprovider: leave no .pytest_cache in the tree; a failing test fails the check after
# the benchmarks have run (their figures are still worth having).
tests_status=0
"$py" -m pytest -q -p no:cacheprovider --junitxml="$out/junit.xml" \
    tests/test_ops.py tests/test_ops_segmentation.py tests/test_models.py \
    tests/test_training.py \
    tests/test_sde_pretrain.py::test_resume_after_sigterm_is_exact \
    tests/test_segment.py::test_resume_from_the_last_checkpoint_is_exact \
    tests/test_segment_ssda.py::test_ssda_run_resumes_exactly \
    2>&1 | tee "$out/tests.log" || tests_status=$?

echo "== benchmark rows ($(date +%T), budget ${budget_s} s from the start)"
mapfile -t rows < <("$py" -c 'from benchmarks import run_all; print(*run_all.STEPS, sep="\n")')
device=$("$py" -c 'import jax; print(jax.default_backend())')
skipped=()
for dtype in float32 bfloat16; do
  for row in "${rows[@]}"; do
    name=${row//[:+]/_}
    if [[ -e $out/$dtype/${name}_jax_$device.json ]]; then
      continue  # measured by an earlier run into the same folder
    fi
    if (( SECONDS > budget_s )); then
      skipped+=("$row ($dtype)")
      continue
    fi
    "$py" -m benchmarks.run_all --frameworks=jax --only="$row" --dtype="$dtype" \
        --results="$out/$dtype" --markdown="$out/$dtype.md" "${rows_args[@]}" \
        >> "$out/benchmarks.log" 2>&1 || skipped+=("$row ($dtype): failed, see benchmarks.log")
  done
  "$py" -m benchmarks.run_all --render_only --results="$out/$dtype" \
      --markdown="$out/$dtype.md" > /dev/null
done

echo "== done in ${SECONDS} s: results in $out"
cat "$out"/float32.md "$out"/bfloat16.md
if (( ${#skipped[@]} )); then
  printf 'not run: %s\n' "${skipped[@]}"
fi
exit "$tests_status"
