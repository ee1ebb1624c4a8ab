"""From a config's dataset entry to a reader: where its raw and prepared trees live, rendering the
synthetic world into the raw tree when the config asks for it, preparing the raw tree once.

A dataset entry (configs/base.py `dataset_config`) names the layout (`name`), the prepared tree
(`root`), optionally the raw tree to prepare it from (`raw_root`) and optionally a synthetic world to
render into that raw tree (`synthetic.domain`). Empty paths default to folders of the workdir.
"""

from __future__ import annotations

import logging
import os

import ml_collections

from data_pipelines import prepare
from data_pipelines.datasets import common


def roots(entry: ml_collections.ConfigDict, workdir: str, role: str) -> tuple[str, str]:
  """(raw tree or '', prepared tree) of the dataset entry `role` ('target', 'source')."""
  rendered = bool(entry.synthetic.domain)
  raw = entry.raw_root or (os.path.join(workdir, 'raw', role) if rendered else '')
  prepared = entry.root or os.path.join(workdir, 'data', role)
  if not raw and not entry.root:
    raise common.DataError(f'config.data.{role}: set root (a prepared tree) or raw_root')
  return raw, prepared


def materialise(entry: ml_collections.ConfigDict, workdir: str, role: str, *,
                image_format: str = 'jpg', workers: int = 0) -> str:
  """Renders (synthetic) and prepares the dataset where needed; returns the prepared root."""
  raw, prepared = roots(entry, workdir, role)
  if entry.synthetic.domain:
    from data_pipelines import synthetic  # imported lazily: only synthetic configs render
    world = entry.synthetic
    logging.info('Rendering the synthetic %s world (%s layout) into %s', world.domain, entry.name, raw)
    synthetic.render_world(raw, domain=world.domain, layout=entry.name, size=tuple(world.size),
                           sequences=world.sequences, frames=world.frames, seed=world.seed,
                           val_fraction=world.val_fraction, moving_objects=world.moving_objects,
                           num_workers=workers)
  if raw:
    prepare.prepare(entry.name, raw, prepared, tuple(entry.resolution), image_format=image_format,
                    workers=workers)
  return prepared


def open_dataset(entry: ml_collections.ConfigDict, workdir: str, role: str) -> common.Reader:
  """The reader over the prepared tree of `role`, checked against the configured resolution."""
  _, prepared = roots(entry, workdir, role)
  return prepare.open_prepared(entry.name, prepared, tuple(entry.resolution),
                               val_count=entry.val_count, sequence_root=entry.sequence_root)
