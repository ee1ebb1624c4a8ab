"""Photometric losses of self-supervised depth (SPEC section 4, after monodepth2's trainer).

SSIM, the per-pixel reprojection loss, edge-aware smoothness, the full multi-scale SDE loss with
auto-masking, and the ImageNet feature distance of pretraining stage C. All NHWC float32 (or
float64 throughout, for precision checks).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from sdeseg_jax.ops import geometry

SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2
SSIM_WEIGHT = 0.85
# Standard deviation of the tie-breaking noise added to the identity losses (monodepth2).
IDENTITY_NOISE_STD = 1e-5


def _reflection_pad1(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, H+2, W+2, C], 1-pixel reflection without repeating the edge (torch's
  ReflectionPad2d)."""
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')


def _mean3x3(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, H-2, W-2, C] 3x3 box mean, stride 1, no padding (AvgPool2d(3, 1))."""
  rows = x[:, :-2] + x[:, 1:-1] + x[:, 2:]
  return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / 9.0


def ssim(x: jax.Array, y: jax.Array) -> jax.Array:
  """SSIM dissimilarity map clip((1 - SSIM) / 2, 0, 1) per channel.

  3x3 mean windows (stride 1) after 1-pixel reflection padding, C1 = 0.01^2, C2 = 0.03^2.

  Args:
    x, y: [B, H, W, C] images.
  Returns:
    [B, H, W, C] in [0, 1].
  """
  x = _reflection_pad1(x)
  y = _reflection_pad1(y)
  mu_x = _mean3x3(x)
  mu_y = _mean3x3(y)
  sigma_x = _mean3x3(x * x) - mu_x * mu_x
  sigma_y = _mean3x3(y * y) - mu_y * mu_y
  sigma_xy = _mean3x3(x * y) - mu_x * mu_y
  numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
  denominator = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
  return jnp.clip((1 - numerator / denominator) / 2, 0.0, 1.0)


def reprojection_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Per-pixel photometric error 0.85 * mean_c SSIM + 0.15 * mean_c |pred - target|.

  Args:
    pred, target: [B, H, W, C].
  Returns:
    [B, H, W, 1].
  """
  l1 = jnp.mean(jnp.abs(pred - target), axis=-1, keepdims=True)
  structural = jnp.mean(ssim(pred, target), axis=-1, keepdims=True)
  return SSIM_WEIGHT * structural + (1 - SSIM_WEIGHT) * l1


def smoothness_loss(disp: jax.Array, image: jax.Array) -> jax.Array:
  """Edge-aware smoothness of the mean-normalised disparity.

  disp is divided by its per-image spatial mean (+1e-7) first; then
  mean(|dx d| * exp(-mean_c |dx I|)) + mean(|dy d| * exp(-mean_c |dy I|)).

  Args:
    disp: [B, H, W, 1] disparity.
    image: [B, H, W, C] image at the same resolution.
  Returns:
    scalar.
  """
  disp = disp / (jnp.mean(disp, axis=(1, 2), keepdims=True) + 1e-7)
  disp_dx = jnp.abs(disp[:, :, :-1] - disp[:, :, 1:])
  disp_dy = jnp.abs(disp[:, :-1] - disp[:, 1:])
  image_dx = jnp.mean(jnp.abs(image[:, :, :-1] - image[:, :, 1:]), axis=-1, keepdims=True)
  image_dy = jnp.mean(jnp.abs(image[:, :-1] - image[:, 1:]), axis=-1, keepdims=True)
  return jnp.mean(disp_dx * jnp.exp(-image_dx)) + jnp.mean(disp_dy * jnp.exp(-image_dy))


def upsample_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
  """[B, h, w, C] -> [B, height, width, C], bilinear with half-pixel centres, no antialiasing.

  Matches torch F.interpolate(mode='bilinear', align_corners=False) when upsampling.
  """
  if x.shape[1:3] == (height, width):
    return x
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), 'linear', antialias=False)


def downsample_antialiased(image: jax.Array, height: int, width: int) -> jax.Array:
  """[B, H, W, C] -> [B, height, width, C], linear (triangle) filter widened by the scale factor.

  Used for the target image of the smoothness term at scale s (monodepth2 gets it from its data
  loader, resized with PIL's antialiasing filter); the image itself at its own size.
  """
  if image.shape[1:3] == (height, width):
    return image
  return jax.image.resize(image, (image.shape[0], height, width, image.shape[3]), 'linear',
                          antialias=True)


def sde_loss(disparities: Mapping[int, jax.Array], frames: jax.Array, intrinsics: jax.Array,
             pose_prev: tuple[jax.Array, jax.Array], pose_next: tuple[jax.Array, jax.Array],
             key: jax.Array | None, *, min_depth: float = 0.1, max_depth: float = 100.0,
             smoothness_weight: float = 1e-3,
             noise_std: float = IDENTITY_NOISE_STD) -> tuple[jax.Array, dict]:
  """Monodepth2's self-supervised loss with auto-masking (SPEC section 4).

  For each scale s: the disparity is upsampled (bilinear, half-pixel centres) to (H, W) and turned
  into depth; the frames t-1 and t+1 are warped into the target view at full resolution with the
  full-resolution K; the per-pixel minimum over [identity(t-1), identity(t+1), reproj(t-1),
  reproj(t+1)] is averaged; the smoothness of the native-scale disparity against the target resized
  to that scale (`downsample_antialiased`) is added with weight smoothness_weight / 2^s.
  Total = mean over the scales.

  The identity losses get N(0, 1) * noise_std tie-breaking noise, drawn independently for every
  scale (as monodepth2, which draws it inside its per-scale loop) from `key`; key=None (or
  noise_std=0) adds none, which makes the loss deterministic for tests and evaluation.

  Args:
    disparities: {s: [B, H/2^s, W/2^s, 1]} sigmoid disparities, any set of scales.
    frames: [B, 3, H, W, 3] unaugmented frames (t-1, t, t+1) in [0, 1].
    intrinsics: [B, 3, 3] pixel intrinsics at (H, W).
    pose_prev: (axisangle [B, 3], translation [B, 3]) predicted for the pair (t-1, t); inverted.
    pose_next: (axisangle [B, 3], translation [B, 3]) predicted for the pair (t, t+1).
    key: PRNG key of the tie-breaking noise, or None.
    min_depth, max_depth: disparity -> depth range. smoothness_weight: at scale 0.
    noise_std: standard deviation of the tie-breaking noise.
  Returns:
    (loss scalar, aux) with aux = {
      'scale_loss': {s: scalar}, 'photometric': {s: scalar}, 'smoothness': {s: scalar}
        (unweighted smoothness_loss),
      'automask_fraction': scalar, fraction of pixels (over all scales) where an identity loss
        won, i.e. that the auto-mask removed,
      'automask': [B, H, W, 1] float, 1 where an identity loss won at scale 0 (the first scale),
      'choice': {s: [B, H, W] int32}, which candidate the minimum took per pixel (0, 1 the
        identities of t-1, t+1; 2, 3 the reprojections), for diagnostics,
      'depth': [B, H, W, 1] full-resolution depth of scale 0 (the first scale), for summaries}.
  """
  prev, target, nxt = frames[:, 0], frames[:, 1], frames[:, 2]
  height, width = target.shape[1:3]
  to_prev = geometry.transformation_from_parameters(*pose_prev, invert=True)
  to_next = geometry.transformation_from_parameters(*pose_next)
  identity = jnp.concatenate(
      [reprojection_loss(prev, target), reprojection_loss(nxt, target)], axis=-1)   # [B,H,W,2]

  scales = sorted(disparities)
  use_noise = key is not None and noise_std != 0
  noise_keys = jax.random.split(key, len(scales)) if use_noise else [None] * len(scales)
  scale_loss, photometric, smoothness, choice, automask_fraction = {}, {}, {}, {}, []
  automask = depth_0 = None
  for s, noise_key in zip(scales, noise_keys):
    disp = disparities[s]
    _, depth = geometry.disp_to_depth(upsample_bilinear(disp, height, width), min_depth,
                                      max_depth)
    reprojection = jnp.concatenate([
        reprojection_loss(geometry.warp(prev, depth, to_prev, intrinsics), target),
        reprojection_loss(geometry.warp(nxt, depth, to_next, intrinsics), target),
    ], axis=-1)                                                                      # [B,H,W,2]
    noisy_identity = identity
    if noise_key is not None:
      # Drawn in float32 whatever the loss's dtype: a key gives the same noise in a float64 check
      # as in the float32 step it checks (a float64 draw takes other random bits).
      draw = jax.random.normal(noise_key, identity.shape, jnp.float32)
      noisy_identity = identity + noise_std * draw.astype(identity.dtype)
    combined = jnp.concatenate([noisy_identity, reprojection], axis=-1)             # [B,H,W,4]
    photometric[s] = jnp.mean(jnp.min(combined, axis=-1))
    choice[s] = jnp.argmin(combined, axis=-1).astype(jnp.int32)
    identity_won = (choice[s] < 2)[..., None].astype(target.dtype)
    automask_fraction.append(jnp.mean(identity_won))

    image_s = downsample_antialiased(target, *disp.shape[1:3])
    smoothness[s] = smoothness_loss(disp, image_s)
    scale_loss[s] = photometric[s] + smoothness_weight / (2 ** s) * smoothness[s]
    if automask is None:
      automask, depth_0 = identity_won, depth

  loss = sum(scale_loss.values()) / len(scales)
  aux = {
      'scale_loss': scale_loss,
      'photometric': photometric,
      'smoothness': smoothness,
      'automask_fraction': sum(automask_fraction) / len(scales),
      'automask': automask,
      'choice': choice,
      'depth': depth_0,
  }
  return loss, aux


def feature_distance(features: jax.Array, reference_features: jax.Array) -> jax.Array:
  """Plain L2 norm of the difference over all elements (not squared, not averaged) -> scalar.

  The gradient at a zero difference is 0 (as torch.norm's), not NaN: pretraining stage C starts
  with the trained encoder equal to the frozen one.
  """
  diff = features - reference_features
  sq = jnp.sum(diff * diff)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
