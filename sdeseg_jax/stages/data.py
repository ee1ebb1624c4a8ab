"""The `data` stage: materialise each configured dataset (render / prepare), validate its layout
(`Reader.check_layout`, and the label ids of the label maps it scans) and write a summary: examples
per split (their ids and image paths: the record every later stage checks the splits it reads
against, data_pipelines.records), class pixel frequencies, camera intrinsics.

Output: <workdir>/data/summary.json and the same as a readable table on stdout.
"""

from __future__ import annotations

import logging

import ml_collections
import numpy as np

from data_pipelines import files
from data_pipelines import records
from data_pipelines import sources
from data_pipelines import statistics
from data_pipelines.datasets import common
from sdeseg_jax import artifacts
from sdeseg_jax.stages import base

ROLES = ('target', 'source')


def _splits(reader: common.Reader) -> tuple[dict, dict]:
  """({'segmentation/train': n, 'sequences/train': n, ...}, the record of the examples of each:
  data_pipelines.records, which every later stage checks its indices against); unavailable splits
  say why in the first and are not in the second."""
  sizes, examples = {}, {}
  for kind, splits in (('segmentation', reader.segmentation_splits),
                       ('sequences', reader.sequence_splits)):
    for split in splits:
      key = f'{kind}/{split}'
      try:
        index = getattr(reader, kind)(split)
      except common.DataError as e:
        sizes[key] = f'absent ({e})'
        continue
      sizes[key] = len(index)
      examples[key] = records.split_examples(index, reader, kind)
  return sizes, examples


def intrinsics_summary(index: common.ExampleIndex, resolution) -> list[dict]:
  """The distinct cameras of an index: normalised and in pixels at the working resolution."""
  if not len(index) or np.isnan(index.intrinsics).all():
    return []
  unique, counts = np.unique(np.round(index.intrinsics.astype(np.float64), 6), axis=0,
                             return_counts=True)
  width, height = resolution
  return [dict(normalised=[float(v) for v in k], examples=int(n),
               pixels=dict(fx=k[0] * width, fy=k[1] * height, cx=k[2] * width, cy=k[3] * height))
          for k, n in zip(unique, counts)]


def summarise(entry: ml_collections.ConfigDict, reader: common.Reader, max_labels: int,
              workers: int) -> dict:
  train = reader.segmentation('train')
  sizes, examples = _splits(reader)
  return {'dataset': entry.name, 'root': reader.root, 'resolution': list(entry.resolution),
          'classes': list(reader.label_spec.class_names), 'splits': sizes,
          'class_frequencies': statistics.class_frequencies(train, reader.label_spec, max_labels,
                                                            workers),
          'intrinsics': intrinsics_summary(train, tuple(entry.resolution)),
          records.SUMMARY_KEY: examples}


def format_summary(role: str, summary: dict) -> str:
  lines = [f'== {role}: {summary["dataset"]} at {summary["resolution"][0]}x'
           f'{summary["resolution"][1]} ({summary["root"]})']
  for split, size in summary['splits'].items():
    lines.append(f'  {split:24s} {size}')
  lines.append('  class pixel frequencies (train):')
  for name, value in summary['class_frequencies'].items():
    lines.append(f'    {name:22s} ' + (f'{100 * value:6.2f} %' if isinstance(value, float)
                                        else str(value)))
  for camera in summary['intrinsics']:
    p = camera['pixels']
    lines.append(f'  camera ({camera["examples"]} images): fx={p["fx"]:.2f} fy={p["fy"]:.2f} '
                 f'cx={p["cx"]:.2f} cy={p["cy"]:.2f} px; normalised {camera["normalised"]}')
  return '\n'.join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  summaries = {}
  for role in ROLES:
    entry = config.data[role]
    if not entry.name:
      continue
    sources.materialise(entry, workdir, role, image_format=config.data.image_format,
                        workers=config.data.workers)
    # Read as found, not against the last record: this stage writes the record anew.
    reader = sources.open_dataset(entry, workdir, role, check_record=False)
    # A bad file is an error here, not a split recorded as absent (the folder layout's cameras,
    # video frames, pairs.json: data_pipelines.datasets.folder).
    reader.check_layout()
    summaries[role] = summarise(entry, reader, config.data.summary_max_labels, config.data.workers)
    print(format_summary(role, summaries[role]), flush=True)
  if not summaries:
    raise common.DataError('config.data: no dataset named (set config.data.target.name)')
  out = artifacts.data_summary(workdir)
  files.write_json(out, summaries, indent=2)
  logging.info('Data summary written to %s', out)


STAGE = base.Stage('data', run, primary_only=True)
