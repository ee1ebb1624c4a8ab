"""Automatic data selection (SPEC section 8): SDE features, farthest point selection, the depth
student's loss mask and the masked log-disparity error E that scores unlabeled images.

Diversity: phi = the SDE decoder's level-3 output, average-pooled to 4x8, standardised per channel
over all images and positions, flattened; images are added by farthest point selection
  j* = argmax_{j unselected} min_{i selected} ||phi_i - phi_j||_2 + weight * scores[j],
with scores = E (uncertainty) and weight = lambda_E.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sdeseg_jax.ops.mixing import BERHU_THRESHOLD
from sdeseg_jax.ops.mixing import berhu_loss

FEATURE_POOL = (4, 8)            # (h, w) of the pooled SDE features
STUDENT_MASKED_BOTTOM = 0.1      # the depth student's loss ignores the bottom 10% of the rows
ERROR_NEAR_THRESHOLD = 0.07      # E ignores (dilated) teacher disparities below this
ERROR_DILATION = 7               # ... dilated by a 7x7 window
ERROR_KEPT_ROWS = 0.87           # ... and the rows from 0.87 * H down (the ego car)


def _adaptive_pool_matrix(size: int, out: int) -> np.ndarray:
  """[out, size] averaging weights of torch's adaptive pooling: bin i covers
  [floor(i * size / out), ceil((i + 1) * size / out))."""
  weights = np.zeros((out, size), np.float32)
  for i in range(out):
    start, end = (i * size) // out, -((-(i + 1) * size) // out)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x: jax.Array, out_hw: tuple[int, int] = FEATURE_POOL) -> jax.Array:
  """torch.nn.functional.adaptive_avg_pool2d in NHWC: [B, H, W, C] -> [B, h, w, C] (float32).

  Bins may overlap when H or W is not a multiple of the output size, exactly as torch's do.
  """
  out_h, out_w = out_hw
  rows = jnp.asarray(_adaptive_pool_matrix(x.shape[1], out_h))
  cols = jnp.asarray(_adaptive_pool_matrix(x.shape[2], out_w))
  return jnp.einsum('ih,bhwc,jw->bijc', rows, x.astype(jnp.float32), cols,
                    precision=jax.lax.Precision.HIGHEST)


def standardize_features(features: jax.Array) -> jax.Array:
  """Per-channel standardisation over all images and positions, then flattening.

  [N, h, w, C] -> [N, h * w * C]: (x - mean_c) / std_c with the unbiased std (torch.std_mean, as
  the reference); a constant channel becomes 0 instead of NaN.
  """
  # Shifted by one sample per channel: the statistics of the differences are exact for a constant
  # channel (all 0; float32 rounding of its mean would otherwise turn it into +-1 noise) and more
  # accurate for channels whose mean is large against their spread.
  x = features.astype(jnp.float32)
  x = x - x[:1, :1, :1]
  count = x.shape[0] * x.shape[1] * x.shape[2]
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.sum((x - mean) ** 2, axis=(0, 1, 2)) / max(count - 1, 1)
  std = jnp.sqrt(var)
  standardized = (x - mean) / jnp.where(std > 0, std, 1.0)
  return standardized.reshape(x.shape[0], -1)


def _distances_to(features: jax.Array, row: jax.Array) -> jax.Array:
  """[N] L2 distances of every feature row to features[row]. XLA fuses the difference into the
  reduction, so no [N, D] temporary is materialised: one pass over the features."""
  difference = features - features[row]
  return jnp.sqrt(jnp.sum(difference * difference, axis=1))


INITIAL_CHUNK = 128   # initial points per matmul when measuring the distances to the selection


def _distances_to_nearest(features: jax.Array, rows: jax.Array) -> jax.Array:
  """[N] distance of every feature row to the nearest of features[rows] ([K] rows).

  ||x - p||^2 = ||x||^2 - 2 x.p + ||p||^2 for INITIAL_CHUNK points at a time: one [N, D] x [D, 128]
  matmul per chunk instead of one pass over the [N, D] features per point (the loop is
  memory-bound: 372 initial points of GTA5's 25k took 18 s that way on a 2-core CPU), and
  O(N * 128) memory instead of an [N, K] matrix.
  """
  n = features.shape[0]
  chunks = -(-rows.shape[0] // INITIAL_CHUNK)
  # Padding repeats the first point: a duplicate leaves the minimum unchanged.
  rows = jnp.concatenate([rows, jnp.full((chunks * INITIAL_CHUNK - rows.shape[0],), rows[0])])
  squared = jnp.sum(features * features, axis=1)

  def chunk(k, nearest):
    picked = jax.lax.dynamic_slice(rows, (k * INITIAL_CHUNK,), (INITIAL_CHUNK,))
    dots = jnp.dot(features, features[picked].T, precision=jax.lax.Precision.HIGHEST)
    d2 = squared[:, None] - 2.0 * dots + squared[picked][None, :]
    return jnp.minimum(nearest, jnp.sqrt(jnp.maximum(jnp.min(d2, axis=1), 0.0)))
  return jax.lax.fori_loop(0, chunks, chunk, jnp.full((n,), jnp.inf, jnp.float32))


@functools.partial(jax.jit, static_argnames='n_new')
def _farthest_points(features: jax.Array, initial: jax.Array, bias: jax.Array, n_new: int):
  n = features.shape[0]
  nearest = _distances_to_nearest(features, initial)
  selected = jnp.zeros((n,), bool).at[initial].set(True)

  def add_one(k, carry):
    nearest, selected, chosen, distances = carry
    objective = jnp.where(selected, -jnp.inf, nearest + bias)
    j = jnp.argmax(objective)   # ties: the lowest index, as np.argmax
    chosen = chosen.at[k].set(j.astype(jnp.int32))
    distances = distances.at[k].set(nearest[j])
    nearest = jnp.minimum(nearest, _distances_to(features, j))
    return nearest, selected.at[j].set(True), chosen, distances

  init = (nearest, selected, jnp.zeros((n_new,), jnp.int32), jnp.zeros((n_new,), jnp.float32))
  _, _, chosen, distances = jax.lax.fori_loop(0, n_new, add_one, init)
  return chosen, distances


def farthest_point_selection_with_distances(features, initial, n_new: int, scores=None,
                                            weight: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """farthest_point_selection, also returning each chosen point's diversity term.

  Returns:
    (chosen [n_new] int32 rows in the order they were added,
     distances [n_new] float32: min_i ||phi_i - phi_j|| over the selection at the time j was added,
     i.e. the diversity term without the score).
  """
  features = jnp.asarray(features, jnp.float32)
  if features.ndim != 2:
    raise ValueError(f'farthest_point_selection: features must be [N, D], got {features.shape}')
  n = features.shape[0]
  initial = np.asarray(initial, np.int64).reshape(-1)
  if not len(initial):
    raise ValueError('farthest_point_selection: `initial` is empty; start from at least one point '
                     '(SPEC: one random image)')
  if initial.min() < 0 or initial.max() >= n:
    raise ValueError(f'farthest_point_selection: initial rows {initial.tolist()[:10]} outside '
                     f'0..{n - 1}')
  free = n - len(np.unique(initial))
  if not 0 <= n_new <= free:
    raise ValueError(f'farthest_point_selection: cannot add {n_new} points, {free} of {n} are '
                     'unselected')
  if scores is None:
    bias = jnp.zeros((n,), jnp.float32)
  else:
    scores = jnp.asarray(scores, jnp.float32)
    if scores.shape != (n,):
      raise ValueError(f'farthest_point_selection: scores must be [{n}], got {scores.shape}')
    if not isinstance(scores, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(scores))):
      raise ValueError('farthest_point_selection: scores hold NaN or infinite values')
    bias = jnp.float32(weight) * scores
  if n_new == 0:
    return jnp.zeros((0,), jnp.int32), jnp.zeros((0,), jnp.float32)
  return _farthest_points(features, jnp.asarray(initial, jnp.int32), bias, n_new)


def farthest_point_selection(features, initial, n_new: int, scores=None,
                             weight: float = 0.0) -> jax.Array:
  """Greedy farthest point selection with an additive per-candidate score (SPEC section 8).

  Adds n_new rows one at a time: j = argmax over unselected j of
  min_{i in selection} ||features_i - features_j||_2 + weight * scores[j]; the selection starts as
  `initial` and grows by each added row. Runs on the accelerator in one jitted loop, keeping a
  running [N] vector of distances to the nearest selected point (O(N) memory, one pass over the
  features per added point).

  Args:
    features: [N, D] float.
    initial: [K] int rows already selected (K >= 1; repeats allowed).
    n_new: how many rows to add (static; at most the number of unselected rows).
    scores: [N] float or None (0); only unselected rows' scores matter.
    weight: the score weight (lambda_E).
  Returns:
    [n_new] int32 rows, in the order they were added.
  """
  return farthest_point_selection_with_distances(features, initial, n_new, scores, weight)[0]


def top_rows_mask(height: int, kept_fraction: float) -> jax.Array:
  """[1, H, 1, 1] float32: 1 on rows < int(kept_fraction * H), 0 below (the reference's
  `map[int(fraction * H):] = 0`)."""
  kept = int(kept_fraction * height)
  return (jnp.arange(height) < kept).astype(jnp.float32)[None, :, None, None]


def normalize_by_range(disp: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
  """(disp - low) / (high - low) per image, with each image's (low, high) from the whole image,
  so that crops of it are normalised as the whole image is (a constant image maps to 0).

  Args:
    disp: [B, H, W, 1]; low, high: [B].
  """
  low, high = low[:, None, None, None], high[:, None, None, None]
  extent = high - low
  return jnp.where(extent > 0, (disp - low) / jnp.where(extent > 0, extent, 1.0), 0.0)


def depth_student_loss(disp: jax.Array, teacher: jax.Array,
                       masked_bottom: float = STUDENT_MASKED_BOTTOM,
                       threshold: float = BERHU_THRESHOLD) -> jax.Array:
  """The depth student's loss: berHu against the teacher's normalised disparity with the bottom
  `masked_bottom` of the rows masked (ego car); c from the masked errors of the whole batch.

  Args:
    disp: [B, H, W, 1] the student's level-0 disparity; teacher: [B, H, W, 1] in [0, 1].
  Returns:
    scalar float32.
  """
  mask = jnp.broadcast_to(top_rows_mask(disp.shape[1], 1.0 - masked_bottom), disp.shape)
  return berhu_loss(disp, teacher, mask, threshold)


def selection_error_mask(teacher: jax.Array, near_threshold: float = ERROR_NEAR_THRESHOLD,
                         dilation: int = ERROR_DILATION,
                         kept_rows: float = ERROR_KEPT_ROWS) -> jax.Array:
  """Pixels counted by E: [B, H, W, 1] -> [B, H, W, 1] float32 in {0, 1}.

  Excluded: a `dilation` x `dilation` dilation of [teacher < near_threshold] (far regions and
  their borders, where a tiny disparity makes the log error meaningless; the reference dilates
  with a ones kernel and zero padding, clamped to 1) and the rows from int(kept_rows * H) down.
  """
  if dilation % 2 != 1:
    raise ValueError(f'selection_error_mask: dilation must be odd, got {dilation}')
  far = (teacher < near_threshold).astype(jnp.float32)
  # Max over the window == clamp(conv(ones), 0, 1) for a binary map; out-of-image counts as 0.
  dilated = jax.lax.reduce_window(far, 0.0, jax.lax.max, (1, dilation, dilation, 1), (1, 1, 1, 1),
                                  'SAME')
  return (1.0 - dilated) * top_rows_mask(teacher.shape[1], kept_rows)


def selection_error(student: jax.Array, teacher: jax.Array,
                    near_threshold: float = ERROR_NEAR_THRESHOLD, dilation: int = ERROR_DILATION,
                    kept_rows: float = ERROR_KEPT_ROWS) -> jax.Array:
  """E per image: mean over ALL pixels of |log(1 + d_student) - log(1 + d_teacher)| with the
  pixels outside selection_error_mask zeroed (still in the denominator).

  Args:
    student: [B, H, W, 1] the depth student's disparity on the whole image.
    teacher: [B, H, W, 1] the SDE's min-max normalised disparity of the same image.
  Returns:
    [B] float32.
  """
  error = jnp.abs(jnp.log1p(student) - jnp.log1p(teacher))
  mask = selection_error_mask(teacher, near_threshold, dilation, kept_rows)
  return jnp.mean(error * mask, axis=(1, 2, 3))


def normalized_entropy(logits: jax.Array) -> jax.Array:
  """Pixel-wise entropy of softmax(logits) divided by log(C): [B, H, W, C] -> [B, H, W] in [0, 1]
  (the entropy baseline's uncertainty; reference loss.py pixel_wise_entropy)."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
  return entropy / np.log(logits.shape[-1])
