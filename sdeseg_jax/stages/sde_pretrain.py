"""The `sde_pretrain` stage: self-supervised monocular depth + pose on frame triplets (SPEC 4-5).

Phases A/B/C of the reference are configs of this one stage (config.sde): which groups are frozen,
the crop, the learning rates and the feature-distance weight. Initialisation from converted ImageNet
or reference-SDE weights, or from an earlier run, by config.sde.init. Output: <workdir>/sde/ckpt,
TensorBoard logs in <workdir>/sde/logs and the final depth evaluation in <workdir>/sde/eval.json.
The `sde_source` stage (run_source) is the same training for the source domain of domain adaptation
(config.source_model, config.source_sde) into <workdir>/sde_source.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import depth_truth
from data_pipelines import files
from data_pipelines import pipeline
from data_pipelines import sampling
from data_pipelines import sources
from data_pipelines import subsets
from sdeseg_jax import ops
from sdeseg_jax import artifacts
from sdeseg_jax import evaluation
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.models import networks
from sdeseg_jax.stages import base
from sdeseg_jax.training import checkpointing
from sdeseg_jax.training import loop
from sdeseg_jax.training import optim
from sdeseg_jax.training import sharding
from sdeseg_jax.training import train_state
from sdeseg_jax.weights import layouts

def initial_variables(variables: dict, init: ml_collections.ConfigDict) -> dict:
  """The network's variables with the configured pretrained weights loaded over them (unchanged,
  and so traceable by jax.eval_shape, when there are none)."""
  # (folder, its arrays -> the tree to load, {source prefix: target prefix})
  entries = [(init.sde, layouts.sde_variables, layouts.WHOLE_SDE),
             (init.encoder, dict, layouts.IMAGENET_ENCODER),
             (init.pose_encoder, dict, layouts.IMAGENET_POSE_ENCODER)]
  for directory, layout, mapping in entries:
    if not directory:
      continue
    source = layout(checkpointing.read_arrays(directory))
    variables, _ = checkpointing.merge_by_mapping(jax.device_get(variables), source, mapping,
                                                  what=directory)
  return variables


def create_state(config: ml_collections.ConfigDict, model: ml_collections.ConfigDict,
                 network, sde: ml_collections.ConfigDict | None = None) -> train_state.TrainState:
  """The initial train state (random init, then the pretrained weights of sde.init; sde defaults
  to config.sde)."""
  sde = config.sde if sde is None else sde
  key = jax.random.key(config.seed)
  variables = jax.jit(lambda k: network.init(k, networks.example_input('sde', 1, 64, 64)))(key)
  variables = initial_variables(variables, sde.init)
  params, batch_stats = variables['params'], variables['batch_stats']
  constants = None
  if sde.feature_distance:
    # The frozen copy of the initial encoder (ImageNet weights when init.encoder names them); its
    # own buffers, since the train step donates the state and a buffer is donated only once.
    constants = jax.tree.map(jnp.copy, {'params': params['encoder'],
                                        'batch_stats': batch_stats['encoder']})
  return train_state.TrainState.create(
      params=params, batch_stats=batch_stats, tx=optim.build(sde.optim, params),
      rng=jax.random.key_data(jax.random.fold_in(key, 1)), constants=constants)


def make_train_step(network, model: ml_collections.ConfigDict, sde: ml_collections.ConfigDict):
  """step(state, batch) -> (state, metrics) for batches of sde_batches."""
  encoder = networks.encoder_from_config(model.encoder, networks.compute_dtype(model))

  def step(state, batch):
    dropout_key, noise_key = jax.random.split(state.key)

    def loss_fn(params):
      outputs, updates = network.apply(
          {'params': params, 'batch_stats': state.batch_stats}, batch['frames_aug'], train=True,
          mutable=['batch_stats'], rngs={'dropout': dropout_key})
      loss, aux = ops.sde_loss(outputs['disp'], batch['frames'], batch['intrinsics'],
                               outputs['pose_prev'], outputs['pose_next'], noise_key,
                               min_depth=sde.min_depth, max_depth=sde.max_depth,
                               smoothness_weight=sde.smoothness)
      metrics = {'loss/sde': loss, 'automask_fraction': aux['automask_fraction']}
      metrics.update({f'photometric/scale{s}': v for s, v in aux['photometric'].items()})
      if sde.feature_distance:
        reference = encoder.apply(state.constants, batch['frames_aug'][:, 1], train=False)[-1]
        distance = ops.feature_distance(outputs['features'][-1],
                                        jax.lax.stop_gradient(reference))
        metrics['loss/feature_distance'] = distance
        loss = loss + sde.feature_distance * distance
      metrics['loss/total'] = loss
      return loss, (metrics, updates['batch_stats'])

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    metrics['grad_norm'] = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
    return state.apply_gradients(grads, batch_stats), metrics

  return step


@functools.partial(jax.jit, static_argnames=('min_depth', 'max_depth'))
def _depth_metrics(pred, gt, *, min_depth: float, max_depth: float) -> dict:
  return ops.depth_metrics(pred, gt, min_depth=min_depth, max_depth=max_depth)


def predict_depth_at(disparity: np.ndarray, shape: tuple[int, int], sde) -> np.ndarray:
  """[H, W, 1] disparity -> [h, w] depth at the ground truth's resolution (bilinear on
  disparity)."""
  resized = jax.image.resize(jnp.asarray(disparity), (*shape, 1), 'bilinear')[..., 0]
  return np.asarray(ops.disp_to_depth(resized, sde.min_depth, sde.max_depth)[1])


def evaluate_depth(predict, variables, reader, truth: depth_truth.DepthTruth, *, resolution,
                   mesh, sde) -> dict:
  """Mean median-scaled depth metrics on the val images with ground truth, of the network and of
  a constant-depth predictor ('constant/...'): the floor any learned depth must beat."""
  index = reader.segmentation('val')
  index = index.subset([i for i, path in enumerate(index.images) if truth.has(path)][
      :sde.eval_images])
  if not len(index):
    return {}
  batches = pipeline.validation_batches(
      index.without_labels(), reader.label_spec, resolution=resolution,
      sharding=pipeline.Sharding(mesh.size, jax.process_index(), jax.process_count()))
  metric = functools.partial(_depth_metrics, min_depth=sde.eval_min_depth,
                             max_depth=sde.eval_max_depth)
  rows = []
  for batch in batches:
    disparity = sharding.local_rows(predict(variables, sharding.global_batch(
        {'image': batch['image']}, mesh)))
    for row in np.flatnonzero(batch['valid']):
      gt = truth(index.images[batch['index'][row]])
      pred = predict_depth_at(disparity[row], gt.shape, sde)
      learned = metric(pred[None], gt[None])
      constant = metric(np.ones_like(gt)[None], gt[None])
      rows.append([float(learned[k][0]) for k in ops.DEPTH_METRIC_NAMES] +
                  [float(constant[k][0]) for k in ops.DEPTH_METRIC_NAMES])
  totals = np.nansum(np.array(rows).reshape(-1, 2 * len(ops.DEPTH_METRIC_NAMES)), axis=0)
  count = np.array([len(rows)], np.float64)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    totals = np.sum(multihost_utils.process_allgather(totals), axis=0)
    count = np.sum(multihost_utils.process_allgather(count), axis=0)
  means = totals / max(float(count[0]), 1.0)
  names = list(ops.DEPTH_METRIC_NAMES) + [f'constant/{k}' for k in ops.DEPTH_METRIC_NAMES]
  return dict(zip(names, (float(v) for v in means)), images=int(count[0]))


def disparity_images(predict, variables, images: jax.Array) -> dict:
  """Image summaries: images [B, H, W, 3] and their disparities (per-image min-max normalised)."""
  disparity = predict(variables, {'image': images})
  low = jnp.min(disparity, axis=(1, 2, 3), keepdims=True)
  high = jnp.max(disparity, axis=(1, 2, 3), keepdims=True)
  normalised = (disparity - low) / jnp.maximum(high - low, 1e-6)
  return {'input': images, 'disparity': jnp.repeat(normalised, 3, axis=-1)}


def training_triplets(reader, sde: ml_collections.ConfigDict, seed: int):
  """The training triplets the SDE learns from: all of them, or with sde.frame_fraction < 1 a
  random subset of that fraction (at least one), drawn from `seed` alone, so a resumed run (and
  every process) trains on the same frames (the paper's Table 9 rows 10% / 1% / 0.1%)."""
  index = reader.sequences('train')
  if sde.frame_fraction == 1:
    return index  # the pipeline samples its triplets
  index = index.subset(np.flatnonzero(index.is_triplet))
  rows = subsets.fraction_rows(len(index), float(sde.frame_fraction), seed=seed)
  logging.info('SDE: %d of %d training triplets (frame_fraction %g, seed %d)', len(rows),
               len(index), sde.frame_fraction, seed)
  return index.subset(rows)


def train_sde(config: ml_collections.ConfigDict, workdir: str, *, role: str,
              model: ml_collections.ConfigDict, sde: ml_collections.ConfigDict,
              directory: str) -> dict:
  """Trains an SDE (settings `sde`) on the sequences of dataset `role`; returns the final depth
  evaluation."""
  entry = config.data[role]
  resolution = tuple(entry.resolution)
  crop = tuple(sde.crop) if tuple(sde.crop) != (0, 0) else resolution
  mesh = sharding.make_mesh()
  sharding.check_global_batch(sde.batch_size, mesh)
  reader = sources.open_dataset(entry, workdir, role)
  network = networks.build('sde', model)
  checkpointer = checkpointing.Checkpointer(
      os.path.join(directory, 'ckpt'), max_to_keep=sde.keep_checkpoints,
      save_interval_steps=sde.checkpoint_every)
  state = sharding.replicate(create_state(config, model, network, sde), mesh)
  state, resumed = checkpointer.restore_or_init(state)
  start = int(jax.device_get(state.step))
  writer = loop.create_writer(os.path.join(directory, 'logs'))
  predict = sharding.jit_eval_step(evaluation.predict_disparity(network), mesh)
  truth = depth_truth.DepthTruth(reader.root, sources.roots(entry, workdir, role)[0])
  variables = lambda s: {'params': s.params, 'batch_stats': s.batch_stats}

  def evaluate(state, step):
    metrics = evaluate_depth(predict, variables(state), reader, truth, resolution=resolution,
                             mesh=mesh, sde=sde)
    if metrics:
      logging.info('SDE depth evaluation at step %d: %s', step, json.dumps(metrics))
    return metrics

  if not truth.available:
    logging.info('No ground-truth depth for %s: depth evaluation skipped', reader.root)
  elif not resumed:
    writer.write_scalars(0, {f'eval/{k}': v for k, v in evaluate(state, 0).items()})
  batches = pipeline.sde_batches(
      training_triplets(reader, sde, config.seed), resolution=resolution, crop=crop,
      seed=config.seed,
      sharding=pipeline.Sharding(sde.batch_size, jax.process_index(), jax.process_count()),
      flip_prob=config.data.flip_prob, color=sampling.ColorJitter(**config.data.color_jitter),
      start_step=start)
  images_fn = jax.jit(lambda s, frames: disparity_images(predict, variables(s), frames[:, 1]))
  hooks = loop.LoopHooks(
      evaluate=evaluate if truth.available else None, evaluate_every=sde.eval_every,
      images=lambda s, batch, step: images_fn(s, batch['frames']), images_every=sde.images_every)
  step = sharding.jit_train_step(make_train_step(network, model, sde), mesh)
  try:
    state = loop.train(state, step, batches, mesh=mesh, num_steps=sde.num_steps,
                       checkpointer=checkpointer, writer=writer, log_every=sde.log_every,
                       hooks=hooks, extra_scalars=lambda s: optim.learning_rates(sde.optim, s))
  finally:
    checkpointer.close()
  metrics = {}
  if truth.available:  # the loop evaluated after its last step unless there was nothing to train
    metrics = hooks.last_evaluation or evaluate(state, sde.num_steps)
  if jax.process_index() == 0:
    files.write_json(os.path.join(directory, 'eval.json'), metrics, indent=2)
  writer.close()
  return metrics


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The target-domain SDE (config.model, config.sde) -> <workdir>/sde."""
  check_config(config)
  train_sde(config, workdir, role='target', model=config.model, sde=config.sde,
            directory=artifacts.sde_dir(workdir, 'target'))


def _init_inputs(sde: ml_collections.ConfigDict, key: str) -> list[base.Input]:
  """The pretrained weights config.<key>.init names (the user provides them)."""
  return [base.Input(path, '', f'config.{key}.init.{name}',
                     "convert one with python -m sdeseg_jax.weights.convert, or set it to ''")
          for name, path in sde.init.items() if path]


def inputs(config: ml_collections.ConfigDict, workdir: str) -> list[base.Input]:
  del workdir  # the SDE reads only the data and the configured weights
  return _init_inputs(config.sde, 'sde')


def source_inputs(config: ml_collections.ConfigDict, workdir: str) -> list[base.Input]:
  del workdir
  return _init_inputs(config.source_sde, 'source_sde')


def check_sde(sde: ml_collections.ConfigDict, key: str) -> None:
  """Fails on SDE training values that cannot work, naming config.<key>.<name>."""
  fraction = sde.frame_fraction
  if not 0 < fraction <= 1:
    raise ConfigError(f'config.{key}.frame_fraction={fraction!r}: set the fraction of the '
                      'training triplets the SDE trains on, 0 < fraction <= 1 (1.0: all)')


def check_config(config: ml_collections.ConfigDict) -> None:
  """The target SDE's values (stages.run_stages calls it before running any stage)."""
  check_sde(config.sde, 'sde')


def check_source_config(config: ml_collections.ConfigDict) -> None:
  """Fails when the sde_source stage has no source dataset to train on or bad SDE values (before
  any stage runs)."""
  check_sde(config.source_sde, 'source_sde')
  if not config.data.source.name:
    raise ConfigError('the sde_source stage trains on config.data.source, which names no dataset '
                      '(set config.data.source.name, e.g. gta5)')


def run_source(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The source-domain SDE of domain adaptation (config.source_model, config.source_sde) on the
  source video set -> <workdir>/sde_source."""
  check_source_config(config)
  train_sde(config, workdir, role='source', model=config.source_model, sde=config.source_sde,
            directory=artifacts.sde_dir(workdir, 'source'))


STAGE = base.Stage('sde_pretrain', run, check_config, inputs)
SOURCE_STAGE = base.Stage('sde_source', run_source, check_source_config, source_inputs)
