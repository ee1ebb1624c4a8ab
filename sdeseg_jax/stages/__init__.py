"""The stage runner: each stage is `run(config, workdir) -> None` in a module of this package.

A finished stage leaves `<workdir>/<stage>/done` (JSON: when, and the config it ran with); a later run
skips it, says why, and warns when the config has changed since.

With several processes (sdeseg_jax.training.distributed) every process runs every stage, except
those in PRIMARY_ONLY, which process 0 runs while the others wait; all processes meet at a barrier
before and after each stage they run, and only process 0 writes the markers (the workdir is shared).
"""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import os
from typing import NamedTuple, Sequence

import ml_collections

from sdeseg_jax.errors import ConfigError
from sdeseg_jax.training import distributed

# Stage name -> 'module' holding its run(), or 'module:function'; in the order the method runs them.
STAGES = {
    'data': 'sdeseg_jax.stages.data',
    'sde_pretrain': 'sdeseg_jax.stages.sde_pretrain',
    'sde_source': 'sdeseg_jax.stages.sde_pretrain:run_source',
    'depth_labels': 'sdeseg_jax.stages.depth_labels',
    'select_labels': 'sdeseg_jax.stages.select_labels',
    'segment': 'sdeseg_jax.stages.segment',
    'evaluate': 'sdeseg_jax.stages.evaluate',
}
# The config checks of the stages that have one (config -> None, raising ConfigError): run_stages
# calls them for every stage it will run before it runs the first, so that a bad value of a late
# stage fails in seconds, not after hours of the earlier ones.
CONFIG_CHECKS = {
    'sde_source': 'sdeseg_jax.stages.sde_pretrain:check_source_config',
    'depth_labels': 'sdeseg_jax.stages.depth_labels:check_config',
    'select_labels': 'sdeseg_jax.stages.select_labels:check_config',
    'segment': 'sdeseg_jax.stages.segment:check_config',
    'evaluate': 'sdeseg_jax.stages.evaluate:check_config',
}
# The inputs of the stages that read files other stages write or the config names
# (config, workdir -> [Input]).
INPUTS = {
    'sde_pretrain': 'sdeseg_jax.stages.sde_pretrain:inputs',
    'sde_source': 'sdeseg_jax.stages.sde_pretrain:source_inputs',
    'depth_labels': 'sdeseg_jax.stages.depth_labels:inputs',
    'select_labels': 'sdeseg_jax.stages.select_labels:inputs',
    'segment': 'sdeseg_jax.stages.segment:inputs',
    'evaluate': 'sdeseg_jax.stages.evaluate:inputs',
}
# Stages with no device work that write shared files (rendering, preparing, summarising): two
# processes doing them at once would race on the same files.
PRIMARY_ONLY = frozenset({'data'})


def parse_stages(text: str) -> list[str]:
  """'data, segment' -> ['data', 'segment'], each a known stage."""
  names = [n.strip() for n in text.split(',') if n.strip()]
  unknown = [n for n in names if n not in STAGES]
  if unknown:
    raise ConfigError(f'config.stages: unknown stage(s) {unknown} (known: {", ".join(STAGES)})')
  if not names:
    raise ConfigError('config.stages is empty: name at least one stage')
  return names


def _resolve(spec: str):
  """'module' (its run) or 'module:function' -> the function."""
  module, _, function = spec.partition(':')
  return getattr(importlib.import_module(module), function or 'run')


class Input(NamedTuple):
  """A file or folder a stage reads. maker: the stage that writes it under the config, '' when
  none does (a file the config names, which the user provides); reader: who reads it, todo: what
  to do when it is missing (both for the error)."""
  path: str
  maker: str
  reader: str
  todo: str


def check_inputs(name: str, config: ml_collections.ConfigDict, workdir: str,
                 earlier: Sequence[str] = ()) -> None:
  """Raises ConfigError when stage `name` would read an input that does not exist and that no
  stage in `earlier` (those to run before it) writes."""
  for item in _resolve(INPUTS[name])(config, workdir) if name in INPUTS else ():
    if not os.path.exists(item.path) and item.maker not in earlier:
      raise ConfigError(f'{item.reader} reads {item.path}, which does not exist: {item.todo}')


def stage_function(name: str):
  """The run(config, workdir) of stage `name`."""
  return _resolve(STAGES[name])


def done_marker(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage, 'done')


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
  pending = [n for n in names if not os.path.exists(done_marker(workdir, n))]
  for name in pending:
    if name in CONFIG_CHECKS:
      _resolve(CONFIG_CHECKS[name])(config)
  for i, name in enumerate(pending):
    check_inputs(name, config, workdir, earlier=pending[:i])
  os.makedirs(workdir, exist_ok=True)
  ran = []
  for name in names:
    marker = done_marker(workdir, name)
    # Read before the barrier, so every process sees the same marker state: only a run of this
    # stage writes the marker, and every process must reach the barrier before that run starts.
    if os.path.exists(marker):
      with open(marker) as f:
        previous = json.load(f)
      logging.info('Skipping stage %r: finished at %s (%s exists; delete it to run the stage again)',
                   name, previous.get('finished'), marker)
      if previous.get('config') != _comparable(config):
        logging.warning('Stage %r ran with a different config than the current one; its outputs '
                        'are kept. Delete %s to rerun it with the current config.', name, marker)
      continue
    distributed.barrier(f'before stage {name}')
    check_inputs(name, config, workdir)  # what the earlier stages were to write is there
    logging.info('Running stage %r', name)
    if distributed.is_primary() or name not in PRIMARY_ONLY:
      stage_function(name)(config, workdir)
    if distributed.is_primary():
      os.makedirs(os.path.dirname(marker), exist_ok=True)
      with open(marker + '.tmp', 'w') as f:
        json.dump(dict(finished=datetime.datetime.now().isoformat(timespec='seconds'),
                       config=_comparable(config)), f, indent=1)
      os.replace(marker + '.tmp', marker)
    distributed.barrier(f'after stage {name}')
    if not os.path.exists(marker):
      raise RuntimeError(f'{marker}: process {distributed.process_index()} does not see the marker '
                         f'process 0 wrote after stage {name!r}: the workdir {workdir} must be '
                         'one shared folder for all processes (NFS, Filestore, a gcsfuse mount)')
    ran.append(name)
  return ran
