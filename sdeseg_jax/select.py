"""Which images to annotate, for users who only want the list:

    python -m sdeseg_jax.select --config=configs/select_cityscapes.py:method=ds_us --workdir=DIR \
        --out=to_annotate.json [--config.key=value ...]

Runs what the selection method needs and has not run yet in DIR — the data stage, and for the
SDE-based methods (ds, us, ds_us) self-supervised depth pretraining and the depth labels — then
the select_labels stage (config.select), and writes the ordered id list to --out (JSON; its first n
ids are the n images to annotate first). Stages that config.stages names after select_labels
(segmentation, evaluation) are not run. A rerun continues an interrupted selection.
"""

import json
import logging
import os
import shutil

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from sdeseg_jax import artifacts
from sdeseg_jax import cli
from sdeseg_jax import stages
from sdeseg_jax.stages import select_labels
from sdeseg_jax.stages.select_labels import schedule

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                                'Directory for the data, the SDE and the selection.')
_OUT = flags.DEFINE_string('out', None, 'Where to write the ordered id list (JSON).')
flags.mark_flags_as_required(['config', 'workdir', 'out'])


def required_stages(select) -> list[str]:
  """The stages the selection needs, in order, ending with select_labels."""
  needs_sde = schedule.uses_features(select) or schedule.student_kind(select) == 'depth'
  return ['data'] + (['sde_pretrain', 'depth_labels'] if needs_sde else []) + ['select_labels']


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  cli.start(config)
  with cli.exit_status():
    select_labels.check_config(config)
    config.stages = ','.join(required_stages(config.select))
    logging.info('Selecting with %s in %s, stages: %s', config.select.method, _WORKDIR.value,
                 config.stages)
    stages.run_stages(config, _WORKDIR.value)
  if jax.process_index() == 0:
    out = os.path.abspath(_OUT.value)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    shutil.copyfile(artifacts.selection_file(_WORKDIR.value), out)
    with open(out) as f:
      count = len(json.load(f))
    print(f'{count} images to annotate, in order: {out}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
