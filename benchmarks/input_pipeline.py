"""Examples/s of each input pipeline at the working resolution, as JSON.

    python -m benchmarks.input_pipeline [--resolution=1024x512] [--steps=30] [--out=FILE]

Data: a synthetic world (city domain, Cityscapes layout, 12 snippets of 5 frames) rendered and
prepared once into --cache
(reused by later runs), then read by the same pipelines training uses. Each pipeline runs a warm-up
of a few batches (tf.data start-up, autotuning) and is then timed over --steps batches, --repeats
times.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from data_pipelines import pipeline  # noqa: E402
from data_pipelines import prepare  # noqa: E402
from data_pipelines import synthetic  # noqa: E402


def _time_batches(batches, steps: int, warmup: int, batch: int) -> dict:
  iterator = iter(batches)
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  seconds = time.perf_counter() - start
  return dict(seconds=seconds, examples_per_s=steps * batch / seconds)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--resolution', default='1024x512')
  parser.add_argument('--crop', default='512x512')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--image_format', default='jpg', choices=['jpg', 'png'])
  parser.add_argument('--cache', default=os.path.expanduser('~/.cache/sdeseg_jax/benchmark_world'))
  parser.add_argument('--out', default='', help='also write the JSON here')
  args = parser.parse_args()
  resolution, crop = prepare.parse_resolution(args.resolution), prepare.parse_resolution(args.crop)

  raw = os.path.join(args.cache, f'raw_{args.resolution}')
  prepared = os.path.join(args.cache, f'prepared_{args.resolution}_{args.image_format}')
  synthetic.render_world(raw, domain='city', layout='cityscapes', size=resolution, sequences=12,
                         frames=5, seed=0)
  prepare.prepare('cityscapes', raw, prepared, resolution, image_format=args.image_format)
  reader = prepare.open_prepared('cityscapes', prepared, resolution)
  sharding = pipeline.Sharding(args.batch)
  shared = dict(resolution=resolution, crop=crop, sharding=sharding, seed=0)
  train = reader.segmentation('train')
  builders = {
      'sde_triplets': lambda: pipeline.sde_batches(reader.sequences('train'), **shared),
      'segmentation_labeled': lambda: pipeline.segmentation_batches(
          train, reader.label_spec, stream='labeled', **shared),
      'segmentation_unlabeled': lambda: pipeline.segmentation_batches(
          train.without_labels(), reader.label_spec, stream='unlabeled', **shared),
      # Whole images in order; timed on the train split, which has more images than val here.
      'validation': lambda: pipeline.validation_batches(
          train, reader.label_spec, resolution=resolution, sharding=sharding),
  }
  results = {}
  for name, build in builders.items():
    runs = []
    for _ in range(args.repeats):
      steps = args.steps if name != 'validation' else max(1, len(build()) - 1)
      warmup = args.warmup if name != 'validation' else 1
      runs.append(_time_batches(build(), steps, warmup, args.batch)['examples_per_s'])
    results[name] = dict(examples_per_s_median=float(np.median(runs)),
                         examples_per_s_min=float(np.min(runs)),
                         examples_per_s_max=float(np.max(runs)))
    print(f'{name:24s} {results[name]["examples_per_s_median"]:8.1f} examples/s', flush=True)
  common.emit(dict(benchmark='input_pipeline', device='cpu', machine=common.machine(),
                   resolution=list(resolution), crop=list(crop), batch=args.batch,
                   steps=args.steps, repeats=args.repeats, image_format=args.image_format,
                   peak_rss_mib=common.peak_rss_mib(), pipelines=results), args.out)


if __name__ == '__main__':
  main()
