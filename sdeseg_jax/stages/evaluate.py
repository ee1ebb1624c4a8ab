"""The `evaluate` stage: the segmentation student on the whole validation split.

Whole images at the working resolution, one confusion matrix over the split, mIoU = mean IoU over
the classes with a non-empty union, per-class IoU; optionally the 16- and 13-class SYNTHIA protocols
(config.evaluate.class_subsets). Writes <workdir>/eval.json and prints a table; with
config.evaluate.export_splits also <workdir>/predictions/<split>/<id>_labelIds.png in the official
Cityscapes result format (for cityscapesscripts and the benchmark server).
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from data_pipelines import pipeline
from data_pipelines import sources
from sdeseg_jax import predict as predict_lib
from sdeseg_jax import stages
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.models import networks
from sdeseg_jax.ops import segmentation
from sdeseg_jax.stages import segment
from sdeseg_jax.training import checkpointing
from sdeseg_jax.training import sharding

CLASS_SUBSETS = {'16': segmentation.SYNTHIA_16_CLASSES, '13': segmentation.SYNTHIA_13_CLASSES}


WEIGHTS = ('best', 'latest')


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails on evaluate values that cannot work, naming the key (before any stage runs)."""
  which, subsets = config.evaluate.weights, tuple(config.evaluate.class_subsets)
  if which not in WEIGHTS:
    raise ConfigError(f'config.evaluate.weights={which!r}: expected one of {WEIGHTS}')
  unknown = [name for name in subsets if name not in CLASS_SUBSETS]
  if unknown:
    raise ConfigError(f'config.evaluate.class_subsets={subsets}: unknown {unknown} (known: '
                      f'{tuple(CLASS_SUBSETS)})')


def weights_dir(workdir: str, which: str) -> str:
  """The checkpoint of the segment stage's best evaluated ('best') or latest weights."""
  if which not in WEIGHTS:
    raise ConfigError(f'config.evaluate.weights={which!r}: expected one of {WEIGHTS}')
  return os.path.join(workdir, 'segment', 'best' if which == 'best' else 'ckpt')


def inputs(config: ml_collections.ConfigDict, workdir: str) -> list[stages.Input]:
  return [stages.Input(weights_dir(workdir, config.evaluate.weights), 'segment',
                       f'config.evaluate.weights={config.evaluate.weights!r}',
                       'run the segment stage first')]


def load_weights(workdir: str, which: str) -> dict:
  """{'params', 'batch_stats'} of the segment stage: its best evaluated or its latest weights."""
  path = weights_dir(workdir, which)
  if not os.path.isdir(path):
    raise checkpointing.CheckpointError(f'{path}: no segmentation weights; run the segment stage '
                                        'first')
  arrays = checkpointing.read_arrays(path)
  return {'params': arrays['params'], 'batch_stats': arrays['batch_stats']}


def export_predictions(predict, variables, index, reader, *, resolution, mesh, batch_size: int,
                       out_dir: str) -> int:
  """Writes <id>_labelIds.png (raw label ids, the official result format) for every image."""
  os.makedirs(out_dir, exist_ok=True)
  batches = pipeline.validation_batches(
      index.without_labels(), reader.label_spec, resolution=resolution,
      sharding=pipeline.Sharding(batch_size, jax.process_index(), jax.process_count()))
  argmax = jax.jit(lambda logits: jnp.argmax(logits, -1).astype(jnp.uint8))
  written = 0
  for batch in batches:
    placed = sharding.global_batch({'image': batch['image']}, mesh)
    classes = sharding.local_rows(argmax(predict(variables, placed)))
    for row in np.flatnonzero(batch['valid']):
      name = index.ids[batch['index'][row]]
      Image.fromarray(predict_lib.label_ids(classes[row], reader.label_spec)).save(
          os.path.join(out_dir, f'{name}_labelIds.png'))
      written += 1
  return written


def format_table(report: dict) -> str:
  lines = [f'{"class":16s} {"IoU":>7s}']
  lines += [f'{name:16s} {100 * iou:7.2f}' for name, iou in report['iou'].items()]
  lines.append(f'{"mIoU":16s} {100 * report["miou"]:7.2f}')
  for name, value in report.get('subsets', {}).items():
    lines.append(f'{"mIoU (" + name + ")":16s} {100 * value:7.2f}')
  return '\n'.join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  check_config(config)
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
  for split in config.evaluate.export_splits:
    out_dir = os.path.join(workdir, 'predictions', split)
    count = export_predictions(predict, variables, reader.segmentation(split), reader,
                               resolution=tuple(entry.resolution), mesh=mesh,
                               batch_size=config.segment.eval_batch_size, out_dir=out_dir)
    logging.info('Exported %d %s predictions to %s', count, split, out_dir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'eval.json'), 'w') as f:
      json.dump(report, f, indent=2)
    print(format_table(report), flush=True)
