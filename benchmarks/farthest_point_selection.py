"""Speed of farthest point selection at the sizes of the paper's datasets: Cityscapes (2975
candidates) and GTA5 (25k), with phi of 256 channels x 4 x 8 = 8192 dimensions.

    python -m benchmarks.farthest_point_selection [--candidates=2975,25000] [--dims=8192]
        [--initial=372] [--new=372] [--repeats=3] [--out=FILE]

Each row: `initial` points already selected, `new` points added with scores (the DS+US step from
372 to 744 images); compile time (first call) and the best of `repeats` timed calls, in seconds,
on the default JAX device; plus the memory of the features.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks import common
from sdeseg_jax import ops


def time_selection(features: jax.Array, initial: np.ndarray, new: int, scores: jax.Array,
                   repeats: int) -> dict:
  start = time.perf_counter()
  chosen = ops.farthest_point_selection(features, initial, new, scores, 1000.0)
  chosen.block_until_ready()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    ops.farthest_point_selection(features, initial, new, scores, 1000.0).block_until_ready()
    times.append(time.perf_counter() - start)
  best = min(times)
  return dict(first_call_s=first, seconds=best, per_point_ms=1000 * best / (len(initial) + new),
              chosen_unique=len(set(np.asarray(chosen).tolist())) == new)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--candidates', default='2975,25000')
  parser.add_argument('--dims', type=int, default=256 * 4 * 8)
  parser.add_argument('--initial', type=int, default=372)
  parser.add_argument('--new', type=int, default=372)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  rows = []
  for n in (int(c) for c in args.candidates.split(',')):
    key = jax.random.key(n)
    features = jax.random.normal(key, (n, args.dims), np.float32)
    scores = jax.random.uniform(jax.random.fold_in(key, 1), (n,), np.float32) * 0.05
    initial = np.random.default_rng(n).choice(n, args.initial, replace=False)
    row = dict(candidates=n, dims=args.dims, initial=args.initial, new=args.new,
               features_mib=n * args.dims * 4 / 2**20,
               **time_selection(features, initial, args.new, scores, args.repeats))
    print(f'{n:6d} candidates x {args.dims} dims: {row["seconds"]:.2f} s '
          f'({row["per_point_ms"]:.2f} ms per point; first call {row["first_call_s"]:.2f} s)',
          flush=True)
    rows.append(row)
    del features
  common.emit(dict(benchmark='farthest_point_selection', device=str(jax.devices()[0]),
                   machine=common.machine(), rows=rows, peak_rss_mib=common.peak_rss_mib()),
              args.out)


if __name__ == '__main__':
  main()
