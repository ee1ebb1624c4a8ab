"""The CPU demo: a small synthetic world of both domains (city plays Cityscapes, game plays GTA5).

    make demo      # = python -m sdeseg_jax.main --config=configs/demo.py --workdir=demo_workdir

Variants (comma-separated): 'tiny' renders an even smaller world, for tests; 'ssda' runs domain
adaptation game -> city (source SDE, depth labels of both domains, source + Cross- and
Target-Domain DepthMix with Matching Geometry Sampling): configs/demo.py:ssda or :ssda,tiny.
"""

import ml_collections

from configs import base


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = base.get_config()
  config.experiment = 'demo'
  config.stages = 'data,sde_pretrain,depth_labels,select_labels,segment,evaluate'
  variants = {v.strip() for v in arg.split(',') if v.strip()}
  if variants - {'tiny', 'ssda'}:
    raise ValueError(f'configs/demo.py: unknown variant(s) {sorted(variants - {"tiny", "ssda"})} '
                     '(known: tiny, ssda)')
  tiny = 'tiny' in variants
  size, sequences = ((256, 128), 20) if not tiny else ((128, 64), 4)
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
  sde.num_steps = 1500 if not tiny else 4
  sde.log_every, sde.checkpoint_every, sde.images_every = 50, 250, 250
  sde.eval_every = 250
  if tiny:
    sde.batch_size = 2
    sde.log_every = sde.checkpoint_every = sde.images_every = sde.eval_every = 2
  config.depth_labels.batch_size = 2
  # Data selection (DS+US): one random image and its farthest point, then one depth student on
  # those two picks the rest of the labeled images (tiny: 1 image, then a 2-iteration student).
  select = config.select
  select.sizes = (2, 4) if not tiny else (1, 2)
  select.student_steps = (300,) if not tiny else (2,)
  select.eval_batch_size = 2
  select.student.log_every = 50 if not tiny else 2
  select.student.checkpoint_every = 100 if not tiny else 2
  # Semi-supervised segmentation: the full method (multi-task + DepthMix) with a quarter of the
  # training labels.
  seg = config.segment
  seg.labels = 4 if not tiny else 2
  seg.num_steps = 1000 if not tiny else 4
  seg.log_every, seg.checkpoint_every, seg.eval_every, seg.images_every = 50, 250, 250, 250
  if tiny:
    seg.log_every = seg.checkpoint_every = seg.eval_every = seg.images_every = 2
  config.data.image_format = 'png'
  if 'ssda' in variants:
    _domain_adaptation(config, crop_height=size[1])
  # Segmentation labels the first seg.labels images that the select_labels stage chose.
  seg.selection = 'select_labels' if 'select_labels' in config.stages.split(',') else ''
  return config


def _domain_adaptation(config: ml_collections.ConfigDict, crop_height: int) -> None:
  """game (GTA5 layout) -> city: the source SDE trains like the target's, both domains get depth
  labels, and the segment stage adds the source with Cross-Domain DepthMix and Matching Geometry."""
  config.experiment = 'demo_ssda'
  config.stages = 'data,sde_pretrain,sde_source,depth_labels,segment,evaluate'
  config.source_sde = config.sde.copy_and_resolve_references()
  config.depth_labels.roles = ('target', 'source')
  config.segment.source.enabled = True
  config.segment.depthmix_online_depth = False  # as configs/ssda_gta.py (SPEC 7)
  # The SPEC's rows (80 top, 100 bottom of 512-high crops) at this crop height.
  config.segment.source.geometry_rows = (80 * crop_height // 512, 100 * crop_height // 512)
