"""Depth evaluation metrics (monodepth2's compute_depth_errors with its evaluation protocol)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

DEPTH_METRIC_NAMES = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3')


def _masked_median(x: jax.Array, valid: jax.Array) -> jax.Array:
  """[B, H, W] values, [B, H, W] bool -> [B] median over the valid pixels (NaN if none)."""
  masked = jnp.where(valid, x, jnp.nan).reshape(x.shape[0], -1)
  return jnp.nanmedian(masked, axis=1)


def depth_metrics(pred_depth: jax.Array, gt_depth: jax.Array, *, min_depth: float = 1e-3,
                  max_depth: float = 80.0, median_scaling: bool = True) -> dict[str, jax.Array]:
  """Per-image depth errors over the valid pixels min_depth < gt < max_depth.

  As monodepth2's evaluation: pred is multiplied by the per-image ratio
  median(gt_valid) / median(pred_valid) (1 without median scaling), clamped to
  [min_depth, max_depth], then abs_rel, sq_rel, rmse, rmse_log and the accuracies
  a_k = fraction of max(gt/pred, pred/gt) < 1.25^k are computed over the valid pixels.
  pred_depth must already be at the ground truth's resolution (monodepth2 resizes the predicted
  disparity, then inverts it). An image without a valid pixel gets NaN metrics and ratio; a
  dataset average should skip them (e.g. jnp.nanmean) or count them, as the caller decides.

  Args:
    pred_depth: [B, H, W] predicted depth (> 0 where gt is valid).
    gt_depth: [B, H, W] ground-truth depth; invalid pixels are anything outside
      (min_depth, max_depth), e.g. 0.
  Returns:
    {'abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3', 'ratio'}: each [B].
  """
  valid = (gt_depth > min_depth) & (gt_depth < max_depth)
  count = jnp.sum(valid, axis=(1, 2)).astype(pred_depth.dtype)            # 0 -> NaN metrics

  if median_scaling:
    ratio = _masked_median(gt_depth, valid) / _masked_median(pred_depth, valid)
  else:
    ratio = jnp.ones(pred_depth.shape[:1], pred_depth.dtype)
  pred = jnp.clip(pred_depth * ratio[:, None, None], min_depth, max_depth)

  # Invalid pixels get harmless values before the divisions and logs, then are masked out.
  gt = jnp.where(valid, gt_depth, 1.0)
  pred = jnp.where(valid, pred, 1.0)

  def mean(x):
    return jnp.sum(jnp.where(valid, x, 0.0), axis=(1, 2)) / count

  thresh = jnp.maximum(gt / pred, pred / gt)
  sq_err = (gt - pred) ** 2
  return {
      'abs_rel': mean(jnp.abs(gt - pred) / gt),
      'sq_rel': mean(sq_err / gt),
      'rmse': jnp.sqrt(mean(sq_err)),
      'rmse_log': jnp.sqrt(mean((jnp.log(gt) - jnp.log(pred)) ** 2)),
      'a1': mean((thresh < 1.25).astype(pred.dtype)),
      'a2': mean((thresh < 1.25 ** 2).astype(pred.dtype)),
      'a3': mean((thresh < 1.25 ** 3).astype(pred.dtype)),
      'ratio': ratio,
  }
