"""Your own data: the paper's semi-supervised method on a tree in the folder layout
(docs/folder_dataset.md; README "Train on your own data").

    python -m sdeseg_jax.main --config=configs/own_data.py:root=/data/mine --workdir=W

The variant is comma-separated key=value pairs:
  root=PATH          the tree in the folder layout (required); its classes.json sets the classes
  labels=N           labeled training images (default 100; 0: all)
  method=...         a row of configs/ssl_cityscapes.py METHODS (default ours_no_selection: the
                     multi-task network with DepthMix; depthmix when sde= is given)
  select=true        choose the labeled images with select_labels (DS+US) instead of at random
  depth=sde|sensor   where the depth labels (DepthMix, selection) come from: sde (default) the SDE's
                     prediction, sensor ROOT/depth/ (metric depth, the paper's Table 9 stereo row)
  sde=PATH           an SDE trained elsewhere (another run's sde/ckpt): no sde_pretrain here, for
                     data without video (the paper's Table 11)
  resolution=WxH     the working resolution (default 1024x512)
  seed=N             the random labeled subset, data order and initialisation
  tiny=true          CPU test sizes (configs/demo.py:tiny's networks, crops and steps)
Stages: data, sde_pretrain (without sde=), depth_labels, select_labels (with select=true), segment,
evaluate. ImageNet weights for the SDE encoder (sde.init.encoder) come from
python -m sdeseg_jax.weights.convert, as in configs/ssl_cityscapes.py.
"""

import os

import ml_collections

from configs import base
from configs import demo
from configs import ssl_cityscapes
from data_pipelines.datasets import folder

WHERE = 'configs/own_data.py'
KEYS = ('root', 'labels', 'method', 'select', 'depth', 'sde', 'resolution', 'seed', 'tiny')
DEPTH_SOURCES = {'sde': 'sde', 'sensor': 'groundtruth'}
# The selection sizes of the reference's schedule (SPEC 8); a run's schedule stops at its labels.
SELECTION_SIZES = (25, 50, 100, 200, 372, 744)


def _flag(values: dict[str, str], key: str) -> bool:
  value = values.get(key, 'false').lower()
  if value not in ('true', 'false'):
    raise ValueError(f'{WHERE}: {key}={value!r}, expected true or false')
  return value == 'true'


def _resolution(text: str) -> tuple[int, int]:
  try:
    width, height = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise ValueError(f'{WHERE}: resolution={text!r}, expected WIDTHxHEIGHT') from None
  return width, height


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  values = ssl_cityscapes.parse_variant(arg, KEYS, WHERE)
  if not values.get('root'):
    raise ValueError(f'{WHERE}: name your tree: --config={WHERE}:root=/path/to/data')
  root = os.path.abspath(os.path.expanduser(values['root']))
  sde = values.get('sde', '')
  method = ssl_cityscapes.method_of(values, ssl_cityscapes.METHODS,
                                    'depthmix' if sde else 'ours_no_selection', WHERE)
  depth = values.get('depth', 'sde')
  if depth not in DEPTH_SOURCES:
    raise ValueError(f'{WHERE}: depth={depth!r}, expected one of {", ".join(DEPTH_SOURCES)}')
  tiny, select = _flag(values, 'tiny'), _flag(values, 'select')

  config = demo.get_config('tiny') if tiny else base.get_config()
  resolution = tuple(config.data.target.resolution) if tiny else (1024, 512)
  if 'resolution' in values:
    resolution = _resolution(values['resolution'])
  config.data.target = base.dataset_config('folder', resolution)
  config.data.target.raw_root = root
  config.data.source = base.dataset_config('')
  # The classes are the tree's: the networks' heads get as many outputs.
  config.model.num_classes = folder.read_classes(root).num_classes

  config.seed = int(values.get('seed', 0))
  seg = config.segment
  seg.update(ssl_cityscapes.METHODS[method])
  seg.labels = int(values.get('labels', 2 if tiny else 100))
  seg.selection = 'select_labels' if select else ''
  config.depth_labels.source = DEPTH_SOURCES[depth]
  if sde:
    seg.sde_checkpoint = config.depth_labels.sde_checkpoint = config.select.sde_checkpoint = sde
  if select and not tiny:
    sizes = tuple(n for n in SELECTION_SIZES if n < seg.labels) + (seg.labels,)
    config.select.sizes = sizes
    config.select.student_steps = tuple(4000 * (k + 1) for k in range(len(sizes) - 1))
  config.stages = ','.join(
      ['data'] + (['sde_pretrain'] if not sde else []) + ['depth_labels']
      + (['select_labels'] if select else []) + ['segment', 'evaluate'])
  config.experiment = f'own_data_{method}_{seg.labels}_seed{config.seed}'
  return config
