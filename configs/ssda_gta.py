"""Semi-supervised domain adaptation GTA5 -> Cityscapes: the rows of the paper's SSDA tables
(12, 14, 16; SPEC section 7).

    python -m sdeseg_jax.main --config=configs/ssda_gta.py:labels=100,method=ours_no_selection
        --workdir=W

The variant is comma-separated key=value pairs:
  labels=100|200|500|2975   labeled target (Cityscapes) training images (2975 or 0 = all)
  method=...                one of METHODS below (default: ours_no_selection)
  seed=N                    the seed of the labeled subset, data order and initialisation
  selection=PATH            an ordered id list from select_labels ('+selection' rows;
                            'select_labels' = this workdir's own selection)
Stages: data, the target SDE (sde_pretrain, SPEC phase C), the source SDE on the GTA video set
(sde_source: ResNet101 OS32 + dec11, configs/sde_gta.py's schedule), depth labels of both domains,
segment (source + target) and evaluate. The source tree: config.data.source.root / raw_root, and the
GTA video set in config.data.source.sequence_root.
"""

import ml_collections

from configs import base
from configs import sde_gta
from configs import ssl_cityscapes

# method -> overrides of config.segment (and segment.source): the paper's rows.
_SOURCE_ONLY = dict(enabled=True, mix='none', matching_geometry=False)
METHODS = {
    'target_only': dict(network='transfer', mix='none', source=dict(enabled=False)),
    'sd': dict(network='transfer', mix='none', source=_SOURCE_ONLY),          # source + target
    'tdm': dict(network='transfer', mix='depthmix', source=_SOURCE_ONLY),     # + Target-Domain DM
    'cdm': dict(network='transfer', mix='none',                               # + Cross-Domain DM
                source=dict(_SOURCE_ONLY, mix='depthmix')),
    'cdm_tdm': dict(network='transfer', mix='depthmix', source=dict(_SOURCE_ONLY, mix='depthmix')),
    'cdm_tdm_mg': dict(network='transfer', mix='depthmix',                    # + Matching Geometry
                       source=dict(_SOURCE_ONLY, mix='depthmix', matching_geometry=True)),
    'ours_no_selection': dict(network='mtl', mix='depthmix',                  # + multi-task
                              source=dict(_SOURCE_ONLY, mix='depthmix', matching_geometry=True)),
    'dacs': dict(network='transfer', mix='none',                              # DACS: cross-domain
                 source=dict(_SOURCE_ONLY, mix='classmix')),                  # ClassMix
}
VARIANT_KEYS = ('labels', 'method', 'seed', 'selection')


def domain_adaptation_config(config: ml_collections.ConfigDict, source: str, arg: str,
                             experiment: str) -> ml_collections.ConfigDict:
  """The SSDA stages and method rows on `config` with source dataset `source` (gta5 | synthia)."""
  values = ssl_cityscapes.parse_variant(arg, VARIANT_KEYS, f'configs/{experiment}.py')
  method = ssl_cityscapes.method_of(values, METHODS, 'ours_no_selection',
                                    f'configs/{experiment}.py')
  config.stages = 'data,sde_pretrain,sde_source,depth_labels,segment,evaluate'
  config.seed = int(values.get('seed', 0))
  config.data.source = base.dataset_config(source)
  # The source SDE: the design and schedule of configs/sde_gta.py.
  source_sde = sde_gta.source_sde_config(base.get_config())
  config.source_model = source_sde.model
  config.source_sde = source_sde.sde
  config.depth_labels.roles = ('target', 'source')
  overrides = METHODS[method]
  config.segment.update({k: v for k, v in overrides.items() if k != 'source'})
  config.segment.source.update(overrides['source'])
  # As the reference's SSDA runs: multi-task DepthMix from the depth labels, SDE loss on the
  # labeled target batch only (SPEC 7).
  config.segment.depthmix_online_depth = False
  config.segment.labels = int(values.get('labels', 100))
  config.segment.selection = values.get('selection', '')
  config.experiment = f'{experiment}_{method}_{config.segment.labels}_seed{config.seed}'
  return config


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  return domain_adaptation_config(base.get_config(), 'gta5', arg, 'ssda_gta')


# Paper tables as sweeps (python launch/sweep.py --config=configs/ssda_gta.py[:NAME]).
SEEDS = (0, 1, 2)
SWEEPS = {
    'table16': ((100, 200, 500), ('dacs', 'ours_no_selection')),
    'table12': ((100,), ('target_only', 'sd', 'tdm', 'cdm', 'cdm_tdm', 'cdm_tdm_mg',
                         'ours_no_selection')),
}


def get_sweep(arg: str = '') -> list[dict]:
  """The runs of a paper table (default table16); each dict is a variant of get_config."""
  name = arg or 'table16'
  if name not in SWEEPS:
    raise ValueError(f'unknown sweep {name!r} (known: {", ".join(SWEEPS)})')
  labels, methods = SWEEPS[name]
  return [dict(labels=n, method=method, seed=seed)
          for n in labels for method in methods for seed in SEEDS]
