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
depth_labels stage (missing ones are computed with the SDE), min-max normalised per whole image.

Resumable between steps: each step's selection is written to <workdir>/select_labels/steps/NN.json
and its student checkpointed in student_NN/ckpt (a preempted student resumes from its checkpoint);
a rerun continues after the last finished step. A schedule extended at its end continues too.

Output: <workdir>/selection.json (the ordered id list: its first n ids are the n-image subset) and
<workdir>/select_labels/report.json (per step: the chosen ids with their diversity and error terms,
and the class pixel frequencies of the selection vs the whole training set where labels exist), with
class_frequency.png (selection vs whole set, like the paper's Fig. 7).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import pipeline
from data_pipelines import sources
from data_pipelines.datasets import common
from sdeseg_jax import ops
from sdeseg_jax import stages
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.models import networks
from sdeseg_jax.ops import segmentation
from sdeseg_jax.stages import data as data_stage
from sdeseg_jax.stages import depth_labels
from sdeseg_jax.stages import sde_pretrain
from sdeseg_jax.training import checkpointing
from sdeseg_jax.training import loop
from sdeseg_jax.training import optim
from sdeseg_jax.training import sharding
from sdeseg_jax.training import train_state

METHODS = ('ds_us', 'ds', 'us', 'random', 'entropy')
INITIAL = ('diversity', 'random')
STAGE_VALUE = 'select_labels'   # config.segment.selection value that means this stage's output


# ---------------------------------------------------------------------------------------------
# Paths and configuration.

def stage_dir(workdir: str) -> str:
  return os.path.join(workdir, 'select_labels')


def output_file(workdir: str) -> str:
  return os.path.join(workdir, 'selection.json')


def selection_file(value: str, workdir: str) -> str:
  """The selection file a config.segment.selection value names: '' (none: a seeded random subset),
  'select_labels' (this stage's <workdir>/selection.json, which must exist), or a path."""
  if value != STAGE_VALUE:
    return value
  path = output_file(workdir)
  if not os.path.exists(path):
    raise common.DataError(f"{path}: missing; config.segment.selection='{STAGE_VALUE}' reads the "
                           'select_labels stage\'s output: run that stage first (config.stages)')
  return path


def uses_features(select: ml_collections.ConfigDict) -> bool:
  return select.method in ('ds', 'ds_us') or (
      select.initial == 'diversity' and select.method != 'random')


def student_kind(select: ml_collections.ConfigDict) -> str | None:
  """'depth', 'segmentation' or None: the student trained before each step after the first."""
  return {'ds_us': 'depth', 'us': 'depth', 'entropy': 'segmentation'}.get(select.method)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails before any work on a schedule or method (config.select) that cannot work, naming the
  key."""
  select = config.select
  if select.method not in METHODS:
    raise ConfigError(f'config.select.method={select.method!r}: expected one of {METHODS}')
  if select.initial not in INITIAL:
    raise ConfigError(f'config.select.initial={select.initial!r}: expected one of {INITIAL}')
  sizes = [int(s) for s in select.sizes]
  if not sizes or sizes[0] < 1 or any(b <= a for a, b in zip(sizes, sizes[1:])):
    raise ConfigError(f'config.select.sizes={tuple(select.sizes)}: expected increasing sizes >= 1')
  if student_kind(select) and (len(select.student_steps) < len(sizes) - 1 or
                               any(int(s) < 1 for s in select.student_steps[:len(sizes) - 1])):
    raise ConfigError(f'config.select.student_steps={tuple(select.student_steps)}: method '
                      f'{select.method!r} trains a student before each of the {len(sizes) - 1} '
                      'steps after the first; give that many iteration counts >= 1')
  if tuple(select.feature_pool) and any(int(p) < 1 for p in select.feature_pool):
    raise ConfigError(f'config.select.feature_pool={tuple(select.feature_pool)}: expected '
                      '(h, w) >= 1')


def inputs(config: ml_collections.ConfigDict, workdir: str) -> list[stages.Input]:
  """The SDE checkpoints of the features and of the depth student's teacher labels."""
  select, items = config.select, []
  if uses_features(select):
    items.append(stages.Input(
        sde_checkpoint(config, workdir), '' if select.sde_checkpoint else 'sde_pretrain',
        f'config.select.method={select.method!r} (initial={select.initial!r}), for the SDE '
        'features', 'run the sde_pretrain stage first or set config.select.sde_checkpoint'))
  if student_kind(select) == 'depth' and not os.path.isdir(depth_labels.depth_dir(workdir,
                                                                                   'target')):
    items.append(stages.Input(os.path.join(workdir, 'sde', 'ckpt'), 'sde_pretrain',
                              f'config.select.method={select.method!r}, for the depth labels '
                              "its student learns from", 'run the sde_pretrain stage first'))
  return items


def _fingerprint(select: ml_collections.ConfigDict, step: int, ids: np.ndarray, seed: int) -> dict:
  """What determines the selection up to `step`: a finished step is reused only if it matches."""
  values = dict(method=select.method, initial=select.initial, seed=seed,
                sizes=[int(s) for s in select.sizes[:step + 1]],
                candidates=hashlib.sha256('\n'.join(ids.tolist()).encode()).hexdigest()[:16])
  if student_kind(select):
    values['student_steps'] = [int(s) for s in select.student_steps[:step]]
  if select.method == 'ds_us' and step >= 1:   # step 0 is pure diversity
    values['lambda_e'] = float(select.lambda_e)
  if uses_features(select):
    values['features'] = dict(level=int(select.feature_level),
                              pool=[int(p) for p in select.feature_pool])
  return values


def _write_json(path: str, value) -> None:
  """Atomic write (process 0 only): a reader never sees a half-written file."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=1)
  os.replace(path + '.tmp', path)


def step_file(workdir: str, step: int) -> str:
  return os.path.join(stage_dir(workdir), 'steps', f'{step:02d}.json')


def load_finished_steps(workdir: str, select, ids: np.ndarray, seed: int) -> list[dict]:
  """The finished steps' records, in order; one made under a different config is an error."""
  records = []
  for step in range(len(select.sizes)):
    path = step_file(workdir, step)
    if not os.path.exists(path):
      break
    with open(path) as f:
      record = json.load(f)
    expected = _fingerprint(select, step, ids, seed)
    if record.get('fingerprint') != expected:
      raise ConfigError(f'{path}: this finished selection step was made with a different config '
                        f'({record.get("fingerprint")} != {expected}); delete '
                        f'{stage_dir(workdir)} to select again with the current config')
    records.append(record)
  return records


# ---------------------------------------------------------------------------------------------
# Whole-image passes (phi, E, entropy): one value per image of an index, in index order.

def _host_rows(x: jax.Array) -> np.ndarray:
  """All rows of a batch-sharded global array on every process."""
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def per_image(fn, variables, index: common.ExampleIndex, reader: common.Reader, *, resolution,
              mesh, batch_size: int, depth_dir: str = '') -> np.ndarray:
  """[N, ...] = fn(variables, batch)[row] for every image of `index` (whole images; batch keys:
  image [B, H, W, 3] and, with depth_dir, depth [B, H, W, 1])."""
  compiled = sharding.jit_eval_step(fn, mesh)
  batches = pipeline.validation_batches(
      index.without_labels(), reader.label_spec, resolution=resolution, depth_dir=depth_dir,
      sharding=pipeline.Sharding(batch_size, jax.process_index(), jax.process_count()))
  result = None
  for batch in batches:
    keys = ['image', 'index', 'valid'] + (['depth'] if depth_dir else [])
    placed = sharding.global_batch({k: batch[k] for k in keys}, mesh)
    values = _host_rows(compiled(variables, placed))
    rows, valid = _host_rows(placed['index']), _host_rows(placed['valid'])
    if result is None:
      result = np.zeros((len(index),) + values.shape[1:], values.dtype)
    result[rows[valid]] = values[valid]
  return result


def sde_checkpoint(config, workdir: str) -> str:
  return config.select.sde_checkpoint or os.path.join(workdir, 'sde', 'ckpt')


def sde_features(config, workdir: str, index: common.ExampleIndex, reader, mesh) -> np.ndarray:
  """phi of every image: [N, h * w * C] standardised, flattened SDE decoder features."""
  select = config.select
  path = sde_checkpoint(config, workdir)
  if not os.path.isdir(path):
    raise checkpointing.CheckpointError(
        f'{path}: no SDE checkpoint; config.select.method={select.method!r} (initial='
        f'{select.initial!r}) needs the SDE\'s features: run the sde_pretrain stage first or set '
        'config.select.sde_checkpoint')
  variables = sharding.replicate(sde_pretrain.sde_variables(checkpointing.read_arrays(path)), mesh)
  network = networks.build('sde', config.model)
  level, pool = int(select.feature_level), tuple(int(p) for p in select.feature_pool)

  def pooled(variables, batch):
    levels = network.apply(variables, batch['image'], method='depth')['levels']
    return ops.adaptive_avg_pool(levels[level], pool)

  features = per_image(pooled, variables, index, reader,
                       resolution=tuple(config.data.target.resolution), mesh=mesh,
                       batch_size=select.eval_batch_size)
  logging.info('select_labels: SDE features of %d images, %s each', len(index), features.shape[1:])
  return np.asarray(jax.jit(ops.standardize_features)(features))


def cached_features(config, workdir: str, index, reader, mesh) -> np.ndarray:
  """sde_features, kept in select_labels/features.npy so a resumed selection does not redo them."""
  path = os.path.join(stage_dir(workdir), 'features.npy')
  meta = dict(ids=hashlib.sha256('\n'.join(index.ids.tolist()).encode()).hexdigest(),
              sde=os.path.abspath(sde_checkpoint(config, workdir)),
              level=int(config.select.feature_level),
              pool=[int(p) for p in config.select.feature_pool])
  meta_path = path[:-len('.npy')] + '.json'
  if os.path.exists(path) and os.path.exists(meta_path):
    with open(meta_path) as f:
      if json.load(f) == meta:
        return np.load(path)
  features = sde_features(config, workdir, index, reader, mesh)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path + '.tmp.npy', features)
    os.replace(path + '.tmp.npy', path)
    _write_json(meta_path, meta)
  return features


def teacher_dir(config, workdir: str, index: common.ExampleIndex) -> str:
  """The folder of the teacher disparities (depth labels); missing ones are computed first."""
  folder = depth_labels.depth_dir(workdir, 'target')
  if not all(os.path.exists(os.path.join(folder, i + '.npy')) for i in index.ids):
    logging.info('select_labels: computing the missing depth labels in %s', folder)
    depth_labels.write_depth_labels(config, workdir, 'target')
  return folder


def disparity_ranges(folder: str, ids) -> np.ndarray:
  """[N, 2] (min, max) of each whole depth label: the teacher's per-image min-max normalisation,
  applied to crops of it during student training."""
  ranges = np.zeros((len(ids), 2), np.float32)
  for row, example in enumerate(ids):
    path = os.path.join(folder, example + '.npy')
    try:
      disparity = np.load(path, mmap_mode='r')
    except (OSError, ValueError) as e:
      raise common.DataError(f'{path}: unreadable depth label ({e})') from e
    ranges[row] = disparity.min(), disparity.max()
  return ranges


# ---------------------------------------------------------------------------------------------
# Students.

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
        sde_pretrain.IMAGENET_ENCODER,
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
  ranges = disparity_ranges(teacher, index.ids) if kind == 'depth' else None
  batches = pipeline.segmentation_batches(
      index.without_labels() if kind == 'depth' else index, reader.label_spec,
      resolution=tuple(config.data.target.resolution), crop=tuple(config.data.crop),
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
  return per_image(error, variables, index, reader,
                   resolution=tuple(config.data.target.resolution), mesh=mesh,
                   batch_size=config.select.eval_batch_size, depth_dir=teacher)


def mean_entropies(config, network, variables, index, reader, mesh) -> np.ndarray:
  """[N] mean normalised pixel entropy of every image of `index` under the segmentation student."""
  def entropy(variables, batch):
    logits = network.apply(variables, batch['image'])['logits']
    return jnp.mean(ops.normalized_entropy(logits), axis=(1, 2))
  return per_image(entropy, variables, index, reader,
                   resolution=tuple(config.data.target.resolution), mesh=mesh,
                   batch_size=config.select.eval_batch_size)


# ---------------------------------------------------------------------------------------------
# Choosing images.

def random_order(seed: int, count: int) -> np.ndarray:
  """The seeded order in which random choices take the candidates."""
  return np.random.default_rng([seed, count]).permutation(count)


def diversity_terms(features: np.ndarray, selected: np.ndarray, chosen: np.ndarray) -> np.ndarray:
  """[n] min distance of each chosen row to the selection at the time it was added (the selection
  grows by the chosen rows in order)."""
  nearest = np.full(len(features), np.inf, np.float32)
  for row in selected:
    nearest = np.minimum(nearest, np.linalg.norm(features - features[row], axis=1))
  terms = []
  for row in chosen:
    terms.append(float(nearest[row]))
    nearest = np.minimum(nearest, np.linalg.norm(features - features[row], axis=1))
  return np.array(terms, np.float32)


def top_scores(scores: np.ndarray, selected: np.ndarray, count: int) -> np.ndarray:
  """The `count` unselected rows of highest score (ties: lower row first)."""
  available = np.ones(len(scores), bool)
  available[selected] = False
  rows = np.flatnonzero(available)
  return rows[np.argsort(-scores[rows], kind='stable')[:count]]


def choose(method: str, count: int, selected: np.ndarray, *, order: np.ndarray,
           features: np.ndarray | None, scores: np.ndarray | None, lambda_e: float
           ) -> tuple[np.ndarray, np.ndarray | None]:
  """(`count` new rows in the order they are added, their diversity terms or None)."""
  if method == 'random':
    taken = set(selected.tolist())
    chosen = np.array([r for r in order if r not in taken][:count], np.int64)
  elif method in ('ds', 'ds_us'):
    rows, distances = ops.farthest_point_selection_with_distances(
        features, selected, count, scores if method == 'ds_us' else None,
        lambda_e if method == 'ds_us' else 0.0)
    return np.asarray(rows, np.int64), np.asarray(distances)
  else:  # us, entropy: the most uncertain images
    chosen = top_scores(scores, selected, count)
  return chosen, (None if features is None else diversity_terms(features, selected, chosen))


# ---------------------------------------------------------------------------------------------
# Report.

def class_frequency_report(whole: dict, index: common.ExampleIndex, spec: common.LabelSpec,
                           rows) -> dict:
  """Class pixel frequencies of index's `rows` vs `whole` (data.class_frequencies of the whole
  set), and their ratio."""
  chosen = data_stage.class_frequencies(index.subset(np.sort(rows)), spec, max_labels=len(rows))
  ratio = {name: (chosen[name] / whole[name] if whole[name] > 0 else None)
           for name in spec.class_names}
  return dict(selection={n: chosen[n] for n in spec.class_names},
              whole={n: whole[n] for n in spec.class_names}, ratio=ratio)


def plot_class_frequencies(frequencies: dict, title: str, path: str) -> None:
  """A bar plot (log scale) of each class's pixel frequency in the selection and the whole set,
  with the ratio below (the paper's Fig. 7)."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  names = list(frequencies['whole'])
  x = np.arange(len(names))
  figure, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True,
                                       gridspec_kw=dict(height_ratios=(2, 1)))
  def heights(values):  # a class absent from a set has no bar (log axis)
    return [values[n] if values[n] > 0 else np.nan for n in names]
  top.bar(x - 0.2, heights(frequencies['whole']), 0.4, label='whole set')
  top.bar(x + 0.2, heights(frequencies['selection']), 0.4, label='selection')
  top.set_yscale('log')
  top.set_ylabel('pixel frequency')
  top.set_title(title)
  top.legend()
  ratios = [np.nan if frequencies['ratio'][n] is None else frequencies['ratio'][n] for n in names]
  bottom.bar(x, ratios, 0.6, color=['tab:green' if r >= 1 else 'tab:red' for r in ratios])
  bottom.axhline(1.0, color='black', linewidth=0.8)
  bottom.set_ylabel('selection / whole')
  bottom.set_xticks(x, names, rotation=45, ha='right')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def write_report(workdir: str, config, records: list[dict], index: common.ExampleIndex,
                 reader) -> dict:
  select = config.select
  report = dict(method=select.method, initial=select.initial, sizes=list(select.sizes),
                candidates=len(index), steps=[{k: v for k, v in r.items() if k != 'ids'}
                                              for r in records])
  labeled = index.is_labeled
  if labeled.any():
    position = {i: n for n, i in enumerate(index.ids.tolist())}
    labeled_index = index.subset(np.flatnonzero(labeled))
    labeled_position = {i: n for n, i in enumerate(labeled_index.ids.tolist())}
    whole = data_stage.class_frequencies(labeled_index, reader.label_spec,
                                         max_labels=len(labeled_index))
    for step, record in zip(report['steps'], records):
      rows = [labeled_position[i] for i in record['ids'] if labeled[position[i]]]
      if rows:
        step['class_frequency'] = class_frequency_report(whole, labeled_index, reader.label_spec,
                                                         rows)
    final = report['steps'][-1].get('class_frequency')
    if final is not None and jax.process_index() == 0:
      plot = os.path.join(stage_dir(workdir), 'class_frequency.png')
      plot_class_frequencies(final, f'{select.method}: {len(records[-1]["ids"])} of '
                             f'{len(index)} images', plot)
      report['plot'] = plot
  _write_json(os.path.join(stage_dir(workdir), 'report.json'), report)
  return report


# ---------------------------------------------------------------------------------------------
# The stage.

def student_dir(workdir: str, step: int) -> str:
  return os.path.join(stage_dir(workdir), f'student_{step:02d}')


def initial_choice(select, count: int, order: np.ndarray, features: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
  """Step 0: (rows, diversity terms or None): one random image and its farthest points, or the
  first `count` images of the random order."""
  if select.initial == 'diversity' and select.method != 'random':
    first = order[:1]
    rows, terms = choose('ds', count - 1, first, order=order, features=features, scores=None,
                         lambda_e=0.0)
    # The random first image has no diversity term.
    return np.concatenate([first, rows]), np.concatenate([[np.nan], terms])
  return order[:count], None


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
  directory = student_dir(workdir, step)
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


def select(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Runs (or continues) the selection schedule; returns the ordered ids (as selection.json)."""
  select_config = config.select
  check_config(config)
  sizes = [int(s) for s in select_config.sizes]
  reader = sources.open_dataset(config.data.target, workdir, 'target')
  index = reader.segmentation('train')
  if sizes[-1] > len(index):
    raise ConfigError(f'config.select.sizes={tuple(sizes)}: the training split has only '
                      f'{len(index)} images')
  mesh = sharding.make_mesh()
  records = load_finished_steps(workdir, select_config, index.ids, config.seed)
  if records:
    logging.info('select_labels: steps 0..%d finished (%d images); continuing', len(records) - 1,
                 len(records[-1]['ids']))
  kind = student_kind(select_config)
  if kind == 'segmentation' and not index.is_labeled.all():
    raise common.DataError(f'config.select.method=entropy trains on labels, but '
                           f'{(~index.is_labeled).sum()} training images have none (e.g. '
                           f'{index.images[~index.is_labeled][0]})')
  features = teacher = None
  if len(records) < len(sizes):
    features = cached_features(config, workdir, index, reader, mesh) if uses_features(
        select_config) else None
    teacher = teacher_dir(config, workdir, index) if kind == 'depth' else None
  order = random_order(config.seed, len(index))
  position = {i: n for n, i in enumerate(index.ids.tolist())}
  selected = np.array([position[i] for i in records[-1]['ids']], np.int64) if records else (
      np.zeros([0], np.int64))

  for step in range(len(records), len(sizes)):
    count = sizes[step] - len(selected)
    scores, student = None, None
    if step == 0:
      chosen, terms = initial_choice(select_config, count, order, features)
    else:
      if kind is not None:
        scores, student = student_scores(config, workdir, step, kind, index, selected, reader,
                                         teacher=teacher, mesh=mesh)
      chosen, terms = choose(select_config.method, count, selected, order=order,
                             features=features, scores=scores, lambda_e=select_config.lambda_e)
    records.append(_step_record(select_config, step, index, selected, chosen, terms, scores,
                                student, config.seed))
    _write_json(step_file(workdir, step), records[-1])
    selected = np.concatenate([selected, chosen])
    logging.info('select_labels: step %d: %d images (+%s)', step, len(selected),
                 ', '.join(index.ids[chosen][:8]) + (' ...' if len(chosen) > 8 else ''))
    if student and not select_config.keep_students and jax.process_index() == 0:
      # The step's selection is saved: its student is no longer needed.
      shutil.rmtree(student_dir(workdir, step), ignore_errors=True)

  ids = records[-1]['ids']
  _write_json(output_file(workdir), ids)
  write_report(workdir, config, records, index, reader)
  return ids


def _step_record(select, step: int, index, selected, chosen, terms, scores, student,
                 seed: int) -> dict:
  """The JSON of a finished step: the whole ordered selection and each new image's terms."""
  def number(value):
    return None if value is None or not np.isfinite(value) else float(value)
  chosen_terms = []
  for n, row in enumerate(chosen):
    diversity = None if terms is None else number(terms[n])
    error = None if scores is None else number(scores[row])
    entry = dict(id=str(index.ids[row]), diversity=diversity, error=error)
    if select.method == 'ds_us' and diversity is not None and error is not None:
      entry['objective'] = diversity + float(select.lambda_e) * error
    chosen_terms.append(entry)
  ids = index.ids[np.concatenate([selected, chosen]).astype(np.int64)].tolist()
  return dict(step=step, size=len(ids), ids=ids, chosen=chosen_terms, student=student,
              fingerprint=_fingerprint(select, step, index.ids, seed))


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  ids = select(config, workdir)
  logging.info('select_labels: %d images selected (%s): %s', len(ids), config.select.method,
               output_file(workdir))
