"""Semi-supervised segmentation on Cityscapes: the rows of the paper's SSL tables (3, 5, 7, 9, 10).

    python -m sdeseg_jax.main --config=configs/ssl_cityscapes.py:labels=372,method=depthmix
        --workdir=W

The variant is comma-separated key=value pairs:
  labels=100|372|744|2975   labeled training images (2975 = all; 0 also means all)
  method=...                one of METHODS below (default: ours_no_selection); `ours` is the full
                            method: ours_no_selection on the images the select_labels stage picks
                            (DS+US, configs/base.py's schedule)
  seed=N                    the seed of the random labeled subset, data order and initialisation
  selection=PATH            an ordered id list from select_labels (the "selection" rows)
  depth=...                 the depth of Table 9 (DEPTHS below; default: the SDE on every frame)
Runs data, sde_pretrain, depth_labels (+ select_labels for `ours`), segment and evaluate; ImageNet
weights (init.encoder of the SDE, segment.imagenet_encoder for the baseline) come from
python -m sdeseg_jax.weights.convert.

Table 9 (depth=...; 100 labels, the full method): `sdeN` trains the SDE on a random N% of the
training triplets (config.sde.frame_fraction). `stereo` takes the depth labels from Cityscapes'
stereo disparity maps (config.depth_labels.source='groundtruth': metric depth from disparity/ and
camera/ of the raw tree, so set config.data.target.raw_root to a tree that holds them). What that
swaps and what it does not: the paper swaps the whole depth network for one trained on the stereo
depth. We have no supervised depth training, so only the depth labels change: they are the data
selection's depth-student teacher (its uncertainty term E) and what DepthMix would read without
the multi-task online depth. The SDE (all frames) still initialises the network, gives the
multi-task depth loss, the online DepthMix disparity (depthmix_online_depth) and the selection's
features. The stereo row therefore measures better depth labels only, not a supervised network.
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
    'ours': dict(network='mtl', init='sde', mix='depthmix'),   # + data selection (select_labels)
}
# Table 9: depth -> (config.depth_labels.source, config.sde.frame_fraction).
DEPTHS = {
    'stereo': ('groundtruth', 1.0),
    'sde100': ('sde', 1.0),
    'sde10': ('sde', 0.1),
    'sde1': ('sde', 0.01),
    'sde0.1': ('sde', 0.001),
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


def select_up_to(select: ml_collections.ConfigDict, labels: int, where: str) -> None:
  """The selection schedule (config.select) cut after its first size >= labels: the labeled
  images are the first `labels` selected, and the selection is greedy, so the later steps (and
  their depth students) would not change them."""
  sizes = tuple(select.sizes)
  if not 0 < labels <= sizes[-1]:
    raise ValueError(f'{where}: method=ours labels the first of {sizes[-1]} selected images; '
                     f'labels={labels} is not in 1..{sizes[-1]}')
  keep = next(i for i, size in enumerate(sizes) if size >= labels) + 1
  select.sizes = sizes[:keep]
  select.student_steps = tuple(select.student_steps)[:keep - 1]


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  where = 'configs/ssl_cityscapes.py'
  values = parse_variant(arg, ('labels', 'method', 'seed', 'selection', 'depth'))
  method = method_of(values, METHODS, 'ours_no_selection', where)
  config = base.get_config()
  config.stages = 'data,sde_pretrain,depth_labels,segment,evaluate'
  config.seed = int(values.get('seed', 0))
  config.segment.update(METHODS[method])
  config.segment.labels = int(values.get('labels', 372))
  config.segment.selection = values.get('selection', '')
  if method == 'ours' and not config.segment.selection:
    config.stages = 'data,sde_pretrain,depth_labels,select_labels,segment,evaluate'
    config.segment.selection = 'select_labels'
    select_up_to(config.select, config.segment.labels, where)
  depth = values.get('depth', '')
  if depth:
    if depth not in DEPTHS:
      raise ValueError(f'{where}: unknown depth {depth!r} (known: {", ".join(DEPTHS)})')
    config.depth_labels.source, config.sde.frame_fraction = DEPTHS[depth]
  config.experiment = (f'ssl_cityscapes_{method}_{config.segment.labels}'
                       f'{"_" + depth if depth else ""}_seed{config.seed}')
  return config


# Sweeps (launch/sweep.py): name -> (label counts, methods); every pair runs with SEEDS.
# Table 10 here holds the baseline and ours without selection (the selection rows need the
# select_labels stage: method=ours). The domain-adaptation files (configs/ssda_gta.py,
# ssda_synthia.py: Tables 16, 17) define their get_sweep the same way.
SEEDS = (0, 1, 2)
SWEEPS = {
    'table10': ((100, 372, 744, 2975), ('baseline', 'ours_no_selection')),
    'table7': ((372,), ('baseline', 'mtl', 'depthmix', 'ours_no_selection')),
    'table3': ((372,), ('pseudo', 'classmix', 'depthmix')),
}
# Table 9: the full method with 100 labels, one row per depth.
TABLE9 = dict(labels=100, method='ours')


def get_sweep(arg: str = '') -> list[dict]:
  """The runs of a paper table: python launch/sweep.py --config=configs/ssl_cityscapes.py[:NAME]
  with NAME one of SWEEPS or table9 (default table10); each dict is a variant of get_config."""
  name = arg or 'table10'
  if name == 'table9':
    return [dict(TABLE9, depth=depth, seed=seed) for depth in DEPTHS for seed in SEEDS]
  if name not in SWEEPS:
    raise ValueError(f'configs/ssl_cityscapes.py: unknown sweep {name!r} (known: '
                     f'{", ".join([*SWEEPS, "table9"])})')
  labels, methods = SWEEPS[name]
  return [dict(labels=n, method=method, seed=seed)
          for n in labels for method in methods for seed in SEEDS]
