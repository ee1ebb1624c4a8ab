"""The `select_labels` stage: which training images to annotate (SPEC section 8).

Schedule (config.select): the selection grows to sizes[0], sizes[1], ... in steps.
- Step 0: one random image, then farthest point selection on the SDE features up to sizes[0]
  (initial='diversity'), or sizes[0] random images (initial='random').
- Step k >= 1 adds sizes[k] - sizes[k-1] images, by method:
    ds_us    farthest point selection with scores: argmax_j min_i ||phi_i - phi_j|| + lambda_E E(j),
             E from a depth student trained from scratch on the current selection
             (student_steps[k-1] iterations, berHu against the SDE's normalised disparity);
    ds       farthest point selection without scores (no student);
    us       the top-E images;
    entropy  the images of highest mean normalised pixel entropy under a segmentation student
             trained on the current selection's labels (active-learning baseline);
    random   the next images of a seeded random order.
phi: the SDE depth decoder's level-3 output, average-pooled to 4x8, standardised per channel over
all training images and positions, flattened. Teacher disparities are the depth labels of the
depth_labels stage, min-max normalised per whole image.

The package: schedule (the steps, by method), features (phi), students (E, entropy), report.

Resumable between steps: each step's selection is written to <workdir>/select_labels/steps/NN.json
and its student checkpointed in student_NN/ckpt (a preempted student resumes from its checkpoint);
a rerun continues after the last finished step. A schedule extended at its end continues too.

Output: <workdir>/selection.json (the ordered id list: its first n ids are the n-image subset) and
<workdir>/select_labels/report.json (per step: the chosen ids with their diversity and error terms,
and the class pixel frequencies of the selection vs the whole training set where labels exist), with
class_frequency.png (selection vs whole set, like the paper's Fig. 7).
"""

from __future__ import annotations

import logging

import ml_collections

from sdeseg_jax import artifacts
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.stages import base
from sdeseg_jax.stages.select_labels import features
from sdeseg_jax.stages.select_labels import schedule


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails before any work on a schedule or method (config.select) that cannot work, naming the
  key."""
  select = config.select
  if select.method not in schedule.METHODS:
    raise ConfigError(f'config.select.method={select.method!r}: expected one of '
                      f'{schedule.METHODS}')
  if select.initial not in schedule.INITIAL:
    raise ConfigError(f'config.select.initial={select.initial!r}: expected one of '
                      f'{schedule.INITIAL}')
  sizes = [int(s) for s in select.sizes]
  if not sizes or sizes[0] < 1 or any(b <= a for a, b in zip(sizes, sizes[1:])):
    raise ConfigError(f'config.select.sizes={tuple(select.sizes)}: expected increasing sizes >= 1')
  steps = [int(s) for s in select.student_steps[:len(sizes) - 1]]
  if schedule.student_kind(select) and (len(steps) < len(sizes) - 1 or min(steps, default=1) < 1):
    raise ConfigError(f'config.select.student_steps={tuple(select.student_steps)}: method '
                      f'{select.method!r} trains a student before each of the {len(sizes) - 1} '
                      'steps after the first; give that many iteration counts >= 1')
  if tuple(select.feature_pool) and any(int(p) < 1 for p in select.feature_pool):
    raise ConfigError(f'config.select.feature_pool={tuple(select.feature_pool)}: expected '
                      '(h, w) >= 1')
  if schedule.student_kind(select) == 'segmentation':
    base.check_num_classes_of(config, 'target', 'student_model')


def inputs(config: ml_collections.ConfigDict, workdir: str) -> list[base.Input]:
  """The SDE checkpoint of the features and the depth labels the depth student learns from."""
  select, items = config.select, []
  if schedule.uses_features(select):
    items.append(base.Input(
        features.sde_checkpoint(config, workdir), '' if select.sde_checkpoint else 'sde_pretrain',
        f'config.select.method={select.method!r} (initial={select.initial!r}), for the SDE '
        'features', 'run the sde_pretrain stage first or set config.select.sde_checkpoint'))
  if schedule.student_kind(select) == 'depth':
    items.append(base.Input(artifacts.depth_dir(workdir, 'target'), 'depth_labels',
                            f'config.select.method={select.method!r}, for the depth labels its '
                            'student learns from', 'run the depth_labels stage first'))
  return items


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  check_config(config)
  ids = schedule.select(config, workdir)
  logging.info('select_labels: %d images selected (%s): %s', len(ids), config.select.method,
               artifacts.selection_file(workdir))


STAGE = base.Stage('select_labels', run, check_config, inputs)
