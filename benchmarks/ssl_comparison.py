"""The paper's SSL comparison at demo size: supervised baseline vs ClassMix vs DepthMix vs
multi-task + DepthMix, over several seeds, on the synthetic city world (CPU-sized).

    python -m benchmarks.ssl_comparison [--seeds=0,1] [--steps=1000] [--labels=4] [--workdir=DIR]
        [--out=FILE]

One shared run of configs/demo.py renders the world, trains the SDE and writes depth labels; every
(method, seed) then runs the segment and evaluate stages in its own workdir, initialised from that
SDE, and the validation mIoU of each is collected (mean and std over seeds), as JSON and a table.
Finished runs are skipped, so an interrupted comparison continues.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from benchmarks import common

METHODS = {
    'supervised': dict(network='transfer', mix='none'),
    'classmix': dict(network='transfer', mix='classmix'),
    'depthmix': dict(network='transfer', mix='depthmix'),
    'mtl+depthmix': dict(network='mtl', mix='depthmix'),
}


def _main(workdir: str, *overrides: str) -> None:
  command = [sys.executable, '-m', 'sdeseg_jax.main', '--config=configs/demo.py',
             f'--workdir={workdir}', *overrides]
  result = subprocess.run(command, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
                          capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--steps', type=int, default=1000)
  parser.add_argument('--labels', type=int, default=4)
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--workdir', default='workdirs/ssl_comparison')
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  base = os.path.abspath(os.path.join(args.workdir, 'shared'))
  _main(base, '--config.stages=data,sde_pretrain,depth_labels')
  results = {}
  for method in args.methods.split(','):
    for seed in (int(s) for s in args.seeds.split(',')):
      run = os.path.abspath(os.path.join(args.workdir, f'{method}_seed{seed}'))
      os.makedirs(run, exist_ok=True)
      for shared in ('raw', 'data', 'depth'):
        if not os.path.exists(os.path.join(run, shared)):
          os.symlink(os.path.join(base, shared), os.path.join(run, shared))
      overrides = [f'--config.segment.{k}={v}' for k, v in METHODS[method].items()]
      _main(run, '--config.stages=segment,evaluate', f'--config.seed={seed}',
            f'--config.segment.sde_checkpoint={os.path.join(base, "sde", "ckpt")}',
            f'--config.segment.num_steps={args.steps}', f'--config.segment.labels={args.labels}',
            *overrides)
      with open(os.path.join(run, 'eval.json')) as f:
        results.setdefault(method, []).append(json.load(f)['miou'])
      print(f'{method:14s} seed {seed}: mIoU {100 * results[method][-1]:.2f}', flush=True)
  table = {m: dict(miou_mean=float(np.mean(v)), miou_std=float(np.std(v)), runs=v)
           for m, v in results.items()}
  for method, row in table.items():
    print(f'{method:14s} {100 * row["miou_mean"]:6.2f} +- {100 * row["miou_std"]:.2f}')
  common.emit(dict(benchmark='ssl_comparison', steps=args.steps, labels=args.labels,
                   seeds=args.seeds, machine=common.machine(), methods=table), args.out)


if __name__ == '__main__':
  main()
