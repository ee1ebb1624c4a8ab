"""The students trained on the current selection before each step after the first: a depth
student (E, its error against the SDE's depth labels: methods us and ds_us) or a segmentation
student (mean pixel entropy: the entropy baseline)."""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import pipeline
from data_pipelines.datasets import common
from sdeseg_jax import artifacts
from sdeseg_jax import evaluation
from sdeseg_jax import ops
from sdeseg_jax.models import networks
from sdeseg_jax.ops import segmentation
from sdeseg_jax.stages import base
from sdeseg_jax.training import checkpointing
from sdeseg_jax.training import loop
from sdeseg_jax.training import optim
from sdeseg_jax.training import sharding
from sdeseg_jax.training import train_state
from sdeseg_jax.weights import layouts


def teacher_dir(workdir: str, index: common.ExampleIndex) -> str:
  """The folder of the teacher disparities: the depth labels of every image of `index`."""
  folder = artifacts.depth_dir(workdir, 'target')
  missing = [i for i in index.ids if not os.path.exists(os.path.join(folder, i + '.npy'))]
  if missing:
    raise common.DataError(f'{folder}: no depth labels of {len(missing)} training images (e.g. '
                           f'{missing[0]}.npy), which the depth student learns from: run the '
                           'depth_labels stage (delete its done marker to rerun it)')
  return folder


def disparity_ranges(folder: str, ids, resolution: tuple[int, int]) -> np.ndarray:
  """[N, 2] (min, max) of each whole depth label (checked as the input pipeline checks it, at the
  prepared resolution (W, H)): the teacher's per-image min-max normalisation, applied to crops of
  it during student training."""
  ranges = np.zeros((len(ids), 2), np.float32)
  for row, example in enumerate(ids):
    disparity = pipeline.read_depth_label(os.path.join(folder, example + '.npy'), resolution)
    ranges[row] = disparity.min(), disparity.max()
  return ranges


def make_depth_student_step(network):
  """step(state, batch) -> (state, metrics): berHu of the level-0 disparity against the teacher's
  crop, normalised by the whole image's range (batch: image, depth, disp_low, disp_high)."""
  def step(state, batch):
    def loss_fn(params):
      out, updates = network.apply({'params': params, 'batch_stats': state.batch_stats},
                                   batch['image'], train=True, mutable=['batch_stats'],
                                   rngs={'dropout': state.key})
      teacher = ops.normalize_by_range(batch['depth'], batch['disp_low'], batch['disp_high'])
      loss = ops.depth_student_loss(out['disp'][0], teacher)
      return loss, ({'loss/berhu': loss}, updates['batch_stats'])
    grads, (metrics, stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads, stats), metrics
  return step


def make_segmentation_student_step(network):
  """step(state, batch) -> (state, metrics): cross-entropy on the labeled crops."""
  def step(state, batch):
    def loss_fn(params):
      out, updates = network.apply({'params': params, 'batch_stats': state.batch_stats},
                                   batch['image'], train=True, mutable=['batch_stats'],
                                   rngs={'dropout': state.key})
      loss = segmentation.cross_entropy(out['logits'], batch['label'])
      return loss, ({'loss/cross_entropy': loss}, updates['batch_stats'])
    grads, (metrics, stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads, stats), metrics
  return step


def student_network(config, kind: str):
  """The depth student (config.student_model), or for the entropy baseline the same encoder and
  decoder with the transfer network's segmentation head."""
  return networks.build('depth_student' if kind == 'depth' else 'transfer', config.student_model)


def create_student_state(student: ml_collections.ConfigDict, optim_config, network,
                         key) -> train_state.TrainState:
  """A fresh student: random init, then the ImageNet encoder if student.init_encoder names one."""
  example = networks.example_input('depth_student', 1, 64, 64)
  variables = jax.jit(lambda k: network.init(k, example))(key)
  if student.init_encoder:
    variables, _ = checkpointing.merge_by_mapping(
        jax.device_get(variables), checkpointing.read_arrays(student.init_encoder),
        layouts.IMAGENET_ENCODER,
        what=student.init_encoder)
  params = variables['params']
  return train_state.TrainState.create(
      params=params, batch_stats=variables['batch_stats'], tx=optim.build(optim_config, params),
      rng=jax.random.key_data(jax.random.fold_in(key, 1)))


def train_student(config, kind: str, index: common.ExampleIndex, reader, *, step: int,
                  directory: str, num_steps: int, mesh, teacher: str = '') -> dict:
  """Trains a student from scratch on `index` for selection step `step` (resuming from
  `directory`/ckpt); returns its {'params', 'batch_stats'}. teacher: the depth-label folder."""
  student = config.select.student
  if kind != 'depth':
    base.check_num_classes(config.student_model.num_classes, reader.label_spec,
                           model_key='student_model', dataset=f'config.data.target ({reader.root})')
  network = student_network(config, kind)
  optim_config = ml_collections.ConfigDict(student.optim.to_dict())
  optim_config.schedule.total_steps = num_steps      # poly decay to 0 over this student's run
  # From scratch at every step, but a different initialisation and data order per step.
  key = jax.random.fold_in(jax.random.key(config.seed), step)
  state = create_student_state(student, optim_config, network, key)
  sharding.check_global_batch(student.batch_size, mesh)
  checkpointer = checkpointing.Checkpointer(os.path.join(directory, 'ckpt'), max_to_keep=1,
                                            save_interval_steps=student.checkpoint_every)
  state, _ = checkpointer.restore_or_init(sharding.replicate(state, mesh))
  start = int(jax.device_get(state.step))
  resolution = tuple(config.data.target.resolution)
  ranges = disparity_ranges(teacher, index.ids, resolution) if kind == 'depth' else None
  batches = pipeline.segmentation_batches(
      index.without_labels() if kind == 'depth' else index, reader.label_spec,
      resolution=resolution, crop=tuple(config.data.crop),
      sharding=pipeline.Sharding(student.batch_size, jax.process_index(), jax.process_count()),
      seed=config.seed, stream=f'select_student_{step}', flip_prob=config.data.flip_prob,
      depth_dir=teacher if kind == 'depth' else '', strict_labels=config.data.strict_labels,
      start_step=start)
  if kind == 'depth':
    batches = (dict(b, disp_low=ranges[b['index'], 0], disp_high=ranges[b['index'], 1])
               for b in batches)
  make_step = make_depth_student_step if kind == 'depth' else make_segmentation_student_step
  writer = loop.create_writer(os.path.join(directory, 'logs'))
  try:
    state = loop.train(state, sharding.jit_train_step(make_step(network), mesh), batches,
                       mesh=mesh, num_steps=num_steps, checkpointer=checkpointer, writer=writer,
                       log_every=student.log_every,
                       extra_scalars=lambda s: optim.learning_rates(optim_config, s))
  finally:
    checkpointer.close()
    writer.close()
  return {'params': state.params, 'batch_stats': state.batch_stats}


def depth_errors(config, network, variables, index, reader, teacher: str, mesh) -> np.ndarray:
  """[N] E of every image of `index` under the depth student (whole images)."""
  def error(variables, batch):
    disparity = network.apply(variables, batch['image'])['disp'][0]
    return ops.selection_error(disparity, ops.normalize_disparity(batch['depth']))
  return evaluation.per_image(error, variables, index, reader,
                   resolution=tuple(config.data.target.resolution), mesh=mesh,
                   batch_size=config.select.eval_batch_size, depth_dir=teacher)


def mean_entropies(config, network, variables, index, reader, mesh) -> np.ndarray:
  """[N] mean normalised pixel entropy of every image of `index` under the segmentation student."""
  def entropy(variables, batch):
    logits = network.apply(variables, batch['image'])['logits']
    return jnp.mean(ops.normalized_entropy(logits), axis=(1, 2))
  return evaluation.per_image(entropy, variables, index, reader,
                   resolution=tuple(config.data.target.resolution), mesh=mesh,
                   batch_size=config.select.eval_batch_size)


def student_scores(config, workdir: str, step: int, kind: str, index: common.ExampleIndex,
                   selected: np.ndarray, reader, *, teacher: str | None, mesh
                   ) -> tuple[np.ndarray, dict]:
  """Trains step's student on the current selection and scores every other image with it.

  Returns ([N] scores: E or the mean entropy, 0 on selected rows (never chosen again); the
  student's record for the report).
  """
  select = config.select
  num_steps = int(select.student_steps[step - 1])
  train_index = index.subset(np.sort(selected))
  logging.info('select_labels: step %d: %s student on %d images for %d iterations', step, kind,
               len(train_index), num_steps)
  directory = artifacts.select_student_dir(workdir, step)
  variables = train_student(config, kind, train_index, reader, step=step, directory=directory,
                            num_steps=num_steps, mesh=mesh, teacher=teacher or '')
  network = student_network(config, kind)
  unselected = np.setdiff1d(np.arange(len(index)), selected)
  candidates = index.subset(unselected)
  if kind == 'depth':
    values = depth_errors(config, network, variables, candidates, reader, teacher, mesh)
  else:
    values = mean_entropies(config, network, variables, candidates, reader, mesh)
  scores = np.zeros(len(index), np.float32)
  scores[unselected] = values
  record = dict(kind=kind, images=int(len(train_index)), iterations=num_steps,
                checkpoint=os.path.join(directory, 'ckpt') if select.keep_students else None)
  return scores, record
