"""Camera model and analytic ray-primitive intersections.

Conventions (documented in docs/synthetic_world.md):
- World frame: right-handed, metres; x lateral (right of the road direction), y along the road,
  z up; the ground is z = 0.
- Camera frame: OpenCV / monodepth2 — x right, y down, z forward.
- Pixel (u, v) (integer column, row) is the ray through K^-1 [u, v, 1]; the principal point is in
  the same integer pixel coordinates.
- Rays are stored unnormalised as D = R K^-1 [u, v, 1] (camera-frame z component 1), so the ray
  parameter s of a hit at o + s * D *is* its z-depth along the optical axis.
"""

from __future__ import annotations

import numpy as np

NEAR = 1e-3  # hits closer than this along the ray parameter are ignored (self-intersection guard)


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
  """[3, 3] float64 pinhole intrinsics in pixels."""
  return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def camera_rotation(yaw: float, pitch: float) -> np.ndarray:
  """[3, 3] camera-to-world rotation (columns = camera x, y, z axes in world coordinates).

  Args:
    yaw: heading in radians, 0 = along +y (the road), positive turns right (toward +x).
    pitch: radians, positive = looking up (nose up), 0 = level. Roll is always 0.
  """
  forward = np.array([np.sin(yaw), np.cos(yaw), 0.0])
  right = np.array([np.cos(yaw), -np.sin(yaw), 0.0])
  up = np.array([0.0, 0.0, 1.0])
  cam_z = np.cos(pitch) * forward + np.sin(pitch) * up
  cam_up = np.cos(pitch) * up - np.sin(pitch) * forward
  return np.stack([right, -cam_up, cam_z], axis=1)


def camera_to_world(position: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
  """[4, 4] camera-to-world pose: X_world = T[:3, :3] @ X_cam + T[:3, 3]."""
  pose = np.eye(4)
  pose[:3, :3] = camera_rotation(yaw, pitch)
  pose[:3, 3] = position
  return pose


def pixel_rays(K: np.ndarray, rotation: np.ndarray, width: int, height: int) -> np.ndarray:
  """[H, W, 3] world-space ray directions D = R K^-1 [u, v, 1] through integer pixel centres."""
  u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
  cam = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(K).T
  return cam @ rotation.T


def _safe_inverse(d: np.ndarray) -> np.ndarray:
  """1/d with exact zeros nudged to a tiny value of either sign (avoids 0 * inf = nan in slabs)."""
  d = np.where(d == 0.0, 1e-300, d)
  return 1.0 / d


def intersect_ground(origin, dirs, x_range, y_range) -> np.ndarray:
  """Ray parameter of hits with the ground z = 0 inside a rectangle; inf where missed.

  Args: origin [3]; dirs [N, 3]; x_range, y_range: (min, max) bounds of the ground in metres.
  Returns: [N] float64."""
  dz = dirs[:, 2]
  with np.errstate(divide='ignore', invalid='ignore'):
    s = -origin[2] / dz
  x = origin[0] + s * dirs[:, 0]
  y = origin[1] + s * dirs[:, 1]
  ok = (dz < 0) & (s > NEAR) & (x >= x_range[0]) & (x <= x_range[1]) \
      & (y >= y_range[0]) & (y <= y_range[1])
  return np.where(ok, s, np.inf)


def intersect_box(origin, dirs, center, half) -> np.ndarray:
  """Slab test against an axis-aligned box. origin [3], dirs [N, 3], center/half [3] -> [N]."""
  inv = _safe_inverse(dirs)
  t1 = (center - half - origin) * inv
  t2 = (center + half - origin) * inv
  lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
  # Column-wise max/min: much faster than reductions over a length-3 axis.
  t_near = np.maximum(np.maximum(lo[:, 0], lo[:, 1]), lo[:, 2])
  t_far = np.minimum(np.minimum(hi[:, 0], hi[:, 1]), hi[:, 2])
  hit = (t_far >= t_near) & (t_near > NEAR)
  return np.where(hit, t_near, np.inf)


def intersect_cylinder(origin, dirs, center, half) -> np.ndarray:
  """Vertical (z-axis) capped cylinder: center [3], half = (radius, radius, half_height) -> [N]."""
  radius, half_height = half[0], half[2]
  ox, oy = origin[0] - center[0], origin[1] - center[1]
  dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
  a = dx * dx + dy * dy
  b = 2.0 * (ox * dx + oy * dy)
  c = ox * ox + oy * oy - radius * radius
  disc = b * b - 4.0 * a * c
  with np.errstate(invalid='ignore', divide='ignore'):
    s_side = (-b - np.sqrt(disc)) / (2.0 * a)
  z_side = origin[2] + s_side * dz - center[2]
  side_ok = (disc >= 0) & (a > 0) & (s_side > NEAR) & (np.abs(z_side) <= half_height)
  s = np.where(side_ok, s_side, np.inf)
  # Caps: only one of them can face the ray; test both, keep the nearest valid.
  for cap_z in (center[2] + half_height, center[2] - half_height):
    with np.errstate(divide='ignore', invalid='ignore'):
      s_cap = (cap_z - origin[2]) / dz
    px, py = ox + s_cap * dx, oy + s_cap * dy
    cap_ok = (s_cap > NEAR) & (px * px + py * py <= radius * radius)
    s = np.where(cap_ok & (s_cap < s), s_cap, s)
  return s


def intersect_ellipsoid(origin, dirs, center, half) -> np.ndarray:
  """Axis-aligned ellipsoid with radii `half` [3]: scale to a unit sphere and solve. -> [N]."""
  o = (origin - center) / half
  d = dirs / half
  a = np.einsum('ij,ij->i', d, d)
  b = 2.0 * (d @ o)
  c = o @ o - 1.0
  disc = b * b - 4.0 * a * c
  with np.errstate(invalid='ignore'):
    s = (-b - np.sqrt(disc)) / (2.0 * a)
  return np.where((disc >= 0) & (s > NEAR), s, np.inf)


BOX, CYLINDER, ELLIPSOID = 0, 1, 2
INTERSECTORS = {BOX: intersect_box, CYLINDER: intersect_cylinder, ELLIPSOID: intersect_ellipsoid}


def surface_normals(kind, points, center, half) -> np.ndarray:
  """Outward unit normals at hit points of primitives of one kind.

  Args: points, center, half: [N, 3] (per-hit primitive parameters). Returns [N, 3]."""
  rel = points - center
  if kind == BOX:
    # The face whose plane the point lies on has the smallest residual.
    residual = np.abs(np.abs(rel) - half)
    axis = residual.argmin(axis=1)
    normal = np.zeros_like(rel)
    rows = np.arange(len(rel))
    normal[rows, axis] = np.sign(rel[rows, axis])
    normal[rows, axis] = np.where(normal[rows, axis] == 0, 1.0, normal[rows, axis])
    return normal
  if kind == CYLINDER:
    radial = np.hypot(rel[:, 0], rel[:, 1])
    on_cap = np.abs(np.abs(rel[:, 2]) - half[:, 2]) < np.abs(radial - half[:, 0])
    safe = np.maximum(radial, 1e-12)
    side = np.stack([rel[:, 0] / safe, rel[:, 1] / safe, np.zeros_like(safe)], axis=1)
    cap = np.zeros_like(rel)
    cap[:, 2] = np.where(rel[:, 2] >= 0, 1.0, -1.0)
    return np.where(on_cap[:, None], cap, side)
  normal = rel / (half * half)
  return normal / np.linalg.norm(normal, axis=1, keepdims=True)
