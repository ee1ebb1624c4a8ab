"""BENCHMARKS.md's TPU table: the plan matrix of benchmarks/tpu_plan.py, one compile per row.

    python -m benchmarks.tpu_matrix [--only=SUBSTRING,...] [--results=benchmarks/results/tpu]
        [--markdown=BENCHMARKS.md] [--render_only] [--deadline_min=N]

Rows (the reference's per-chip batch at 512x512), in the order they are compiled:
- the multi-task + DepthMix and the SSDA steps on v5e (16 GiB, the smallest HBM), bfloat16 (the
  TPU default of model.compute_dtype=auto);
- multi-task + DepthMix on v4, v5p and v6e; the SSDA step of configs/ssda_gta.py on a 256-chip
  v5e 16x16 slice (64 hosts); SSDA on v4, v5p and v6e;
- every other stage of benchmarks/train_step.py on v5e, bfloat16;
- multi-task + DepthMix and SSDA on all four chips in float32.
A row that does not fit is planned again with model.encoder.remat=True (its own row).

A full-size compile takes 10-30 minutes and up to ~18 GB of host memory on a 2-core machine, so
each row runs alone in its own process, writes its JSON to --results, and a rerun skips rows whose
JSON exists: the table can be filled over several sittings. Only the part of BENCHMARKS.md between
the two `tpu_matrix` markers is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import run_all

BEGIN, END = '<!-- tpu_matrix:begin -->', '<!-- tpu_matrix:end -->'
TOPOLOGIES = {'v4': 'v4:2x2x1', 'v5e': 'v5e:2x2', 'v5p': 'v5p:2x2x1', 'v6e': 'v6e:2x2'}
POD = 'v5e:16x16'
REMAT = 'model.encoder.remat=True'


def rows() -> list[dict]:
  """The matrix, most important rows first (the ones the README's claims rest on)."""
  def row(stage, topology, dtype='bfloat16'):
    config, batch = run_all.STEPS[stage]
    return dict(stage=stage, config=config, batch_per_chip=batch, topology=topology, dtype=dtype)
  key = ['segment:mtl+depthmix', 'ssda']
  others = ('v4', 'v5p', 'v6e')
  matrix = [row(stage, TOPOLOGIES['v5e']) for stage in key]
  matrix += [row(key[0], TOPOLOGIES[chip]) for chip in others]
  matrix.append(row('ssda', POD))
  matrix += [row(key[1], TOPOLOGIES[chip]) for chip in others]
  matrix += [row(stage, TOPOLOGIES['v5e']) for stage in run_all.STEPS if stage not in key]
  matrix += [row(stage, TOPOLOGIES[chip], 'float32') for chip in TOPOLOGIES for stage in key]
  return matrix


def row_name(row: dict, overrides=()) -> str:
  name = f'{row["stage"]}_{row["topology"]}_{row["dtype"]}'
  if REMAT in overrides:
    name += '_remat'
  return name.replace(':', '_').replace('+', '_')


def run_row(row: dict, results: str, overrides=()) -> dict | None:
  """Plans one row (unless its JSON exists); its report, or None when the compile failed."""
  path = os.path.join(results, row_name(row, overrides) + '.json')
  if not os.path.exists(path):
    command = [sys.executable, '-m', 'benchmarks.tpu_plan', f'--topology={row["topology"]}',
               f'--stage={row["stage"]}', f'--config={row["config"]}',
               f'--batch_per_chip={row["batch_per_chip"]}', f'--dtype={row["dtype"]}',
               f'--out={path}', *[f'--set={item}' for item in overrides]]
    print('$ ' + ' '.join(command[1:]), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
      print(f'failed ({result.returncode}):\n{result.stderr[-3000:]}', file=sys.stderr, flush=True)
      return None
  with open(path) as f:
    return json.load(f)


def table(results: str) -> str:
  """The markdown table of every plan JSON in `results`."""
  reports = []
  for name in sorted(os.listdir(results)) if os.path.isdir(results) else ():
    if name.endswith('.json'):
      with open(os.path.join(results, name)) as f:
        reports.append(json.load(f))
  order = {row_name(r): i for i, r in enumerate(rows())}
  reports.sort(key=lambda r: (order.get(row_name(r), len(order)), r['switches']['encoder_remat']))
  lines = [BEGIN, '',
           '| stage | slice | chips (hosts) | dtype | remat | batch/chip | per-chip GiB '
           '(args + out − alias + temp + code) | HBM GiB | fits | GFLOP/chip '
           '| est. ms/step, flop bound | est. ms/step, XLA byte count | est. all-reduce ms '
           '| P100 ms (measured) | compile s |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in reports:
    peaks = r['peaks']
    compute_ms = r['flops_per_chip'] / (peaks['peak_tflops'] * 1e9)
    memory_ms = r['bytes_accessed_per_chip'] / (peaks['hbm_gbps'] * 1e6)
    allreduce = r.get('estimate_allreduce_ms')
    lines.append(
        f'| {r["stage"]} | {r["topology"]} | {r["chips"]} ({r["hosts"]}) | {r["dtype"]} '
        f'| {"yes" if r["switches"]["encoder_remat"] else "no"} | {r["batch_per_chip"]} '
        f'| {r["total_gib"]:.2f} | {r["hbm_per_chip_gib"]} | {"yes" if r["fits"] else "**no**"} '
        f'| {r["flops_per_chip"] / 1e9:.0f} | {compute_ms:.1f} | {memory_ms:.0f} '
        f'| {"–" if allreduce is None else f"{allreduce:.1f}"} '
        f'| {run_all.P100_MS.get(r["stage"], "–")} | {r["compile_s"]:.0f} |')
  lines += ['', END]
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', default='', help='comma-separated substrings of row names')
  parser.add_argument('--results', default='benchmarks/results/tpu')
  parser.add_argument('--markdown', default='BENCHMARKS.md')
  parser.add_argument('--render_only', action='store_true')
  parser.add_argument('--deadline_min', type=float, default=0.0,
                      help='start no new compile after this many minutes (0: no limit)')
  args = parser.parse_args()
  start = time.monotonic()
  failed = []
  if not args.render_only:
    os.makedirs(args.results, exist_ok=True)
    wanted = [w for w in args.only.split(',') if w]
    for row in rows():
      if wanted and not any(w in row_name(row) for w in wanted):
        continue
      if args.deadline_min and time.monotonic() - start > 60 * args.deadline_min:
        print('deadline reached: the remaining rows are left for a rerun', flush=True)
        break
      report = run_row(row, args.results)
      if report is None:
        failed.append(row_name(row))
      elif not report['fits'] and not report['switches']['encoder_remat']:
        if run_row(row, args.results, (REMAT,)) is None:
          failed.append(row_name(row, (REMAT,)))
  text = table(args.results)
  print(text)
  run_all.write_markdown(args.markdown, text, BEGIN, END)
  if failed:
    raise SystemExit(f'failed: {", ".join(failed)}')


if __name__ == '__main__':
  main()
