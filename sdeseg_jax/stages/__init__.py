"""The stage runner: each stage module of this package exports its base.Stage as STAGE (and
sde_pretrain the source domain's as SOURCE_STAGE), which STAGES lists; stages hand over only through
the workdir's files (sdeseg_jax.artifacts), never by importing each other.

A finished stage leaves `<workdir>/<stage>/done` (JSON: when, and the config it ran with); a later
run skips it, says why, and warns when the config has changed since.

With several processes (sdeseg_jax.training.distributed) every process runs every stage, except
the primary_only ones, which process 0 runs while the others wait; all processes meet at a barrier
before and after each stage they run, and only process 0 writes the markers (the workdir is shared).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Sequence

import ml_collections

from data_pipelines import files
from sdeseg_jax import artifacts
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.stages import data
from sdeseg_jax.stages import depth_labels
from sdeseg_jax.stages import evaluate
from sdeseg_jax.stages import sde_pretrain
from sdeseg_jax.stages import segment
from sdeseg_jax.stages import select_labels
from sdeseg_jax.training import distributed

# In the order the method runs them.
STAGES = {stage.name: stage for stage in (
    data.STAGE, sde_pretrain.STAGE, sde_pretrain.SOURCE_STAGE, depth_labels.STAGE,
    select_labels.STAGE, segment.STAGE, evaluate.STAGE)}


def parse_stages(text: str) -> list[str]:
  """'data, segment' -> ['data', 'segment'], each a known stage."""
  names = [n.strip() for n in text.split(',') if n.strip()]
  unknown = [n for n in names if n not in STAGES]
  if unknown:
    raise ConfigError(f'config.stages: unknown stage(s) {unknown} (known: {", ".join(STAGES)})')
  if not names:
    raise ConfigError('config.stages is empty: name at least one stage')
  return names


def check_inputs(name: str, config: ml_collections.ConfigDict, workdir: str,
                 earlier: Sequence[str] = ()) -> None:
  """Raises ConfigError when stage `name` would read an input that does not exist and that no
  stage in `earlier` (those to run before it) writes."""
  stage = STAGES[name]
  for item in stage.inputs(config, workdir) if stage.inputs else ():
    if not os.path.exists(item.path) and item.maker not in earlier:
      raise ConfigError(f'{item.reader} reads {item.path}, which does not exist: {item.todo}')


def _comparable(config: ml_collections.ConfigDict) -> dict:
  """The config as JSON-able data, without the keys that do not change a stage's result."""
  values = json.loads(config.to_json_best_effort())
  values.pop('stages', None)
  return values


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Runs config.stages in order, skipping finished ones; returns the stages that ran.

  Raises ConfigError, before any stage runs, when a stage to run has a config that cannot work or
  lacks an input that neither the workdir holds nor an earlier stage of the run writes.
  """
  names = parse_stages(config.stages)
  pending = [n for n in names if not os.path.exists(artifacts.done_marker(workdir, n))]
  for name in pending:
    if STAGES[name].check_config:
      STAGES[name].check_config(config)
  for i, name in enumerate(pending):
    check_inputs(name, config, workdir, earlier=pending[:i])
  os.makedirs(workdir, exist_ok=True)
  ran = []
  for name in names:
    marker = artifacts.done_marker(workdir, name)
    # Read before the barrier, so every process sees the same marker state: only a run of this
    # stage writes the marker, and every process must reach the barrier before that run starts.
    if os.path.exists(marker):
      with open(marker) as f:
        previous = json.load(f)
      logging.info('Skipping stage %r: finished at %s (%s exists; delete it to run the stage '
                   'again)', name, previous.get('finished'), marker)
      if previous.get('config') != _comparable(config):
        logging.warning('Stage %r ran with a different config than the current one; its outputs '
                        'are kept. Delete %s to rerun it with the current config.', name, marker)
      continue
    distributed.barrier(f'before stage {name}')
    check_inputs(name, config, workdir)  # what the earlier stages were to write is there
    logging.info('Running stage %r', name)
    if distributed.is_primary() or not STAGES[name].primary_only:
      STAGES[name].run(config, workdir)
    if distributed.is_primary():
      files.write_json(marker, dict(finished=datetime.datetime.now().isoformat(timespec='seconds'),
                                    config=_comparable(config)))
    distributed.barrier(f'after stage {name}')
    if not os.path.exists(marker):
      raise RuntimeError(f'{marker}: process {distributed.process_index()} does not see the marker '
                         f'process 0 wrote after stage {name!r}: the workdir {workdir} must be '
                         'one shared folder for all processes (NFS, Filestore, a gcsfuse mount)')
    ran.append(name)
  return ran
