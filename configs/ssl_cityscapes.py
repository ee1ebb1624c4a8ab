"""Semi-supervised segmentation on Cityscapes: the rows of the paper's SSL tables (3, 5, 7, 10).

    python -m sdeseg_jax.main --config=configs/ssl_cityscapes.py:labels=372,method=depthmix
        --workdir=W

The variant is comma-separated key=value pairs:
  labels=100|372|744|2975   labeled training images (2975 = all; 0 also means all)
  method=...                one of METHODS below (default: ours_no_selection)
  seed=N                    the seed of the random labeled subset, data order and initialisation
  selection=PATH            an ordered id list from select_labels (the "selection" rows)
Runs data, sde_pretrain, depth_labels, segment and evaluate; ImageNet weights (init.encoder of the
SDE, segment.imagenet_encoder for the baseline) come from python -m sdeseg_jax.weights.convert.
"""

import ml_collections

from configs import base

# method -> overrides of config.segment: the paper's rows.
METHODS = {
    'baseline': dict(network='transfer', init='imagenet', mix='none'),   # ImageNet, supervised
    'transfer': dict(network='transfer', init='sde', mix='none'),        # + SDE transfer
    'mtl': dict(network='mtl', init='sde', mix='none'),                  # + multi-task (PAD)
    'pseudo': dict(network='transfer', init='sde', mix='pseudo'),        # Table 3 rows
    'classmix': dict(network='transfer', init='sde', mix='classmix'),
    'depthmix': dict(network='transfer', init='sde', mix='depthmix'),
    'ours_no_selection': dict(network='mtl', init='sde', mix='depthmix'),  # DM + MTL
}


def parse_variant(arg: str, keys=('labels', 'method', 'seed', 'selection'),
                  where: str = 'configs/ssl_cityscapes.py') -> dict[str, str]:
  """'labels=100,seed=1' -> {'labels': '100', 'seed': '1'}; an unknown key fails loudly."""
  values = {}
  for item in filter(None, (p.strip() for p in arg.split(','))):
    key, separator, value = item.partition('=')
    if not separator or key not in keys:
      raise ValueError(f'{where}: bad variant item {item!r} (expected key=value with key in '
                       f'{", ".join(keys)})')
    values[key] = value
  return values


def method_of(values: dict[str, str], methods: dict, default: str, where: str) -> str:
  """The variant's method (default when it names none); an unknown one fails naming the known."""
  method = values.get('method', default)
  if method not in methods:
    raise ValueError(f'{where}: unknown method {method!r} (known: {", ".join(methods)})')
  return method


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  values = parse_variant(arg)
  method = method_of(values, METHODS, 'ours_no_selection', 'configs/ssl_cityscapes.py')
  config = base.get_config()
  config.stages = 'data,sde_pretrain,depth_labels,segment,evaluate'
  config.seed = int(values.get('seed', 0))
  config.segment.update(METHODS[method])
  config.segment.labels = int(values.get('labels', 372))
  config.segment.selection = values.get('selection', '')
  config.experiment = f'ssl_cityscapes_{method}_{config.segment.labels}_seed{config.seed}'
  return config


# Sweeps (launch/sweep.py): name -> (label counts, methods); every pair runs with SEEDS.
# `ours` with data selection is a row of configs/select_cityscapes.py (it adds the select_labels
# stage), so Table 10 here holds the baseline and ours without selection. The domain-adaptation
# files (configs/ssda_gta.py, ssda_synthia.py: Tables 16, 17) define their get_sweep the same way.
SEEDS = (0, 1, 2)
SWEEPS = {
    'table10': ((100, 372, 744, 2975), ('baseline', 'ours_no_selection')),
    'table7': ((372,), ('baseline', 'mtl', 'depthmix', 'ours_no_selection')),
    'table3': ((372,), ('pseudo', 'classmix', 'depthmix')),
}


def get_sweep(arg: str = '') -> list[dict]:
  """The runs of a paper table: python launch/sweep.py --config=configs/ssl_cityscapes.py[:NAME]
  with NAME one of SWEEPS (default table10); each dict is a variant of get_config."""
  name = arg or 'table10'
  if name not in SWEEPS:
    raise ValueError(f'configs/ssl_cityscapes.py: unknown sweep {name!r} (known: '
                     f'{", ".join(SWEEPS)})')
  labels, methods = SWEEPS[name]
  return [dict(labels=n, method=method, seed=seed)
          for n in labels for method in methods for seed in SEEDS]
