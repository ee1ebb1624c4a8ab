"""Segmentation losses, logit resizing and the confusion-matrix metrics (SPEC sections 6, 7).

All NHWC; logits [B, H, W, C] (any float dtype, computed in float32), integer label maps [B, H, W]
with IGNORE_LABEL for pixels without a label.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The project's single ignore value. It must equal data_pipelines.datasets.common.IGNORE_LABEL
# (tests assert it); it is defined here so that the ops package does not import the data layer.
# (The reference uses 250; any value works if used consistently.)
IGNORE_LABEL = 255

# Synthia -> Cityscapes is evaluated on subsets of the 19 Cityscapes trainIds (SPEC section 2):
# 16 classes = all but terrain (9), truck (14) and train (16), which Synthia does not label;
# 13 classes = those 16 without wall (3), fence (4) and pole (5).
SYNTHIA_16_CLASSES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA_13_CLASSES = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)

_REDUCTIONS = ('valid_mean', 'all_mean')


def cross_entropy(logits: jax.Array, labels: jax.Array, *, weights: jax.Array | None = None,
                  reduction: str = 'valid_mean', ignore_label: int = IGNORE_LABEL) -> jax.Array:
  """Per-pixel softmax cross-entropy, ignored pixels contributing 0, reduced to a scalar.

  reduction='valid_mean': sum / number of non-ignored pixels (torch F.cross_entropy with
    ignore_index and reduction='mean'; the supervised loss). A batch without a valid pixel gives 0
    (torch gives NaN).
  reduction='all_mean': sum / number of ALL pixels, ignored ones counting 0 in the sum (the
    reference's pseudo-label loss: reduction='none', times pixel weights, torch.mean; loss/loss.py
    cross_entropy2d).
  weights multiply the per-pixel losses before the sum and receive no gradient (the reference
  detaches its pixel weights). Labels must be in [0, C) or ignore_label: any other value makes the
  loss NaN (torch raises), so such a bug cannot pass silently.

  Args:
    logits: [B, H, W, C] unnormalised scores, at the labels' resolution (resize first with
      resize_logits; the reference upsamples inside its loss with align_corners=True).
    labels: [B, H, W] integer class ids.
    weights: optional [B, H, W] per-pixel weights.
  Returns:
    scalar float32.
  """
  if logits.shape[:-1] != labels.shape:
    raise ValueError(f'logits {logits.shape} and labels {labels.shape} differ in batch or size: '
                     'resize the logits first (resize_logits)')
  if reduction not in _REDUCTIONS:
    raise ValueError(f'reduction must be one of {_REDUCTIONS}, got {reduction!r}')
  valid = labels != ignore_label
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  index = jnp.where(valid, labels, 0).astype(jnp.int32)[..., None]
  picked = jnp.take_along_axis(log_probs, index, axis=-1, mode='fill', fill_value=jnp.nan)[..., 0]
  nll = jnp.where(valid, -picked, 0.0)
  if weights is not None:
    nll = nll * jax.lax.stop_gradient(weights.astype(jnp.float32))
  if reduction == 'all_mean':
    return jnp.mean(nll)
  count = jnp.sum(valid)
  return jnp.where(count > 0, jnp.sum(nll) / jnp.maximum(count, 1), 0.0)


def _align_corners_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Static interpolation taps of torch's align_corners=True linear resize along one axis.

  Output index i samples source coordinate i * (in - 1) / (out - 1) (0 when out == 1).
  Returns (lower index [out], upper index [out], float32 fraction [out]).
  """
  scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
  coord = np.arange(out_size, dtype=np.float64) * scale
  lower = np.clip(np.floor(coord).astype(np.int64), 0, in_size - 1)
  upper = np.minimum(lower + 1, in_size - 1)
  return lower, upper, (coord - lower).astype(np.float32)


def _linear_align_corners(x: jax.Array, out_size: int, axis: int) -> jax.Array:
  """Linear resize of x along one axis with align_corners=True semantics (two gathers + lerp)."""
  lower, upper, frac = _align_corners_taps(x.shape[axis], out_size)
  shape = [1] * x.ndim
  shape[axis] = out_size
  frac = jnp.asarray(frac).reshape(shape)
  x_lower = jnp.take(x, jnp.asarray(lower), axis=axis)
  x_upper = jnp.take(x, jnp.asarray(upper), axis=axis)
  return x_lower + (x_upper - x_lower) * frac


def resize_logits(logits: jax.Array, height: int, width: int, align_corners: bool) -> jax.Array:
  """Bilinear resize of [B, h, w, C] -> [B, height, width, C].

  align_corners=False: half-pixel centres without antialiasing (torch F.interpolate's default and
    jax.image.resize with antialias=False; borders clamp).
  align_corners=True: corner pixels aligned, as torch F.interpolate(align_corners=True), which the
    reference uses to upsample logits inside its loss (cross_entropy2d) and in validation.
  """
  if not align_corners:
    return jax.image.resize(logits, (logits.shape[0], height, width, logits.shape[3]),
                            method='bilinear', antialias=False)
  return _linear_align_corners(_linear_align_corners(logits, height, axis=1), width, axis=2)


def confusion_matrix(predictions: jax.Array, labels: jax.Array, num_classes: int,
                     valid: jax.Array | None = None) -> jax.Array:
  """[C, C] int32 pixel counts, rows = ground truth, columns = prediction.

  Counted: pixels whose label is in [0, num_classes) (so IGNORE_LABEL is skipped, as the
  reference's evaluation/metrics.py _fast_hist) and whose prediction is in range, of examples with
  valid[b] (False marks padding rows of the last validation batch). One bincount with a spill bin:
  jittable, also on a batch-sharded input. Sum the per-batch matrices over the split (int32 holds
  ~2e9 pixels, e.g. 4000 images at 1024x512).

  Args:
    predictions: [B, H, W] integer class ids (argmax of the logits).
    labels: [B, H, W] integer ground truth.
    num_classes: C (static).
    valid: optional [B] bool.
  """
  labels = labels.astype(jnp.int32)
  predictions = predictions.astype(jnp.int32)
  counted = ((labels >= 0) & (labels < num_classes) &
             (predictions >= 0) & (predictions < num_classes))
  if valid is not None:
    counted = counted & valid.astype(bool)[:, None, None]
  spill = num_classes * num_classes
  index = jnp.where(counted, labels * num_classes + predictions, spill)
  counts = jnp.bincount(index.reshape(-1), length=spill + 1)
  return counts[:spill].reshape(num_classes, num_classes).astype(jnp.int32)


def iou_from_confusion(confusion: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-class IoU and mIoU from a [C, C] confusion matrix (rows ground truth).

  IoU_c = TP / (TP + FP + FN); NaN where the union is empty (class neither present nor
  predicted); mIoU = mean over the non-NaN classes (np.nanmean, as the reference's runningScore).

  Returns:
    (iou [C] float32, miou scalar float32; NaN if every union is empty).
  """
  confusion = jnp.asarray(confusion, jnp.float32)
  intersection = jnp.diagonal(confusion)
  union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
  iou = jnp.where(union > 0, intersection / jnp.where(union > 0, union, 1.0), jnp.nan)
  return iou, jnp.nanmean(iou)


def class_subset_miou(confusion: jax.Array, keep_indices: Sequence[int], *,
                      restrict: bool = False) -> tuple[jax.Array, jax.Array]:
  """IoU over a subset of the classes of a full confusion matrix (Synthia's 16 / 13 classes).

  restrict=False (default, the reference protocol): the per-class IoU of the full C-class
    evaluation, averaged over the kept classes only. A pixel of a kept class predicted as a
    dropped class is a false negative, a dropped-class pixel predicted as a kept class a false
    positive. This is what averaging the reference's logged per-class IoUs (train.py validate,
    val_metrics/cls_k) over the subset gives; it is the UDA convention the same authors document
    for Synthia (DAFormer README: "mIoU16 = mIoU19 * 19 / 16").
  restrict=True: the confusion matrix restricted to the kept rows and columns, i.e. as if pixels
    of dropped classes were unlabeled and predictions of dropped classes did not exist (optimistic:
    such pixels count as neither FP nor FN). Offered for comparison with protocols that train and
    evaluate a 16-class model.

  Args:
    confusion: [C, C] confusion matrix (rows ground truth).
    keep_indices: the kept class ids (static), e.g. SYNTHIA_16_CLASSES.
  Returns:
    (iou [K] in the order of keep_indices, NaN for an empty union; miou nan-mean over them).
  """
  keep = np.asarray(keep_indices, np.int32)
  if restrict:
    return iou_from_confusion(jnp.asarray(confusion)[keep][:, keep])
  iou, _ = iou_from_confusion(confusion)
  iou = iou[keep]
  return iou, jnp.nanmean(iou)
