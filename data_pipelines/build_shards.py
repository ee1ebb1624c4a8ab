"""Builds the TFDS / ArrayRecord shards (data_pipelines.tfds_backend) of a prepared tree:

    python -m data_pipelines.build_shards --dataset=cityscapes --root=/data/cityscapes_1024x512 \
        --resolution=1024x512 --tfds_dir=gs://BUCKET/tfds
    python -m data_pipelines.build_shards --config=configs/demo.py --workdir=W   # each dataset role
"""

from __future__ import annotations

import json
import logging

from absl import app
from absl import flags
from ml_collections import config_flags

from data_pipelines import datasets
from data_pipelines import prepare
from data_pipelines import sources
from data_pipelines import tfds_backend

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config: build the shards of each dataset role (rendering and '
    'preparing first where the config says so). Without it, the flags below name one tree.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'With --config: the run\'s workdir (default paths).')
flags.DEFINE_list('roles', ['target', 'source'], 'With --config: the roles to build.')
flags.DEFINE_enum('dataset', None, sorted(datasets.READERS), 'Dataset layout of --root.')
flags.DEFINE_string('root', None, 'The prepared tree (python -m data_pipelines.prepare).')
flags.DEFINE_string('resolution', '1024x512', 'WIDTHxHEIGHT the tree was prepared at.')
flags.DEFINE_string('tfds_dir', None, 'TFDS data_dir to write the shards into (local or gs://).')
flags.DEFINE_integer('val_count', 500, 'GTA5 / SYNTHIA: the last N sorted images are val.')
flags.DEFINE_string('sequence_root', '', 'The video set if it is not inside --root.')
flags.DEFINE_boolean('overwrite', False, 'Rebuild shards that exist (e.g. stale ones).')
flags.DEFINE_integer('workers', 0, 'Threads reading files (0: one per core).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.getLogger().setLevel(logging.INFO)
  f = flags.FLAGS
  if _CONFIG.value is not None:
    if not f.workdir:
      raise app.UsageError('--config needs --workdir')
    config = _CONFIG.value
    built = {role: sources.build_shards(config.data[role], f.workdir, role, overwrite=f.overwrite,
                                        image_format=config.data.image_format,
                                        workers=f.workers or config.data.workers)
             for role in f.roles if config.data[role].name}
  else:
    missing = [name for name in ('dataset', 'root', 'tfds_dir') if not getattr(f, name)]
    if missing:
      raise app.UsageError(f'without --config, set --{", --".join(missing)}')
    built = {f.dataset: tfds_backend.build(
        f.dataset, f.root, prepare.parse_resolution(f.resolution), f.tfds_dir,
        val_count=f.val_count, sequence_root=f.sequence_root, overwrite=f.overwrite,
        workers=f.workers)}
  print(json.dumps(built, indent=2))


if __name__ == '__main__':
  app.run(main)
