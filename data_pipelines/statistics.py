"""Statistics of a dataset split (the data stage's summary, the selection report)."""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np

from data_pipelines.datasets import common


def class_frequencies(index: common.ExampleIndex, spec: common.LabelSpec, max_labels: int,
                      workers: int = 0) -> dict:
  """Pixel fraction of each training class over up to `max_labels` evenly spaced label maps.

  Raises a DataError naming a label map that is unreadable or holds ids the dataset cannot contain.
  """
  labels = index.labels[index.is_labeled]
  if not len(labels):
    return {}
  labels = labels[np.unique(
      np.linspace(0, len(labels) - 1, min(max_labels, len(labels))).astype(int))]
  lookup, store = spec.lookup_table(), index.store

  def count(path):
    ids = common.decode_label_png(path, store)
    invalid = spec.invalid_ids(ids)
    if invalid:
      raise common.DataError(f'{path}: label ids {invalid} are not ids of this dataset')
    return np.bincount(lookup[ids].ravel(), minlength=256)

  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
    counts = sum(pool.map(count, labels))
  total = counts.sum()
  result = {name: float(counts[i] / total) for i, name in enumerate(spec.class_names)}
  result['(ignored)'] = float(counts[common.IGNORE_LABEL] / total)
  result['(label maps scanned)'] = int(len(labels))
  return result
