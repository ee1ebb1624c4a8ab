"""Every workload of the method, JAX beside PyTorch, in one run: one table, and BENCHMARKS.md.

    python -m benchmarks.run_all [--size=512x512] [--repeats=3] [--only=NAME,...]
        [--frameworks=jax,torch] [--results=benchmarks/results] [--markdown=BENCHMARKS.md]
        [--render_only] [--dtype=float32|bfloat16] [--tiny]

Each workload runs in its own subprocess (so peak memory is its own) and writes its JSON to
--results as `<name>_<framework>_<device kind>.json`; --render_only re-reads those files and only
rebuilds the table (e.g. after running single rows with --only). Train steps and inference run
`benchmarks/train_step.py` (JAX) and `benchmarks/torch_steps.py` (PyTorch, the same architecture
and the same passes per step); the input pipelines, farthest point selection and the full-size
network forward/backward (`benchmarks/models.py`) have their own scripts. BENCHMARKS.md keeps its
hand-written analysis: only the part between the two `run_all` markers is replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks import common

# name -> (JAX config, batch). The four segment rows are the reference's runtime table
# (supplement Table S1: 188 / 466 / 476 / 1215 ms per iteration on a Tesla P100).
STEPS = {
    'sde': ('configs/sde_cityscapes.py:C', 4),
    'segment:transfer': ('configs/ssl_cityscapes.py', 2),
    'segment:transfer+pseudo': ('configs/ssl_cityscapes.py', 2),
    'segment:transfer+depthmix': ('configs/ssl_cityscapes.py', 2),
    'segment:mtl+depthmix': ('configs/ssl_cityscapes.py', 2),
    'ssda': ('configs/ssda_gta.py', 2),
    'student': ('configs/select_cityscapes.py', 2),
    'inference:transfer': ('configs/ssl_cityscapes.py', 2),
    'inference:mtl': ('configs/ssl_cityscapes.py', 2),
}
P100_MS = {'segment:transfer': 188, 'segment:transfer+pseudo': 466,
           'segment:transfer+depthmix': 476, 'segment:mtl+depthmix': 1215}
OTHERS = ('input_pipeline', 'farthest_point_selection')
BEGIN, END = '<!-- run_all:begin -->', '<!-- run_all:end -->'


def device_kind() -> str:
  """'cpu', 'gpu' or 'tpu': what JAX runs on here (names the result files)."""
  import jax
  return jax.default_backend()


def _run(command: list[str]) -> None:
  print('$ ' + ' '.join(command), flush=True)
  result = subprocess.run([sys.executable, '-m', *command], capture_output=True, text=True,
                          check=False, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  if result.returncode:
    raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')


def result_file(results: str, name: str, framework: str, device: str) -> str:
  return os.path.join(results,
                      f'{name.replace(":", "_").replace("+", "_")}_{framework}_{device}.json')


def run_workload(name: str, framework: str, args, out: str) -> None:
  size = f'--size={args.size}'
  repeats = f'--repeats={args.repeats}'
  if name in STEPS:
    config, batch = STEPS[name]
    if framework == 'jax':
      _run(['benchmarks.train_step', f'--stage={name}', f'--config={config}', f'--batch={batch}',
            size, repeats, f'--dtype={args.dtype}', *(['--tiny'] if args.tiny else []),
            f'--out={out}'])
    else:
      _run(['benchmarks.torch_steps', f'--workload={name}', f'--batch={batch}', size, repeats,
            f'--out={out}'])
  elif name == 'input_pipeline':
    _run(['benchmarks.input_pipeline', f'--out={out}'])
  elif name == 'farthest_point_selection':
    _run(['benchmarks.farthest_point_selection', f'--out={out}'])
  else:
    raise SystemExit(f'unknown workload {name!r} (known: {", ".join([*STEPS, *OTHERS])})')


def _load(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _fmt(value, spec: str = '.0f') -> str:
  return '–' if value is None else format(value, spec)


def step_table(results: str, device: str) -> list[str]:
  """Markdown rows of the train-step / inference workloads, JAX vs PyTorch."""
  lines = ['| workload | batch | size | JAX median ms (min–max) | PyTorch median ms '
           '| JAX / PyTorch | JAX images/s | compile s | GFLOP / step | % of matmul peak '
           '| JAX peak memory MiB | P100 (reference) ms |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|']
  for name in STEPS:
    jax_row = _load(result_file(results, name, 'jax', device))
    torch_row = _load(result_file(results, name, 'torch', device))
    if jax_row is None and torch_row is None:
      continue
    row = jax_row or torch_row
    ratio = (jax_row['step_ms_median'] / torch_row['step_ms_median']
             if jax_row and torch_row else None)
    jax_ms = memory = None
    if jax_row:
      jax_ms = (f'{jax_row["step_ms_median"]:.0f} '
                f'({jax_row["step_ms_min"]:.0f}–{jax_row["step_ms_max"]:.0f})')
      memory = jax_row.get('device_peak_mib') or jax_row.get('peak_rss_mib')
    fraction = jax_row and jax_row.get('peak_fraction')
    lines.append(
        f'| {name} | {row["batch"]} | {row["size"][0]}x{row["size"][1]} | {jax_ms or "–"} '
        f'| {_fmt(torch_row and torch_row["step_ms_median"])} | {_fmt(ratio, ".2f")} '
        f'| {_fmt(jax_row and jax_row["images_per_s"], ".2f")} '
        f'| {_fmt(jax_row and jax_row["compile_s"])} '
        f'| {_fmt(jax_row and jax_row["flops_per_step"] / 1e9)} '
        f'| {_fmt(fraction and 100 * fraction)} | {_fmt(memory)} | {P100_MS.get(name, "–")} |')
  return lines


def other_tables(results: str, device: str) -> list[str]:
  lines = []
  pipelines = _load(result_file(results, 'input_pipeline', 'jax', device))
  if pipelines:
    lines += ['', f'Input pipelines ({pipelines["resolution"][0]}x{pipelines["resolution"][1]} '
              f'images, {pipelines["crop"][0]}x{pipelines["crop"][1]} crops, '
              f'{pipelines["image_format"]}):', '',
              '| pipeline | examples/s (median) |', '|---|---|']
    lines += [f'| {name} | {row["examples_per_s_median"]:.0f} |'
              for name, row in pipelines['pipelines'].items()]
  selection = _load(result_file(results, 'farthest_point_selection', 'jax', device))
  if selection:
    lines += ['', 'Farthest point selection (features of '
              f'{selection.get("dims", "?")} dimensions):', '',
              '| candidates | selected + new | seconds (best) | first call s |',
              '|---|---|---|---|']
    for row in selection['rows']:
      lines.append(f'| {row["candidates"]} | {row["initial"]} + {row["new"]} '
                   f'| {row["seconds"]:.1f} | {row["first_call_s"]:.1f} |')
  return lines


def render(results: str, device: str) -> str:
  machine = common.machine()
  lines = [BEGIN, '', f'Device kind `{device}`; machine: {machine["platform"]}, '
           f'{machine["cpu_count"]} CPUs, Python {machine["python"]}. Reproduce with '
           '`python -m benchmarks.run_all` (JSON per row in benchmarks/results/).', '']
  lines += step_table(results, device) + other_tables(results, device) + ['', END]
  return '\n'.join(lines)


def write_markdown(path: str, table: str, begin: str = BEGIN, end: str = END) -> None:
  """Replaces the generated part of `path` (`table`, from marker `begin` to `end`), keeping the
  rest; appends it when the markers are not there yet."""
  text = ''
  if os.path.exists(path):
    with open(path) as f:
      text = f.read()
  if begin in text and end in text:
    text = text[:text.index(begin)] + table + text[text.index(end) + len(end):]
  else:
    text = text + ('\n' if text else '# Benchmarks\n\n') + table + '\n'
  with open(path, 'w') as f:
    f.write(text)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', default='512x512', help='WIDTHxHEIGHT of train steps and inference')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--only', default='', help='comma-separated workloads (default: all)')
  parser.add_argument('--frameworks', default='jax,torch')
  parser.add_argument('--results', default='benchmarks/results')
  parser.add_argument('--markdown', default='BENCHMARKS.md')
  parser.add_argument('--render_only', action='store_true')
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                      help='compute dtype of the JAX rows (the PyTorch rows are float32)')
  parser.add_argument('--tiny', action='store_true',
                      help="JAX rows with the tests' tiny networks (a smoke test of the run)")
  args = parser.parse_args()
  device = device_kind()
  names = args.only.split(',') if args.only else [*STEPS, *OTHERS]
  failed = []
  if not args.render_only:
    for name in names:
      for framework in args.frameworks.split(','):
        if framework == 'torch' and name not in STEPS:
          continue   # JAX-only workloads: the input pipelines are tf.data, selection is ours
        try:
          run_workload(name, framework, args, result_file(args.results, name, framework, device))
        except RuntimeError as error:   # one failing row must not lose the others
          print(error, file=sys.stderr, flush=True)
          failed.append(f'{name} ({framework})')
  table = render(args.results, device)
  print(table)
  write_markdown(args.markdown, table)
  if failed:
    raise SystemExit(f'failed: {", ".join(failed)}')


if __name__ == '__main__':
  main()
