"""sdeseg_jax.ops geometry, photometric losses and depth metrics.

Parity: every op is compared with an independent PyTorch (float64, NCHW, monodepth2-style
formulation written here) or NumPy float64 implementation on random inputs; JAX runs in float32.
Tolerance: 1e-5 relative, measured as |jax - ref| <= 1e-5 * (|ref| + max|ref|) elementwise, i.e.
relative to each value with an absolute floor of 1e-5 times the array's scale (entries of
rotation matrices or coordinates can be ~0, where a purely elementwise relative error means
nothing). Cases that float32 cannot meet at that tolerance run JAX in float64 (jax.enable_x64)
and say why. Known-answer tests check the geometry against scenes with an analytic solution.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdeseg_jax import ops

RTOL = 1e-5


def assert_close(actual, expected, rtol=RTOL):
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def t64(x):
  """NumPy / JAX array -> float64 torch tensor."""
  return torch.from_numpy(np.asarray(x, np.float64))


def nchw(x):
  """[B, H, W, C] array -> float64 torch [B, C, H, W]."""
  return t64(x).permute(0, 3, 1, 2)


def nhwc(x):
  """torch [B, C, H, W] -> NumPy [B, H, W, C]."""
  return x.permute(0, 2, 3, 1).detach().numpy()


def intrinsics(batch, height, width, rng):
  """[B, 3, 3] float32 pinhole intrinsics with some spread around a typical camera."""
  k = np.zeros((batch, 3, 3), np.float32)
  k[:, 0, 0] = width * rng.uniform(0.9, 1.3, batch)
  k[:, 1, 1] = height * rng.uniform(1.6, 2.2, batch)
  k[:, 0, 2] = width * rng.uniform(0.45, 0.55, batch)
  k[:, 1, 2] = height * rng.uniform(0.45, 0.55, batch)
  k[:, 2, 2] = 1
  return k


# ---------------------------------------------------------------------------------------------
# Independent PyTorch formulation (NCHW, float64) of monodepth2's maths.

def torch_disp_to_depth(disp, min_depth, max_depth):
  scaled = 1 / max_depth + (1 / min_depth - 1 / max_depth) * disp
  return scaled, 1 / scaled


def torch_rotation(vec):
  """[B, 3] -> [B, 4, 4] via the matrix form R = cos I + sin [k]x + (1 - cos) k k^T."""
  angle = torch.linalg.vector_norm(vec, dim=1, keepdim=True)
  k = vec / (angle + 1e-7)
  zero = torch.zeros_like(k[:, 0])
  cross = torch.stack([torch.stack([zero, -k[:, 2], k[:, 1]], 1),
                       torch.stack([k[:, 2], zero, -k[:, 0]], 1),
                       torch.stack([-k[:, 1], k[:, 0], zero], 1)], 1)
  ca, sa = torch.cos(angle)[:, :, None], torch.sin(angle)[:, :, None]
  rot3 = ca * torch.eye(3, dtype=vec.dtype) + sa * cross + (1 - ca) * k[:, :, None] * k[:, None]
  rot = torch.zeros(vec.shape[0], 4, 4, dtype=vec.dtype)
  rot[:, :3, :3] = rot3
  rot[:, 3, 3] = 1
  return rot


def torch_transformation(axisangle, translation, invert=False):
  rot = torch_rotation(axisangle)
  t = translation.clone()
  if invert:
    rot = rot.transpose(1, 2)
    t = -t
  trans = torch.eye(4, dtype=axisangle.dtype).repeat(axisangle.shape[0], 1, 1)
  trans[:, :3, 3] = t
  return rot @ trans if invert else trans @ rot


def torch_backproject(depth, inv_k):
  """depth [B,1,H,W], inv_k [B,3,3] -> [B,4,H*W] homogeneous camera points."""
  b, _, h, w = depth.shape
  v, u = torch.meshgrid(torch.arange(h, dtype=depth.dtype), torch.arange(w, dtype=depth.dtype),
                        indexing='ij')
  pix = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(h * w, dtype=depth.dtype)])
  cam = depth.reshape(b, 1, -1) * (inv_k @ pix)
  return torch.cat([cam, torch.ones(b, 1, h * w, dtype=depth.dtype)], 1)


def torch_project(points, k, t, h, w):
  """points [B,4,H*W] -> pixel coordinates [B,H,W,2]."""
  k4 = torch.eye(4, dtype=k.dtype).repeat(k.shape[0], 1, 1)
  k4[:, :3, :3] = k
  cam = (k4 @ t)[:, :3] @ points
  pix = cam[:, :2] / (cam[:, 2:3] + 1e-7)
  return pix.reshape(-1, 2, h, w).permute(0, 2, 3, 1)


def torch_grid_sample(image, pix):
  """image [B,C,H,W], pixel coordinates [B,Ho,Wo,2] -> [B,C,Ho,Wo] via grid_sample."""
  h, w = image.shape[2:]
  grid = torch.stack([pix[..., 0] / (w - 1), pix[..., 1] / (h - 1)], -1)
  grid = (grid - 0.5) * 2
  return F.grid_sample(image, grid, mode='bilinear', padding_mode='border', align_corners=True)


def torch_warp(source, depth, t, k):
  h, w = depth.shape[2:]
  points = torch_backproject(depth, torch.linalg.inv(k))
  return torch_grid_sample(source, torch_project(points, k, t, h, w))


def torch_ssim(x, y):
  pool = torch.nn.AvgPool2d(3, 1)
  pad = torch.nn.ReflectionPad2d(1)
  x, y = pad(x), pad(y)
  mu_x, mu_y = pool(x), pool(y)
  sigma_x = pool(x ** 2) - mu_x ** 2
  sigma_y = pool(y ** 2) - mu_y ** 2
  sigma_xy = pool(x * y) - mu_x * mu_y
  n = (2 * mu_x * mu_y + 0.01 ** 2) * (2 * sigma_xy + 0.03 ** 2)
  d = (mu_x ** 2 + mu_y ** 2 + 0.01 ** 2) * (sigma_x + sigma_y + 0.03 ** 2)
  return torch.clamp((1 - n / d) / 2, 0, 1)


def torch_reprojection(pred, target):
  l1 = (pred - target).abs().mean(1, True)
  return 0.85 * torch_ssim(pred, target).mean(1, True) + 0.15 * l1


def torch_smoothness(disp, img):
  disp = disp / (disp.mean(2, True).mean(3, True) + 1e-7)
  gdx = (disp[:, :, :, :-1] - disp[:, :, :, 1:]).abs()
  gdy = (disp[:, :, :-1, :] - disp[:, :, 1:, :]).abs()
  gix = (img[:, :, :, :-1] - img[:, :, :, 1:]).abs().mean(1, True)
  giy = (img[:, :, :-1, :] - img[:, :, 1:, :]).abs().mean(1, True)
  return (gdx * torch.exp(-gix)).mean() + (gdy * torch.exp(-giy)).mean()


def torch_sde_loss(disps, frames, k, pose_prev, pose_next, smoothness_weight=1e-3):
  """monodepth2's compute_losses (frames [B,3,C,H,W]; disps {s: [B,1,h,w]}), no noise."""
  prev, target, nxt = frames[:, 0], frames[:, 1], frames[:, 2]
  h, w = target.shape[2:]
  transforms = [torch_transformation(*pose_prev, invert=True), torch_transformation(*pose_next)]
  identity = torch.cat([torch_reprojection(prev, target), torch_reprojection(nxt, target)], 1)
  total, per_scale = 0, {}
  for s, disp in disps.items():
    up = F.interpolate(disp, [h, w], mode='bilinear', align_corners=False)
    _, depth = torch_disp_to_depth(up, 0.1, 100.0)
    reproj = torch.cat([torch_reprojection(torch_warp(src, depth, t, k), target)
                        for src, t in zip((prev, nxt), transforms)], 1)
    to_optimise, _ = torch.min(torch.cat([identity, reproj], 1), dim=1)
    color = target if s == 0 else F.interpolate(target, disp.shape[2:], mode='bilinear',
                                                align_corners=False, antialias=True)
    loss = to_optimise.mean() + smoothness_weight * torch_smoothness(disp, color) / 2 ** s
    per_scale[s] = loss
    total = total + loss
  return total / len(disps), per_scale


# ---------------------------------------------------------------------------------------------
# Geometry parity.

def test_disp_to_depth_matches_torch():
  disp = np.random.default_rng(0).uniform(0, 1, (2, 5, 7, 1)).astype(np.float32)
  scaled, depth = jax.jit(ops.disp_to_depth)(disp)
  ref_scaled, ref_depth = torch_disp_to_depth(t64(disp), 0.1, 100.0)
  assert_close(scaled, ref_scaled)
  assert_close(depth, ref_depth)
  assert float(depth.min()) >= 0.1 - 1e-6 and float(depth.max()) <= 100.0 + 1e-3


def _poses(rng, batch=5):
  axisangle = rng.normal(0, 0.8, (batch, 3)).astype(np.float32)
  axisangle[0] = 0                                        # the identity
  axisangle[1] = [0, 0, 3.0]                              # a large angle about one axis
  translation = rng.normal(0, 1, (batch, 3)).astype(np.float32)
  return axisangle, translation


def test_rotation_matches_torch_and_is_orthonormal():
  axisangle, _ = _poses(np.random.default_rng(1))
  rot = np.asarray(jax.jit(ops.rotation_from_axisangle)(axisangle), np.float64)
  assert_close(rot, torch_rotation(t64(axisangle)))
  r3 = rot[:, :3, :3]
  np.testing.assert_allclose(r3 @ r3.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r3.shape),
                             atol=1e-6)
  np.testing.assert_allclose(np.linalg.det(r3), 1, atol=1e-6)
  np.testing.assert_array_equal(rot[0], np.eye(4))


@pytest.mark.parametrize('invert', [False, True])
def test_transformation_matches_torch(invert):
  axisangle, translation = _poses(np.random.default_rng(2))
  m = jax.jit(ops.transformation_from_parameters, static_argnums=2)(axisangle, translation, invert)
  assert_close(m, torch_transformation(t64(axisangle), t64(translation), invert))


def test_inverted_transformation_is_the_inverse():
  axisangle, translation = _poses(np.random.default_rng(3))
  m = np.asarray(ops.transformation_from_parameters(axisangle, translation), np.float64)
  m_inv = np.asarray(ops.transformation_from_parameters(axisangle, translation, invert=True),
                     np.float64)
  eye = np.broadcast_to(np.eye(4), m.shape)
  np.testing.assert_allclose(m_inv @ m, eye, atol=1e-6)
  np.testing.assert_allclose(m @ m_inv, eye, atol=1e-6)


def test_backproject_and_project_match_torch():
  rng = np.random.default_rng(4)
  b, h, w = 3, 12, 20
  depth = rng.uniform(0.5, 50, (b, h, w, 1)).astype(np.float32)
  k = intrinsics(b, h, w, rng)
  axisangle, translation = (x[:b] * 0.1 for x in _poses(rng))
  t = np.asarray(ops.transformation_from_parameters(axisangle, translation))
  inv_k = np.linalg.inv(k.astype(np.float64)).astype(np.float32)

  points = jax.jit(ops.backproject)(depth, inv_k)
  ref_points = torch_backproject(nchw(depth), t64(inv_k))
  assert_close(points, ref_points[:, :3].reshape(b, 3, h, w).permute(0, 2, 3, 1))

  pix = jax.jit(ops.project)(points, k, t)
  assert_close(pix, torch_project(ref_points, t64(k), t64(t), h, w))


def _sample_coords(rng, b, h, w):
  """Coordinates over [-3, W+2] x [-3, H+2]: inside, outside and on the border."""
  u = rng.uniform(-3, w + 2, (b, h, w))
  v = rng.uniform(-3, h + 2, (b, h, w))
  u[:, 0, :4] = [0, w - 1, -1, w]                          # exactly on / just past the border
  v[:, 0, :4] = [h - 1, 0, h, -1]
  return np.stack([u, v], -1).astype(np.float32)


def test_bilinear_sample_matches_grid_sample_values_and_gradients():
  rng = np.random.default_rng(5)
  b, h, w, c = 2, 9, 13, 3
  image = rng.uniform(0, 1, (b, h, w, c)).astype(np.float32)
  coords = _sample_coords(rng, b, h, w)
  cotangent = rng.normal(0, 1, (b, h, w, c)).astype(np.float32)

  def objective(image, coords):
    return jnp.sum(ops.bilinear_sample(image, coords) * cotangent)

  out = jax.jit(ops.bilinear_sample)(image, coords)
  grad_image, grad_coords = jax.jit(jax.grad(objective, argnums=(0, 1)))(image, coords)

  image_t = nchw(image).requires_grad_()
  coords_t = t64(coords).requires_grad_()
  ref = torch_grid_sample(image_t, coords_t)
  (ref * nchw(cotangent)).sum().backward()
  assert_close(out, nhwc(ref))
  assert_close(grad_image, nhwc(image_t.grad))
  # Coordinate gradients: float32 pixel weights limit these to ~1e-6 absolute of values ~1.
  # On exactly u = 0 or W-1 (v likewise) the derivative is one-sided: torch's clamp gives 0,
  # jnp.clip passes the inner side's slope; both are valid subgradients, so those are skipped.
  on_border = np.zeros(coords.shape, bool)
  for axis, size in ((0, w), (1, h)):
    on_border[..., axis] = (coords[..., axis] == 0) | (coords[..., axis] == size - 1)
  grad_coords = np.where(on_border, 0, grad_coords)
  ref_grad_coords = np.where(on_border, 0, coords_t.grad.numpy())
  assert_close(grad_coords, ref_grad_coords, rtol=1e-4)
  outside = (coords < 0) | (coords > np.array([w - 1, h - 1]))
  assert outside.mean() > 0.1
  assert np.all(grad_coords[outside] == 0)


def _warp_inputs(rng, b=2, h=16, w=24, c=3):
  source = rng.uniform(0, 1, (b, h, w, c))
  depth = rng.uniform(1, 30, (b, h, w, 1))
  k = intrinsics(b, h, w, rng)
  axisangle = rng.normal(0, 0.05, (b, 3))
  translation = rng.normal(0, 0.5, (b, 3))                # moves many pixels out of the image
  return source, depth, k, axisangle, translation


def test_warp_matches_torch_float64():
  """x64: warp samples random images, so a float32 coordinate error e (~1e-7 relative of a
  coordinate ~W, amplified through K^-1, R, K and the division) becomes a value error
  e * |image gradient|, which grows with the resolution (measured float32 vs float64: 4e-6 max at
  16x24, 5e-5 at 128x256, 2e-4 at 512x512). float64 checks the maths exactly; the float32 test
  below checks the float32 path at a size where it meets the 1e-5 tolerance."""
  source, depth, k, axisangle, translation = _warp_inputs(np.random.default_rng(6))
  with jax.enable_x64(True):
    t = ops.transformation_from_parameters(jnp.asarray(axisangle), jnp.asarray(translation))
    out = jax.jit(ops.warp)(jnp.asarray(source), jnp.asarray(depth), t, jnp.asarray(k, jnp.float64))
    assert out.dtype == jnp.float64
  ref = torch_warp(nchw(source), nchw(depth), torch_transformation(t64(axisangle),
                                                                    t64(translation)), t64(k))
  coords = np.asarray(torch_project(torch_backproject(nchw(depth), torch.linalg.inv(t64(k))),
                                    t64(k), torch_transformation(t64(axisangle), t64(translation)),
                                    *depth.shape[1:3]))
  outside = ((coords[..., 0] < 0) | (coords[..., 0] > depth.shape[2] - 1) |
             (coords[..., 1] < 0) | (coords[..., 1] > depth.shape[1] - 1))
  assert 0.1 < outside.mean() < 0.9                        # the border clamp is exercised
  assert_close(out, nhwc(ref), rtol=1e-10)


def test_warp_float32_matches_torch():
  source, depth, k, axisangle, translation = _warp_inputs(np.random.default_rng(6))
  f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
  t = ops.transformation_from_parameters(f32(axisangle), f32(translation))
  out = jax.jit(ops.warp)(f32(source), f32(depth), t, f32(k))
  ref = torch_warp(nchw(f32(source)), nchw(f32(depth)),
                   torch_transformation(t64(f32(axisangle)), t64(f32(translation))), t64(f32(k)))
  assert_close(out, nhwc(ref))


# ---------------------------------------------------------------------------------------------
# Geometry with known answers.

def _pinhole(b, fx, fy, cx, cy):
  return np.broadcast_to(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32), (b, 3, 3))


def test_identity_transform_returns_the_source():
  rng = np.random.default_rng(7)
  b, h, w = 2, 16, 24
  source = rng.uniform(0, 1, (b, h, w, 3)).astype(np.float32)
  depth = rng.uniform(1, 10, (b, h, w, 1)).astype(np.float32)
  eye = np.broadcast_to(np.eye(4, dtype=np.float32), (b, 4, 4))
  out = jax.jit(ops.warp)(source, depth, eye, _pinhole(b, 20.0, 22.0, 11.5, 7.5))
  # Not bit-exact: the 1e-7 of the perspective division moves u by u * 1e-7 / depth, and float32
  # K^-1 K round trips by ~1e-6 px; both weight a neighbour by < 1e-5.
  np.testing.assert_allclose(out, source, atol=1e-5)


def test_translation_of_a_fronto_parallel_plane_shifts_by_fx_tx_over_depth():
  b, h, w = 2, 10, 30
  fx, fy, cx, cy, plane_depth, tx = 40.0, 40.0, 14.5, 4.5, 5.0, 0.5     # shift = 4 px
  k = _pinhole(b, fx, fy, cx, cy)
  depth = np.full((b, h, w, 1), plane_depth, np.float32)
  t = np.asarray(ops.transformation_from_parameters(np.zeros((b, 3), np.float32),
                                                    np.array([[tx, 0, 0]] * b, np.float32)))
  pix = ops.project(ops.backproject(depth, np.linalg.inv(k)), k, t)
  grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1)
  expected = grid + [fx * tx / plane_depth, 0]
  np.testing.assert_allclose(pix, np.broadcast_to(expected, pix.shape), atol=1e-5)

  # An image linear in u is interpolated exactly: the warp is a shift by 4 px, clamped at the end.
  source = np.broadcast_to((0.1 + 0.02 * grid[..., :1]).astype(np.float32), (b, h, w, 1))
  out = np.asarray(ops.warp(source, depth, t, k))
  shift = fx * tx / plane_depth
  expected = 0.1 + 0.02 * np.minimum(grid[..., :1] + shift, w - 1)
  np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-5)


def _render_plane(k, normal, offset, rot, trans, h, w, texture):
  """Renders a textured plane {X : normal . X = offset} (target camera coordinates).

  Ray casting, independent of sdeseg_jax: for a camera with X_cam = rot @ X_target + trans, the
  ray of pixel (u, v) is K^-1 [u, v, 1]; it meets the plane (rot normal) . X = offset +
  (rot normal) . trans. Returns the image texture(X_target) and the z-depth, both [H, W, ...].
  """
  grid = np.stack(list(np.meshgrid(np.arange(w), np.arange(h))) + [np.ones((h, w))], -1)
  rays = grid @ np.linalg.inv(k).T                          # [H, W, 3], z = 1
  normal_cam = rot @ normal
  lam = (offset + normal_cam @ trans) / (rays @ normal_cam)
  points_cam = rays * lam[..., None]
  points_target = (points_cam - trans) @ rot               # rot^T (X_cam - trans)
  return texture(points_target), lam[..., None]


def test_warp_reproduces_the_target_of_a_rendered_scene():
  h, w = 48, 64
  k = np.array([[50.0, 0, 31.5], [0, 52.0, 23.5], [0, 0, 1]])
  normal = np.array([0.1, -0.3, 1.0])
  normal /= np.linalg.norm(normal)
  offset = 8.0                                              # a tilted plane ~8 m away
  axisangle = np.array([0.01, -0.02, 0.015])
  translation = np.array([0.2, -0.05, 0.3])
  m = torch_transformation(t64(axisangle[None]), t64(translation[None]))[0].numpy()
  rot, trans = m[:3, :3], m[:3, 3]

  def texture(p):                                           # smooth texture on the plane (world)
    return np.stack([0.5 + 0.4 * np.sin(0.9 * p[..., 0] + 0.3 * p[..., 1]),
                     0.5 + 0.4 * np.cos(0.5 * p[..., 1] - 0.7 * p[..., 0]),
                     0.5 + 0.2 * np.sin(0.4 * p[..., 0] * p[..., 1] / 4)], -1)

  target, depth = _render_plane(k, normal, offset, np.eye(3), np.zeros(3), h, w, texture)
  source, _ = _render_plane(k, normal, offset, rot, trans, h, w, texture)
  f32 = lambda x: np.asarray(x, np.float32)[None]  # noqa: E731
  out = np.asarray(ops.warp(f32(source), f32(depth), f32(m), f32(k)))[0]

  # Where the target pixel lands inside the source image, only the bilinear interpolation of the
  # texture (spatial period >= ~5 px here) separates the warp from the rendered target.
  points = np.stack(list(np.meshgrid(np.arange(w), np.arange(h))) + [np.ones((h, w))], -1)
  cam = (points @ np.linalg.inv(k).T * depth) @ rot.T + trans
  uv = (cam @ k.T)[..., :2] / cam[..., 2:]
  inside = ((uv[..., 0] >= 0) & (uv[..., 0] <= w - 1) & (uv[..., 1] >= 0) &
            (uv[..., 1] <= h - 1))
  assert inside.mean() > 0.7
  error = np.abs(out - target)[inside]
  assert error.max() < 0.01, error.max()                   # measured 2.1e-3
  assert error.mean() < 0.002, error.mean()                # measured 3.9e-4 (unwarped: 2.0e-2)
  assert np.abs(source - target)[inside].mean() > 20 * error.mean()   # the motion is visible


# ---------------------------------------------------------------------------------------------
# Photometric parity.

def _images(seed, shape=(2, 11, 14, 3)):
  rng = np.random.default_rng(seed)
  x = rng.uniform(0, 1, shape).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.2, shape), 0, 1).astype(np.float32)   # correlated with x
  return x, y


def test_ssim_matches_torch():
  x, y = _images(8)
  out = jax.jit(ops.ssim)(x, y)
  assert out.shape == x.shape
  assert_close(out, nhwc(torch_ssim(nchw(x), nchw(y))))
  np.testing.assert_allclose(ops.ssim(x, x), 0, atol=1e-6)


def test_reprojection_loss_matches_torch():
  x, y = _images(9)
  out = jax.jit(ops.reprojection_loss)(x, y)
  assert out.shape == x.shape[:3] + (1,)
  assert_close(out, nhwc(torch_reprojection(nchw(x), nchw(y))))


def test_smoothness_loss_matches_torch():
  rng = np.random.default_rng(10)
  disp = rng.uniform(0.01, 1, (2, 11, 14, 1)).astype(np.float32)
  image = rng.uniform(0, 1, (2, 11, 14, 3)).astype(np.float32)
  out = jax.jit(ops.smoothness_loss)(disp, image)
  assert out.shape == ()
  assert_close(out, torch_smoothness(nchw(disp), nchw(image)))


@pytest.mark.parametrize('size', [(4, 6), (8, 12), (3, 5)])
def test_disparity_upsampling_matches_torch_interpolate(size):
  from sdeseg_jax.ops import photometric  # pylint: disable=import-outside-toplevel
  disp = np.random.default_rng(11).uniform(0, 1, (2,) + size + (1,)).astype(np.float32)
  out = photometric.upsample_bilinear(disp, 24, 24)
  ref = F.interpolate(nchw(disp), [24, 24], mode='bilinear', align_corners=False)
  assert_close(out, nhwc(ref))


def test_smoothness_image_downsampling_matches_torch_antialiased_interpolate():
  from sdeseg_jax.ops import photometric  # pylint: disable=import-outside-toplevel
  image = np.random.default_rng(12).uniform(0, 1, (2, 32, 48, 3)).astype(np.float32)
  for s in (1, 2, 3):
    size = (32 // 2 ** s, 48 // 2 ** s)
    out = photometric.downsample_antialiased(image, *size)
    ref = F.interpolate(nchw(image), size, mode='bilinear', align_corners=False, antialias=True)
    assert_close(out, nhwc(ref))


def _sde_inputs(seed, b=2, h=32, w=48):
  rng = np.random.default_rng(seed)
  base = rng.uniform(0, 1, (b, h + 4, w + 4, 3))
  # Three frames: shifted crops of one image plus noise, so the warps and the auto-mask matter.
  frames = np.stack([base[:, 2 + d:2 + d + h, 2 + 2 * d:2 + 2 * d + w] for d in (-1, 0, 1)], 1)
  frames = np.clip(frames + rng.normal(0, 0.05, frames.shape), 0, 1).astype(np.float32)
  frames[:, :, :6, :6] = frames[:, 1:2, :6, :6]            # static: identity loss 0 on [:5, :5]
  disps = {s: rng.uniform(0.01, 0.3, (b, h // 2 ** s, w // 2 ** s, 1)).astype(np.float32)
           for s in range(4)}
  k = intrinsics(b, h, w, rng)
  pose_prev = tuple(rng.normal(0, s, (b, 3)).astype(np.float32) for s in (0.02, 0.3))
  pose_next = tuple(rng.normal(0, s, (b, 3)).astype(np.float32) for s in (0.02, 0.3))
  return disps, frames, k, pose_prev, pose_next


def _torch_sde(disps, frames, k, pose_prev, pose_next):
  return torch_sde_loss({s: nchw(d) for s, d in disps.items()},
                        t64(frames).permute(0, 1, 4, 2, 3), t64(k),
                        tuple(map(t64, pose_prev)), tuple(map(t64, pose_next)))


@pytest.mark.slow
def test_sde_loss_matches_torch_monodepth2():
  disps, frames, k, pose_prev, pose_next = _sde_inputs(13)
  loss, aux = jax.jit(ops.sde_loss)(disps, frames, k, pose_prev, pose_next, None)
  ref_loss, ref_scales = _torch_sde(disps, frames, k, pose_prev, pose_next)
  assert_close(loss, ref_loss)
  for s in range(4):
    assert_close(aux['scale_loss'][s], ref_scales[s])
  assert 0.0 < float(aux['automask_fraction']) < 1.0
  assert aux['automask'].shape == aux['depth'].shape == (2, 32, 48, 1)
  assert np.all(np.asarray(aux['automask'])[:, :5, :5] == 1)
  _, ref_depth = torch_disp_to_depth(
      F.interpolate(nchw(disps[0]), [32, 48], mode='bilinear', align_corners=False), 0.1, 100.0)
  assert_close(aux['depth'], nhwc(ref_depth))


@pytest.mark.slow
def test_sde_loss_noise_is_tiny_and_deterministic_per_key():
  disps, frames, k, pose_prev, pose_next = _sde_inputs(14)
  loss_fn = jax.jit(ops.sde_loss)
  plain, _ = loss_fn(disps, frames, k, pose_prev, pose_next, None)
  a, _ = loss_fn(disps, frames, k, pose_prev, pose_next, jax.random.key(0))
  a_again, _ = loss_fn(disps, frames, k, pose_prev, pose_next, jax.random.key(0))
  b, _ = loss_fn(disps, frames, k, pose_prev, pose_next, jax.random.key(1))
  assert float(a) == float(a_again)
  assert float(a) != float(b)
  assert abs(float(a) - float(plain)) < 1e-5 and abs(float(b) - float(plain)) < 1e-5
  zero_std, _ = jax.jit(lambda *x: ops.sde_loss(*x, noise_std=0.0))(
      disps, frames, k, pose_prev, pose_next, jax.random.key(0))
  assert float(zero_std) == float(plain)


@pytest.mark.slow
def test_sde_loss_noise_is_the_same_in_float64():
  """A key gives the same tie-breaking noise in float64 as in float32 (the parity harness's
  float64 step replays the float32 one): where both identity losses are 0 (the static corner),
  the noise alone picks one, and both precisions pick the same."""
  inputs = _sde_inputs(14)
  _, aux32 = jax.jit(ops.sde_loss)(*inputs, jax.random.key(0))
  with jax.enable_x64(True):
    inputs64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), inputs)
    _, aux64 = jax.jit(ops.sde_loss)(*inputs64, jax.random.key(0))
    assert aux64['photometric'][0].dtype == jnp.float64
  for s in range(4):
    tied = np.asarray(aux32['choice'][s])[:, :5, :5]
    assert set(np.unique(tied)) == {0, 1}  # the noise decides, one way or the other
    np.testing.assert_array_equal(np.asarray(aux64['choice'][s])[:, :5, :5], tied)


@pytest.mark.slow
def test_sde_loss_gradients_are_finite_and_nonzero():
  disps, frames, k, pose_prev, pose_next = _sde_inputs(15)

  def objective(disps, pose_prev, pose_next):
    return ops.sde_loss(disps, frames, k, pose_prev, pose_next, jax.random.key(0))[0]

  grads = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(disps, pose_prev, pose_next)
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(leaf))
    assert np.abs(leaf).max() > 0


def test_rotation_gradient_at_zero_is_finite():
  grad = jax.jit(jax.grad(
      lambda v: jnp.sum(ops.transformation_from_parameters(v, v, True) ** 2)))(jnp.zeros((1, 3)))
  assert np.all(np.isfinite(grad))


def test_feature_distance_matches_torch_and_has_a_gradient_at_zero():
  rng = np.random.default_rng(16)
  a = rng.normal(0, 1, (2, 4, 5, 16)).astype(np.float32)
  b = rng.normal(0, 1, (2, 4, 5, 16)).astype(np.float32)
  assert_close(jax.jit(ops.feature_distance)(a, b), torch.linalg.vector_norm(t64(a) - t64(b)))
  assert float(ops.feature_distance(a, a)) == 0.0
  grad = jax.grad(ops.feature_distance)(jnp.asarray(a), a)   # stage C starts at zero distance
  np.testing.assert_array_equal(grad, 0)


# ---------------------------------------------------------------------------------------------
# Depth metrics.

def numpy_depth_metrics(pred, gt, min_depth=1e-3, max_depth=80.0, median_scaling=True):
  """monodepth2's evaluate_depth + compute_errors, one image at a time, float64."""
  out = {name: [] for name in ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3',
                               'ratio')}
  for p, g in zip(pred.astype(np.float64), gt.astype(np.float64)):
    mask = (g > min_depth) & (g < max_depth)
    p, g = p[mask], g[mask]
    ratio = np.median(g) / np.median(p) if median_scaling else 1.0
    p = np.clip(p * ratio, min_depth, max_depth)
    thresh = np.maximum(g / p, p / g)
    values = {'abs_rel': np.mean(np.abs(g - p) / g), 'sq_rel': np.mean((g - p) ** 2 / g),
              'rmse': np.sqrt(np.mean((g - p) ** 2)),
              'rmse_log': np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2)),
              'a1': np.mean(thresh < 1.25), 'a2': np.mean(thresh < 1.25 ** 2),
              'a3': np.mean(thresh < 1.25 ** 3), 'ratio': ratio}
    for name, value in values.items():
      out[name].append(value)
  return {name: np.array(v) for name, v in out.items()}


@pytest.mark.parametrize('median_scaling', [True, False])
def test_depth_metrics_match_numpy(median_scaling):
  rng = np.random.default_rng(17)
  gt = rng.uniform(0.5, 100, (3, 20, 30)).astype(np.float32)   # > 80 is invalid
  gt[:, :4] = 0                                                # no ground truth
  pred = (gt * rng.uniform(0.5, 1.6, gt.shape) * [[[0.03]], [[1.0]], [[30.0]]]).astype(np.float32)
  pred[:, :4] = rng.uniform(0.01, 500, pred[:, :4].shape)      # ignored pixels, anything
  pred[2, 5, 5] = 1e-4                                         # below min_depth after scaling
  out = jax.jit(ops.depth_metrics, static_argnames='median_scaling')(
      pred, gt, median_scaling=median_scaling)
  ref = numpy_depth_metrics(pred, gt, median_scaling=median_scaling)
  assert set(out) == set(ref)
  for name in ref:
    assert out[name].shape == (3,)
    assert_close(out[name], ref[name])


def test_depth_metrics_without_valid_pixels_are_nan():
  gt = np.ones((2, 4, 5), np.float32) * 10
  gt[1] = 0
  out = ops.depth_metrics(np.full_like(gt, 5.0), gt)
  for name, value in out.items():
    assert np.isfinite(value[0]), name
    assert np.isnan(value[1]), name
  np.testing.assert_allclose(out['ratio'][0], 2.0)
  np.testing.assert_allclose(out['abs_rel'][0], 0.0)
