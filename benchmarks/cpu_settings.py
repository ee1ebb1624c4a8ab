"""XLA:CPU settings side by side: the multi-task network's forward and forward + backward
(benchmarks/models.py) and train-step rows (benchmarks/train_step.py) under each setting, PyTorch
once beside them; the evidence behind sdeseg_jax.CPU_XLA_FLAGS.

    python -m benchmarks.cpu_settings [--size=256x256] [--rows=segment:transfer,student]
        [--row_size=512x512] [--settings=NAME,...] [--repeats=3]
        [--out=benchmarks/results/cpu_settings_cpu.json]

Each setting runs in fresh subprocesses with XLA_FLAGS set to it alone (the project's default
is then not added, as the flag is set). Run it on an idle machine: the settings run one after
the other, so load from elsewhere moves one against another.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import sdeseg_jax
from benchmarks import common
from benchmarks import run_all

_YNN = '--xla_cpu_experimental_ynn_fusion_type='
SETTINGS = {
    # jaxlib 0.10.2's own: convolutions and dot products as YNNPACK fusions ('+' adds to jaxlib's
    # default list what it holds already).
    'jaxlib_default': _YNN + '+individual_convolution',
    'ynn_dot_only': _YNN + 'individual_dot',
    # The project's CPU default (sdeseg_jax.CPU_XLA_FLAGS: no YNNPACK fusions).
    'project_default': ' '.join(sdeseg_jax.CPU_XLA_FLAGS),
    'ynn_dot_only_xnn_greedy': (_YNN + 'individual_dot '
                                '--xla_cpu_experimental_xnn_graph_fusion_mode='
                                'XNN_GRAPH_FUSION_MODE_GREEDY'),
}


def _run(module: str, args: list[str], xla_flags: str | None) -> dict:
  """python -m MODULE ARGS --out=TMP under XLA_FLAGS=xla_flags (None: the environment's own)."""
  with tempfile.TemporaryDirectory() as folder:
    out = os.path.join(folder, 'result.json')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    if xla_flags is not None:
      env['XLA_FLAGS'] = xla_flags
    result = subprocess.run([sys.executable, '-m', module, *args, f'--out={out}'], env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode:
      raise RuntimeError(f'{module} {" ".join(args)} failed:\n{result.stderr[-3000:]}')
    with open(out) as f:
      return json.load(f)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', default='256x256', help='WxH of the network forward/backward')
  parser.add_argument('--rows', default='segment:transfer,student',
                      help='train-step rows of run_all, comma-separated ("" for none)')
  parser.add_argument('--row_size', default='512x512')
  parser.add_argument('--settings', default=','.join(SETTINGS))
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', default='benchmarks/results/cpu_settings_cpu.json')
  args = parser.parse_args(argv)
  settings = args.settings.split(',')
  unknown = [s for s in settings if s not in SETTINGS]
  if unknown:
    raise SystemExit(f'unknown settings {unknown} (known: {", ".join(SETTINGS)})')
  rows = [r for r in args.rows.split(',') if r]
  network = [f'--size={args.size}', f'--repeats={args.repeats}']
  results = dict(network={}, rows={row: {} for row in rows})
  for name in settings:
    run = _run('benchmarks.models', [*network, '--frameworks=jax'], SETTINGS[name])['jax']
    results['network'][name] = {k: run[k] for k in ('forward', 'forward_backward', 'peak_rss_mib')}
    for row in rows:
      config, batch = run_all.STEPS[row]
      step = _run('benchmarks.train_step', [f'--stage={row}', f'--config={config}',
                                            f'--batch={batch}', f'--size={args.row_size}',
                                            f'--repeats={args.repeats}'], SETTINGS[name])
      results['rows'][row][name] = {k: step[k] for k in ('step_ms_median', 'step_ms_min',
                                                         'step_ms_max', 'compile_s')}
    print(name, json.dumps(results['network'][name]['forward_backward']), flush=True)
  torch = _run('benchmarks.models', [*network, '--frameworks=torch'], None)['torch']
  results['network']['torch'] = {k: torch[k] for k in ('forward', 'forward_backward',
                                                       'peak_rss_mib')}
  common.emit(dict(benchmark='cpu_settings', size=args.size, row_size=args.row_size,
                   repeats=args.repeats, settings={n: SETTINGS[n] for n in settings},
                   machine=common.machine(), **results), args.out)


if __name__ == '__main__':
  main()
