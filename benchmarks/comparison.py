"""Method comparisons at demo size: one shared run (world, SDEs, depth labels), then a segment +
evaluate run per (method, seed) initialised from it, and the validation mIoU over seeds.

Used by benchmarks/ssl_comparison.py and benchmarks/ssda_comparison.py. Finished runs are skipped
(the stages' done markers), so an interrupted comparison continues where it stopped; on SIGTERM the
running stage is stopped the way a preemption stops it (checkpoint, then exit).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np

from benchmarks import common
from sdeseg_jax import cli


def run_main(config: str, workdir: str, *overrides: str) -> None:
  """python -m sdeseg_jax.main --config=CONFIG --workdir=WORKDIR OVERRIDES..., failing loudly."""
  command = [sys.executable, '-m', 'sdeseg_jax.main', f'--config={config}',
             f'--workdir={workdir}', *overrides]
  process = subprocess.Popen(command, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C while the stage runs; the previous handler
  # is back afterwards.
  previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(cli.PREEMPTED_EXIT_CODE))
  try:
    _, stderr = process.communicate()
  except BaseException:
    # Stopped (SIGTERM, Ctrl-C): the run saves a checkpoint on SIGTERM. Keep reading its output
    # until it exits: with nobody reading, its next log line would kill it before the save.
    process.terminate()
    process.communicate()
    raise
  finally:
    signal.signal(signal.SIGTERM, previous)
  if process.returncode:
    raise RuntimeError(f'{" ".join(command)} failed:\n{stderr[-3000:]}')


def eval_curve(segment_dir: str) -> dict[int, float]:
  """{step: validation mIoU} of a segment run's periodic evaluations, from its TensorBoard events
  (`eval/miou`); a step evaluated twice (a resumed run repeating steps after its last checkpoint)
  keeps the later figure."""
  import tensorflow as tf   # only here: the rest of the comparison runs without it
  curve = {}
  for events in sorted(glob.glob(os.path.join(segment_dir, 'logs', '*tfevents*'))):
    for record in tf.data.TFRecordDataset(events):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == 'eval/miou':
          curve[int(event.step)] = float(tf.make_ndarray(value.tensor))
  return dict(sorted(curve.items()))


def best_so_far(curve: dict[int, float]) -> dict[int, float]:
  """{step: the best mIoU evaluated up to that step}."""
  best, out = -1.0, {}
  for step, miou in sorted(curve.items()):
    out[step] = best = max(best, miou)
  return out


def arguments(description: str, methods: dict, workdir: str, steps: int = 1000
              ) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--steps', type=int, default=steps,
                      help='segment steps of every (method, seed) run')
  parser.add_argument('--labels', type=int, default=4)
  parser.add_argument('--sequences', type=int, default=160,
                      help='snippets of the target (city) world; a fifth are held out for val')
  parser.add_argument('--sde_steps', type=int, default=6000,
                      help='steps of each SDE of the shared run, the learning rate x0.1 after 80%% '
                           '(the demo trains 1500 on a world of 20 snippets; at 1500 the SDE of '
                           'the 160-snippet world is still improving fast)')
  parser.add_argument('--methods', default=','.join(methods))
  parser.add_argument('--workdir', default=workdir)
  parser.add_argument('--out', default='')
  parser.add_argument('--override', action='append', default=[],
                      help='extra config override for every segment run, e.g. '
                           'segment.optim.groups.decoder.lr=0.05 (repeatable)')
  return parser


def compare(args, *, config: str, shared_stages: str, methods: dict[str, dict],
            links: tuple[str, ...], checkpoints: dict[str, str], world: tuple[str, ...] = (),
            sdes: tuple[str, ...] = ('sde',)) -> dict:
  """Runs the shared stages, then every (method, seed); returns {method: mean, std, runs, and
  best_so_far: per run {step: best validation mIoU up to that step}}.

  methods: name -> {config key under `config.`: value}; links: the shared run's folders each run
  reads (symlinked); checkpoints: config key -> folder of the shared run (e.g. the SDE); world:
  further overrides of the rendered worlds; sdes: the SDE configs trained for args.sde_steps.
  """
  world = [f'--config.data.target.synthetic.sequences={args.sequences}', *world]
  for sde in sdes:
    world += [f'--config.{sde}.num_steps={args.sde_steps}',
              f'--config.{sde}.optim.schedule.boundaries=({int(0.8 * args.sde_steps)},)']
  shared = os.path.abspath(os.path.join(args.workdir, 'shared'))
  run_main(config, shared, *world, f'--config.stages={shared_stages}')
  results, curves = {}, {}
  for method in filter(None, args.methods.split(',')):   # --methods= : the shared run only
    if method not in methods:
      raise SystemExit(f'unknown method {method!r} (known: {", ".join(methods)})')
    for seed in (int(s) for s in args.seeds.split(',')):
      run = os.path.abspath(os.path.join(args.workdir, f'{method}_seed{seed}'))
      os.makedirs(run, exist_ok=True)
      for folder in links:
        if not os.path.exists(os.path.join(run, folder)):
          os.symlink(os.path.join(shared, folder), os.path.join(run, folder))
      run_main(config, run, *world, '--config.stages=segment,evaluate', f'--config.seed={seed}',
               *(f'--config.{k}={os.path.join(shared, v)}' for k, v in checkpoints.items()),
               f'--config.segment.num_steps={args.steps}', f'--config.segment.labels={args.labels}',
               '--config.segment.selection=',  # seeded random labeled subsets: methods differ only
                                               # in how they train
               *(f'--config.{k}={v}' for k, v in methods[method].items()),
               *(f'--config.{o}' for o in args.override))
      with open(os.path.join(run, 'eval.json')) as f:
        results.setdefault(method, []).append(json.load(f)['miou'])
      curves.setdefault(method, []).append(best_so_far(eval_curve(os.path.join(run, 'segment'))))
      print(f'{method:14s} seed {seed}: mIoU {100 * results[method][-1]:.2f}', flush=True)
  table = {m: dict(miou_mean=float(np.mean(v)), miou_std=float(np.std(v)), runs=v,
                   best_so_far=curves[m])
           for m, v in results.items()}
  for method, row in table.items():
    print(f'{method:14s} {100 * row["miou_mean"]:6.2f} +- {100 * row["miou_std"]:.2f}')
  return table


def report(name: str, args, table: dict, **extra) -> None:
  common.emit(dict(benchmark=name, steps=args.steps, labels=args.labels, sequences=args.sequences,
                   sde_steps=args.sde_steps,
                   overrides=args.override, seeds=args.seeds, machine=common.machine(),
                   methods=table, **extra), args.out)
