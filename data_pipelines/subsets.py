"""Which images of a split are labeled, and joining segmentation images with their video frames.

- Labeled subsets: the first n ids of an ordered selection (the data-selection stage's output, a
  JSON list of ids or {"ids": [...]}) or, without one, n images drawn at random with a seed.
- Multi-task training needs the frames t-1 and t+1 of every segmentation image: they come from the
  sequence index of the same split, matched by example id (Cityscapes: {city}_{seq}_{frame}).
- Frame subsets: a seeded random fraction of the training triplets for self-supervised depth (the
  paper's Table 9 trains SDEs on 10%, 1% and 0.1% of the frames).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from data_pipelines.datasets import common


def read_selection(path: str) -> list[str]:
  """The ordered ids of a selection file."""
  try:
    with open(path) as f:
      values = json.load(f)
  except (OSError, ValueError) as e:
    raise common.DataError(f'{path}: unreadable selection file ({e})') from e
  ids = values.get('ids') if isinstance(values, dict) else values
  if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
    raise common.DataError(f'{path}: expected a JSON list of example ids or {{"ids": [...]}}')
  if len(set(ids)) != len(ids):
    raise common.DataError(f'{path}: the selection repeats ids')
  return ids


def labeled_rows(index: common.ExampleIndex, count: int, *, seed: int,
                 selection: str = '') -> np.ndarray:
  """Sorted rows of `index` whose labels are used; count <= 0 means all of them."""
  if count <= 0 or (not selection and count >= len(index)):
    return np.arange(len(index))
  if selection:
    ids = read_selection(selection)
    if count > len(ids):
      raise common.DataError(f'{selection}: holds {len(ids)} ids, fewer than the {count} labels '
                             'asked for')
    position = {i: n for n, i in enumerate(index.ids.tolist())}
    # All ids, not just the first `count`: an unknown id anywhere means a corrupt or foreign file.
    unknown = [i for i in ids if i not in position]
    if unknown:
      raise common.DataError(f'{selection}: ids not in the dataset split: {unknown[:5]} '
                             f'({len(unknown)} in all)')
    return np.sort([position[i] for i in ids[:count]])
  return np.sort(np.random.default_rng([seed, count]).permutation(len(index))[:count])


def fraction_count(total: int, fraction: float) -> int:
  """How many of `total` items a fraction keeps: round(fraction * total), at least 1 (of a
  non-empty set), at most total."""
  if not 0 < fraction <= 1:
    raise ValueError(f'fraction {fraction}: expected 0 < fraction <= 1')
  return min(total, max(1, round(fraction * total))) if total else 0


def fraction_rows(total: int, fraction: float, *, seed: int) -> np.ndarray:
  """Sorted rows of a random `fraction` of `total` items (fraction_count of them), a pure function
  of (total, fraction, seed): a resumed run trains on the same subset. fraction 1: all rows."""
  count = fraction_count(total, fraction)
  if count == total:
    return np.arange(total)
  # Its own stream (the trailing tag), so it does not repeat the labeled subset of the same seed.
  return np.sort(np.random.default_rng([seed, total, count, 0x5DE]).permutation(total)[:count])


def semi_supervised(index: common.ExampleIndex, rows: np.ndarray) -> common.ExampleIndex:
  """All images of `index`, with labels kept only on `rows` (the others become unlabeled)."""
  keep = np.zeros(len(index), bool)
  keep[rows] = True
  return dataclasses.replace(index, labels=np.where(keep, index.labels, ''))


def with_neighbours(images: common.ExampleIndex,
                    sequences: common.ExampleIndex) -> common.ExampleIndex:
  """`images` with prev/next frames from the triplet of the same id in `sequences`."""
  position = {i: n for n, i in enumerate(sequences.ids.tolist())}
  missing = [i for i in images.ids.tolist() if i not in position]
  if missing:
    raise common.DataError(f'{len(missing)} segmentation images have no frame triplet in the '
                           f'sequences (e.g. {missing[:3]}); multi-task training needs them')
  rows = [position[i] for i in images.ids.tolist()]
  # A joined row is read through one storage (its `storage` cell): its frames must live there too.
  elsewhere = [i for i, a, b in zip(images.ids.tolist(), images.storage, sequences.storage[rows])
               if a is not b]
  if elsewhere:
    raise common.DataError(f'{len(elsewhere)} segmentation images (e.g. {elsewhere[:3]}) are read '
                           'from another backend than their frame triplets; open both indices '
                           'from one reader')
  return dataclasses.replace(images, prev_frames=sequences.prev_frames[rows],
                             next_frames=sequences.next_frames[rows])
