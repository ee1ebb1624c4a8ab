"""DepthMix / ClassMix, pseudo-labels and the depth-based losses of SPEC sections 6, 7 and 8.

Mixing pairs image b with image (b + 1) mod B: mixed_b = M_b * x_b + (1 - M_b) * x_{b+1}, where M_b
is computed from image b (its disparity against its partner's, or its own teacher classes), so
image b's selected pixels are pasted onto image b+1 (reference: train.py generate_mix_mask and
loader/transformsgpu.py mix). Masks are float [B, H, W, 1] with values 0 / 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sdeseg_jax.ops.segmentation import IGNORE_LABEL

DEPTHMIX_MARGIN = 0.03
PSEUDO_LABEL_THRESHOLD = 0.968
BERHU_THRESHOLD = 0.2


def normalize_disparity(disp: jax.Array) -> jax.Array:
  """Per-image min-max normalisation to [0, 1]: [B, H, W, 1] -> [B, H, W, 1].

  A constant image maps to 0 (the reference divides by max - min and would give NaN there).
  """
  low = jnp.min(disp, axis=(1, 2, 3), keepdims=True)
  high = jnp.max(disp, axis=(1, 2, 3), keepdims=True)
  extent = high - low
  return jnp.where(extent > 0, (disp - low) / jnp.where(extent > 0, extent, 1.0), 0.0)


def depthmix_mask(disp_i: jax.Array, disp_j: jax.Array, margin=DEPTHMIX_MARGIN) -> jax.Array:
  """DepthMix mask M = [d_i >= d_j - margin]: 1 where image i is (about) at least as near.

  Larger disparity = nearer, so M keeps image i's pixels that would not be occluded by image j;
  the margin (0.03) lets image i win near-ties (e.g. road against road).

  Args:
    disp_i, disp_j: [B, H, W, 1] disparities, already normalised (normalize_disparity).
    margin: scalar, or [B] (one per pair, e.g. from signed_margin with shape (B,)).
  Returns:
    [B, H, W, 1] float32 in {0, 1}.
  """
  margin = jnp.asarray(margin, disp_i.dtype)
  if margin.ndim == 1:
    margin = margin[:, None, None, None]
  return (disp_i >= disp_j - margin).astype(jnp.float32)


def pair_with_next(x: jax.Array) -> jax.Array:
  """Row b of the result is row (b + 1) mod B of x: each image's mixing partner. [B, ...]."""
  return jnp.roll(x, -1, axis=0)


def mix(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """mask * a + (1 - mask) * b for images or probability maps.

  Args:
    mask: [B, H, W, 1] (broadcast over channels).
    a, b: [B, H, W, C].
  """
  return mask * a + (1.0 - mask) * b


def mix_labels(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """Label maps mixed with a binary mask, dtype kept: a where mask is 1, else b.

  Args:
    mask: [B, H, W, 1] in {0, 1}.
    a, b: [B, H, W] integer labels.
  """
  return jnp.where(mask[..., 0] > 0.5, a, b)


def classmix_mask(teacher_argmax: jax.Array, key: jax.Array, ignore: int = IGNORE_LABEL, *,
                  num_classes: int = 256) -> jax.Array:
  """ClassMix mask: per image, a random floor(n/2) of its n present classes.

  Present = occurring in the image's own teacher argmax, ignore excluded; every subset of that size
  is equally likely (random scores per class, the top floor(n/2) present ones win), matching the
  reference's np.random.choice(n, (n - n % 2) / 2, replace=False) in train.py generate_mix_mask.
  Image b's selected classes are pasted onto image b + 1 (mix(mask, x, pair_with_next(x))).
  An image with a single class selects none.

  Args:
    teacher_argmax: [B, H, W] integer class ids in [0, num_classes) or `ignore`.
    key: PRNG key.
    ignore: a label value never selected.
    num_classes: static upper bound of the class ids (any larger id is never selected).
  Returns:
    [B, H, W, 1] float32 in {0, 1}.
  """
  batch = teacher_argmax.shape[0]
  labels = teacher_argmax.reshape(batch, -1).astype(jnp.int32)
  in_range = (labels >= 0) & (labels < num_classes) & (labels != ignore)
  safe = jnp.where(in_range, labels, 0)
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], safe.shape)
  present = jnp.zeros((batch, num_classes), jnp.int32).at[rows, safe].max(
      in_range.astype(jnp.int32)) > 0                                           # [B, K]
  n_select = jnp.sum(present, axis=1) // 2                                        # [B]
  scores = jnp.where(present, jax.random.uniform(key, (batch, num_classes)), -1.0)
  rank = jnp.argsort(jnp.argsort(-scores, axis=1), axis=1)    # 0 = highest score
  selected = present & (rank < n_select[:, None])
  chosen = jnp.take_along_axis(selected, safe, axis=1) & in_range
  return chosen.reshape(teacher_argmax.shape)[..., None].astype(jnp.float32)


def one_hot_targets(labels: jax.Array, num_classes: int) -> jax.Array:
  """The teacher distribution of a labeled image: one-hot [B, H, W] -> [B, H, W, C] float32,
  all zero at ignored (or otherwise out-of-range) pixels."""
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def pseudo_labels(mixed_probs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pseudo-labels of a mixed teacher distribution.

  Args:
    mixed_probs: [B, H, W, C] mixed softmax / one-hot maps.
  Returns:
    (labels [B, H, W] int32 = argmax, IGNORE_LABEL where the max probability is 0 (an ignored
     pixel of a labeled image); max_prob [B, H, W] float32).
  """
  max_prob = jnp.max(mixed_probs, axis=-1)
  labels = jnp.argmax(mixed_probs, axis=-1).astype(jnp.int32)
  return jnp.where(max_prob == 0, IGNORE_LABEL, labels), max_prob


def pseudo_label_quality(max_prob: jax.Array,
                         threshold: float = PSEUDO_LABEL_THRESHOLD) -> jax.Array:
  """ONE scalar per batch: the fraction of all pixels with max_prob >= threshold.
  [B, H, W] -> []."""
  return jnp.mean((max_prob >= threshold).astype(jnp.float32))


def signed_margin(key: jax.Array, margin: float = DEPTHMIX_MARGIN, shape: tuple[int, ...] = ()
                  ) -> jax.Array:
  """The Cross-Domain DepthMix margin with its sign flipped with probability 0.5.

  The reference flips it once per image pair (train.py train_step_domain_mixing,
  `random.random() > 0.5` inside the per-image loop): pass shape=(B,) for that and give the result
  to depthmix_mask, which accepts [B] margins.
  """
  flip = jax.random.bernoulli(key, 0.5, shape)
  return jnp.where(flip, -margin, margin).astype(jnp.float32)


def cross_domain_pixel_weights(mask: jax.Array, quality: jax.Array) -> jax.Array:
  """Loss weights of a Cross-Domain DepthMix image: 1 on source pixels (mask 1), the target batch's
  pseudo-label quality q on target pixels. mask [B, H, W, 1], quality scalar -> [B, H, W]."""
  m = mask[..., 0]
  return m + (1.0 - m) * quality


def geometric_difference(disp_a: jax.Array, disp_b: jax.Array, top: int = 80, bottom: int = 100
                         ) -> jax.Array:
  """Matching Geometry Sampling criterion G per image pair (lower = more similar geometry).

  G = mean over all pixels of |log(1 + d_a) - log(1 + d_b)|, with the top `top` rows (sky
  artefacts) and bottom `bottom` rows (ego car) zeroed but still in the denominator
  (loader/matching_geometry_loader.py, disp_scale 'log1', diff_bound inf).

  Args:
    disp_a, disp_b: [B, H, W, 1].
  Returns:
    [B] float32.
  """
  diff = jnp.abs(jnp.log1p(disp_a) - jnp.log1p(disp_b))
  height = disp_a.shape[1]
  rows = jnp.arange(height)[None, :, None, None]
  kept = (rows >= top) & (rows < height - bottom)
  return jnp.mean(jnp.where(kept, diff, 0.0), axis=(1, 2, 3))


def berhu_loss(pred: jax.Array, target: jax.Array, mask: jax.Array,
               threshold: float = BERHU_THRESHOLD) -> jax.Array:
  """Reverse Huber loss of the depth student (SPEC section 8; reference loss/loss.py berhu).

  absdiff = |target - pred| * mask; c = threshold * max(absdiff) over the whole batch, a constant
  (stop_gradient; the reference takes .item()); loss = mean over ALL elements of
  absdiff where absdiff <= c, else (absdiff^2 + c^2) / (2c). c = 0 (all errors zero) gives 0.

  Args:
    pred, target, mask: same shape, e.g. [B, H, W, 1] (mask 0 = excluded, still in the mean).
  Returns:
    scalar float32.
  """
  absdiff = jnp.abs(target - pred) * mask
  c = jax.lax.stop_gradient(threshold * jnp.max(absdiff))
  safe_c = jnp.where(c > 0, c, 1.0)
  quadratic = (absdiff * absdiff + c * c) / (2.0 * safe_c)
  return jnp.mean(jnp.where(absdiff <= c, absdiff, quadratic))
