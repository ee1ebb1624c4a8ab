"""Semi-supervised segmentation on CamVid with an SDE trained on Cityscapes: the rows of the paper's
Table 11 (SPEC section 10).

    python -m sdeseg_jax.main \
        --config=configs/ssl_camvid.py:labels=100,method=ours,sde=/runs/city/sde/ckpt --workdir=W \
        --config.data.target.raw_root=/data/CamVid

CamVid has no video, so no SDE trains on it: the SDE is another run's, trained on Cityscapes
sequences (the sde_pretrain stage of configs/sde_cityscapes.py or of an ssl_cityscapes run; the
same network design, config.model). Its checkpoint initialises the segmentation network (transfer
learning), predicts the depth labels DepthMix reads and, for `ours`, gives the data selection its
features. Those are three keys (segment.sde_checkpoint, depth_labels.sde_checkpoint,
select.sde_checkpoint) holding one linked value: `sde=PATH` or --config.segment.sde_checkpoint=PATH
sets all three.

The variant is comma-separated key=value pairs:
  labels=50|100|367   labeled training images (367 = all of CamVid's train split; 0 also means all)
  method=...          one of METHODS below (default: ours_no_selection)
  seed=N              the seed of the random labeled subset, data order and initialisation
  sde=PATH            the Cityscapes SDE checkpoint (a path without commas)
The setup of SPEC 10: 11 classes (the 12th, void, is ignored), 480x360 images prepared at 672x512,
random 512x512 crops, 20k iterations with the learning rates x0.1 at 15k, transfer learning only
(multi-task training needs sequences), and the weights that did best on the val split during
training evaluated on the test split. The other settings are Cityscapes' (configs/base.py).
Stages: data, segment, evaluate; + depth_labels for the methods that mix by depth, + select_labels
for `ours` (DS+US from one random image up to 25, then a depth student per step up to 50 and 100
images, lambda_E = 1000, stopping at the first size >= labels: the first `labels` selected images
are labeled). The baseline starts from
ImageNet: --config.segment.imagenet_encoder (python -m sdeseg_jax.weights.convert).
"""

import ml_collections

from configs import base
from configs import ssl_cityscapes

CLASSES = 11
TRAIN_IMAGES = 367
# method -> overrides of config.segment: the paper's rows (all transfer learning, no multi-task).
METHODS = {
    'baseline': ssl_cityscapes.METHODS['baseline'],                # ImageNet, supervised only
    'classmix': ssl_cityscapes.METHODS['classmix'],                # SDE transfer + ClassMix
    'ours_no_selection': ssl_cityscapes.METHODS['depthmix'],       # SDE transfer + DepthMix
    'ours': ssl_cityscapes.METHODS['depthmix'],                    # + automatic data selection
}
# The data selection of `ours`: every labeled subset of the table is a prefix of one selection.
SELECTION_SIZES = (25, 50, 100)
STUDENT_STEPS = (4000, 8000)


def stages_of(method: str) -> str:
  """The stages of a method: depth labels only where DepthMix (or the selection) reads them."""
  segment = METHODS[method]
  names = ['data']
  if segment['mix'] == 'depthmix':
    names.append('depth_labels')
  if method == 'ours':
    names.append('select_labels')
  return ','.join(names + ['segment', 'evaluate'])


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  where = 'configs/ssl_camvid.py'
  values = ssl_cityscapes.parse_variant(arg, ('labels', 'method', 'seed', 'sde'), where)
  method = ssl_cityscapes.method_of(values, METHODS, 'ours_no_selection', where)
  config = base.get_config()
  config.stages = stages_of(method)
  config.seed = int(values.get('seed', 0))
  config.data.target = base.dataset_config('camvid', resolution=(672, 512))
  config.data.crop = (512, 512)
  config.model.num_classes = CLASSES
  config.student_model.num_classes = CLASSES  # the entropy baseline's student, if chosen
  sde = ml_collections.FieldReference(values.get('sde', ''), field_type=str)
  config.segment.sde_checkpoint = sde
  config.depth_labels.sde_checkpoint = sde
  config.select.sde_checkpoint = sde
  seg = config.segment
  seg.update(METHODS[method])
  seg.labels = int(values.get('labels', 100))
  seg.num_steps = 20_000
  seg.optim.schedule.boundaries = (15_000,)
  config.evaluate.split = 'test'
  if method == 'ours':
    config.select.update(method='ds_us', initial='diversity', sizes=SELECTION_SIZES,
                         student_steps=STUDENT_STEPS, lambda_e=1000.0)
    ssl_cityscapes.select_up_to(config.select, seg.labels, where)
    seg.selection = 'select_labels'
  config.experiment = f'ssl_camvid_{method}_{seg.labels}_seed{config.seed}'
  return config


# Sweeps (launch/sweep.py --config=configs/ssl_camvid.py[:NAME] -- --config.segment.sde_checkpoint=
# PATH): name -> ((method, label counts), ...); every row runs with SEEDS.
SEEDS = (0, 1, 2)
SWEEPS = {
    'table11': (('baseline', (50, 100, TRAIN_IMAGES)), ('classmix', (50, 100)),
                ('ours_no_selection', (50, 100, TRAIN_IMAGES)), ('ours', (50, 100))),
}


def get_sweep(arg: str = '') -> list[dict]:
  """The runs of Table 11 (the default and only sweep); each dict is a variant of get_config. The
  SDE is the same for every run: pass it after `--` (see SWEEPS)."""
  name = arg or 'table11'
  if name not in SWEEPS:
    raise ValueError(f'configs/ssl_camvid.py: unknown sweep {name!r} (known: '
                     f'{", ".join(SWEEPS)})')
  return [dict(labels=n, method=method, seed=seed)
          for method, labels in SWEEPS[name] for n in labels for seed in SEEDS]
