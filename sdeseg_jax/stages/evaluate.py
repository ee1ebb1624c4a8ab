"""The `evaluate` stage: the segmentation student on the whole validation split.

Whole images at the working resolution, one confusion matrix over the split, mIoU = mean IoU over
the classes with a non-empty union, per-class IoU; optionally the 16- and 13-class SYNTHIA protocols
(config.evaluate.class_subsets). Writes <workdir>/eval.json and prints a table.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import sources
from sdeseg_jax.models import networks
from sdeseg_jax.ops import segmentation
from sdeseg_jax.stages import segment
from sdeseg_jax.training import checkpointing
from sdeseg_jax.training import sharding

CLASS_SUBSETS = {'16': segmentation.SYNTHIA_16_CLASSES, '13': segmentation.SYNTHIA_13_CLASSES}


def load_weights(workdir: str, which: str) -> dict:
  """{'params', 'batch_stats'} of the segment stage: its best evaluated or its latest weights."""
  directory = os.path.join(workdir, 'segment')
  path = os.path.join(directory, 'best') if which == 'best' else os.path.join(directory, 'ckpt')
  if which not in ('best', 'latest'):
    raise ValueError(f'config.evaluate.weights={which!r}: expected best or latest')
  if not os.path.isdir(path):
    raise checkpointing.CheckpointError(f'{path}: no segmentation weights; run the segment stage '
                                        'first')
  arrays = checkpointing.read_arrays(path)
  return {'params': arrays['params'], 'batch_stats': arrays['batch_stats']}


def format_table(report: dict) -> str:
  lines = [f'{"class":16s} {"IoU":>7s}']
  lines += [f'{name:16s} {100 * iou:7.2f}' for name, iou in report['iou'].items()]
  lines.append(f'{"mIoU":16s} {100 * report["miou"]:7.2f}')
  for name, value in report.get('subsets', {}).items():
    lines.append(f'{"mIoU (" + name + ")":16s} {100 * value:7.2f}')
  return '\n'.join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  entry = config.data.target
  mesh = sharding.make_mesh()
  sharding.check_global_batch(config.segment.eval_batch_size, mesh)
  reader = sources.open_dataset(entry, workdir, 'target')
  network = networks.build(config.segment.network, config.model)
  variables = sharding.replicate(load_weights(workdir, config.evaluate.weights), mesh)
  predict = sharding.jit_eval_step(segment.make_predict_logits(network, config.segment.network),
                                   mesh)
  matrix = segment.confusion(predict, variables, reader.segmentation('val'), reader,
                             resolution=tuple(entry.resolution), mesh=mesh,
                             batch_size=config.segment.eval_batch_size,
                             strict_labels=config.data.strict_labels)
  report = segment.miou_report(matrix, reader.label_spec.class_names)
  report['subsets'] = {
      name: float(segmentation.class_subset_miou(jnp.asarray(matrix), CLASS_SUBSETS[name])[1])
      for name in config.evaluate.class_subsets}
  report['confusion'] = np.asarray(matrix).tolist()
  report['weights'] = config.evaluate.weights
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'eval.json'), 'w') as f:
      json.dump(report, f, indent=2)
    print(format_table(report), flush=True)
