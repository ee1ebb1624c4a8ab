"""Self-supervised depth on Cityscapes sequences: the reference schedule (SPEC section 5).

    python -m sdeseg_jax.main --config=configs/sde_cityscapes.py:C --workdir=W

Variants (the reference trains them one after another, each initialised from the previous one):
  A  full 1024x512 frames, batch 2, encoder frozen (ImageNet), Adam 1e-4, x0.1 at 160k, 300k steps
     (its pose network initialises B)
  B  512x512 crops, batch 4, encoder frozen, new depth decoder, pose from A, 300k steps
  C  everything trainable, Adam 1e-5, feature distance 1e-2, 100k steps (default)
Set config.sde.init.* to the ImageNet conversion (A, B) or the previous phase's checkpoint.
"""

import ml_collections

from configs import base


def get_config(arg: str = 'C') -> ml_collections.ConfigDict:
  config = base.get_config()
  config.experiment = f'sde_cityscapes_{arg}'
  config.stages = 'data,sde_pretrain,depth_labels'
  sde = config.sde
  if arg in ('A', 'B'):
    sde.optim = base.optim_config('adam', dict(
        encoder=dict(pattern='^encoder/', lr=1e-4, frozen=True),
        depth_decoder=dict(pattern='^depth_decoder/', lr=1e-4),
        pose=dict(pattern='^pose/', lr=1e-4)), kind='step', boundaries=(160_000,))
    sde.feature_distance = 0.0
    sde.num_steps = 300_000
    sde.batch_size, sde.crop = (2, (1024, 512)) if arg == 'A' else (4, (512, 512))
  elif arg != 'C':
    raise ValueError(f'configs/sde_cityscapes.py: unknown variant {arg!r} (known: A, B, C)')
  return config
