"""From a config's dataset entry to a reader: where its raw and prepared trees live, rendering the
synthetic world into the raw tree when the config asks for it, preparing the raw tree once.

A dataset entry (configs/base.py `dataset_config`) names the layout (`name`), the prepared tree
(`root`), optionally the raw tree to prepare it from (`raw_root`) and optionally a synthetic world
to render into that raw tree (`synthetic.domain`). Empty paths default to folders of the workdir.
Its `backend` says where the pipelines read the prepared files: `folder` (the tree) or `tfds` (the
ArrayRecord shards in `tfds_dir` built from the tree, data_pipelines.tfds_backend).
"""

from __future__ import annotations

import logging
import os

import ml_collections

from data_pipelines import prepare
from data_pipelines import records
from data_pipelines.datasets import common


def roots(entry: ml_collections.ConfigDict, workdir: str, role: str) -> tuple[str, str]:
  """(raw tree or '', prepared tree) of the dataset entry `role` ('target', 'source')."""
  rendered = bool(entry.synthetic.domain)
  raw = entry.raw_root or (os.path.join(workdir, 'raw', role) if rendered else '')
  prepared = entry.root or os.path.join(workdir, 'data', role)
  if not raw and not entry.root:
    raise common.DataError(f'config.data.{role}: set root (a prepared tree) or raw_root')
  return raw, prepared


BACKENDS = ('folder', 'tfds')


def backend(entry: ml_collections.ConfigDict, role: str) -> str:
  if entry.backend not in BACKENDS:
    raise common.DataError(f'config.data.{role}.backend={entry.backend!r}: expected one of '
                           f'{", ".join(BACKENDS)}')
  return entry.backend


def tfds_dir(entry: ml_collections.ConfigDict, workdir: str, role: str) -> str:
  """The TFDS data_dir of the role's shards ('' -> <workdir>/tfds/<role>)."""
  return entry.tfds_dir or os.path.join(workdir, 'tfds', role)


def materialise(entry: ml_collections.ConfigDict, workdir: str, role: str, *,
                image_format: str = 'jpg', workers: int = 0) -> str:
  """Renders (synthetic) and prepares the dataset where needed, and with the tfds backend builds its
  shards from a prepared tree that is here (a pod with only the shards builds nothing); returns the
  prepared root."""
  prepared = _render_and_prepare(entry, workdir, role, image_format=image_format, workers=workers)
  if backend(entry, role) == 'tfds' and prepare.read_marker(prepared) is not None:
    _build(entry, workdir, role, prepared, overwrite=False, workers=workers)
  return prepared


def build_shards(entry: ml_collections.ConfigDict, workdir: str, role: str, *,
                 overwrite: bool = False, image_format: str = 'jpg', workers: int = 0) -> list[str]:
  """Renders and prepares where the config says so, then builds the role's TFDS shards from the
  prepared tree (whatever the configured backend); returns the shard directories."""
  prepared = _render_and_prepare(entry, workdir, role, image_format=image_format, workers=workers)
  return _build(entry, workdir, role, prepared, overwrite=overwrite, workers=workers)


def _build(entry, workdir, role, prepared, *, overwrite, workers) -> list[str]:
  from data_pipelines import tfds_backend  # imported lazily: TFDS loads only for its backend
  return tfds_backend.build(entry.name, prepared, tuple(entry.resolution),
                            tfds_dir(entry, workdir, role), val_count=entry.val_count,
                            sequence_root=entry.sequence_root, overwrite=overwrite, workers=workers)


def _render_and_prepare(entry: ml_collections.ConfigDict, workdir: str, role: str, *,
                        image_format: str, workers: int) -> str:
  raw, prepared = roots(entry, workdir, role)
  if entry.synthetic.domain:
    from data_pipelines import synthetic  # imported lazily: only synthetic configs render
    world = entry.synthetic
    logging.info('Rendering the synthetic %s world (%s layout) into %s', world.domain, entry.name,
                 raw)
    synthetic.render_world(raw, domain=world.domain, layout=entry.name, size=tuple(world.size),
                           sequences=world.sequences, frames=world.frames, seed=world.seed,
                           val_fraction=world.val_fraction, moving_objects=world.moving_objects,
                           num_workers=workers)
  if raw:
    prepare.prepare(entry.name, raw, prepared, tuple(entry.resolution), image_format=image_format,
                    workers=workers)
  return prepared


def open_dataset(entry: ml_collections.ConfigDict, workdir: str, role: str, *,
                 check_record: bool = True) -> common.Reader:
  """The reader of `role` through its backend: the prepared tree, checked against the configured
  resolution, or the TFDS shards built from it (the same indices, read from the shards).

  With `check_record` (what every stage reads through), each split it lists is checked against the
  data stage's record of the tree (data_pipelines.records; `entry.allow_missing` decides whether a
  missing example is an error or a warning); the data stage, which writes that record, opens
  without.
  """
  _, prepared = roots(entry, workdir, role)
  if backend(entry, role) == 'tfds':
    from data_pipelines import tfds_backend
    reader = tfds_backend.open_reader(entry.name, prepared, tuple(entry.resolution),
                                      tfds_dir(entry, workdir, role), val_count=entry.val_count,
                                      sequence_root=entry.sequence_root)
  else:
    reader = prepare.open_prepared(entry.name, prepared, tuple(entry.resolution),
                                   val_count=entry.val_count, sequence_root=entry.sequence_root)
  if check_record:
    reader.record = records.load(workdir, role, allow_missing=entry.allow_missing)
  return reader
