"""data_pipelines.sampling and data_pipelines.pipeline on tiny prepared Cityscapes trees.

The images' pixels say where they come from (tests.fixtures): red = column x, green = row y; here
the blue channel is rewritten to 10 * frame + sequence, so every frame of every snippet is
recognisable. Crops, flips, frame order, label alignment and intrinsics are all checked from these
codes.
"""

import dataclasses
import glob
import os
import re
import shutil

import numpy as np
from PIL import Image
import pytest

from data_pipelines import pipeline
from data_pipelines import prepare
from data_pipelines import sampling
from data_pipelines.datasets import DataError
from data_pipelines.datasets import cityscapes
from tests import fixtures
from tests.test_transforms import ref_color_jitter

RES = (64, 32)  # (W, H) of raw and prepared images: prepare must not change a pixel
CROP = (40, 24)  # (w, h): both offsets vary
SNIPPETS, FRAMES = 5, 5  # 5 labeled train images (odd), 3 triplets per snippet
SPEC = cityscapes.LABEL_SPEC
# Raw id -> training id for the ids the fixture's label stripes use (official Cityscapes table).
TRAIN_ID = {7: 0, 8: 1, 11: 2, 26: 13, 0: 255, 23: 10, 33: 18, 255: 255}


# ---- sampling ----

def test_example_indices_deterministic_and_steps_differ():
  a = sampling.example_indices(7, 'sde', 3, 4, 100)
  np.testing.assert_array_equal(a, sampling.example_indices(7, 'sde', 3, 4, 100))
  assert a.dtype == np.int64 and a.shape == (4,)
  assert not np.array_equal(a, sampling.example_indices(7, 'sde', 4, 4, 100))
  assert not np.array_equal(a, sampling.example_indices(8, 'sde', 3, 4, 100))
  assert not np.array_equal(a, sampling.example_indices(7, 'labeled', 3, 4, 100))


def test_example_indices_one_epoch_visits_every_example_once():
  steps = [sampling.example_indices(0, 'labeled', s, 2, 10) for s in range(5)]
  np.testing.assert_array_equal(np.sort(np.concatenate(steps)), np.arange(10))
  # The next epoch is again a permutation, in a different order.
  following = np.concatenate([sampling.example_indices(0, 'labeled', s, 2, 10)
                              for s in range(5, 10)])
  np.testing.assert_array_equal(np.sort(following), np.arange(10))
  assert not np.array_equal(following, np.concatenate(steps))


def test_example_indices_epoch_boundary_inside_a_step():
  n, batch = 5, 2
  stream = np.concatenate([sampling.example_indices(1, 's', s, batch, n) for s in range(10)])
  assert stream.shape == (20,)
  epochs = stream.reshape(4, n)  # positions 0..19 are epochs 0..3; steps 2 and 7 straddle two
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
  assert len({tuple(e) for e in epochs}) > 1
  # Each step is positions [s*B, s*B + B) of that stream, wherever it starts.
  np.testing.assert_array_equal(sampling.example_indices(1, 's', 2, batch, n), stream[4:6])
  np.testing.assert_array_equal(sampling.example_indices(1, 's', 1, 3, n), stream[3:6])


def test_example_indices_empty_index():
  with pytest.raises(ValueError, match='empty'):
    sampling.example_indices(0, 'x', 0, 2, 0)


def test_augmentation_params_ranges():
  rng = sampling.step_rng(0, 'sde', 0)
  params = sampling.augmentation_params(rng, 2000, resolution=(64, 32), crop=(40, 24),
                                        flip_prob=0.5, color=sampling.ColorJitter())
  assert set(np.unique(params['crop_x'])) == set(range(25))
  assert set(np.unique(params['crop_y'])) == set(range(9))
  assert 0.4 < params['flip'].mean() < 0.6 and 0.4 < params['color_apply'].mean() < 0.6
  factors = params['color_factors']
  assert factors.shape == (2000, 4) and factors.dtype == np.float32
  assert np.all((factors[:, :3] >= 0.8) & (factors[:, :3] <= 1.2))
  assert np.all(np.abs(factors[:, 3]) <= 0.1) and factors[:, 3].min() < -0.09
  np.testing.assert_array_equal(np.sort(params['color_order'], 1), np.tile(np.arange(4), (2000, 1)))
  again = sampling.augmentation_params(sampling.step_rng(0, 'sde', 0), 2000, resolution=(64, 32),
                                       crop=(40, 24), flip_prob=0.5, color=sampling.ColorJitter())
  for key in params:
    np.testing.assert_array_equal(params[key], again[key])
  with pytest.raises(ValueError, match='larger'):
    sampling.augmentation_params(rng, 1, resolution=(64, 32), crop=(40, 33), flip_prob=0.5,
                                 color=None)


# ---- fixtures ----

def _coded(frame, seq):
  image = fixtures.coded_image(RES, frame)
  image[..., 2] = 10 * frame + seq
  return image


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """A prepared Cityscapes tree at the raw resolution, PNG: pixel codes survive exactly."""
  raw = str(tmp_path_factory.mktemp('raw'))
  fixtures.write_cityscapes(raw, size=RES, frames=FRAMES, snippets=SNIPPETS)
  raw_images = glob.glob(os.path.join(raw, 'leftImg8bit*', '*', '*', '*.png'))
  for path in raw_images:
    _, seq, frame = cityscapes.parse_name(path)
    Image.fromarray(_coded(frame, int(seq))).save(path)
  dst = str(tmp_path_factory.mktemp('prepared') / 'cityscapes')
  prepare.prepare('cityscapes', raw, dst, RES, image_format='png', workers=2)
  # The assumption every test below relies on: resizing to the same size changes no pixel.
  for path in raw_images:
    with Image.open(os.path.join(dst, os.path.relpath(path, raw))) as image:
      _, seq, frame = cityscapes.parse_name(path)
      np.testing.assert_array_equal(np.asarray(image), _coded(frame, int(seq)))
  return dst


@pytest.fixture(scope='module')
def reader(prepared):
  return prepare.open_prepared('cityscapes', prepared, RES)


@pytest.fixture
def broken(prepared, tmp_path):
  """A private copy of the prepared tree for tests that corrupt files, and its reader."""
  root = str(tmp_path / 'cityscapes')
  shutil.copytree(prepared, root)
  return prepare.open_prepared('cityscapes', root, RES)


def _parse_id(example_id):
  """'aachen_000003_000002' -> (sequence 3, frame 2)."""
  _, seq, frame = example_id.rsplit('_', 2)
  return int(seq), int(frame)


def _codes(images):
  """float images in [0, 1] -> int pixel codes, after checking they are exact multiples of 1/255."""
  scaled = np.asarray(images, np.float64) * 255
  codes = np.round(scaled)
  np.testing.assert_allclose(scaled, codes, atol=1e-3)
  return codes.astype(np.int64)


def _check_crop(codes, k_crop, normalised):
  """Checks one cropped image's red/green codes and its intrinsics; returns (flip, x0, y0).

  The crop is read off the codes: pixel (0, 0) shows source column x0 (W - 1 - x0 when flipped) and
  row y0. Every crop pixel must then show the source pixel flip-then-crop predicts, and a 3D point
  the full-resolution camera sees at that source pixel must project through `k_crop` onto the crop
  pixel (mirrored in X when the image was flipped).
  """
  width, height = RES
  crop_h, crop_w = codes.shape[:2]
  red, green = codes[..., 0], codes[..., 1]
  flip = bool(red[0, 1] < red[0, 0])
  x0 = int(width - 1 - red[0, 0] if flip else red[0, 0])
  y0 = int(green[0, 0])
  columns = x0 + np.arange(crop_w)
  np.testing.assert_array_equal(red, np.tile(width - 1 - columns if flip else columns, (crop_h, 1)))
  np.testing.assert_array_equal(green, np.tile((y0 + np.arange(crop_h))[:, None], (1, crop_w)))
  assert 0 <= x0 <= width - crop_w and 0 <= y0 <= height - crop_h

  fx, fy, cx, cy = np.asarray(normalised, np.float64) * [width, height, width, height]
  rows, cols = np.mgrid[:crop_h, :crop_w]
  depth = 1.0 + 0.37 * rows + 0.11 * cols
  x = (red - cx) / fx * depth
  y = (green - cy) / fy * depth
  scene = np.stack([-x if flip else x, y, depth], -1)
  projected = scene @ np.asarray(k_crop, np.float64).T
  np.testing.assert_allclose(projected[..., 0] / projected[..., 2], cols, atol=1e-4, rtol=0)
  np.testing.assert_allclose(projected[..., 1] / projected[..., 2], rows, atol=1e-4, rtol=0)
  return flip, x0, y0


def _collect(batches):
  return [dict(b) for b in batches]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ---- SDE triplets ----

def _sde(index, seed=0, sharding=None, **kwargs):
  return pipeline.sde_batches(index, resolution=RES, crop=CROP, seed=seed,
                              sharding=sharding or pipeline.Sharding(4), **kwargs)


def test_sde_triplets_crops_intrinsics_and_colour(reader):
  triplets = reader.sequences('train')
  assert len(triplets) == SNIPPETS * (FRAMES - 2) and triplets.is_triplet.all()
  batches = _sde(triplets, seed=0, num_steps=4)
  seen_flips, seen_x0, seen_apply = set(), set(), set()
  for step, batch in enumerate(batches):
    plan = batches.plan(step)
    assert batch['frames'].shape == (4, 3, CROP[1], CROP[0], 3)
    assert batch['frames'].dtype == np.float32 and batch['intrinsics'].shape == (4, 3, 3)
    np.testing.assert_array_equal(batch['step'], [step] * 4)
    np.testing.assert_array_equal(
        batch['index'], sampling.example_indices(0, 'sde', step, 4, len(triplets)))
    for b in range(4):
      row = batch['index'][b]
      seq, frame = _parse_id(triplets.ids[row])
      codes = _codes(batch['frames'][b])
      crops = [_check_crop(codes[k], batch['intrinsics'][b], triplets.intrinsics[row])
               for k in range(3)]
      assert crops[0] == crops[1] == crops[2]  # one crop and flip for the three frames
      flip, x0, y0 = crops[0]
      assert (flip, x0, y0) == (plan['flip'][b], plan['crop_x'][b], plan['crop_y'][b])
      for k in range(3):  # frames t-1, t, t+1 of the example's own snippet
        np.testing.assert_array_equal(codes[k, ..., 2], 10 * (frame - 1 + k) + seq)
      seen_flips.add(flip)
      seen_x0.add(x0)
      # The network inputs: one colour jitter for all three frames, or none.
      apply = bool(plan['color_apply'][b])
      seen_apply.add(apply)
      if apply:
        want = ref_color_jitter(batch['frames'][b], plan['color_factors'][b],
                                plan['color_order'][b])
        np.testing.assert_allclose(batch['frames_aug'][b], want, atol=1e-5, rtol=0)
        assert np.abs(batch['frames_aug'][b] - batch['frames'][b]).max() > 1e-3
      else:
        np.testing.assert_array_equal(batch['frames_aug'][b], batch['frames'][b])
  assert batches.step == 4
  assert seen_flips == {False, True} and len(seen_x0) > 3 and seen_apply == {False, True}


def test_sde_without_color_jitter(reader):
  batch = next(iter(_sde(reader.sequences('train'), color=None, num_steps=1)))
  np.testing.assert_array_equal(batch['frames_aug'], batch['frames'])


@pytest.mark.slow
def test_sde_deterministic_resumable_and_seeded(reader):
  triplets = reader.sequences('train')
  first = _collect(_sde(triplets, seed=5, num_steps=5))
  assert len(first) == 5
  _assert_batches_equal(first, _collect(_sde(triplets, seed=5, num_steps=5)))
  resumed = _sde(triplets, seed=5, start_step=3, num_steps=2)
  assert len(resumed) == 2 and resumed.step == 3
  _assert_batches_equal(first[3:], _collect(resumed))
  other = _collect(_sde(triplets, seed=6, num_steps=5))
  assert not all(np.array_equal(a['index'], b['index']) and np.array_equal(a['frames'], b['frames'])
                 for a, b in zip(first, other))


def test_unbounded_pipeline_and_sharding_arguments(reader):
  batches = _sde(reader.sequences('train'), start_step=10**9)
  assert batches.step == 10**9
  with pytest.raises(TypeError):
    len(batches)
  iterator = iter(batches)
  for step in range(10**9, 10**9 + 3):  # far beyond the 15 triplets: epochs just go on
    np.testing.assert_array_equal(next(iterator)['step'], [step] * 4)
    assert batches.step == step + 1
  assert pipeline.Sharding(6, 2, 3).rows == slice(4, 6)
  with pytest.raises(ValueError, match='divisible'):
    pipeline.Sharding(5, 0, 2)
  with pytest.raises(ValueError, match='outside'):
    pipeline.Sharding(4, 2, 2)


def test_sde_process_shards_concatenate_to_the_global_batch(reader):
  triplets = reader.sequences('train')
  whole = _collect(_sde(triplets, seed=2, num_steps=3))
  parts = [_collect(_sde(triplets, seed=2, num_steps=3,
                         sharding=pipeline.Sharding(4, process_index=p, process_count=2)))
           for p in range(2)]
  for step in range(3):
    assert parts[0][step]['frames'].shape[0] == 2
    joined = {k: np.concatenate([parts[0][step][k], parts[1][step][k]]) for k in whole[step]}
    _assert_batches_equal([whole[step]], [joined])


def test_sde_index_rows_refer_to_the_given_index(reader):
  """Rows without neighbours are skipped; `index` still names rows of the index passed in."""
  labeled = reader.segmentation('train')
  triplets = reader.sequences('train')
  mixed = type(triplets)(*(np.concatenate([getattr(labeled, f.name), getattr(triplets, f.name)])
                           for f in dataclasses.fields(triplets)))
  assert not mixed.is_triplet[:len(labeled)].any()
  for batch in _sde(mixed, seed=1, num_steps=4):
    assert mixed.is_triplet[batch['index']].all()
    for b, row in enumerate(batch['index']):
      seq, frame = _parse_id(mixed.ids[row])
      np.testing.assert_array_equal(_codes(batch['frames'][b, 1])[..., 2], 10 * frame + seq)


def test_sde_needs_triplets_and_intrinsics(reader):
  with pytest.raises(DataError, match='no frame triplets'):
    _sde(reader.segmentation('train'))
  triplets = reader.sequences('train')
  bad = triplets.intrinsics.copy()
  bad[4] = np.nan
  with pytest.raises(DataError, match=re.escape(triplets.images[4])):
    _sde(dataclasses.replace(triplets, intrinsics=bad))


# ---- segmentation ----

def _expected_labels(red):
  ids = np.array(fixtures.CITYSCAPES_IDS)[red % len(fixtures.CITYSCAPES_IDS)]
  return np.vectorize(TRAIN_ID.__getitem__)(ids)


def _segmentation(index, seed=0, sharding=None, **kwargs):
  kwargs.setdefault('stream', 'labeled')
  return pipeline.segmentation_batches(index, SPEC, resolution=RES, crop=CROP, seed=seed,
                                       sharding=sharding or pipeline.Sharding(2), **kwargs)


def _write_depth(index, folder):
  """<id>.npy float32 maps whose values encode (index row, y, x) exactly."""
  os.makedirs(folder, exist_ok=True)
  y, x = np.mgrid[:RES[1], :RES[0]]
  for row, example_id in enumerate(index.ids):
    np.save(os.path.join(folder, example_id + '.npy'),
            (40000 * row + 1000 * y + x + 0.25).astype(np.float32))


def test_segmentation_labels_depth_and_crops_align(reader, tmp_path):
  index = reader.segmentation('train')
  assert len(index) == SNIPPETS and index.is_labeled.all()
  depth_dir = str(tmp_path / 'depth')
  _write_depth(index, depth_dir)
  batches = _segmentation(index, seed=4, num_steps=5, depth_dir=depth_dir)
  flips = set()
  for step, batch in enumerate(batches):
    plan = batches.plan(step)
    assert batch['image'].shape == (2, CROP[1], CROP[0], 3)
    assert batch['label'].shape == (2, CROP[1], CROP[0]) and batch['label'].dtype == np.int32
    assert batch['depth'].shape == (2, CROP[1], CROP[0], 1) and batch['depth'].dtype == np.float32
    np.testing.assert_array_equal(batch['labeled'], [True, True])
    for b, row in enumerate(batch['index']):
      codes = _codes(batch['image'][b])
      flip, x0, y0 = _check_crop(codes, batch['intrinsics'][b], index.intrinsics[row])
      assert (flip, x0, y0) == (plan['flip'][b], plan['crop_x'][b], plan['crop_y'][b])
      flips.add(flip)
      seq, frame = _parse_id(index.ids[row])
      np.testing.assert_array_equal(codes[..., 2], 10 * frame + seq)
      np.testing.assert_array_equal(batch['label'][b], _expected_labels(codes[..., 0]))
      np.testing.assert_array_equal(batch['depth'][b, ..., 0],
                                    40000 * row + 1000 * codes[..., 1] + codes[..., 0] + 0.25)
  assert flips == {False, True}
  assert 'valid' not in batch


def test_segmentation_unlabeled_rows(reader):
  index = reader.segmentation('train')
  partly = dataclasses.replace(index, labels=np.where(np.arange(len(index)) < 2, index.labels, ''))
  for subset, name in ((index.without_labels(), 'none'), (partly, 'partly')):
    for batch in _segmentation(subset, stream='unlabeled', num_steps=3):
      want = subset.labels[batch['index']] != ''
      np.testing.assert_array_equal(batch['labeled'], want, err_msg=name)
      for b in range(2):
        if want[b]:
          np.testing.assert_array_equal(batch['label'][b],
                                        _expected_labels(_codes(batch['image'][b])[..., 0]))
        else:
          np.testing.assert_array_equal(batch['label'][b], 255)
  assert not partly.is_labeled[2:].any() and partly.is_labeled[:2].all()


def test_segmentation_deterministic_resumable_and_sharded(reader):
  index = reader.segmentation('train')
  first = _collect(_segmentation(index, seed=9, num_steps=4))
  _assert_batches_equal(first, _collect(_segmentation(index, seed=9, num_steps=4)))
  _assert_batches_equal(first[2:],
                        _collect(_segmentation(index, seed=9, start_step=2, num_steps=2)))
  parts = [_collect(_segmentation(index, seed=9, num_steps=4,
                                  sharding=pipeline.Sharding(2, process_index=p, process_count=2)))
           for p in range(2)]
  for step in range(4):
    joined = {k: np.concatenate([parts[0][step][k], parts[1][step][k]]) for k in first[step]}
    _assert_batches_equal([first[step]], [joined])
  # Streams are independent: the same seed and step, another stream, another plan.
  other = _collect(_segmentation(index, seed=9, num_steps=4, stream='source'))
  assert not all(np.array_equal(a['index'], b['index']) and np.array_equal(a['image'], b['image'])
                 for a, b in zip(first, other))


def test_segmentation_missing_depth_label(reader, tmp_path):
  index = reader.segmentation('train')
  depth_dir = str(tmp_path / 'depth')
  _write_depth(index, depth_dir)
  missing = os.path.join(depth_dir, index.ids[3] + '.npy')
  os.remove(missing)
  with pytest.raises(DataError, match=re.escape(missing)):
    _segmentation(index, depth_dir=depth_dir)


def test_segmentation_empty_index(reader):
  with pytest.raises(DataError, match='empty'):
    _segmentation(reader.segmentation('train').subset([]))


# ---- validation ----

def test_validation_every_example_once_across_processes(reader, tmp_path):
  index = reader.segmentation('train')
  assert len(index) % 2 == 1
  depth_dir = str(tmp_path / 'depth')
  _write_depth(index, depth_dir)
  seen, padding = [], 0
  for p in range(2):
    batches = pipeline.validation_batches(
        index, SPEC, resolution=RES, depth_dir=depth_dir,
        sharding=pipeline.Sharding(4, process_index=p, process_count=2))
    assert len(batches) == 2  # ceil(5 / 4)
    collected = _collect(batches)
    assert len(collected) == 2
    for step, batch in enumerate(collected):
      assert batch['image'].shape == (2, RES[1], RES[0], 3)
      np.testing.assert_array_equal(batch['step'], [step, step])
      # Global rows of this process: 4 * step + 2 * p + (0, 1), in index order.
      positions = 4 * step + 2 * p + np.arange(2)
      np.testing.assert_array_equal(batch['valid'], positions < len(index))
      np.testing.assert_array_equal(batch['index'], np.where(positions < len(index), positions, 0))
      for b, row in enumerate(batch['index']):
        codes = _codes(batch['image'][b])
        assert _check_crop(codes, batch['intrinsics'][b], index.intrinsics[row]) == (False, 0, 0)
        seq, frame = _parse_id(index.ids[row])
        np.testing.assert_array_equal(codes[..., 2], 10 * frame + seq)
        np.testing.assert_array_equal(batch['label'][b], _expected_labels(codes[..., 0]))
        np.testing.assert_array_equal(batch['depth'][b, ..., 0],
                                      40000 * row + 1000 * codes[..., 1] + codes[..., 0] + 0.25)
      seen += batch['index'][batch['valid']].tolist()
      padding += int((~batch['valid']).sum())
  assert sorted(seen) == list(range(len(index)))
  assert padding == 2 * 4 - len(index)


# ---- bad input ----

def _validation(index, **kwargs):
  return pipeline.validation_batches(index, SPEC, resolution=RES, sharding=pipeline.Sharding(2),
                                     **kwargs)


def test_truncated_image_is_named(broken):
  index = broken.segmentation('train')
  bad = index.images[2]
  with open(bad, 'rb') as f:
    head = f.read(100)
  with open(bad, 'wb') as f:
    f.write(head)
  with pytest.raises(DataError, match=re.escape(bad)) as error:
    _collect(_validation(index))
  assert str(error.value).startswith('step 1:')  # row 2 is in the second batch of 2
  with pytest.raises(DataError, match=re.escape(bad)):
    _collect(_segmentation(index, num_steps=3))  # 6 positions: all 5 examples


def test_truncated_frame_is_named_by_sde(broken):
  triplets = broken.sequences('train')
  bad = triplets.next_frames[7]
  with open(bad, 'rb') as f:
    head = f.read(100)
  with open(bad, 'wb') as f:
    f.write(head)
  with pytest.raises(DataError, match=re.escape(bad)):
    _collect(_sde(triplets, num_steps=4))  # 16 positions: all 15 triplets


def test_invalid_label_id(broken):
  index = broken.segmentation('train')
  bad = index.labels[1]
  ids = np.array(Image.open(bad))
  ids[:, 5] = 200  # not a Cityscapes id
  Image.fromarray(ids, 'L').save(bad)
  with pytest.raises(DataError, match=re.escape(bad)) as error:
    _collect(_validation(index))
  assert '200' in str(error.value)
  with pytest.raises(DataError, match=re.escape(bad)):
    _collect(_segmentation(index, num_steps=3))
  # Not strict: the invalid id is ignored, every other pixel decodes as usual.
  for batch in _validation(index, strict_labels=False):
    for b, row in enumerate(batch['index']):
      want = _expected_labels(_codes(batch['image'][b])[..., 0])
      if row == 1:
        want[:, 5] = 255
      np.testing.assert_array_equal(batch['label'][b], want)


def test_wrong_image_size_is_named(broken):
  index = broken.segmentation('train')
  bad = index.images[4]
  Image.fromarray(fixtures.coded_image((RES[0] // 2, RES[1] // 2))).save(bad)
  with pytest.raises(DataError, match=re.escape(bad)) as error:
    _collect(_validation(index))
  assert 'size' in str(error.value)
  triplets = broken.sequences('train')
  bad = triplets.prev_frames[0]
  Image.fromarray(fixtures.coded_image((RES[0] + 8, RES[1]))).save(bad)
  with pytest.raises(DataError, match=re.escape(bad)):
    _collect(_sde(triplets, num_steps=4))


def test_bad_depth_file_is_named(broken, tmp_path):
  index = broken.segmentation('train')
  depth_dir = str(tmp_path / 'depth')
  _write_depth(index, depth_dir)
  bad = os.path.join(depth_dir, index.ids[2] + '.npy')
  np.save(bad, np.zeros((RES[1], RES[0]), np.float64))
  with pytest.raises(DataError, match=re.escape(bad)):
    _collect(_validation(index, depth_dir=depth_dir))
