"""Source-domain self-supervised depth on the GTA video set (SSDA, SPEC sections 3 and 5).

ResNet101 at output stride 32 with the dec11 decoder (ASPP rates 3/6/9); Adam 1e-4 for decoder and
pose, 1e-5 for the encoder, x0.1 at 160k, 350k steps; uncropped frames for the pose network are not
modelled (the pose net sees the same crops). The SSDA experiments import its checkpoint as their
source SDE.
"""

import ml_collections

from configs import base


def source_sde_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.model = base.model_config(output_stride=32, decoder='dec11')
  sde = config.sde
  sde.optim = base.optim_config('adam', dict(
      encoder=dict(pattern='^encoder/', lr=1e-5),
      depth_decoder=dict(pattern='^depth_decoder/', lr=1e-4),
      pose=dict(pattern='^pose/', lr=1e-4)), kind='step', boundaries=(160_000,))
  sde.feature_distance = 0.0
  sde.num_steps = 350_000
  config.stages = 'data,sde_pretrain'
  return config


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  del arg
  config = base.get_config()
  config.experiment = 'sde_gta'
  config.data.target = base.dataset_config('gta5')
  return source_sde_config(config)
