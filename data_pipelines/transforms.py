"""Per-example TensorFlow transforms of the input pipelines (graph mode, run in parallel by
tf.data).

Images are float32 [..., H, W, 3] in [0, 1]; label maps int32 [H, W]. Intrinsics enter normalised
(fx/W, fy/H, cx/W, cy/H) and leave as 3x3 pixel matrices of the crop.
"""

from __future__ import annotations

import re

import tensorflow as tf

# ITU-R 601 luma as PIL's convert('L'), which the reference's PIL-image ColorJitter uses.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def decode_image(contents: tf.Tensor) -> tf.Tensor:
  """PNG/JPEG bytes -> [H, W, 3] float32 in [0, 1]."""
  image = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
  return tf.cast(image, tf.float32) / 255.0


def decode_label_ids(contents: tf.Tensor) -> tf.Tensor:
  """8-bit raw-id PNG -> [H, W] int32 raw ids."""
  return tf.cast(tf.io.decode_png(contents, channels=1, dtype=tf.uint8)[..., 0], tf.int32)


def decode_label(contents: tf.Tensor, lookup: tf.Tensor, valid: tf.Tensor, path: tf.Tensor,
                 strict: bool) -> tf.Tensor:
  """8-bit raw-id PNG -> [H, W] int32 training ids.

  Args:
    lookup: [256] int32 raw id -> training id; valid: [256] bool, ids the dataset may contain.
    path: the file, named in the error when `strict` and an id is invalid (else it maps to ignore).
  """
  raw = decode_label_ids(contents)
  if strict:
    ok = tf.reduce_all(tf.gather(valid, raw))
    with tf.control_dependencies([tf.debugging.Assert(
        ok, ['label ids outside the dataset\'s ids in', path], summarize=1)]):
      raw = tf.identity(raw)
  return tf.gather(lookup, raw)


def decode_npy_float32(contents: tf.Tensor, shape: tuple[int, int], path: tf.Tensor) -> tf.Tensor:
  """Bytes of a little-endian float32 .npy file (format 1.0) of `shape` -> [H, W] float32.

  The magic, dtype, order and shape of the header and the data's size and finiteness are asserted
  (a corrupt depth label fails the step, whose diagnosis names it), never trusted.
  """
  magic_ok = tf.equal(tf.strings.substr(contents, 0, 8), b'\x93NUMPY\x01\x00')
  header_len = tf.cast(tf.io.decode_raw(tf.strings.substr(contents, 8, 2), tf.uint16)[0], tf.int32)
  header = tf.strings.substr(contents, 10, header_len)
  # The header np.save writes, padded with spaces and a newline.
  expected = re.escape(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple(shape)}, }}")
  header_ok = tf.strings.regex_full_match(header, expected + r'\s*')
  with tf.control_dependencies([tf.debugging.Assert(
      magic_ok & header_ok, ['not a float32 C-order .npy of shape', shape, path])]):
    data = tf.strings.substr(contents, 10 + header_len, -1)
  depth = tf.reshape(tf.io.decode_raw(data, tf.float32), shape)
  return tf.debugging.assert_all_finite(depth, 'NaN or infinite values in a depth label')


def crop_and_flip(x: tf.Tensor, crop_x, crop_y, crop: tuple[int, int], flip) -> tf.Tensor:
  """Crops [..., H, W, C] (or [H, W]) to crop=(w, h) at (crop_x, crop_y) of the FLIPPED image.

  The offset refers to the image after flipping (flip first, then crop, as the reference does); we
  crop the mirrored window and flip only the crop, which gives the same pixels for less work.
  """
  crop_w, crop_h = crop
  width_axis = -1 if x.shape.rank == 2 else -2
  width = tf.shape(x)[width_axis]
  x0 = tf.where(flip, width - crop_w - crop_x, crop_x)
  if x.shape.rank == 2:
    window = x[crop_y:crop_y + crop_h, x0:x0 + crop_w]
  else:
    window = x[..., crop_y:crop_y + crop_h, x0:x0 + crop_w, :]
  return tf.cond(flip, lambda: tf.reverse(window, [width_axis]), lambda: window)


def crop_intrinsics(normalised: tf.Tensor, resolution: tuple[int, int], crop_x, crop_y,
                    flip) -> tf.Tensor:
  """[4] normalised (fx, fy, cx, cy) -> [3, 3] pixel intrinsics of the flipped, cropped image.

  Pixel u is at image coordinate u (the warp's convention), so a flip maps column u to W - 1 - u and
  the principal point to W - 1 - cx; the crop shifts it by the offset.
  """
  width, height = resolution
  fx, fy = normalised[0] * width, normalised[1] * height
  cx, cy = normalised[2] * width, normalised[3] * height
  cx = tf.where(flip, width - 1.0 - cx, cx) - tf.cast(crop_x, tf.float32)
  cy = cy - tf.cast(crop_y, tf.float32)
  zero, one = tf.zeros_like(fx), tf.ones_like(fx)
  return tf.stack([tf.stack([fx, zero, cx]), tf.stack([zero, fy, cy]), tf.stack([zero, zero, one])])


def grayscale(images: tf.Tensor) -> tf.Tensor:
  """[..., 3] -> [..., 1] luma."""
  return tf.reduce_sum(images * tf.constant(GRAY_WEIGHTS, images.dtype), -1, keepdims=True)


def adjust_brightness(images, factor):
  return tf.clip_by_value(images * factor, 0.0, 1.0)


def adjust_contrast(images, factor):
  """Blends with the mean luma of each image ([..., H, W, 3]: one mean per image)."""
  mean = tf.reduce_mean(grayscale(images), axis=[-3, -2, -1], keepdims=True)
  return tf.clip_by_value(factor * images + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(images, factor):
  return tf.clip_by_value(factor * images + (1.0 - factor) * grayscale(images), 0.0, 1.0)


def adjust_hue(images, shift):
  """Rotates hue by `shift` of the full circle (HSV), as torchvision's adjust_hue."""
  return tf.clip_by_value(tf.image.adjust_hue(images, shift), 0.0, 1.0)


def color_jitter(images: tf.Tensor, factors: tf.Tensor, order: tf.Tensor) -> tf.Tensor:
  """Brightness, contrast, saturation (factors[0:3]) and hue shift (factors[3]), in `order`.

  Args:
    images: [..., H, W, 3]; all leading images get the same parameters (a triplet's frames).
    factors: [4] float32; order: [4] int32, a permutation of 0..3 naming the operation of each slot.
  """
  operations = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
  for slot in range(4):
    images = tf.switch_case(
        order[slot], [lambda op=op, i=i: op(images, factors[i]) for i, op in enumerate(operations)])
  return images
