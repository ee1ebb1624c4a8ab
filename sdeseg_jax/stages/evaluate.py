"""The `evaluate` stage: the segmentation student on the whole validation split (or the split
config.evaluate.split names, e.g. CamVid's test split).

Whole images at the working resolution, one confusion matrix over the split, mIoU = mean IoU over
the classes with a non-empty union, per-class IoU; optionally the 16- and 13-class SYNTHIA protocols
(config.evaluate.class_subsets). Writes <workdir>/eval.json and prints a table; with
config.evaluate.export_splits also <workdir>/predictions/<split>/<id>_labelIds.png in the official
Cityscapes result format (for cityscapesscripts and the benchmark server).
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from data_pipelines import files
from data_pipelines import sources
from sdeseg_jax import artifacts
from sdeseg_jax import evaluation
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.models import networks
from sdeseg_jax.stages import base
from sdeseg_jax.training import sharding
from sdeseg_jax.weights import layouts

WEIGHTS = artifacts.SEGMENT_WEIGHTS


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails on evaluate values that cannot work, naming the key (before any stage runs)."""
  which, subsets = config.evaluate.weights, tuple(config.evaluate.class_subsets)
  if which not in WEIGHTS:
    raise ConfigError(f'config.evaluate.weights={which!r}: expected one of {WEIGHTS}')
  unknown = [name for name in subsets if name not in evaluation.CLASS_SUBSETS]
  if unknown:
    raise ConfigError(f'config.evaluate.class_subsets={subsets}: unknown {unknown} (known: '
                      f'{tuple(evaluation.CLASS_SUBSETS)})')
  base.check_num_classes_of(config, 'target')


def check_split(config: ml_collections.ConfigDict, reader) -> str:
  """config.evaluate.split, a segmentation split of the target dataset."""
  split = config.evaluate.split
  if split not in reader.segmentation_splits:
    raise ConfigError(f'config.evaluate.split={split!r}: the dataset {reader.name} has the '
                      f'segmentation splits {", ".join(reader.segmentation_splits)}; set one')
  return split


def inputs(config: ml_collections.ConfigDict, workdir: str) -> list[base.Input]:
  check_config(config)
  which = config.evaluate.weights
  return [base.Input(artifacts.segment_weights(workdir, which), 'segment',
                     f'config.evaluate.weights={which!r}', 'run the segment stage first')]


def export_predictions(predict, variables, index, reader, *, resolution, mesh, batch_size: int,
                       out_dir: str) -> int:
  """Writes <id>_labelIds.png (raw label ids, the official result format) for every image."""
  os.makedirs(out_dir, exist_ok=True)
  argmax = jax.jit(lambda logits: jnp.argmax(logits, -1).astype(jnp.uint8))
  raw_ids = reader.label_spec.raw_id_table()
  written = 0
  for example, classes in evaluation.each_local_row(
      lambda v, batch: argmax(predict(v, batch)), variables, index, reader,
      resolution=resolution, mesh=mesh, batch_size=batch_size):
    Image.fromarray(raw_ids[classes]).save(os.path.join(out_dir, f'{example}_labelIds.png'))
    written += 1
  return written


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  check_config(config)
  entry = config.data.target
  mesh = sharding.make_mesh()
  sharding.check_global_batch(config.segment.eval_batch_size, mesh)
  reader = sources.open_dataset(entry, workdir, 'target')
  evaluated = check_split(config, reader)
  base.check_num_classes(config.model.num_classes, reader.label_spec, model_key='model',
                         dataset=f'config.data.target ({reader.root})')
  network = networks.build(config.segment.network, config.model)
  weights = artifacts.segment_weights(workdir, config.evaluate.weights)
  variables = sharding.replicate(
      layouts.read_variables(weights, 'run the segment stage first'), mesh)
  predict = sharding.jit_eval_step(
      evaluation.predict_logits(network, config.segment.network), mesh)
  matrix = evaluation.confusion(predict, variables, reader.segmentation(evaluated), reader,
                             resolution=tuple(entry.resolution), mesh=mesh,
                             batch_size=config.segment.eval_batch_size,
                             strict_labels=config.data.strict_labels)
  report = evaluation.miou_report(matrix, reader.label_spec.class_names)
  report['subsets'] = evaluation.subset_mious(matrix, config.evaluate.class_subsets)
  report['confusion'] = np.asarray(matrix).tolist()
  report['weights'] = config.evaluate.weights
  report['split'] = evaluated
  for split in config.evaluate.export_splits:
    out_dir = artifacts.predictions_dir(workdir, split)
    count = export_predictions(predict, variables, reader.segmentation(split), reader,
                               resolution=tuple(entry.resolution), mesh=mesh,
                               batch_size=config.segment.eval_batch_size, out_dir=out_dir)
    logging.info('Exported %d %s predictions to %s', count, split, out_dir)
  if jax.process_index() == 0:
    files.write_json(artifacts.eval_file(workdir), report, indent=2)
    print(evaluation.format_table(report), flush=True)


STAGE = base.Stage('evaluate', run, check_config, inputs)
