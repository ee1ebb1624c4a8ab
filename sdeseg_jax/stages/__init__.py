"""The stage runner: each stage is `run(config, workdir) -> None` in a module of this package.

A finished stage leaves `<workdir>/<stage>/done` (JSON: when, and the config it ran with); a later run
skips it, says why, and warns when the config has changed since.
"""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import os

import ml_collections

# Stage name -> module holding its run(); in the order the method runs them.
STAGES = {
    'data': 'sdeseg_jax.stages.data',
    'sde_pretrain': 'sdeseg_jax.stages.sde_pretrain',
    'depth_labels': 'sdeseg_jax.stages.depth_labels',
    'segment': 'sdeseg_jax.stages.segment',
    'evaluate': 'sdeseg_jax.stages.evaluate',
}


def parse_stages(text: str) -> list[str]:
  """'data, segment' -> ['data', 'segment'], each a known stage."""
  names = [n.strip() for n in text.split(',') if n.strip()]
  unknown = [n for n in names if n not in STAGES]
  if unknown:
    raise ValueError(f'config.stages: unknown stage(s) {unknown} (known: {", ".join(STAGES)})')
  if not names:
    raise ValueError('config.stages is empty: name at least one stage')
  return names


def done_marker(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage, 'done')


def _comparable(config: ml_collections.ConfigDict) -> dict:
  """The config as JSON-able data, without the keys that do not change a stage's result."""
  values = json.loads(config.to_json_best_effort())
  values.pop('stages', None)
  return values


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Runs config.stages in order, skipping finished ones; returns the stages that ran."""
  names = parse_stages(config.stages)
  os.makedirs(workdir, exist_ok=True)
  ran = []
  for name in names:
    marker = done_marker(workdir, name)
    if os.path.exists(marker):
      with open(marker) as f:
        previous = json.load(f)
      logging.info('Skipping stage %r: finished at %s (%s exists; delete it to run the stage again)',
                   name, previous.get('finished'), marker)
      if previous.get('config') != _comparable(config):
        logging.warning('Stage %r ran with a different config than the current one; its outputs '
                        'are kept. Delete %s to rerun it with the current config.', name, marker)
      continue
    logging.info('Running stage %r', name)
    importlib.import_module(STAGES[name]).run(config, workdir)
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker + '.tmp', 'w') as f:
      json.dump(dict(finished=datetime.datetime.now().isoformat(timespec='seconds'),
                     config=_comparable(config)), f, indent=1)
    os.replace(marker + '.tmp', marker)
    ran.append(name)
  return ran
