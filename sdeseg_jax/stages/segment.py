"""The `segment` stage: semi-supervised semantic segmentation with self-supervised depth (SPEC 6).

Per step: a labeled batch (cross-entropy; + the SDE loss under multi-task) and, unless
config.segment.mix is 'none', a mixing batch: the mean teacher labels it, DepthMix / ClassMix (or no
mixing for plain pseudo-labels) mixes image b with image b+1, the mixed images are strongly
augmented, and the student learns the mixed pseudo-labels weighted by their quality. Under
multi-task (PAD-Net) with config.segment.depthmix_online_depth the mixing batch also gets the SDE
loss, and DepthMix uses the student's own detached disparity; otherwise DepthMix reads the depth
labels of the depth_labels stage.

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

from data_pipelines import files
from data_pipelines import pipeline
from data_pipelines import sources
from data_pipelines import subsets
from data_pipelines.datasets import DataError
from sdeseg_jax import artifacts
from sdeseg_jax import evaluation
from sdeseg_jax import ops
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.models import networks
from sdeseg_jax.ops import augment
from sdeseg_jax.ops import mixing
from sdeseg_jax.ops import segmentation
from sdeseg_jax.stages import base
from sdeseg_jax.training import checkpointing
from sdeseg_jax.training import loop
from sdeseg_jax.training import optim
from sdeseg_jax.training import sharding
from sdeseg_jax.training import train_state
from sdeseg_jax.weights import layouts

MIXES = ('none', 'pseudo', 'classmix', 'depthmix')


def uses_teacher(seg: ml_collections.ConfigDict) -> bool:
  """Whether a mean teacher labels the mixing batch (Target- or Cross-Domain mixing)."""
  return seg.mix != 'none' or (seg.source.enabled and seg.source.mix != 'none')


def online_depth(seg: ml_collections.ConfigDict) -> bool:
  """Whether the student's own forward on the unmixed mixing batch gives the DepthMix disparity
  and the mixing batch's SDE loss (multi-task with depthmix_online_depth)."""
  return seg.network == 'mtl' and seg.depthmix_online_depth


def needs_depth_labels(seg: ml_collections.ConfigDict) -> dict[str, bool]:
  """{role: whether the run reads that role's depth labels}: DepthMix without the student's online
  depth reads the target's; Cross-Domain DepthMix and Matching Geometry Sampling read both
  domains'."""
  adapt = seg.source.enabled and (seg.source.mix == 'depthmix' or seg.source.matching_geometry)
  return {'target': adapt or (seg.mix == 'depthmix' and not online_depth(seg)),
          'source': adapt}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails on values and combinations that cannot work, saying what to change (stages.run_stages
  calls it before running any stage)."""
  seg = config.segment
  if seg.network not in ('transfer', 'mtl'):
    raise ConfigError(f'config.segment.network={seg.network!r}: expected transfer or mtl')
  if seg.mix not in MIXES:
    raise ConfigError(f'config.segment.mix={seg.mix!r}: expected one of {MIXES}')
  if seg.init not in ('sde', 'imagenet', 'none'):
    raise ConfigError(f'config.segment.init={seg.init!r}: expected sde, imagenet or none')
  if seg.init == 'imagenet' and not seg.imagenet_encoder:
    raise ConfigError('config.segment.init=imagenet needs config.segment.imagenet_encoder (a '
                      'checkpoint from python -m sdeseg_jax.weights.convert --from torchvision)')
  cross = seg.source
  if cross.enabled:
    if not config.data.source.name:
      raise ConfigError('config.segment.source.enabled needs a source dataset: set '
                        'config.data.source.name (e.g. gta5) and its root')
    if cross.mix not in ('none', 'classmix', 'depthmix'):
      raise ConfigError(f'config.segment.source.mix={cross.mix!r}: expected none, classmix (DACS) '
                        'or depthmix (Cross-Domain DepthMix)')
    if cross.disparity not in ('reference', 'normalized'):
      raise ConfigError(f'config.segment.source.disparity={cross.disparity!r}: expected reference '
                        '(raw source vs normalised target, as the reference) or normalized')
    if cross.matching_geometry and cross.batch_size != seg.mix_batch_size:
      raise ConfigError(
          f'Matching Geometry Sampling pairs each of the {seg.mix_batch_size} target crops of the '
          f'mixing batch with one source crop: set config.segment.source.batch_size '
          f'({cross.batch_size}) equal to config.segment.mix_batch_size')
    if cross.matching_geometry and cross.candidates < 1:
      raise ConfigError(f'config.segment.source.candidates={cross.candidates}: need at least 1')
  base.check_num_classes_of(config, 'target')
  if cross.enabled:
    base.check_num_classes_of(config, 'source')


def inputs(config: ml_collections.ConfigDict, workdir: str) -> list[base.Input]:
  """The depth labels the mixing reads, the SDE or ImageNet weights of the initialisation and the
  selection file of the labeled subset."""
  seg, cross = config.segment, config.segment.source
  items = []
  for role, needed in needs_depth_labels(seg).items():
    if not needed:
      continue
    if role == 'target' and not cross.enabled:
      reader = 'DepthMix without the online depth of multi-task'
      todo = ('run the depth_labels stage first (or set segment.network=mtl, '
              'segment.depthmix_online_depth=True)')
    else:
      reader = 'Cross-Domain DepthMix / Matching Geometry Sampling'
      todo = 'run the depth_labels stage first' + (
          " with config.depth_labels.roles including 'source' (after the sde_source stage)"
          if role == 'source' else '')
    maker = 'depth_labels' if role in config.depth_labels.roles else ''
    items.append(base.Input(artifacts.depth_dir(workdir, role), maker,
                            f'{reader} ({role} depth labels)', todo))
  if seg.init == 'sde':
    items.append(base.Input(
        sde_checkpoint(config, workdir), '' if seg.sde_checkpoint else 'sde_pretrain',
        'config.segment.init=sde', 'run the sde_pretrain stage first or set '
        'config.segment.sde_checkpoint to an SDE checkpoint'))
  elif seg.init == 'imagenet':
    items.append(base.Input(seg.imagenet_encoder, '', 'config.segment.imagenet_encoder',
                            'convert one with python -m sdeseg_jax.weights.convert'))
  if seg.selection:
    stage_output = seg.selection == artifacts.SELECTION_FROM_STAGE
    items.append(base.Input(
        artifacts.selection_file(workdir) if stage_output else seg.selection,
        'select_labels' if stage_output else '', f'config.segment.selection={seg.selection!r}',
        'run the select_labels stage first' if stage_output else 'name an existing id list'))
  return items


def sde_checkpoint(config, workdir: str) -> str:
  return config.segment.sde_checkpoint or artifacts.sde_checkpoint(workdir)


def selection_file(value: str, workdir: str) -> str:
  """The selection file a config.segment.selection value names: '' (none: a seeded random subset),
  'select_labels' (that stage's selection.json, which must exist), or a path."""
  if value != artifacts.SELECTION_FROM_STAGE:
    return value
  path = artifacts.selection_file(workdir)
  if not os.path.exists(path):
    raise DataError(f"{path}: missing; config.segment.selection='{value}' reads the "
                    "select_labels stage's output: run that stage first (config.stages)")
  return path


def initial_variables(config, workdir: str, variables: dict) -> dict:
  """The network's variables with the SDE (or ImageNet) weights of config.segment.init loaded over
  them (unchanged, and so traceable by jax.eval_shape, with init 'none')."""
  seg = config.segment
  if seg.init == 'sde':
    path = sde_checkpoint(config, workdir)
    source = layouts.sde_variables(checkpointing.read_arrays(path))
    variables, _ = checkpointing.merge_by_mapping(jax.device_get(variables), source,
                                                  layouts.SDE_INTO_SEGMENTATION[seg.network],
                                                  what=path)
  elif seg.init == 'imagenet':
    variables, _ = checkpointing.merge_by_mapping(
        jax.device_get(variables), checkpointing.read_arrays(seg.imagenet_encoder),
        layouts.IMAGENET_ENCODER, what=seg.imagenet_encoder)
  return variables


def create_state(config, workdir: str, network) -> train_state.TrainState:
  """Random init, then the SDE (or ImageNet) weights; a mean teacher when mixing."""
  seg = config.segment
  key = jax.random.key(config.seed)
  example = networks.example_input(seg.network, 1, 64, 64)
  variables = initial_variables(config, workdir,
                                jax.jit(lambda k: network.init(k, example))(key))
  params = variables['params']
  return train_state.TrainState.create(
      params=params, batch_stats=variables['batch_stats'], tx=optim.build(seg.optim, params),
      rng=jax.random.key_data(jax.random.fold_in(key, 2)), ema=uses_teacher(seg))


def segmentation_loss(out: dict, labels: jax.Array) -> jax.Array:
  """CE over valid pixels; with PAD's side output, the mean of both (the side logits are upsampled
  bilinearly with align_corners=True, as the reference's loss does)."""
  loss = segmentation.cross_entropy(out['logits'], labels)
  if 'side_logits' in out:
    side = segmentation.resize_logits(out['side_logits'], *labels.shape[1:3], align_corners=True)
    loss = (loss + segmentation.cross_entropy(side, labels)) / 2
  return loss


def _sde_term(out: dict, batch: dict, key, sde: ml_collections.ConfigDict) -> jax.Array:
  return ops.sde_loss(out['disp'], batch['frames'], batch['intrinsics'], out['pose_prev'],
                      out['pose_next'], key, min_depth=sde.min_depth, max_depth=sde.max_depth,
                      smoothness_weight=sde.smoothness)[0]


def teacher_distribution(network, config: ml_collections.ConfigDict, num_classes: int):
  """teacher(teacher_params, stats, mix_batch, key) -> [B, H, W, C]: the mean teacher's softmax of
  the unmixed, unaugmented mixing batch; labeled rows keep their ground truth as a one-hot
  distribution (all zero at ignored pixels)."""
  seg = config.segment

  def teacher(teacher_params, stats, mix_batch, key):
    out, _ = networks.forward(network, seg.network, jax.lax.stop_gradient(teacher_params), stats,
                              mix_batch['image'], train=seg.teacher_train_mode, key=key,
                              frames=False)
    probs = jax.nn.softmax(jax.lax.stop_gradient(out['logits']), axis=-1)
    truth = mixing.one_hot_targets(mix_batch['label'], num_classes)
    return jnp.where(mix_batch['labeled'][:, None, None, None], truth, probs)

  return teacher


def make_mixing(network, config: ml_collections.ConfigDict):
  """mix_inputs(student, probs, stats, mix_batch, keys) -> (mixed, stats): Target-Domain mixing.

  probs: the teacher distribution of the mixing batch (teacher_distribution); keys: step_keys.
  The mask comes from the depth (DepthMix: depth labels, or with online_depth the student's
  detached disparity, whose forward also gives the mixing batch's SDE loss) or the teacher's
  classes (ClassMix); image b is mixed with image b+1 and strongly augmented.
  mixed = dict(images, pseudo [B, H, W], quality, mask [B, H, W, 1], sde_term).
  """
  seg, online = config.segment, online_depth(config.segment)

  def mix_inputs(student, probs, stats, mix_batch, keys):
    sde_term, disparity = jnp.zeros([]), mix_batch.get('depth')
    if online:
      out, stats = networks.forward(network, seg.network, student, stats, mix_batch['frames'],
                                    train=True, key=keys['online_dropout'], frames=True)
      sde_term = _sde_term(out, mix_batch, keys['mix_sde'], config.sde)
      disparity = jax.lax.stop_gradient(out['disp'][0])
    if seg.mix == 'depthmix':
      depth = mixing.normalize_disparity(disparity)
      mask = mixing.depthmix_mask(depth, mixing.pair_with_next(depth), seg.depthmix_margin)
    elif seg.mix == 'classmix':
      mask = mixing.classmix_mask(jnp.argmax(probs, axis=-1), keys['classmix'])
    else:  # plain pseudo-labels: nothing is mixed
      mask = jnp.ones(probs.shape[:3] + (1,), jnp.float32)
    images = mixing.mix(mask, mix_batch['image'], mixing.pair_with_next(mix_batch['image']))
    pseudo, max_prob = mixing.pseudo_labels(mixing.mix(mask, probs, mixing.pair_with_next(probs)))
    return dict(images=augment.strong_augment(keys['mix_augment'], images, **seg.strong_augment),
                pseudo=pseudo, mask=mask, sde_term=sde_term,
                quality=mixing.pseudo_label_quality(max_prob, seg.quality_threshold)), stats

  return mix_inputs


def match_geometry(candidates: dict, target_disparity: jax.Array, rows: tuple[int, int]
                   ) -> tuple[dict, jax.Array]:
  """Matching Geometry Sampling (SPEC 7): per target crop, the source candidate of least G.

  Args:
    candidates: a source batch of B * k rows; rows b*k .. b*k+k-1 are target crop b's candidates
      (each has 'depth' [B*k, H, W, 1], its source SDE disparity).
    target_disparity: [B, H, W, 1] the target crops' SDE disparity.
    rows: (top, bottom) rows left out of G (sky artefacts, ego car).
  Returns:
    (the chosen source batch of B rows, G [B, k]).
  """
  batch = target_disparity.shape[0]
  grouped = jax.tree.map(lambda x: x.reshape((batch, -1) + x.shape[1:]), candidates)
  g = jax.vmap(lambda d: mixing.geometric_difference(target_disparity, d, *rows), in_axes=1,
               out_axes=1)(grouped['depth'])
  best = jnp.argmin(g, axis=1)
  chosen = jax.tree.map(lambda x: x[jnp.arange(batch), best], grouped)
  return chosen, g


def make_cross_domain_mixing(config: ml_collections.ConfigDict):
  """cross_inputs(source, probs, mix_batch, key) -> dict(images, labels [B, H, W],
  weights [B, H, W], mask [B, H, W, 1], quality): Cross-Domain mixing of source crop b onto
  target crop b (SPEC 7).

  DepthMix: M = [d_src >= d_tgt - m] with m's sign flipped per pair with p = 0.5; ClassMix (DACS):
  half of the classes of the source ground truth. Labels: source ground truth where M, else the
  teacher's argmax (ground truth on labeled target rows); loss weight 1 on source pixels and the
  target batch's pseudo-label quality q elsewhere. Strongly augmented like Target-Domain mixes.
  """
  seg, cross = config.segment, config.segment.source

  def cross_inputs(source, probs, mix_batch, key):
    margin_key, class_key, augment_key = jax.random.split(key, 3)
    target_labels, max_prob = mixing.pseudo_labels(probs)
    # Labeled target rows count as fully confident (the reference sets their max_probs to 1).
    max_prob = jnp.where(mix_batch['labeled'][:, None, None], 1.0, max_prob)
    quality = mixing.pseudo_label_quality(max_prob, seg.quality_threshold)
    if cross.mix == 'depthmix':
      target_depth = mixing.normalize_disparity(mix_batch['depth'])
      # Reference: the source SDE's raw sigmoid disparity against the normalised target one.
      source_depth = (source['depth'] if cross.disparity == 'reference'
                      else mixing.normalize_disparity(source['depth']))
      margin = (mixing.signed_margin(margin_key, seg.depthmix_margin, (target_depth.shape[0],))
                if cross.margin_flip else seg.depthmix_margin)
      mask = mixing.depthmix_mask(source_depth, target_depth, margin)
    else:
      mask = mixing.classmix_mask(source['label'], class_key)
    images = mixing.mix(mask, source['image'], mix_batch['image'])
    return dict(images=augment.strong_augment(augment_key, images, **seg.strong_augment),
                mask=mask, quality=quality,
                labels=mixing.mix_labels(mask, source['label'], target_labels),
                weights=mixing.cross_domain_pixel_weights(mask, quality))

  return cross_inputs


# The step's PRNG keys by use. One split of the step key: appending a use keeps the draws of the
# others (threefry's split is index-wise).
STEP_KEYS = ('labeled_dropout', 'labeled_sde', 'teacher_dropout', 'online_dropout', 'mix_sde',
             'classmix', 'mix_augment', 'mixed_dropout', 'source_dropout', 'cross_mixing',
             'cross_dropout')


def step_keys(key: jax.Array) -> dict[str, jax.Array]:
  return dict(zip(STEP_KEYS, jax.random.split(key, len(STEP_KEYS))))


def make_loss(network, config: ml_collections.ConfigDict, num_classes: int):
  """loss(params, state, batch) -> (loss, (metrics, batch_stats, mixes)) of one step.

  batch: {'labeled': batch[, 'mix': batch][, 'source': batch]}. mixes: what the student trains on
  beyond the labeled batch, for the summaries: 'mix' (the Target-Domain mix: images, pseudo, mask,
  quality), 'source' (the source crops, after Matching Geometry) and 'cross' (the Cross-Domain
  mix: images, labels, mask), those the config uses.
  """
  seg = config.segment
  multitask = seg.network == 'mtl'
  teacher = teacher_distribution(network, config, num_classes)
  mix_inputs = make_mixing(network, config)
  cross_inputs = make_cross_domain_mixing(config)

  def run(params, stats, x, key, frames=False):
    return networks.forward(network, seg.network, params, stats, x, train=True, key=key,
                            frames=frames)

  def loss_fn(params, state, batch):
    keys = step_keys(state.key)
    metrics, mixes = {}, {}
    labeled = batch['labeled']
    out, stats = run(params, state.batch_stats,
                     labeled['frames'] if multitask else labeled['image'],
                     keys['labeled_dropout'], frames=multitask)
    supervised = segmentation_loss(out, labeled['label'])
    metrics['loss/supervised'] = supervised
    loss = supervised
    if multitask:
      sde_term = _sde_term(out, labeled, keys['labeled_sde'], config.sde)
      metrics['loss/sde_labeled'] = sde_term
      loss = loss + seg.sde_weight * sde_term
    # The teacher sees the BatchNorm statistics the labeled batch has just updated.
    labeled_stats = stats
    # The student's forwards run in the reference's order (labeled, source, Cross-Domain mix,
    # Target-Domain mix): its BatchNorm running statistics depend on it.
    if seg.source.enabled:
      source = batch['source']
      if seg.source.matching_geometry:
        source, g = match_geometry(source, batch['mix']['depth'],
                                   tuple(seg.source.geometry_rows))
        metrics['matching_geometry/chosen_g'] = jnp.mean(jnp.min(g, axis=1))
        metrics['matching_geometry/mean_g'] = jnp.mean(g)
      mixes['source'] = source
      out, stats = run(params, stats, source['image'], keys['source_dropout'])
      source_loss = segmentation_loss(out, source['label'])
      metrics['loss/source'] = source_loss
      loss = loss + source_loss
    probs = (teacher(state.ema_params, labeled_stats, batch['mix'], keys['teacher_dropout'])
             if uses_teacher(seg) else None)
    if seg.source.enabled and seg.source.mix != 'none':
      cross = cross_inputs(mixes['source'], probs, batch['mix'], keys['cross_mixing'])
      mixes['cross'] = cross
      out, stats = run(params, stats, cross['images'], keys['cross_dropout'])
      cross_loss = segmentation.cross_entropy(out['logits'], cross['labels'],
                                              weights=cross['weights'],
                                              reduction=seg.unlabeled_loss)
      loss = loss + cross_loss
      metrics.update({'loss/cross_domain': cross_loss,
                      'cross_domain/source_fraction': jnp.mean(cross['mask']),
                      'cross_domain/quality': cross['quality']})
    if seg.mix != 'none':
      mixed, stats = mix_inputs(params, probs, stats, batch['mix'], keys)
      mixes['mix'] = mixed
      out, stats = run(params, stats, mixed['images'], keys['mixed_dropout'])
      unlabeled = segmentation.cross_entropy(out['logits'], mixed['pseudo'],
                                             reduction=seg.unlabeled_loss)
      loss = loss + seg.sde_weight * mixed['sde_term'] + mixed['quality'] * unlabeled
      metrics.update({'loss/unlabeled': unlabeled, 'pseudo_label_quality': mixed['quality'],
                      'mask_fraction': jnp.mean(mixed['mask'])})
      if online_depth(seg):
        metrics['loss/sde_mix'] = mixed['sde_term']
    metrics['loss/total'] = loss
    return loss, (metrics, stats, mixes)

  return loss_fn


def make_train_step(network, config: ml_collections.ConfigDict, num_classes: int):
  """step(state, {'labeled': batch[, 'mix': batch][, 'source': batch]}) -> (state, metrics):
  the gradient of make_loss, one optimiser step, then the mean teacher follows the student."""
  seg = config.segment
  loss_fn = make_loss(network, config, num_classes)

  def step(state, batch):
    grads, (metrics, stats, _) = jax.grad(loss_fn, has_aux=True)(state.params, state, batch)
    state = state.apply_gradients(grads, stats)
    if uses_teacher(seg):
      state = train_state.follow_mean_teacher(state, seg.ema_decay)
    return state, metrics

  return step


def make_summaries(network, config: ml_collections.ConfigDict, label_spec):
  """summaries(state, batch) -> TensorBoard images of the step from `state` on `batch`:
  predictions vs ground truth on the labeled batch, and the mixes the step trains on (make_loss's,
  so with the same draws): mixing inputs, mask, augmented result and pseudo-labels, and the
  cross-domain mixes."""
  seg = config.segment
  loss_fn = make_loss(network, config, label_spec.num_classes)
  colours = jnp.asarray(label_spec.colour_table(), jnp.float32) / 255.0

  def colourise(train_ids):  # [B, H, W] -> [B, H, W, 3] in [0, 1]
    return colours[train_ids]

  def summaries(state, batch):
    labeled = batch['labeled']
    out, _ = networks.forward(network, seg.network, state.params, state.batch_stats,
                              labeled['image'], train=False, key=None, frames=False)
    images = {'labeled/image': labeled['image'],
              'labeled/prediction': colourise(jnp.argmax(out['logits'], -1)),
              'labeled/ground_truth': colourise(labeled['label'])}
    _, (_, _, mixes) = loss_fn(state.params, state, batch)
    if 'mix' in mixes:
      mixed = mixes['mix']
      images.update({'mix/image': batch['mix']['image'],
                     'mix/partner': mixing.pair_with_next(batch['mix']['image']),
                     'mix/mask': jnp.repeat(mixed['mask'], 3, axis=-1),
                     'mix/mixed_augmented': mixed['images'],
                     'mix/pseudo_labels': colourise(mixed['pseudo'])})
    if 'source' in mixes:
      images['source/image'] = mixes['source']['image']
    if 'cross' in mixes:
      cross = mixes['cross']
      images.update({'cross/mask': jnp.repeat(cross['mask'], 3, axis=-1),
                     'cross/mixed_augmented': cross['images'],
                     'cross/labels': colourise(cross['labels'])})
    return images

  return summaries


def training_indices(config, reader, workdir: str = ''):
  """(labeled index, mixing index) of the training split for the configured labels and mix
  (workdir: where config.segment.selection='select_labels' finds the selection)."""
  seg = config.segment
  train = reader.segmentation('train')
  if seg.network == 'mtl':
    train = subsets.with_neighbours(train, reader.sequences('train'))
  rows = subsets.labeled_rows(train, seg.labels, seed=config.seed,
                              selection=selection_file(seg.selection, workdir))
  labeled = train.subset(rows)
  everything = subsets.semi_supervised(train, rows)
  # ClassMix draws from the unlabeled images only; DepthMix and pseudo-labels from all of them.
  mix = everything.subset(np.flatnonzero(~everything.is_labeled)) if seg.mix == 'classmix' else (
      everything)
  if uses_teacher(seg) and not len(mix):
    raise DataError(f'config.segment.mix={seg.mix!r} needs unlabeled images, but all '
                    f'{len(train)} training images are labeled (config.segment.labels)')
  logging.info('segment: %d labeled of %d training images; mixing batch from %d', len(labeled),
               len(train), len(mix))
  return labeled, mix


def source_batches(config, workdir: str, depth_dir: str, **options):
  """The labeled source crops of domain adaptation: per step source.batch_size rows, or with
  Matching Geometry Sampling `candidates` consecutive rows per target crop (the step picks one).
  At the source's own resolution and without frames (no SDE loss on the source); options: crop,
  seed, flip_prob, strict_labels, start_step of segmentation_batches."""
  cross = config.segment.source
  reader = sources.open_dataset(config.data.source, workdir, 'source')
  base.check_num_classes(config.model.num_classes, reader.label_spec, model_key='model',
                         dataset=f'config.data.source ({reader.root})')
  index = reader.segmentation('train')
  rows = cross.batch_size * (cross.candidates if cross.matching_geometry else 1)
  logging.info('segment: %d source images (%s), %d per step', len(index), reader.root, rows)
  return pipeline.segmentation_batches(
      index, reader.label_spec, resolution=tuple(config.data.source.resolution),
      sharding=pipeline.Sharding(rows, jax.process_index(), jax.process_count()), stream='source',
      depth_dir=depth_dir, with_frames=False, **options)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  seg, entry = config.segment, config.data.target
  check_config(config)
  directory = artifacts.segment_dir(workdir)
  os.makedirs(directory, exist_ok=True)
  def save_config(tmp):
    with open(tmp, 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  files.write_atomic(os.path.join(directory, 'config.json'), save_config)  # for predict, evaluate
  resolution, crop = tuple(entry.resolution), tuple(config.data.crop)
  mesh = sharding.make_mesh()
  for size in (seg.batch_size, seg.mix_batch_size, seg.eval_batch_size):
    sharding.check_global_batch(size, mesh)
  reader = sources.open_dataset(entry, workdir, 'target')
  base.check_num_classes(config.model.num_classes, reader.label_spec, model_key='model',
                         dataset=f'config.data.target ({reader.root})')
  network = networks.build(seg.network, config.model)
  labeled, mix = training_indices(config, reader, workdir)
  checkpointer = checkpointing.Checkpointer(os.path.join(directory, 'ckpt'),
                                            max_to_keep=seg.keep_checkpoints,
                                            save_interval_steps=seg.checkpoint_every)
  state = sharding.replicate(create_state(config, workdir, network), mesh)
  state, _ = checkpointer.restore_or_init(state)
  start = int(jax.device_get(state.step))
  process = (jax.process_index(), jax.process_count())
  shared = dict(resolution=resolution, crop=crop, seed=config.seed, flip_prob=config.data.flip_prob,
                strict_labels=config.data.strict_labels, start_step=start)
  streams = {'labeled': pipeline.segmentation_batches(
      labeled, reader.label_spec, sharding=pipeline.Sharding(seg.batch_size, *process),
      stream='labeled', with_frames=seg.network == 'mtl', **shared)}
  depth = {role: artifacts.depth_dir(workdir, role) if needed else ''
           for role, needed in needs_depth_labels(seg).items()}
  if uses_teacher(seg) or (seg.source.enabled and seg.source.matching_geometry):
    streams['mix'] = pipeline.segmentation_batches(
        mix, reader.label_spec, sharding=pipeline.Sharding(seg.mix_batch_size, *process),
        stream='mix', depth_dir=depth['target'], with_frames=online_depth(seg), **shared)
  if seg.source.enabled:
    streams['source'] = source_batches(
        config, workdir, depth['source'],
        **{k: v for k, v in shared.items() if k != 'resolution'})
  batches = (dict(zip(streams, values)) for values in zip(*streams.values()))

  predict = sharding.jit_eval_step(evaluation.predict_logits(network, seg.network), mesh)
  val = reader.segmentation('val')
  best = {'miou': -1.0}
  best_path = os.path.join(directory, 'best.json')
  if os.path.exists(best_path):
    with open(best_path) as f:
      best = json.load(f)

  def evaluate(state, step):
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    matrix = evaluation.confusion(predict, variables, val, reader, resolution=resolution,
                                  mesh=mesh, batch_size=seg.eval_batch_size,
                                  strict_labels=config.data.strict_labels)
    report = evaluation.miou_report(matrix, reader.label_spec.class_names)
    logging.info('segment: val mIoU %.4f at step %d', report['miou'], step)
    if report['miou'] > best['miou']:
      checkpointing.write_tree(os.path.join(directory, 'best'), jax.device_get(variables),
                               overwrite=True)
      best.update(report, step=step)
      if jax.process_index() == 0:
        files.write_json(best_path, best, indent=2)
    return {'miou': report['miou'], **{f'iou/{k}': v for k, v in report['iou'].items()}}

  writer = loop.create_writer(os.path.join(directory, 'logs'))
  summaries = jax.jit(make_summaries(network, config, reader.label_spec))
  hooks = loop.LoopHooks(evaluate=evaluate, evaluate_every=seg.eval_every,
                         images=lambda state, batch, step: summaries(state, batch),
                         images_every=seg.images_every)
  step = sharding.jit_train_step(make_train_step(network, config, reader.label_spec.num_classes),
                                 mesh)
  try:
    loop.train(state, step, batches, mesh=mesh, num_steps=seg.num_steps,
               checkpointer=checkpointer, writer=writer, log_every=seg.log_every, hooks=hooks,
               extra_scalars=lambda s: optim.learning_rates(seg.optim, s))
  finally:
    checkpointer.close()
    writer.close()


STAGE = base.Stage('segment', run, check_config, inputs)
