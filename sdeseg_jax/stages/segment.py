"""The `segment` stage: semi-supervised semantic segmentation with self-supervised depth (SPEC 6).

Per step: a labeled batch (cross-entropy; + the SDE loss under multi-task) and, unless
config.segment.mix is 'none', a mixing batch: the mean teacher labels it, DepthMix / ClassMix (or no
mixing for plain pseudo-labels) mixes image b with image b+1, the mixed images are strongly augmented,
and the student learns the mixed pseudo-labels weighted by their quality. Under multi-task (PAD-Net)
the mixing batch also gets the SDE loss, and DepthMix uses the student's own detached disparity;
otherwise DepthMix reads the depth labels of the depth_labels stage.

Output: <workdir>/segment/ckpt, logs, best/ (the best evaluated weights) and best.json.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import pipeline
from data_pipelines import sources
from data_pipelines import subsets
from data_pipelines.datasets import DataError
from sdeseg_jax import ops
from sdeseg_jax.models import networks
from sdeseg_jax.ops import augment
from sdeseg_jax.ops import mixing
from sdeseg_jax.ops import segmentation
from sdeseg_jax.stages import depth_labels
from sdeseg_jax.stages import sde_pretrain
from sdeseg_jax.training import checkpointing
from sdeseg_jax.training import loop
from sdeseg_jax.training import optim
from sdeseg_jax.training import sharding
from sdeseg_jax.training import train_state

MIXES = ('none', 'pseudo', 'classmix', 'depthmix')


def _pairs(*pairs):
  return [(f'{c}/{s}', f'{c}/{t}') for c in ('params', 'batch_stats') for s, t in pairs]


# SDE checkpoint -> segmentation network (the depth decoder initialises every decoder).
INIT_FROM_SDE = {
    'transfer': _pairs(('encoder', 'encoder'), ('depth_decoder', 'seg_decoder')),
    'mtl': _pairs(('encoder', 'encoder'), ('depth_decoder', 'pad/depth_decoder'),
                  ('depth_decoder', 'pad/seg_decoder'), ('pose', 'pose')),
}


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Fails before training on combinations that cannot work, saying what to change."""
  seg = config.segment
  if seg.network not in ('transfer', 'mtl'):
    raise ValueError(f'config.segment.network={seg.network!r}: expected transfer or mtl')
  if seg.mix not in MIXES:
    raise ValueError(f'config.segment.mix={seg.mix!r}: expected one of {MIXES}')
  if seg.init not in ('sde', 'imagenet', 'none'):
    raise ValueError(f'config.segment.init={seg.init!r}: expected sde, imagenet or none')
  if seg.init == 'imagenet' and not seg.imagenet_encoder:
    raise ValueError('config.segment.init=imagenet needs config.segment.imagenet_encoder (a '
                     'checkpoint from python -m sdeseg_jax.weights.convert --from torchvision)')
  if seg.mix == 'depthmix' and seg.network == 'transfer':
    labels = depth_labels.depth_dir(workdir, 'target')
    if not os.path.isdir(labels):
      raise ValueError(f'DepthMix without multi-task reads depth labels from {labels}, which does '
                       'not exist: run the depth_labels stage first (or set segment.network=mtl)')


def sde_checkpoint(config, workdir: str) -> str:
  return config.segment.sde_checkpoint or os.path.join(workdir, 'sde', 'ckpt')


def create_state(config, workdir: str, network) -> train_state.TrainState:
  """Random init, then the SDE (or ImageNet) weights; a mean teacher when mixing."""
  seg = config.segment
  key = jax.random.key(config.seed)
  example = networks.example_input(seg.network, 1, 64, 64)
  variables = jax.device_get(jax.jit(lambda k: network.init(k, example))(key))
  if seg.init == 'sde':
    source = checkpointing.read_arrays(sde_checkpoint(config, workdir))
    variables, _ = checkpointing.merge_by_mapping(variables, source, INIT_FROM_SDE[seg.network],
                                                  what=sde_checkpoint(config, workdir))
  elif seg.init == 'imagenet':
    variables, _ = checkpointing.merge_by_mapping(
        variables, checkpointing.read_arrays(seg.imagenet_encoder),
        sde_pretrain.IMAGENET_ENCODER, what=seg.imagenet_encoder)
  params = variables['params']
  return train_state.TrainState.create(
      params=params, batch_stats=variables['batch_stats'], tx=optim.build(seg.optim, params),
      rng=jax.random.key_data(jax.random.fold_in(key, 2)), ema=seg.mix != 'none')


def forward(network, kind: str, params, batch_stats, x, *, train: bool, key, frames: bool):
  """(outputs, batch_stats): frames [B, 3, H, W, 3] run the whole multi-task network (poses
  included); images [B, H, W, 3] run segmentation only."""
  variables = {'params': params, 'batch_stats': batch_stats}
  method = None if frames or kind == 'transfer' else 'segment'
  if not train:
    return network.apply(variables, x, train=False, method=method), batch_stats
  out, updates = network.apply(variables, x, train=True, method=method, mutable=['batch_stats'],
                               rngs={'dropout': key})
  return out, updates['batch_stats']


def segmentation_loss(out: dict, labels: jax.Array) -> jax.Array:
  """CE over valid pixels; with PAD's side output, the mean of both (the side logits are upsampled
  bilinearly with align_corners=True, as the reference's loss does)."""
  loss = segmentation.cross_entropy(out['logits'], labels)
  if 'side_logits' in out:
    side = segmentation.resize_logits(out['side_logits'], *labels.shape[1:3], align_corners=True)
    loss = (loss + segmentation.cross_entropy(side, labels)) / 2
  return loss


def make_train_step(network, config: ml_collections.ConfigDict, num_classes: int):
  """step(state, {'labeled': batch, 'mix': batch}) -> (state, metrics)."""
  seg, sde = config.segment, config.sde
  multitask = seg.network == 'mtl'

  def sde_loss(out, batch, key):
    return ops.sde_loss(out['disp'], batch['frames'], batch['intrinsics'], out['pose_prev'],
                        out['pose_next'], key, min_depth=sde.min_depth, max_depth=sde.max_depth,
                        smoothness_weight=sde.smoothness)[0]

  def run(params, stats, x, key, frames=False):
    return forward(network, seg.network, params, stats, x, train=True, key=key, frames=frames)

  def mixed_batch(params, stats, mix_batch, keys, metrics):
    """(loss, stats) of the mixing batch: teacher, mask, mixing, augmentation, student."""
    teacher_out, _ = forward(network, seg.network, jax.lax.stop_gradient(params['teacher']),
                             stats, mix_batch['image'], train=seg.teacher_train_mode,
                             key=keys[0], frames=False)
    probs = jax.nn.softmax(jax.lax.stop_gradient(teacher_out['logits']), axis=-1)
    truth = mixing.one_hot_targets(mix_batch['label'], num_classes)
    probs = jnp.where(mix_batch['labeled'][:, None, None, None], truth, probs)
    loss = 0.0
    disparity = mix_batch.get('depth')
    if multitask:
      out, stats = run(params['student'], stats, mix_batch['frames'], keys[1], frames=True)
      sde_term = sde_loss(out, mix_batch, keys[2])
      metrics['loss/sde_mix'] = sde_term
      loss = seg.sde_weight * sde_term
      disparity = jax.lax.stop_gradient(out['disp'][0])
    if seg.mix == 'depthmix':
      depth = mixing.normalize_disparity(disparity)
      mask = mixing.depthmix_mask(depth, mixing.pair_with_next(depth), seg.depthmix_margin)
    elif seg.mix == 'classmix':
      mask = mixing.classmix_mask(jnp.argmax(probs, axis=-1), keys[3])
    else:  # plain pseudo-labels: nothing is mixed
      mask = jnp.ones(probs.shape[:3] + (1,), jnp.float32)
    images = mixing.mix(mask, mix_batch['image'], mixing.pair_with_next(mix_batch['image']))
    probs = mixing.mix(mask, probs, mixing.pair_with_next(probs))
    pseudo, max_prob = mixing.pseudo_labels(probs)
    quality = mixing.pseudo_label_quality(max_prob, seg.quality_threshold)
    images = augment.strong_augment(keys[4], images)
    out, stats = run(params['student'], stats, images, keys[5])
    unlabeled = segmentation.cross_entropy(out['logits'], pseudo, reduction=seg.unlabeled_loss)
    metrics.update({'loss/unlabeled': unlabeled, 'pseudo_label_quality': quality,
                    'mask_fraction': jnp.mean(mask)})
    return loss + quality * unlabeled, stats

  def step(state, batch):
    keys = jax.random.split(state.key, 9)

    def loss_fn(params):
      metrics = {}
      labeled = batch['labeled']
      out, stats = run(params, state.batch_stats,
                       labeled['frames'] if multitask else labeled['image'], keys[0],
                       frames=multitask)
      supervised = segmentation_loss(out, labeled['label'])
      metrics['loss/supervised'] = supervised
      loss = supervised
      if multitask:
        sde_term = sde_loss(out, labeled, keys[1])
        metrics['loss/sde_labeled'] = sde_term
        loss = loss + seg.sde_weight * sde_term
      if seg.mix != 'none':
        unlabeled, stats = mixed_batch({'student': params, 'teacher': state.ema_params}, stats,
                                       batch['mix'], keys[2:8], metrics)
        loss = loss + unlabeled
      metrics['loss/total'] = loss
      return loss, (metrics, stats)

    grads, (metrics, stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads, stats), metrics

  return step


def make_predict_logits(network, kind: str):
  """(variables, batch) -> [B, H, W, C] logits of batch['image'] (the student, inference mode)."""
  def predict(variables, batch):
    return forward(network, kind, variables['params'], variables['batch_stats'], batch['image'],
                   train=False, key=None, frames=False)[0]['logits']
  return predict


def confusion(predict, variables, index, reader, *, resolution, mesh, batch_size: int,
              strict_labels: bool = True) -> np.ndarray:
  """[C, C] confusion matrix (rows: ground truth) of whole-image predictions over `index`."""
  num_classes = reader.label_spec.num_classes
  count = jax.jit(lambda logits, labels, valid: segmentation.confusion_matrix(
      jnp.argmax(logits, -1), labels, num_classes, valid))
  total = np.zeros((num_classes, num_classes), np.int64)
  batches = pipeline.validation_batches(
      index, reader.label_spec, resolution=resolution, strict_labels=strict_labels,
      sharding=pipeline.Sharding(batch_size, jax.process_index(), jax.process_count()))
  for batch in batches:
    placed = sharding.global_batch({k: batch[k] for k in ('image', 'label', 'valid')}, mesh)
    total += np.asarray(jax.device_get(count(predict(variables, placed), placed['label'],
                                             placed['valid'])))
  return total


def miou_report(matrix: np.ndarray, class_names) -> dict:
  iou, miou = segmentation.iou_from_confusion(jnp.asarray(matrix))
  return dict(miou=float(miou), iou={n: float(v) for n, v in zip(class_names, np.asarray(iou))})


def training_indices(config, workdir: str, reader):
  """(labeled index, mixing index) of the training split for the configured labels and mix."""
  seg = config.segment
  train = reader.segmentation('train')
  if seg.network == 'mtl':
    train = subsets.with_neighbours(train, reader.sequences('train'))
  rows = subsets.labeled_rows(train, seg.labels, seed=config.seed, selection=seg.selection)
  labeled = train.subset(rows)
  everything = subsets.semi_supervised(train, rows)
  # ClassMix draws from the unlabeled images only; DepthMix and pseudo-labels from all of them.
  mix = everything.subset(np.flatnonzero(~everything.is_labeled)) if seg.mix == 'classmix' else (
      everything)
  if seg.mix != 'none' and not len(mix):
    raise DataError(f'config.segment.mix={seg.mix!r} needs unlabeled images, but all '
                    f'{len(train)} training images are labeled (config.segment.labels)')
  logging.info('segment: %d labeled of %d training images; mixing batch from %d', len(labeled),
               len(train), len(mix))
  return labeled, mix


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  seg, entry = config.segment, config.data.target
  check_config(config, workdir)
  directory = os.path.join(workdir, 'segment')
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'config.json'), 'w') as f:  # for predict and evaluation
    f.write(config.to_json_best_effort(indent=2))
  resolution, crop = tuple(entry.resolution), tuple(config.data.crop)
  mesh = sharding.make_mesh()
  for size in (seg.batch_size, seg.mix_batch_size, seg.eval_batch_size):
    sharding.check_global_batch(size, mesh)
  reader = sources.open_dataset(entry, workdir, 'target')
  network = networks.build(seg.network, config.model)
  labeled, mix = training_indices(config, workdir, reader)
  checkpointer = checkpointing.Checkpointer(os.path.join(directory, 'ckpt'),
                                            max_to_keep=seg.keep_checkpoints,
                                            save_interval_steps=seg.checkpoint_every)
  state = sharding.replicate(create_state(config, workdir, network), mesh)
  state, _ = checkpointer.restore_or_init(state)
  start = int(jax.device_get(state.step))
  process = (jax.process_index(), jax.process_count())
  common = dict(resolution=resolution, crop=crop, seed=config.seed, flip_prob=config.data.flip_prob,
                strict_labels=config.data.strict_labels, with_frames=seg.network == 'mtl',
                start_step=start)
  streams = {'labeled': pipeline.segmentation_batches(
      labeled, reader.label_spec, sharding=pipeline.Sharding(seg.batch_size, *process),
      stream='labeled', **common)}
  if seg.mix != 'none':
    depth = (depth_labels.depth_dir(workdir, 'target')
             if seg.mix == 'depthmix' and seg.network == 'transfer' else '')
    streams['mix'] = pipeline.segmentation_batches(
        mix, reader.label_spec, sharding=pipeline.Sharding(seg.mix_batch_size, *process),
        stream='mix', depth_dir=depth, **common)
  batches = (dict(zip(streams, values)) for values in zip(*streams.values()))

  predict = sharding.jit_eval_step(make_predict_logits(network, seg.network), mesh)
  val = reader.segmentation('val')
  best = {'miou': -1.0}
  best_path = os.path.join(directory, 'best.json')
  if os.path.exists(best_path):
    with open(best_path) as f:
      best = json.load(f)

  def evaluate(state, step):
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    report = miou_report(confusion(predict, variables, val, reader, resolution=resolution,
                                   mesh=mesh, batch_size=seg.eval_batch_size,
                                   strict_labels=config.data.strict_labels),
                         reader.label_spec.class_names)
    logging.info('segment: val mIoU %.4f at step %d', report['miou'], step)
    if report['miou'] > best['miou']:
      checkpointing.write_tree(os.path.join(directory, 'best'), jax.device_get(variables),
                               overwrite=True)
      best.update(report, step=step)
      if jax.process_index() == 0:
        with open(best_path, 'w') as f:
          json.dump(best, f, indent=2)
    return {'miou': report['miou'], **{f'iou/{k}': v for k, v in report['iou'].items()}}

  writer = loop.create_writer(os.path.join(directory, 'logs'))
  hooks = loop.LoopHooks(evaluate=evaluate, evaluate_every=seg.eval_every)
  step = sharding.jit_train_step(make_train_step(network, config, reader.label_spec.num_classes),
                                 mesh)
  try:
    loop.train(state, step, batches, mesh=mesh, num_steps=seg.num_steps,
               checkpointer=checkpointer, writer=writer, log_every=seg.log_every, hooks=hooks,
               extra_scalars=lambda s: optim.learning_rates(seg.optim, s))
  finally:
    checkpointer.close()
    writer.close()
