"""Automatic data selection at demo size on the synthetic city world, where some classes are rare by
construction (a truck in ~12% of the snippets, a bus in ~10%):

(a) class frequencies: for each selection method and seed, and each selection size, the ratio of
    a class's frequency in the selection to its frequency in the whole training set, for the rare
    classes (present, below --rare_below of the pixels): pixel frequency (the paper's Fig. 7) and
    the fraction of images containing the class. Random subsets are the reference (expected ratio
    1; mean and std over --random_draws seeded subsets of each size are reported too).
(b) with --segment: segmentation trained on the first --labels images of each method's selection
    (a random selection being the baseline), val mIoU per seed and mean.

    python -m benchmarks.selection_comparison [--sequences=160] [--sizes=4,8,16]
        [--student_steps=300,300] [--methods=ds_us,ds,us,random] [--seeds=0,1]
        [--segment --labels=4 --segment_steps=1000 --segment_methods=ds_us,random
         --segment_override=segment.mix=none ...]
        [--shared=DIR] [--workdir=DIR] [--out=FILE]

One shared run of configs/demo.py renders the world, trains the SDE and writes depth labels (or
--shared names such a workdir, e.g. the SSL comparison's); every (method, seed) selection then runs
the select_labels stage in its own workdir beside it. Finished runs are skipped, so an interrupted
comparison continues.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from benchmarks import common
from benchmarks import comparison

INITIAL = {'ds_us': 'diversity', 'ds': 'diversity', 'us': 'random', 'entropy': 'random',
           'random': 'random'}


def _main(workdir: str, *overrides: str) -> None:
  comparison.run_main('configs/demo.py', workdir, *overrides)


def _linked_run(shared: str, path: str) -> str:
  """A workdir sharing the world, the SDE and the depth labels of `shared`."""
  os.makedirs(path, exist_ok=True)
  for name in ('raw', 'data', 'depth', 'sde'):
    if not os.path.exists(os.path.join(path, name)):
      os.symlink(os.path.join(shared, name), os.path.join(path, name))
  return path


def class_pixel_counts(shared: str) -> tuple[list[str], np.ndarray, list[str]]:
  """(train ids, [N, C] pixel counts of each training class per image, class names) of the
  prepared world of the shared workdir."""
  from configs import demo
  from data_pipelines import sources
  from data_pipelines.datasets import common as data_common
  reader = sources.open_dataset(demo.get_config().data.target, shared, 'target')
  index = reader.segmentation('train')
  spec = reader.label_spec
  lookup = spec.lookup_table()
  counts = np.stack([np.bincount(lookup[data_common.decode_label_png(path)].ravel(),
                                 minlength=256)[:spec.num_classes] for path in index.labels])
  return index.ids.tolist(), counts, list(spec.class_names)


def frequency_ratios(counts: np.ndarray, rows, classes: list[int]) -> dict:
  """Per class: (pixel frequency in rows) / (in all), (images containing it in rows) / (in all)."""
  rows = np.asarray(rows)
  pixels_all = counts.sum(0) / counts.sum()
  pixels = counts[rows].sum(0) / counts[rows].sum()
  images_all = (counts > 0).mean(0)
  images = (counts[rows] > 0).mean(0)
  return {c: dict(pixel_ratio=float(pixels[c] / pixels_all[c]),
                  image_ratio=float(images[c] / images_all[c])) for c in classes}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sequences', type=int, default=160)
  parser.add_argument('--sizes', default='4,8,16')
  parser.add_argument('--student_steps', default='300,300')
  parser.add_argument('--methods', default='ds_us,ds,us,random')
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--lambda_e', type=float, default=0.0,
                      help='lambda_E of ds_us (0: the config\'s); runs are named by it')
  parser.add_argument('--rare_below', type=float, default=0.01)
  parser.add_argument('--random_draws', type=int, default=1000)
  parser.add_argument('--segment', action='store_true')
  parser.add_argument('--labels', type=int, default=4)
  parser.add_argument('--segment_steps', type=int, default=1000)
  parser.add_argument('--segment_methods', default='ds_us,random')
  parser.add_argument('--segment_override', action='append', default=[],
                      help='config override of every segment run, e.g. segment.mix=none '
                           '(repeatable; the default trains the demo\'s multi-task + DepthMix)')
  parser.add_argument('--shared', default='')
  parser.add_argument('--workdir', default='workdirs/selection_comparison')
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  world = [f'--config.data.target.synthetic.sequences={args.sequences}']
  sizes = [int(s) for s in args.sizes.split(',')]
  seeds = [int(s) for s in args.seeds.split(',')]
  shared = os.path.abspath(args.shared or os.path.join(args.workdir, 'shared'))
  _main(shared, *world, '--config.stages=data,sde_pretrain,depth_labels')

  ids, counts, names = class_pixel_counts(shared)
  whole = counts.sum(0) / counts.sum()
  rare = [c for c in range(len(names)) if 0 < whole[c] < args.rare_below]
  print('rare classes: ' + ', '.join(f'{names[c]} ({100 * whole[c]:.3f}% of pixels, in '
                                     f'{(counts[:, c] > 0).sum()} of {len(ids)} images)'
                                     for c in rare), flush=True)
  position = {i: n for n, i in enumerate(ids)}

  # (a) Selections and their class frequencies.
  selections, frequency = {}, {}
  weighted = method_lambda = ''
  if args.lambda_e:
    weighted = f'_lambda{args.lambda_e:g}'
    method_lambda = f'--config.select.lambda_e={args.lambda_e}'
  for method in args.methods.split(','):
    for seed in seeds:
      name = f'select_{method}_seed{seed}' + (weighted if method == 'ds_us' else '')
      run = _linked_run(shared, os.path.abspath(os.path.join(args.workdir, name)))
      _main(run, *world, '--config.stages=select_labels', f'--config.seed={seed}',
            f'--config.select.method={method}', f'--config.select.initial={INITIAL[method]}',
            f'--config.select.sizes=({args.sizes},)',
            f'--config.select.student_steps=({args.student_steps},)',
            *([method_lambda] if method == 'ds_us' and method_lambda else []))
      with open(os.path.join(run, 'selection.json')) as f:
        rows = [position[i] for i in json.load(f)]
      selections[(method, seed)] = os.path.join(run, 'selection.json')
      for size in sizes:
        ratios = frequency_ratios(counts, rows[:size], rare)
        frequency.setdefault(method, {}).setdefault(size, []).append(ratios)
      print(f'{method:8s} seed {seed}: ' + '  '.join(
          f'{names[c]} x{frequency[method][sizes[-1]][-1][c]["pixel_ratio"]:.2f}' for c in rare),
          flush=True)
  random_reference = {}
  for size in sizes:
    draws = [frequency_ratios(counts, np.random.default_rng([1234, size, d]).permutation(
        len(ids))[:size], rare) for d in range(args.random_draws)]
    random_reference[size] = {
        names[c]: {f'{k}_{stat}': float(fn([r[c][k] for r in draws]))
                   for k in ('pixel_ratio', 'image_ratio')
                   for stat, fn in (('mean', np.mean), ('std', np.std))} for c in rare}
  table = {method: {size: {names[c]: {k: dict(mean=float(np.mean([r[c][k] for r in runs])),
                                                runs=[r[c][k] for r in runs])
                                       for k in ('pixel_ratio', 'image_ratio')} for c in rare}
                    for size, runs in by_size.items()}
           for method, by_size in frequency.items()}
  print(f'\nclass-frequency ratio selection / whole set (pixel; image), mean over seeds {seeds}:')
  for size in sizes:
    print(f'  {size} images:')
    for method in table:
      print(f'    {method:8s} ' + '  '.join(
          f'{names[c]} {table[method][size][names[c]]["pixel_ratio"]["mean"]:.2f};'
          f'{table[method][size][names[c]]["image_ratio"]["mean"]:.2f}' for c in rare))

  # (b) Segmentation on the first --labels selected images.
  segmentation = {}
  # Runs with overrides are named by them, so that they never reuse another configuration's run.
  suffix = ''.join('_' + o.replace('segment.', '').replace('=', '-') for o in args.segment_override)
  if args.segment:
    for method in args.segment_methods.split(','):
      for seed in seeds:
        run = _linked_run(shared, os.path.abspath(os.path.join(
            args.workdir, f'segment_{method}_seed{seed}_labels{args.labels}{suffix}')))
        _main(run, *world, '--config.stages=segment,evaluate', f'--config.seed={seed}',
              f'--config.segment.selection={selections[(method, seed)]}',
              f'--config.segment.labels={args.labels}',
              f'--config.segment.num_steps={args.segment_steps}',
              f'--config.segment.sde_checkpoint={os.path.join(shared, "sde", "ckpt")}',
              *(f'--config.{o}' for o in args.segment_override))
        with open(os.path.join(run, 'eval.json')) as f:
          segmentation.setdefault(method, []).append(json.load(f)['miou'])
        print(f'segment on {method:8s} seed {seed}: mIoU {100 * segmentation[method][-1]:.2f}',
              flush=True)
    segmentation = {m: dict(miou_mean=float(np.mean(v)), miou_std=float(np.std(v)), runs=v)
                    for m, v in segmentation.items()}
    for method, row in segmentation.items():
      print(f'{method:8s} {100 * row["miou_mean"]:6.2f} +- {100 * row["miou_std"]:.2f}')
  common.emit(dict(
      benchmark='selection_comparison', sequences=args.sequences, train_images=len(ids),
      sizes=sizes, student_steps=args.student_steps, seeds=seeds, machine=common.machine(),
      lambda_e=args.lambda_e or 'config',
      rare_classes={names[c]: dict(pixel_frequency=float(whole[c]),
                                   images=int((counts[:, c] > 0).sum())) for c in rare},
      class_frequency_ratio=table, random_reference=random_reference,
      segmentation=dict(labels=args.labels, steps=args.segment_steps,
                        overrides=args.segment_override, methods=segmentation)
      if args.segment else None), args.out)


if __name__ == '__main__':
  main()
