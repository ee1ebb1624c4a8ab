"""Source-domain self-supervised depth on SYNTHIA-SEQS (SSDA): as configs/sde_gta.py."""

import ml_collections

from configs import base
from configs import sde_gta


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  del arg
  config = base.get_config()
  config.experiment = 'sde_synthia'
  config.data.target = base.dataset_config('synthia')
  return sde_gta.source_sde_config(config)
