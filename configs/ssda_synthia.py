"""Semi-supervised domain adaptation SYNTHIA -> Cityscapes: the rows of the paper's Table 17
(SPEC section 7), evaluated on the 19 classes and the 16- and 13-class SYNTHIA protocols.

    python -m sdeseg_jax.main --config=configs/ssda_synthia.py:labels=100 --workdir=W

Variants and methods as configs/ssda_gta.py; the source is SYNTHIA RAND-CITYSCAPES with its SDE
trained on SYNTHIA-SEQS (config.data.source.sequence_root).
"""

import ml_collections

from configs import base
from configs import ssda_gta

METHODS = ssda_gta.METHODS
get_sweep = ssda_gta.get_sweep  # Table 17 rows: the same label counts and methods


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = ssda_gta.domain_adaptation_config(base.get_config(), 'synthia', arg, 'ssda_synthia')
  config.evaluate.class_subsets = ('16', '13')
  return config
