"""Camera geometry for self-supervised depth: disparity scaling, poses, back-projection, warping.

SPEC section 4, after monodepth2's layers.py: one small function per geometric step. All inputs
are NHWC; pixel coordinates are (u, v) = (column, row) of integer pixel centres, so pixel (u, v)
samples image[:, v, u].

The 3x3 / 4x4 products are written as elementwise multiply-adds on purpose: a float32 `dot` may run
in TF32 on GPUs by default (a 10-bit mantissa, i.e. errors of ~0.1 pixel at 512 px), and these
products are far too small to profit from matrix units anyway. For the same reason keep these
functions in float32 under a bfloat16 compute policy: bfloat16 pixel coordinates are off by pixels.
"""

# K (intrinsics) and T (transforms) keep their names from the maths.
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp

# Added to z before the perspective division (monodepth2's Project3D eps).
PROJECTION_EPS = 1e-7
# Added to the rotation angle before normalising the axis (monodepth2's rot_from_axisangle).
AXIS_EPS = 1e-7


def disp_to_depth(disp: jax.Array, min_depth: float = 0.1,
                  max_depth: float = 100.0) -> tuple[jax.Array, jax.Array]:
  """Sigmoid disparity -> (scaled disparity, depth), any shape.

  scaled = 1/max_depth + (1/min_depth - 1/max_depth) * disp, depth = 1/scaled, so disp in [0, 1]
  maps to depth in [min_depth, max_depth].
  """
  min_disp = 1.0 / max_depth
  max_disp = 1.0 / min_depth
  scaled_disp = min_disp + (max_disp - min_disp) * disp
  return scaled_disp, 1.0 / scaled_disp


def _safe_norm(x: jax.Array, axis: int = -1) -> jax.Array:
  """L2 norm over `axis` (kept) whose gradient at 0 is 0 (as torch.norm's), not NaN."""
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _matvec(m: jax.Array, x: jax.Array) -> jax.Array:
  """Batched matrix-vector product, elementwise (exact float32, no TF32 dot).

  Args:
    m: [B, I, J] matrices.
    x: [B, ..., J] vectors.
  Returns:
    [B, ..., I] with out[b, ..., i] = sum_j m[b, i, j] * x[b, ..., j].
  """
  m = m.reshape(m.shape[:1] + (1,) * (x.ndim - 2) + m.shape[1:])   # [B, 1.., I, J]
  return jnp.sum(m * x[..., None, :], axis=-1)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """[B, I, J] @ [B, J, K] -> [B, I, K], elementwise (exact float32, no TF32 dot)."""
  return jnp.sum(a[:, :, :, None] * b[:, None, :, :], axis=2)


def _inverse_3x3(m: jax.Array) -> jax.Array:
  """[B, 3, 3] -> [B, 3, 3] inverse by cofactors (elementwise; no LU/solver calls)."""
  a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
  d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
  g, h, i = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
  cof = jnp.stack([
      jnp.stack([e * i - f * h, c * h - b * i, b * f - c * e], -1),
      jnp.stack([f * g - d * i, a * i - c * g, c * d - a * f], -1),
      jnp.stack([d * h - e * g, b * g - a * h, a * e - b * d], -1),
  ], -2)                                                    # adjugate, rows of the inverse
  det = a * cof[:, 0, 0] + b * cof[:, 1, 0] + c * cof[:, 2, 0]
  return cof / det[:, None, None]


def _homogeneous(rotation: jax.Array, translation: jax.Array) -> jax.Array:
  """[B, 3, 3] rotation, [B, 3] translation -> [B, 4, 4] [[R, t], [0, 1]]."""
  batch = rotation.shape[0]
  top = jnp.concatenate([rotation, translation[:, :, None]], axis=2)           # [B, 3, 4]
  bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], rotation.dtype), (batch, 1, 4))
  return jnp.concatenate([top, bottom], axis=1)


def _rotation_3x3(axisangle: jax.Array) -> jax.Array:
  """[B, 3] axis-angle -> [B, 3, 3] rotation (Rodrigues, monodepth2's formulation)."""
  angle = _safe_norm(axisangle)                             # [B, 1]
  axis = axisangle / (angle + AXIS_EPS)
  ca, sa = jnp.cos(angle[:, 0]), jnp.sin(angle[:, 0])
  c = 1.0 - ca
  x, y, z = axis[:, 0], axis[:, 1], axis[:, 2]
  xs, ys, zs = x * sa, y * sa, z * sa
  xc, yc, zc = x * c, y * c, z * c
  xyc, yzc, zxc = x * yc, y * zc, z * xc
  return jnp.stack([
      jnp.stack([x * xc + ca, xyc - zs, zxc + ys], -1),
      jnp.stack([xyc + zs, y * yc + ca, yzc - xs], -1),
      jnp.stack([zxc - ys, yzc + xs, z * zc + ca], -1),
  ], -2)


def rotation_from_axisangle(axisangle: jax.Array) -> jax.Array:
  """[B, 3] axis-angle -> [B, 4, 4] homogeneous rotation.

  Rodrigues with angle = |v| and axis = v / (angle + 1e-7), exactly as monodepth2's
  rot_from_axisangle; the gradient at v = 0 is finite (torch.norm's zero subgradient).
  """
  return _homogeneous(_rotation_3x3(axisangle), jnp.zeros_like(axisangle))


def transformation_from_parameters(axisangle: jax.Array, translation: jax.Array,
                                   invert: bool = False) -> jax.Array:
  """Pose-network output -> [B, 4, 4] rigid transform.

  Args:
    axisangle: [B, 3]. translation: [B, 3].
    invert: False gives M = T(t) R = [[R, t], [0, 1]]; True gives the inverse
      R^T T(-t) = [[R^T, -R^T t], [0, 1]] (used for the pair (t-1, t) so that M maps target
      camera points into the t-1 camera).
  """
  rotation = _rotation_3x3(axisangle)
  if invert:
    rotation = jnp.swapaxes(rotation, 1, 2)
    translation = -_matvec(rotation, translation)
  return _homogeneous(rotation, translation)


def pixel_grid(height: int, width: int, dtype=jnp.float32) -> jax.Array:
  """[H, W, 2] integer pixel coordinates (u, v) = (column, row)."""
  v, u = jnp.meshgrid(jnp.arange(height, dtype=dtype), jnp.arange(width, dtype=dtype),
                      indexing='ij')
  return jnp.stack([u, v], axis=-1)


def backproject(depth: jax.Array, inv_K: jax.Array) -> jax.Array:
  """Camera-space points of every integer pixel.

  Args:
    depth: [B, H, W, 1] z-depth.
    inv_K: [B, 3, 3] inverse pixel intrinsics.
  Returns:
    [B, H, W, 3] points X = depth * K^-1 [u, v, 1] (u = column, v = row).
  """
  _, height, width, _ = depth.shape
  uv = pixel_grid(height, width, depth.dtype)
  uv1 = jnp.concatenate([uv, jnp.ones_like(uv[..., :1])], axis=-1)              # [H, W, 3]
  rays = _matvec(inv_K, jnp.broadcast_to(uv1, depth.shape[:1] + uv1.shape))    # [B, H, W, 3]
  return depth * rays


def project(points: jax.Array, K: jax.Array, T: jax.Array) -> jax.Array:
  """Pixel coordinates of transformed points.

  Args:
    points: [B, H, W, 3] camera-space points.
    K: [B, 3, 3] pixel intrinsics.
    T: [B, 4, 4] rigid transform applied to the points before projecting.
  Returns:
    [B, H, W, 2] (u, v) of K (R X + t), divided by (z + 1e-7).
  """
  projection = _matmul(K, T[:, :3, :])                                         # [B, 3, 4]
  cam = _matvec(projection[:, :, :3], points) + projection[:, None, None, :, 3]
  return cam[..., :2] / (cam[..., 2:3] + PROJECTION_EPS)


def bilinear_sample(image: jax.Array, coords: jax.Array) -> jax.Array:
  """Bilinear sampling at pixel coordinates, clamped to the border.

  Coordinate u maps exactly to column u (torch grid_sample align_corners=True semantics);
  coordinates outside the image are clamped to [0, W-1] x [0, H-1] first (padding_mode='border'),
  so their gradient w.r.t. coords is 0. Implemented with one gather of the 4 neighbours per pixel;
  differentiable w.r.t. image and coords.

  Args:
    image: [B, H, W, C].
    coords: [B, Ho, Wo, 2] (u, v) pixel coordinates into image.
  Returns:
    [B, Ho, Wo, C].
  """
  _, height, width, _ = image.shape
  u = jnp.clip(coords[..., 0], 0.0, width - 1.0)
  v = jnp.clip(coords[..., 1], 0.0, height - 1.0)
  u0 = jnp.floor(u)
  v0 = jnp.floor(v)
  du = (u - u0)[..., None]
  dv = (v - v0)[..., None]
  u0i = u0.astype(jnp.int32)
  v0i = v0.astype(jnp.int32)
  u1i = jnp.minimum(u0i + 1, width - 1)
  v1i = jnp.minimum(v0i + 1, height - 1)
  rows = jnp.stack([v0i, v0i, v1i, v1i], axis=1)             # [B, 4, Ho, Wo]: nw, ne, sw, se
  cols = jnp.stack([u0i, u1i, u0i, u1i], axis=1)

  def gather(img, r, c):                                     # [H, W, C], [4, Ho, Wo] x2
    return img[r, c]                                         # [4, Ho, Wo, C]

  corners = jax.vmap(gather)(image, rows, cols)              # [B, 4, Ho, Wo, C], one gather
  nw, ne, sw, se = (corners[:, i] for i in range(4))
  top = nw + (ne - nw) * du
  bottom = sw + (se - sw) * du
  return top + (bottom - top) * dv


def warp(source: jax.Array, depth: jax.Array, T: jax.Array, K: jax.Array) -> jax.Array:
  """Synthesises the target view from a source frame (SPEC section 4).

  Args:
    source: [B, H, W, C] source frame.
    depth: [B, H, W, 1] target-view depth.
    T: [B, 4, 4] transform from target camera to source camera coordinates.
    K: [B, 3, 3] pixel intrinsics at (H, W).
  Returns:
    [B, H, W, C] source sampled where each target pixel lands in the source view.
  """
  points = backproject(depth, _inverse_3x3(K))
  return bilinear_sample(source, project(points, K, T))
