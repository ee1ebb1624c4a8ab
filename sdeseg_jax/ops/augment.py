"""Strong augmentation of mixed images (SPEC section 6): colour jitter, then Gaussian blur.

Matches the reference's loader/transformsgpu.py (color_jitter, gaussian_blur), which uses kornia
0.4.0 (requirements.txt):
- colour jitter (kornia.augmentation.ColorJitter(0.25, 0.25, 0.25, 0.25)), applied when
  random.uniform(0, 1) > 0.2, i.e. with probability 0.8, one coin for the batch. Factors are drawn
  per image (same_on_batch=False); ONE random order of the four adjustments per call
  (random_color_jitter_generator: order=torch.randperm(4)), so one order per batch. kornia 0.4.0's
  adjustments (kornia/enhance/adjust.py) are:
    brightness: x + U[-0.25, 0.25] (factor U[0.75, 1.25] minus 1), clamped to [0, 1];
    contrast:   x * U[0.75, 1.25], clamped to [0, 1] (a plain scaling, not torchvision's blend
                with the mean grey);
    saturation: HSV S * U[0.75, 1.25], S clamped to [0, 1], back to RGB (not a grey blend);
    hue:        HSV H + U[-0.25, 0.25] of the full circle, wrapped.
- Gaussian blur (kornia.filters.GaussianBlur2d, border 'reflect'), applied when
  random.uniform(0, 1) > 0.5, one sigma ~ U(0.15, 1.15) per call (per batch), kernel size per axis
  floor(ceil(0.1 n) - 0.5 + ceil(0.1 n) % 2) = ceil(0.1 n) rounded down to odd (51 for 512).
The reference's per-image calls in Cross-Domain DepthMix (strongTransformOneMix per image) draw an
order and a sigma per image but share the coins; we draw them once per batch throughout.

Images are [B, H, W, 3] float32 in [0, 1]. Randomness only through the explicit key; the blur's
kernel size depends only on the static image size, sigma is traced.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

JITTER_PROB = 0.8
BLUR_PROB = 0.5
JITTER_STRENGTH = 0.25
BLUR_SIGMA_RANGE = (0.15, 1.15)


def _per_image(factor: jax.Array) -> jax.Array:
  """[B] -> [B, 1, 1, 1] for broadcasting against NHWC images."""
  return jnp.asarray(factor, jnp.float32).reshape(-1, 1, 1, 1)


def adjust_brightness_additive(images: jax.Array, delta: jax.Array) -> jax.Array:
  """clip(x + delta, 0, 1) with one delta per image. images [B, H, W, C], delta [B]."""
  return jnp.clip(images + _per_image(delta), 0.0, 1.0)


def adjust_contrast(images: jax.Array, factor: jax.Array) -> jax.Array:
  """clip(x * factor, 0, 1) with one factor per image (kornia 0.4.0).
  images [B, H, W, C], factor [B]."""
  return jnp.clip(images * _per_image(factor), 0.0, 1.0)


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  """[..., 3] RGB in [0, 1] -> [..., 3] HSV, all in [0, 1] (hue as a fraction of the circle).

  Hue 0 and saturation 0 where undefined (grey, black); ties of the maximum prefer R, then G
  (as colorsys and kornia).
  """
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value = jnp.max(rgb, axis=-1)
  chroma = value - jnp.min(rgb, axis=-1)
  saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  safe_chroma = jnp.where(chroma > 0, chroma, 1.0)
  hue_r = (g - b) / safe_chroma
  hue_g = (b - r) / safe_chroma + 2.0
  hue_b = (r - g) / safe_chroma + 4.0
  hue = jnp.where(r == value, hue_r, jnp.where(g == value, hue_g, hue_b))
  hue = jnp.where(chroma > 0, jnp.mod(hue / 6.0, 1.0), 0.0)
  return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """[..., 3] HSV in [0, 1] -> [..., 3] RGB (branch-free: channel n = V - V S clip(k, 0, 1),
  k = min(k_n, 4 - k_n), k_n = (n + 6 H) mod 6 with n = 5, 3, 1 for R, G, B)."""
  hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]

  def channel(n):
    k = jnp.mod(n + 6.0 * hue, 6.0)
    return value - value * saturation * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)

  return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def adjust_saturation(images: jax.Array, factor: jax.Array) -> jax.Array:
  """HSV saturation times factor, clamped to [0, 1] (kornia 0.4.0).
  images [B, H, W, 3], factor [B]."""
  hsv = rgb_to_hsv(images)
  saturation = jnp.clip(hsv[..., 1:2] * _per_image(factor), 0.0, 1.0)
  return hsv_to_rgb(jnp.concatenate([hsv[..., :1], saturation, hsv[..., 2:]], axis=-1))


def adjust_hue(images: jax.Array, shift: jax.Array) -> jax.Array:
  """HSV hue + shift (fraction of the full circle, e.g. U[-0.25, 0.25]), wrapped.
  images [B, H, W, 3], shift [B]."""
  hsv = rgb_to_hsv(images)
  hue = jnp.mod(hsv[..., :1] + _per_image(shift), 1.0)
  return hsv_to_rgb(jnp.concatenate([hue, hsv[..., 1:]], axis=-1))


def gaussian_kernel_size(size: int) -> int:
  """The reference's blur kernel size for an image side of `size` pixels: ceil(0.1 size), minus 1
  when even (transformsgpu.py gaussian_blur: floor(ceil(0.1 n) - 0.5 + ceil(0.1 n) % 2))."""
  c = math.ceil(0.1 * size)
  return int(math.floor(c - 0.5 + c % 2))


def gaussian_kernel1d(kernel_size: int, sigma: jax.Array) -> jax.Array:
  """[kernel_size] normalised Gaussian taps exp(-x^2 / (2 sigma^2)), x centred (odd size)."""
  x = jnp.asarray(np.arange(kernel_size) - kernel_size // 2, jnp.float32)
  taps = jnp.exp(-(x * x) / (2.0 * jnp.square(jnp.asarray(sigma, jnp.float32))))
  return taps / jnp.sum(taps)


def _filter_axis(images: jax.Array, taps: jax.Array, axis: int) -> jax.Array:
  """Same-size 1-D correlation along one spatial axis with reflect padding (torch 'reflect':
  the edge pixel is not repeated). A sum of shifted slices: exact float32 on any backend."""
  kernel_size = taps.shape[0]
  radius = kernel_size // 2
  pad = [(0, 0)] * images.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(images, pad, mode='reflect')
  length = images.shape[axis]
  out = jnp.zeros_like(images)
  for k in range(kernel_size):
    out = out + taps[k] * jax.lax.slice_in_dim(padded, k, k + length, axis=axis)
  return out


def gaussian_blur(images: jax.Array, sigma: jax.Array,
                  kernel_size: tuple[int, int] | None = None) -> jax.Array:
  """Separable Gaussian blur with reflect borders, one sigma for the batch.

  Args:
    images: [B, H, W, C].
    sigma: scalar (may be traced).
    kernel_size: (rows, columns), odd; default gaussian_kernel_size of H and of W.
  Returns:
    [B, H, W, C].
  """
  if kernel_size is None:
    kernel_size = (gaussian_kernel_size(images.shape[1]), gaussian_kernel_size(images.shape[2]))
  k_rows, k_cols = kernel_size
  if k_rows % 2 == 0 or k_cols % 2 == 0:
    raise ValueError(f'kernel sizes must be odd, got {kernel_size}')
  out = _filter_axis(images, gaussian_kernel1d(k_rows, sigma), axis=1)
  return _filter_axis(out, gaussian_kernel1d(k_cols, sigma), axis=2)


class StrongAugmentParams(NamedTuple):
  """The random draws of one strong augmentation of a batch of B images."""
  apply_jitter: jax.Array   # [] bool, one coin for the batch
  brightness: jax.Array     # [B] additive delta
  contrast: jax.Array       # [B] factor
  saturation: jax.Array     # [B] factor
  hue: jax.Array            # [B] shift, fraction of the circle
  order: jax.Array          # [4] int32, a permutation of (brightness, contrast, saturation, hue)
  apply_blur: jax.Array     # [] bool, one coin for the batch
  sigma: jax.Array          # [] blur sigma for the batch


def sample_strong_augment_params(key: jax.Array, batch_size: int, *,
                                 jitter_prob: float = JITTER_PROB,
                                 blur_prob: float = BLUR_PROB,
                                 strength: float = JITTER_STRENGTH,
                                 sigma_range: tuple[float, float] = BLUR_SIGMA_RANGE
                                 ) -> StrongAugmentParams:
  """Draws the parameters of strong_augment (see the module docstring for the distributions)."""
  keys = jax.random.split(key, 8)

  def factors(k, center):
    return jax.random.uniform(k, (batch_size,), jnp.float32, center - strength, center + strength)

  return StrongAugmentParams(
      apply_jitter=jax.random.bernoulli(keys[0], jitter_prob),
      brightness=factors(keys[1], 0.0),
      contrast=factors(keys[2], 1.0),
      saturation=factors(keys[3], 1.0),
      hue=factors(keys[4], 0.0),
      order=jax.random.permutation(keys[5], 4).astype(jnp.int32),
      apply_blur=jax.random.bernoulli(keys[6], blur_prob),
      sigma=jax.random.uniform(keys[7], (), jnp.float32, *sigma_range),
  )


def color_jitter(images: jax.Array, params: StrongAugmentParams) -> jax.Array:
  """The four adjustments in params.order with the per-image factors, clipped to [0, 1]."""
  adjustments = (
      lambda x: adjust_brightness_additive(x, params.brightness),
      lambda x: adjust_contrast(x, params.contrast),
      lambda x: adjust_saturation(x, params.saturation),
      lambda x: adjust_hue(x, params.hue),
  )

  def step(i, x):
    return jax.lax.switch(params.order[i], adjustments, x)

  return jnp.clip(jax.lax.fori_loop(0, 4, step, images), 0.0, 1.0)


def apply_strong_augment(images: jax.Array, params: StrongAugmentParams) -> jax.Array:
  """Colour jitter if params.apply_jitter, then Gaussian blur if params.apply_blur.
  images [B, H, W, 3] in [0, 1] -> same."""
  images = jax.lax.cond(params.apply_jitter, lambda x: color_jitter(x, params), lambda x: x, images)
  return jax.lax.cond(params.apply_blur, lambda x: gaussian_blur(x, params.sigma), lambda x: x,
                      images)


def strong_augment(key: jax.Array, images: jax.Array, **kwargs) -> jax.Array:
  """Strong augmentation of a batch of mixed images, [B, H, W, 3] in [0, 1] -> same.

  kwargs: jitter_prob, blur_prob, strength, sigma_range (sample_strong_augment_params).
  """
  return apply_strong_augment(images, sample_strong_augment_params(key, images.shape[0], **kwargs))
