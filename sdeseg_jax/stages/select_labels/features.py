"""phi: the SDE features of every training image, which farthest point selection spreads over
(cached in select_labels/features.npy, keyed by what determines them)."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import numpy as np

from data_pipelines import files
from data_pipelines.datasets import common
from sdeseg_jax import artifacts
from sdeseg_jax import evaluation
from sdeseg_jax import ops
from sdeseg_jax.models import networks
from sdeseg_jax.stages.select_labels import report
from sdeseg_jax.training import sharding
from sdeseg_jax.weights import layouts


def sde_checkpoint(config, workdir: str) -> str:
  return config.select.sde_checkpoint or artifacts.sde_checkpoint(workdir)


def sde_features(config, workdir: str, index: common.ExampleIndex, reader, mesh) -> np.ndarray:
  """phi of every image: [N, h * w * C] standardised, flattened SDE decoder features."""
  select = config.select
  sde = layouts.read_sde(
      sde_checkpoint(config, workdir),
      f'config.select.method={select.method!r} (initial={select.initial!r}) needs the SDE\'s '
      'features: run the sde_pretrain stage first or set config.select.sde_checkpoint')
  variables = sharding.replicate(sde, mesh)
  network = networks.build('sde', config.model)
  level, pool = int(select.feature_level), tuple(int(p) for p in select.feature_pool)

  def pooled(variables, batch):
    levels = network.apply(variables, batch['image'], method='depth')['levels']
    return ops.adaptive_avg_pool(levels[level], pool)

  features = evaluation.per_image(pooled, variables, index, reader,
                       resolution=tuple(config.data.target.resolution), mesh=mesh,
                       batch_size=select.eval_batch_size)
  logging.info('select_labels: SDE features of %d images, %s each', len(index), features.shape[1:])
  return np.asarray(jax.jit(ops.standardize_features)(features))


def cached_features(config, workdir: str, index, reader, mesh) -> np.ndarray:
  """sde_features, kept in select_labels/features.npy so a resumed selection does not redo them."""
  path = os.path.join(artifacts.select_dir(workdir), 'features.npy')
  meta = dict(ids=hashlib.sha256('\n'.join(index.ids.tolist()).encode()).hexdigest(),
              sde=os.path.abspath(sde_checkpoint(config, workdir)),
              level=int(config.select.feature_level),
              pool=[int(p) for p in config.select.feature_pool])
  meta_path = path[:-len('.npy')] + '.json'
  if os.path.exists(path) and os.path.exists(meta_path):
    with open(meta_path) as f:
      if json.load(f) == meta:
        return np.load(path)
  features = sde_features(config, workdir, index, reader, mesh)
  if jax.process_index() == 0:
    files.write_atomic(path, lambda tmp: np.save(tmp, features))
    report.write_json(meta_path, meta)
  return features
