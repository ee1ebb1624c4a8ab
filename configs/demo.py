"""The CPU demo: a small synthetic world of both domains (city plays Cityscapes, game plays GTA5).

    make demo      # = python -m sdeseg_jax.main --config=configs/demo.py --workdir=demo_workdir

Variant 'tiny' (configs/demo.py:tiny) renders an even smaller world, for tests.
"""

import ml_collections

from configs import base


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = base.get_config()
  config.experiment = 'demo'
  config.stages = 'data,sde_pretrain,depth_labels,segment,evaluate'
  size, sequences = ((256, 128), 20) if arg != 'tiny' else ((128, 64), 4)
  if arg not in ('', 'tiny'):
    raise ValueError(f'configs/demo.py: unknown variant {arg!r} (known: tiny)')
  for role, name, domain, seed in (('target', 'cityscapes', 'city', 0),
                                   ('source', 'gta5', 'game', 1)):
    entry = config.data[role]
    entry.name = name
    entry.resolution = size
    entry.val_count = max(1, sequences // 4)
    entry.synthetic.update(domain=domain, size=size, sequences=sequences, frames=5, seed=seed)
  config.data.crop = (size[1], size[1])
  for model in (config.model, config.source_model, config.student_model):
    base.make_tiny(model)
  # Self-supervised depth from scratch (no ImageNet weights here): all groups at Adam 1e-3.
  sde = config.sde
  sde.optim = base.optim_config('adam', dict(all=dict(pattern='.', lr=1e-3)), kind='step',
                                boundaries=(1200,))
  sde.feature_distance = 0.0
  sde.crop = (size[1], size[1])
  sde.batch_size = 4
  sde.num_steps = 1500 if arg != 'tiny' else 4
  sde.log_every, sde.checkpoint_every, sde.images_every = 50, 250, 250
  sde.eval_every = 250
  if arg == 'tiny':
    sde.batch_size = 2
    sde.log_every = sde.checkpoint_every = sde.images_every = sde.eval_every = 2
  config.depth_labels.batch_size = 2
  # Semi-supervised segmentation: the full method (multi-task + DepthMix) with a quarter of the
  # training labels.
  seg = config.segment
  seg.labels = 4 if arg != 'tiny' else 2
  seg.num_steps = 1000 if arg != 'tiny' else 4
  seg.log_every, seg.checkpoint_every, seg.eval_every, seg.images_every = 50, 250, 250, 250
  if arg == 'tiny':
    seg.log_every = seg.checkpoint_every = seg.eval_every = seg.images_every = 2
  config.data.image_format = 'png'
  return config
