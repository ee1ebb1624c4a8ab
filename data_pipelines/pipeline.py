"""Step-indexed tf.data pipelines: SDE triplets, segmentation batches, validation.

Each pipeline maps global steps to examples with `data_pipelines.sampling` (pure NumPy, a function
of seed, stream and step), keeps this process's rows of the global batch, and lets tf.data read,
decode, crop, flip and colour-augment them in parallel. Iterating yields dicts of NumPy arrays
holding the process-local rows; `Batches.step` is the global step of the next batch.

Reads prepared trees (data_pipelines.prepare): images at the working resolution, labels as 8-bit
ids, from the file system or, for indices whose `storage` is a FileStore (the TFDS backend,
data_pipelines.tfds_backend), from that store with one batched read per step; decoding and
augmentation are the same either way. A failing read is diagnosed file by file and raised as a
DataError naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from data_pipelines import sampling
from data_pipelines import transforms
from data_pipelines.datasets import common

try:  # JAX owns the accelerators; TF only reads files.
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # devices already initialised by an earlier import: nothing to hide then
  pass

_UNBOUNDED = 2**62


@dataclasses.dataclass(frozen=True)
class Sharding:
  """This process's share of a global batch: rows [p * B/P, (p + 1) * B/P)."""
  global_batch: int
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if self.global_batch % self.process_count:
      raise ValueError(f'global batch {self.global_batch} is not divisible by the '
                       f'{self.process_count} processes')
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f'process index {self.process_index} outside 0..{self.process_count - 1}')

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.process_count

  @property
  def rows(self) -> slice:
    return slice(self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch)


class Batches:
  """An iterable of local batches for global steps start_step, start_step + 1, ...

  Attributes:
    step: the global step of the batch the next `next()` returns.
    plan: step -> this process's plan (index rows and augmentation parameters), NumPy.
  """

  def __init__(self, dataset: tf.data.Dataset, plan: Callable[[int], dict],
               files: Callable[[dict], list[tuple[str, str]]], check: Callable[[str, str], None],
               start_step: int, num_steps: int | None):
    self._dataset, self.plan, self._files, self._check = dataset, plan, files, check
    self.start_step, self.num_steps = start_step, num_steps
    self.step = start_step

  def __len__(self) -> int:
    if self.num_steps is None:
      raise TypeError('an unbounded pipeline has no length')
    return self.num_steps

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    iterator = self._dataset.as_numpy_iterator()
    self.step = self.start_step
    while True:
      try:
        batch = next(iterator)
      except StopIteration:
        return
      # A TF error whose message quotes a file's bytes that are not UTF-8 (a corrupt .npy header)
      # reaches Python as a UnicodeDecodeError instead of the OpError.
      except (tf.errors.OpError, UnicodeDecodeError) as e:
        raise self.diagnose(self.step, e) from e
      self.step += 1
      yield batch

  def diagnose(self, step: int, error: Exception) -> common.DataError:
    """A DataError naming the first file of `step` that fails a check."""
    for kind, path in self._files(self.plan(step)):
      try:
        self._check(kind, path)
      except common.DataError as e:
        return common.DataError(f'step {step}: {e}')
    return common.DataError(f'step {step}: input pipeline failed ({_first_line(error)}); its '
                            'files pass the checks: ' +
                            ', '.join(p for _, p in self._files(self.plan(step))))


def file_checker(resolution: tuple[int, int], label_spec: common.LabelSpec | None,
                 strict_labels: bool = True,
                 store: common.FileStore | None = None) -> Callable[[str, str], None]:
  """check(kind, path) raising a DataError for a missing, unreadable or mis-sized file.

  Images and labels are decoded with the pipeline's own TF decoders, so that a file the pipeline
  fails on fails here too (PIL accepts PNGs with bad checksums or no end chunk, which libpng
  rejects). They are read from `store` when given (depth labels are always workdir files).
  """
  def check(kind: str, path: str) -> None:
    if kind == 'depth':
      read_depth_label(path, resolution)
      return
    if store is None:
      name = path
      try:
        with open(path, 'rb') as f:
          contents = f.read()
      except OSError as e:
        raise common.DataError(f'{path}: missing or unreadable file ({e})') from e
    else:
      name, source = common.open_source(path, 'labels' if kind == 'label' else 'images', store)
      contents = source.getvalue()
    try:
      pixels = (transforms.decode_label_ids(contents) if kind == 'label' else
                transforms.decode_image(contents)).numpy()
    except (tf.errors.OpError, UnicodeDecodeError) as e:
      raise common.DataError(f'{name}: unreadable {kind} ({_first_line(e)})') from e
    size = (pixels.shape[1], pixels.shape[0])
    if size != tuple(resolution):
      raise common.DataError(f'{name}: size {size}, expected the prepared resolution {resolution}')
    invalid = label_spec.invalid_ids(pixels) if kind == 'label' and strict_labels else []
    if invalid:
      raise common.DataError(f'{name}: label ids {invalid} are not ids of this dataset')
  return check


def _first_line(error: Exception) -> str:
  """A TF error's message without its op and device preamble, or any error's first line."""
  message = getattr(error, 'message', str(error)).strip().splitlines()[0]
  return re.sub(r'^\{\{function_node [^}]*\}\}\s*', '', message)


def read_depth_label(path: str, resolution: tuple[int, int]) -> np.ndarray:
  """[H, W] float32 depth label (a disparity map of the depth_labels stage), checked: a C-order
  little-endian float32 .npy of the prepared resolution (W, H) with finite values, else a
  DataError naming the file."""
  try:
    depth = np.load(path, mmap_mode='r')
  except (OSError, ValueError) as e:  # ValueError includes a header that is not UTF-8
    raise common.DataError(f'{path}: unreadable depth label ({e})') from e
  if depth.dtype != np.dtype('<f4') or depth.shape != (resolution[1], resolution[0]) or (
      not depth.flags.c_contiguous):
    raise common.DataError(f'{path}: depth label {depth.dtype} {depth.shape}, expected C-order '
                           f'float32 ({resolution[1]}, {resolution[0]})')
  if not np.isfinite(depth).all():
    raise common.DataError(f'{path}: depth label holds {np.size(depth) - np.isfinite(depth).sum()} '
                           'values that are NaN or infinite')
  return np.asarray(depth)


def _content_key(column: str) -> str:
  return f'contents/{column}'


class _Contents:
  """The bytes of the files of an index's `columns` ('images', 'labels', ...) for `load`.

  Files: `load` reads the file at the example's path, in tf.data's parallel map. A FileStore: one
  batched read per step fetches the files of all the step's rows into its plan before the plan is
  split into examples (a store on remote storage then pays its latency once per step, not once per
  file), and `load` takes them from there. Either way `load` decodes the same bytes.
  """

  def __init__(self, index: common.ExampleIndex, columns: tuple[str, ...]):
    self.store = index.store
    self._index, self._columns = index, columns
    self._paths = {c: tf.constant(getattr(index, c)) for c in columns}

  def fetched(self, steps: tf.data.Dataset) -> tf.data.Dataset:
    """`steps` (one plan per step, values [b]) with the store's bytes of the rows' files added."""
    if self.store is None:
      return steps
    index, columns, store = self._index, self._columns, self.store

    def fetch(rows):
      items = [(c, str(getattr(index, c)[r])) for c in columns for r in rows]
      data = np.empty(len(items), object)
      data[:] = store.read(items)
      return tuple(data.reshape(len(columns), len(rows)))

    def add(p):
      values = tf.numpy_function(fetch, [p['index']], [tf.string] * len(columns))
      return dict(p, **{_content_key(c): tf.ensure_shape(v, p['index'].shape)
                        for c, v in zip(columns, values)})

    return steps.map(add, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def __call__(self, p: dict, column: str) -> tf.Tensor:
    """The bytes of the example's file in `column` (scalar tf.string)."""
    if self.store is None:
      return tf.io.read_file(self._paths[column][p['index']])
    return p[_content_key(column)]


def _of_resolution(x: tf.Tensor, path: tf.Tensor, resolution: tuple[int, int]) -> tf.Tensor:
  """x [H, W, ...], asserted to be of the prepared resolution (W, H): a crop would otherwise cut a
  larger image or label map silently."""
  ok = tf.reduce_all(tf.shape(x)[:2] == [resolution[1], resolution[0]])
  with tf.control_dependencies([tf.debugging.Assert(ok, ['size differs from', resolution,
                                                         path, tf.shape(x)])]):
    return tf.identity(x)


def _decode_image(contents: tf.Tensor, path: tf.Tensor, resolution: tuple[int, int]) -> tf.Tensor:
  return _of_resolution(transforms.decode_image(contents), path, resolution)


def _plan_dataset(plan: Callable[[int], dict], start_step: int, num_steps: int | None,
                  contents: _Contents):
  """Dataset of per-example plans (unbatched) for steps [start_step, start_step + num_steps)."""
  example = plan(start_step)
  keys = sorted(example)

  def plan_tuple(step):
    values = plan(int(step))
    return tuple(values[k] for k in keys)

  def to_dict(step):
    values = tf.numpy_function(plan_tuple, [step], [tf.as_dtype(example[k].dtype) for k in keys])
    return {k: tf.ensure_shape(v, example[k].shape) for k, v in zip(keys, values)}

  stop = _UNBOUNDED if num_steps is None else start_step + num_steps
  return contents.fetched(tf.data.Dataset.range(start_step, stop).map(to_dict)).unbatch()


def _finish(examples: tf.data.Dataset, load, local_batch: int) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  return (examples.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .batch(local_batch, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE)
          .with_options(options))


def _step_plan(index_rows: Callable[[int], np.ndarray], augment: Callable[[int], dict],
               sharding: Sharding) -> Callable[[int], dict]:
  def plan(step: int) -> dict:
    values = dict(augment(step), index=index_rows(step))
    values = {k: v[sharding.rows] for k, v in values.items()}
    values['step'] = np.full(sharding.local_batch, step, np.int64)
    return values
  return plan


def sde_batches(index: common.ExampleIndex, *, resolution: tuple[int, int],
                crop: tuple[int, int], sharding: Sharding, seed: int, stream: str = 'sde',
                flip_prob: float = 0.5, color: sampling.ColorJitter | None = sampling.ColorJitter(),
                start_step: int = 0, num_steps: int | None = None) -> Batches:
  """Triplets for self-supervised depth.

  Yields per local batch of b examples:
    frames: [b, 3, h, w, 3] frames t-1, t, t+1, cropped and flipped alike, NOT colour-augmented
      (the photometric targets); frames_aug: the same with one colour jitter for all three frames
      (the network inputs); intrinsics: [b, 3, 3] pixel K of the crop; index: [b] int64 rows of
      `index` (only its triplets are sampled); step: [b] int64.
  """
  rows = np.flatnonzero(index.is_triplet)
  triplets = index.subset(rows)
  if not len(triplets):
    raise common.DataError('SDE pipeline: the index has no frame triplets')
  if np.isnan(triplets.intrinsics).any():
    bad = triplets.images[np.isnan(triplets.intrinsics).any(1)][0]
    raise common.DataError(f'{bad}: no camera intrinsics; self-supervised depth needs them '
                           '(set the dataset\'s intrinsics in the config)')
  plan = _step_plan(
      lambda s: rows[sampling.example_indices(seed, stream, s, sharding.global_batch, len(rows))],
      lambda s: sampling.augmentation_params(
          sampling.step_rng(seed, stream, s), sharding.global_batch, resolution=resolution,
          crop=crop, flip_prob=flip_prob, color=color), sharding)
  columns = ('prev_frames', 'images', 'next_frames')
  contents = _Contents(index, columns)
  paths = tf.constant(np.stack([getattr(index, c) for c in columns], 1))
  intrinsics = tf.constant(index.intrinsics)
  crop_w, crop_h = crop

  def load(p):
    frames = tf.stack([_decode_image(contents(p, c), paths[p['index'], k], resolution)
                       for k, c in enumerate(columns)])
    frames = transforms.crop_and_flip(frames, p['crop_x'], p['crop_y'], crop, p['flip'])
    frames = tf.ensure_shape(frames, [3, crop_h, crop_w, 3])
    if color is None:
      augmented = frames
    else:
      augmented = tf.cond(
          p['color_apply'],
          lambda: transforms.color_jitter(frames, p['color_factors'], p['color_order']),
          lambda: frames)
    k = transforms.crop_intrinsics(intrinsics[p['index']], resolution, p['crop_x'], p['crop_y'],
                                   p['flip'])
    return dict(frames=frames, frames_aug=augmented, intrinsics=k, index=p['index'],
                step=p['step'])

  def files(plan_values):
    return [('image', str(getattr(index, column)[i])) for i in plan_values['index']
            for column in ('prev_frames', 'images', 'next_frames')]

  return Batches(_finish(_plan_dataset(plan, start_step, num_steps, contents), load,
                         sharding.local_batch),
                 plan, files, file_checker(resolution, None, store=contents.store), start_step,
                 num_steps)


def _segmentation_loader(index: common.ExampleIndex, label_spec: common.LabelSpec,
                         resolution: tuple[int, int], crop: tuple[int, int], depth_dir: str,
                         strict_labels: bool, with_frames: bool = False):
  """(load(plan) -> dict(image, label, labeled, intrinsics[, frames][, depth], index,
  step[, valid]), files(plan) -> [(kind, path)], the _Contents that `load` reads)."""
  if with_frames and not index.is_triplet.all():
    raise common.DataError(f'{index.images[~index.is_triplet][0]}: no frames t-1, t+1 (multi-task '
                           'training needs them: join the images with their sequences)')
  contents = _Contents(index, ('images', 'labels') + (('prev_frames', 'next_frames')
                                                      if with_frames else ()))
  images, labels = tf.constant(index.images), tf.constant(index.labels)
  neighbours = tf.constant(np.stack([index.prev_frames, index.next_frames], 1))
  intrinsics = tf.constant(index.intrinsics)
  lookup = tf.constant(label_spec.lookup_table().astype(np.int32))
  valid_ids = tf.constant(label_spec.valid_table())
  crop_w, crop_h = crop
  depth_paths = None
  if depth_dir:
    files = [os.path.join(depth_dir, i + '.npy') for i in index.ids]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
      raise common.DataError(f'{missing[0]}: missing depth label ({len(missing)} missing in all)')
    depth_paths = tf.constant(files)

  def load(p):
    i = p['index']
    image = transforms.crop_and_flip(_decode_image(contents(p, 'images'), images[i], resolution),
                                     p['crop_x'], p['crop_y'], crop, p['flip'])
    labeled = labels[i] != ''
    label = tf.cond(
        labeled,
        lambda: _of_resolution(transforms.decode_label(contents(p, 'labels'), lookup, valid_ids,
                                                       labels[i], strict_labels),
                               labels[i], resolution),
        lambda: tf.fill([resolution[1], resolution[0]], common.IGNORE_LABEL))
    label = transforms.crop_and_flip(label, p['crop_x'], p['crop_y'], crop, p['flip'])
    out = dict(image=tf.ensure_shape(image, [crop_h, crop_w, 3]),
               label=tf.ensure_shape(label, [crop_h, crop_w]), labeled=labeled,
               intrinsics=transforms.crop_intrinsics(intrinsics[i], resolution, p['crop_x'],
                                                     p['crop_y'], p['flip']),
               index=i, step=p['step'])
    if depth_paths is not None:
      depth = transforms.decode_npy_float32(tf.io.read_file(depth_paths[i]),
                                            (resolution[1], resolution[0]), depth_paths[i])
      out['depth'] = transforms.crop_and_flip(depth[..., None], p['crop_x'], p['crop_y'], crop,
                                              p['flip'])
    if with_frames:
      frames = tf.stack([
          _decode_image(contents(p, 'prev_frames'), neighbours[i, 0], resolution),
          _decode_image(contents(p, 'images'), images[i], resolution),
          _decode_image(contents(p, 'next_frames'), neighbours[i, 1], resolution)])
      out['frames'] = tf.ensure_shape(
          transforms.crop_and_flip(frames, p['crop_x'], p['crop_y'], crop, p['flip']),
          [3, crop_h, crop_w, 3])
    if 'valid' in p:
      out['valid'] = p['valid']
    return out

  def files(plan_values):
    rows = plan_values['index']
    return ([('image', str(index.images[i])) for i in rows] +
            ([('image', str(getattr(index, c)[i])) for i in rows
              for c in ('prev_frames', 'next_frames')] if with_frames else []) +
            [('label', str(index.labels[i])) for i in rows if index.labels[i]] +
            ([('depth', os.path.join(depth_dir, index.ids[i] + '.npy')) for i in rows]
             if depth_dir else []))

  return load, files, contents


def segmentation_batches(index: common.ExampleIndex, label_spec: common.LabelSpec, *,
                         resolution: tuple[int, int], crop: tuple[int, int], sharding: Sharding,
                         seed: int, stream: str, flip_prob: float = 0.5, depth_dir: str = '',
                         strict_labels: bool = True, with_frames: bool = False,
                         start_step: int = 0, num_steps: int | None = None) -> Batches:
  """Training batches of images with labels (all-ignore for unlabeled rows) and optional depth.

  Yields per local batch of b examples: image [b, h, w, 3], label [b, h, w] int32 training ids
  (IGNORE_LABEL where unlabeled or ignored), labeled [b] bool, intrinsics [b, 3, 3],
  depth [b, h, w, 1] when `depth_dir` holds <id>.npy depth labels, frames [b, 3, h, w, 3]
  (t-1, t, t+1, cropped and flipped alike) when `with_frames`, index and step [b] int64.
  Use different `stream` names for batches that must be independent (labeled, unlabeled, source).
  """
  if not len(index):
    raise common.DataError(f'segmentation pipeline {stream!r}: the index is empty')
  plan = _step_plan(
      lambda s: sampling.example_indices(seed, stream, s, sharding.global_batch, len(index)),
      lambda s: sampling.augmentation_params(
          sampling.step_rng(seed, stream, s), sharding.global_batch, resolution=resolution,
          crop=crop, flip_prob=flip_prob, color=None), sharding)
  load, files, contents = _segmentation_loader(index, label_spec, resolution, crop, depth_dir,
                                               strict_labels, with_frames)
  return Batches(_finish(_plan_dataset(plan, start_step, num_steps, contents), load,
                         sharding.local_batch),
                 plan, files, file_checker(resolution, label_spec, strict_labels, contents.store),
                 start_step, num_steps)


def validation_batches(index: common.ExampleIndex, label_spec: common.LabelSpec, *,
                       resolution: tuple[int, int], sharding: Sharding, depth_dir: str = '',
                       strict_labels: bool = True) -> Batches:
  """Every example once, whole images in index order, the last global batch padded.

  Yields the keys of `segmentation_batches` plus valid [b] bool: False on padding rows (which
  repeat example 0), so metrics count each example exactly once across all processes.
  """
  if not len(index):
    raise common.DataError('validation pipeline: the index is empty')
  num_steps = -(-len(index) // sharding.global_batch)
  zeros = np.zeros(sharding.global_batch, np.int32)

  def positions(step):
    return step * sharding.global_batch + np.arange(sharding.global_batch)

  plan = _step_plan(
      lambda s: np.where(positions(s) < len(index), positions(s), 0).astype(np.int64),
      lambda s: dict(crop_x=zeros, crop_y=zeros, flip=zeros.astype(bool),
                     valid=positions(s) < len(index)), sharding)
  load, files, contents = _segmentation_loader(index, label_spec, resolution, resolution, depth_dir,
                                               strict_labels)
  return Batches(_finish(_plan_dataset(plan, 0, num_steps, contents), load, sharding.local_batch),
                 plan, files, file_checker(resolution, label_spec, strict_labels, contents.store),
                 0, num_steps)
