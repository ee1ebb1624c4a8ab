"""data_pipelines.transforms against independent float64 NumPy formulations."""

import colorsys
import io
import itertools

import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import transforms
from data_pipelines.datasets import cityscapes

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as the brief of the transforms states

# Float32 TF against float64 NumPy: each operation rounds at ~6e-8 relative on values <= 1
# (measured: <= 1.3e-7 for brightness/contrast/saturation), a chain of four stays well below 1e-5.
# Hue: TF converts to HSV in float32 with a 6-sector formula; a rounding error of ~1e-7 in the hue
# comes back multiplied by 6 * chroma (measured <= 7e-7), so 1e-5 holds there too.
ATOL = 1e-5
HUE_ATOL = 1e-5


# ---- reference colour operations (torchvision semantics, float64) ----

def ref_brightness(x, f):
  return np.clip(x * f, 0.0, 1.0)


def ref_contrast(x, f):
  """Blends with the mean luma of each [H, W, 3] image of x [..., H, W, 3]."""
  mean = (x @ LUMA).mean(axis=(-2, -1), keepdims=True)[..., None]
  return np.clip(f * x + (1.0 - f) * mean, 0.0, 1.0)


def ref_saturation(x, f):
  gray = (x @ LUMA)[..., None]
  return np.clip(f * x + (1.0 - f) * gray, 0.0, 1.0)


def ref_hue(x, shift):
  flat = x.reshape(-1, 3)
  out = np.empty_like(flat)
  for n, (r, g, b) in enumerate(flat):
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    out[n] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
  return out.reshape(x.shape)


REF_OPS = (ref_brightness, ref_contrast, ref_saturation, ref_hue)


def ref_color_jitter(x, factors, order):
  """x [..., H, W, 3] float64; factors (b, c, s, hue); order names the operation of each slot."""
  x = np.asarray(x, np.float64)
  for op in order:
    x = REF_OPS[op](x, float(factors[op]))
  return x


def random_images(seed, shape):
  return np.random.default_rng(seed).random(shape).astype(np.float32)


# ---- colour ----

@pytest.mark.parametrize('seed', range(3))
def test_single_adjustments_match_reference(seed):
  images = random_images(seed, (2, 9, 7, 3))  # two images: contrast must use a mean per image
  rng = np.random.default_rng(100 + seed)
  for factor in (rng.uniform(0.8, 1.2), rng.uniform(0.3, 0.7), rng.uniform(1.3, 1.8)):
    np.testing.assert_allclose(transforms.adjust_brightness(images, factor).numpy(),
                               ref_brightness(images.astype(np.float64), factor), atol=ATOL, rtol=0)
    np.testing.assert_allclose(transforms.adjust_contrast(images, factor).numpy(),
                               ref_contrast(images.astype(np.float64), factor), atol=ATOL, rtol=0)
    np.testing.assert_allclose(transforms.adjust_saturation(images, factor).numpy(),
                               ref_saturation(images.astype(np.float64), factor), atol=ATOL, rtol=0)
  for shift in (rng.uniform(-0.1, 0.1), 0.37, -0.45):
    np.testing.assert_allclose(transforms.adjust_hue(images, shift).numpy(),
                               ref_hue(images.astype(np.float64), shift), atol=HUE_ATOL, rtol=0)


def test_contrast_uses_one_mean_per_image():
  dark = np.full((4, 4, 3), 0.1, np.float32)
  bright = np.full((4, 4, 3), 0.9, np.float32)
  out = transforms.adjust_contrast(np.stack([dark, bright]), 0.5).numpy()
  # A constant image equals its own mean luma: contrast leaves it unchanged when the mean is its
  # own.
  np.testing.assert_allclose(out[0], dark, atol=1e-6)
  np.testing.assert_allclose(out[1], bright, atol=1e-6)


def test_brightness_clips():
  images = np.array([[[0.9, 0.5, 0.1]]], np.float32)
  np.testing.assert_allclose(transforms.adjust_brightness(images, 1.5).numpy(),
                             [[[1.0, 0.75, 0.15]]], atol=1e-6)


@pytest.mark.parametrize('seed', range(4))
def test_color_jitter_matches_reference_for_random_orders(seed):
  rng = np.random.default_rng(seed)
  images = random_images(10 + seed, (8, 6, 3))
  factors = np.array([rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2),
                      rng.uniform(-0.1, 0.1)], np.float32)
  order = rng.permutation(4).astype(np.int32)
  out = transforms.color_jitter(tf.constant(images), tf.constant(factors), tf.constant(order))
  np.testing.assert_allclose(out.numpy(), ref_color_jitter(images, factors, order), atol=HUE_ATOL,
                             rtol=0)


def test_color_jitter_every_order_in_graph_mode():
  """All 24 orders, traced once with the order as a tensor (as tf.data runs it)."""
  images = random_images(7, (5, 4, 3))
  factors = np.array([1.15, 0.85, 1.2, 0.08], np.float32)
  jitter = tf.function(transforms.color_jitter)
  for order in itertools.permutations(range(4)):
    order = np.array(order, np.int32)
    np.testing.assert_allclose(jitter(images, factors, order).numpy(),
                               ref_color_jitter(images, factors, order), atol=HUE_ATOL, rtol=0,
                               err_msg=f'order {order}')


def test_color_jitter_order_matters():
  """Saturation blends with luma, which a hue rotation changes: the two do not commute."""
  images = random_images(3, (8, 8, 3))
  factors = np.array([1.0, 1.0, 0.5, 0.25], np.float32)
  a = transforms.color_jitter(images, factors, tf.constant([2, 3, 0, 1])).numpy()
  b = transforms.color_jitter(images, factors, tf.constant([3, 2, 0, 1])).numpy()
  assert np.abs(a - b).max() > 0.05
  np.testing.assert_allclose(a, ref_color_jitter(images, factors, [2, 3, 0, 1]), atol=HUE_ATOL)
  np.testing.assert_allclose(b, ref_color_jitter(images, factors, [3, 2, 0, 1]), atol=HUE_ATOL)


def test_color_jitter_same_parameters_for_all_frames():
  triplet = random_images(5, (3, 8, 6, 3))
  triplet[1] *= 0.5  # frames with different statistics: a shared mean over the triplet would show
  factors = np.array([0.9, 1.2, 0.8, -0.07], np.float32)
  order = tf.constant([1, 3, 0, 2])
  out = transforms.color_jitter(triplet, factors, order).numpy()
  for k in range(3):
    np.testing.assert_allclose(out[k], transforms.color_jitter(triplet[k], factors, order).numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(out[k], ref_color_jitter(triplet[k], factors, order.numpy()),
                               atol=HUE_ATOL)


# ---- crop and flip ----

def ref_crop_and_flip(x, crop_x, crop_y, crop, flip, width_axis):
  if flip:
    x = np.flip(x, axis=width_axis)
  crop_w, crop_h = crop
  if x.ndim == 2:
    return x[crop_y:crop_y + crop_h, crop_x:crop_x + crop_w]
  return x[..., crop_y:crop_y + crop_h, crop_x:crop_x + crop_w, :]


@pytest.mark.parametrize('shape', [(12, 10, 3), (3, 12, 10, 3), (12, 10), (12, 10, 1)])
def test_crop_and_flip_equals_flip_then_crop(shape):
  x = np.random.default_rng(0).integers(0, 1000, shape).astype(np.int32)
  width_axis = 1 if len(shape) == 2 else -2
  crop = (6, 9)  # (w, h)
  fn = tf.function(transforms.crop_and_flip, reduce_retracing=True)
  for flip in (False, True):
    for crop_x in range(10 - 6 + 1):
      for crop_y in (0, 3):
        got = fn(tf.constant(x), tf.constant(crop_x), tf.constant(crop_y), crop,
                 tf.constant(flip)).numpy()
        want = ref_crop_and_flip(x, crop_x, crop_y, crop, flip, width_axis)
        np.testing.assert_array_equal(got, want, err_msg=f'flip={flip} x={crop_x} y={crop_y}')


def test_crop_and_flip_eager_python_arguments():
  x = np.arange(4 * 5).reshape(4, 5)
  np.testing.assert_array_equal(
      transforms.crop_and_flip(tf.constant(x), 1, 2, (3, 2), True).numpy(), x[:, ::-1][2:4, 1:4])


# ---- intrinsics ----

@pytest.mark.parametrize('flip', [False, True])
def test_crop_intrinsics_projects_like_the_flipped_cropped_image(flip):
  rng = np.random.default_rng(int(flip))
  width, height = 64, 32
  crop_w, crop_h = 40, 24
  for _ in range(5):
    normalised = np.array([rng.uniform(0.4, 1.2), rng.uniform(0.8, 2.3), rng.uniform(0.3, 0.7),
                           rng.uniform(0.3, 0.7)])
    crop_x = int(rng.integers(0, width - crop_w + 1))
    crop_y = int(rng.integers(0, height - crop_h + 1))
    k_full = np.array([[normalised[0] * width, 0, normalised[2] * width],
                       [0, normalised[1] * height, normalised[3] * height], [0, 0, 1]])
    points = np.stack([rng.uniform(-5, 5, 50), rng.uniform(-3, 3, 50), rng.uniform(1, 40, 50)], 1)
    uvw = points @ k_full.T
    u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
    # The flipped image holds column u at W - 1 - u; the crop then shifts by the offset.
    u_want = (width - 1 - u if flip else u) - crop_x
    v_want = v - crop_y
    # A horizontal image flip is the image of the scene mirrored in X.
    scene = points * ([-1, 1, 1] if flip else [1, 1, 1])
    k_crop = transforms.crop_intrinsics(tf.constant(normalised, tf.float32), (width, height),
                                        tf.constant(crop_x), tf.constant(crop_y),
                                        tf.constant(flip)).numpy().astype(np.float64)
    assert k_crop.shape == (3, 3)
    np.testing.assert_array_equal(k_crop[2], [0, 0, 1])
    projected = scene @ k_crop.T
    np.testing.assert_allclose(projected[:, 0] / projected[:, 2], u_want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(projected[:, 1] / projected[:, 2], v_want, atol=1e-4, rtol=0)


# ---- label and .npy decoding ----

CITYSCAPES_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                       24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _label_png(ids):
  return tf.io.encode_png(np.asarray(ids, np.uint8)[..., None]).numpy()


def _tables():
  spec = cityscapes.LABEL_SPEC
  return (tf.constant(spec.lookup_table().astype(np.int32)), tf.constant(spec.valid_table()))


def test_decode_label_maps_raw_ids_to_train_ids():
  raw = np.array([list(range(0, 34)) + [255, 255]] * 2, np.uint8)  # every valid id, 2 rows
  lookup, valid = _tables()
  got = transforms.decode_label(tf.constant(_label_png(raw)), lookup, valid,
                                tf.constant('x.png'), True).numpy()
  want = np.vectorize(lambda i: CITYSCAPES_TRAIN_ID.get(int(i), 255))(raw)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)


def test_decode_label_invalid_id():
  raw = np.array([[7, 26, 200], [0, 255, 33]], np.uint8)
  lookup, valid = _tables()
  path = '/data/gtFine/train/x/x_000000_000019_gtFine_labelIds.png'
  with pytest.raises(tf.errors.InvalidArgumentError, match='x_000000_000019_gtFine_labelIds'):
    transforms.decode_label(tf.constant(_label_png(raw)), lookup, valid, tf.constant(path), True)
  got = transforms.decode_label(tf.constant(_label_png(raw)), lookup, valid, tf.constant(path),
                                False).numpy()
  np.testing.assert_array_equal(got, [[0, 13, 255], [255, 255, 18]])


def test_decode_label_invalid_id_in_graph_mode():
  lookup, valid = _tables()

  @tf.function
  def decode(contents, path):
    return transforms.decode_label(contents, lookup, valid, path, True)

  path = '/somewhere/bad_label.png'
  with pytest.raises(tf.errors.InvalidArgumentError, match='bad_label.png'):
    decode(tf.constant(_label_png([[34, 7]])), tf.constant(path))
  np.testing.assert_array_equal(decode(tf.constant(_label_png([[8, 7]])), tf.constant(path)),
                                [[1, 0]])


def _npy_bytes(array):
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


@pytest.mark.parametrize('shape', [(32, 64), (3, 5), (1, 1)])
def test_decode_npy_float32_round_trip(shape):
  array = np.random.default_rng(0).normal(size=shape).astype(np.float32) * 100
  got = transforms.decode_npy_float32(tf.constant(_npy_bytes(array)), shape,
                                      tf.constant('d.npy')).numpy()
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, array)


def test_decode_npy_float32_rejects_other_dtypes_and_fortran_order():
  path = '/depth/aachen_000000_000019.npy'
  for bad in (np.zeros((3, 5), np.float64), np.asfortranarray(np.zeros((3, 5), np.float32)),
              np.zeros((3, 5), '>f4')):
    with pytest.raises(tf.errors.InvalidArgumentError, match='aachen_000000_000019.npy'):
      transforms.decode_npy_float32(tf.constant(_npy_bytes(bad)), (3, 5), tf.constant(path))


def test_decode_npy_float32_wrong_shape_fails():
  with pytest.raises(tf.errors.InvalidArgumentError):
    transforms.decode_npy_float32(tf.constant(_npy_bytes(np.zeros((3, 5), np.float32))), (4, 5),
                                  tf.constant('d.npy'))


def test_decode_image_scales_to_unit_range():
  pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
  got = transforms.decode_image(tf.io.encode_png(pixels)).numpy()
  assert got.dtype == np.float32 and got.shape == (5, 7, 3)
  np.testing.assert_allclose(got, pixels / 255.0, atol=1e-7)
