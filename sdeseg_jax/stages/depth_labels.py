"""The `depth_labels` stage: the trained SDE's disparity for every segmentation image.

Writes <workdir>/depth/<role>/<example id>.npy: float32 [H, W] level-0 sigmoid disparity at the
working resolution, which the segmentation pipelines read as depth labels (depth_dir). Images whose
file exists are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import logging
import os

import ml_collections
import numpy as np

from data_pipelines import files
from data_pipelines import sources
from data_pipelines.datasets import DataError
from sdeseg_jax import artifacts
from sdeseg_jax import evaluation
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.models import networks
from sdeseg_jax.stages import base
from sdeseg_jax.training import distributed
from sdeseg_jax.training import sharding
from sdeseg_jax.weights import layouts

# role -> the model config key of its SDE
MODEL_OF_ROLE = {'target': 'model', 'source': 'source_model'}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails on a role with no SDE stage (stages.run_stages calls it before running any stage)."""
  unknown = [role for role in config.depth_labels.roles if role not in MODEL_OF_ROLE]
  if unknown:
    raise ConfigError(f'config.depth_labels.roles: {unknown} have no SDE stage (known: '
                      f'{sorted(MODEL_OF_ROLE)})')


def inputs(config: ml_collections.ConfigDict, workdir: str) -> list[base.Input]:
  """The SDE checkpoint of each role."""
  items = []
  for role in config.depth_labels.roles:
    stage = artifacts.SDE_STAGE_OF_ROLE[role]
    items.append(base.Input(artifacts.sde_checkpoint(workdir, role), stage,
                            f'the depth labels of {role}', f'run the {stage} stage first'))
  return items


def write_depth_labels(config: ml_collections.ConfigDict, workdir: str, role: str) -> int:
  """Predicts and writes the missing depth labels of `role`; returns how many were written."""
  entry = config.data[role]
  mesh = sharding.make_mesh()
  batch_size = config.depth_labels.batch_size
  sharding.check_global_batch(batch_size, mesh)
  reader = sources.open_dataset(entry, workdir, role)
  out = artifacts.depth_dir(workdir, role)
  os.makedirs(out, exist_ok=True)
  network = networks.build('sde', config[MODEL_OF_ROLE[role]])
  stage = artifacts.SDE_STAGE_OF_ROLE[role]
  variables = sharding.replicate(layouts.read_sde(
      artifacts.sde_checkpoint(workdir, role), f'run the {stage} stage first'), mesh)
  predict = sharding.jit_eval_step(evaluation.predict_disparity(network), mesh)
  # Every split the dataset has; one with files missing is an error, not a split to skip.
  indices = reader.indices('segmentation')
  # Depth labels are named by example id: ids must not repeat across splits.
  ids, counts = np.unique(np.concatenate([i.ids for i in indices.values()]), return_counts=True)
  if np.any(counts > 1):
    raise DataError(f'{reader.root}: example ids {ids[counts > 1][:5].tolist()} occur in several '
                    'splits; depth labels need unique ids')
  written = 0
  for split, index in indices.items():
    todo = [i for i, example in enumerate(index.ids)
            if not os.path.exists(os.path.join(out, example + '.npy'))]
    # All processes must list the same missing files before any of them writes some (else their
    # batch counts differ and the collectives of the prediction hang).
    distributed.barrier(f'depth labels {role}/{split}')
    if not todo:
      continue
    index = index.subset(todo)
    for example, disparity in evaluation.each_local_row(
        predict, variables, index, reader, resolution=tuple(entry.resolution), mesh=mesh,
        batch_size=batch_size):
      label = np.ascontiguousarray(disparity[..., 0], np.float32)
      files.write_atomic(os.path.join(out, example + '.npy'), lambda tmp: np.save(tmp, label))
      written += 1
    logging.info('depth labels %s/%s: %d images', role, split, len(index))
  return written


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  check_config(config)
  for role in config.depth_labels.roles:
    write_depth_labels(config, workdir, role)


STAGE = base.Stage('depth_labels', run, check_config, inputs)
