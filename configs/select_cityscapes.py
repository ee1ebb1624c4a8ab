"""Automatic data selection on Cityscapes: the rows of the paper's Table 1 (and the selection rows
of Tables 7 and 10).

    python -m sdeseg_jax.main --config=configs/select_cityscapes.py:method=ds_us,labels=372 \
        --workdir=W
    python -m sdeseg_jax.select --config=configs/select_cityscapes.py:method=ds_us \
        --workdir=W --out=F

The variant is comma-separated key=value pairs:
  method=ds_us|ds|us|entropy|random   the selection (default ds_us: diversity + uncertainty)
  labels=100|372|744                  the first N selected images train the segmentation
                                      (default 372)
  seed=N                              the random first image / order, students, training
Schedule (SPEC section 8): |G_A| = 25, 50, 100, 200, 372, 744; depth students of 4k, 8k, 12k, 16k,
20k iterations before the later steps; lambda_E = 1000. DS and DS+US start from one random image and
add farthest points up to 25; US and the entropy baseline start from 25 random images, as the
reference does.
Table 1 trains the supervised baseline on each selection (ImageNet encoder, no mixing), so name
the converted ImageNet weights: --config.segment.imagenet_encoder=/ckpt/imagenet_r101 and, for the
students (ResNet50), --config.select.student.init_encoder=/ckpt/imagenet_r50 (both from
python -m sdeseg_jax.weights.convert --from torchvision). Stages: data, sde_pretrain, depth_labels,
select_labels, segment, evaluate.
"""

import ml_collections

from configs import base
from configs import ssl_cityscapes

# method -> overrides of config.select (the reference's initial samples per choice).
METHODS = {
    'ds_us': dict(method='ds_us', initial='diversity'),
    'ds': dict(method='ds', initial='diversity'),
    'us': dict(method='us', initial='random'),
    'entropy': dict(method='entropy', initial='random'),
    'random': dict(method='random', initial='random'),
}


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  values = ssl_cityscapes.parse_variant(arg, ('method', 'labels', 'seed'),
                                        'configs/select_cityscapes.py')
  method = ssl_cityscapes.method_of(values, METHODS, 'ds_us', 'configs/select_cityscapes.py')
  config = base.get_config()
  config.stages = 'data,sde_pretrain,depth_labels,select_labels,segment,evaluate'
  config.seed = int(values.get('seed', 0))
  config.select.update(METHODS[method])
  config.select.sizes = (25, 50, 100, 200, 372, 744)
  config.select.student_steps = (4000, 8000, 12000, 16000, 20000)
  config.select.lambda_e = 1000.0
  config.segment.update(ssl_cityscapes.METHODS['baseline'])
  config.segment.labels = int(values.get('labels', 372))
  if config.segment.labels > config.select.sizes[-1]:
    raise ValueError(f'configs/select_cityscapes.py: labels={config.segment.labels} exceeds the '
                     f'{config.select.sizes[-1]} selected images')
  config.segment.selection = 'select_labels'
  config.experiment = f'select_cityscapes_{method}_{config.segment.labels}_seed{config.seed}'
  return config
