"""Ray casting renderer: one ray per pixel centre, analytic intersections, Lambertian shading.

Pipeline of `render_frame`:
1. Visibility: the ground plane for all pixels, then each primitive only inside the screen
   rectangle its bounding box projects to (clipped to the near plane), nearest first, skipping
   primitives already hidden behind what is drawn (a z-buffer on the ray parameter = z-depth).
2. Surface attributes at the hits: position, normal, and the pixel footprint along each world
   axis (from exact screen-space derivatives of the hit point on the tangent plane), which the
   textures use for analytic anti-aliasing.
3. Materials -> albedo; Lambertian light from a fixed sun + ambient; sky from the ray direction;
   a per-domain tone curve; 8-bit quantisation. No per-frame randomness anywhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.synthetic import geometry, labels, scene as scene_lib
from data_pipelines.synthetic.textures import (fbm2, fbm3, filtered_interval, filtered_pulse,
                                               filtered_step, hash01, mix)

FAR_DEPTH = 1000.0  # metres written as the depth of sky pixels
SKY, GROUND = -1, -2  # special hit indices (primitives are 0..M-1)
_NEAR_CLIP = 0.01     # near plane used when bounding primitives on screen
# Textures are box-filtered over 1.5 pixels (a mild camera blur): their edges then span more than
# one pixel, which keeps bilinear resampling between frames (the SDE warp) accurate.
_TEXTURE_BLUR = 1.5

_CORNER_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
                         np.float64)
_BOX_EDGES = np.array([(i, j) for i in range(8) for j in range(i + 1, 8)
                       if np.sum(_CORNER_SIGNS[i] != _CORNER_SIGNS[j]) == 1])


@dataclasses.dataclass(frozen=True)
class RenderedFrame:
  """One rendered frame and its ground truth (H x W)."""
  image: np.ndarray         # [H, W, 3] uint8 RGB
  label: np.ndarray         # [H, W] uint8 Cityscapes labelIds
  lane_marking: np.ndarray  # [H, W] bool: painted road markings (part of `road` in the label)
  depth: np.ndarray         # [H, W] float32 z-depth in metres; FAR_DEPTH for sky
  moving: np.ndarray        # [H, W] bool: pixels showing an object that moves during the snippet
  cam_to_world: np.ndarray  # [4, 4] float64


def render_frame(scene: scene_lib.Scene, K: np.ndarray, width: int, height: int,
                 frame: int) -> RenderedFrame:
  """Renders frame `frame` of a snippet; K [3, 3] in pixels of the width x height image."""
  pose = scene.camera.pose(frame)
  rotation, origin = pose[:3, :3], pose[:3, 3]
  rays = geometry.pixel_rays(K, rotation, width, height)
  centers = scene.prims.center + scene.prims.velocity * scene.camera.time(frame)
  depth, hit = _visibility(origin, rays, pose, K, scene, centers)

  flat_rays, flat_depth, flat_hit = rays.reshape(-1, 3), depth.reshape(-1), hit.reshape(-1)
  rgb = np.empty((flat_hit.size, 3))
  label = np.full(flat_hit.size, labels.SKY, np.uint8)
  marking = np.zeros(flat_hit.size, bool)
  moving = np.zeros(flat_hit.size, bool)

  sky = flat_hit == SKY
  focal = float(min(K[0, 0], K[1, 1]))
  rgb[sky] = _sky_color(scene.style, flat_rays[sky], focal, scene.ground.seed)
  solid = ~sky
  surface = _surface(scene, centers, origin, flat_rays[solid], flat_depth[solid],
                     flat_hit[solid], rotation, K)
  albedo, solid_label, solid_marking = _albedo(scene, surface)
  rgb[solid] = albedo * _light(scene.style, surface.normal)[:, None]
  label[solid] = solid_label
  marking[solid] = solid_marking
  is_prim = flat_hit >= 0
  moving[is_prim] = scene.prims.moving[flat_hit[is_prim]]

  return RenderedFrame(
      image=_tone_map(scene.style, rgb).reshape(height, width, 3),
      label=label.reshape(height, width),
      lane_marking=marking.reshape(height, width),
      depth=np.where(np.isfinite(depth), depth, FAR_DEPTH).astype(np.float32),
      moving=moving.reshape(height, width),
      cam_to_world=pose)


# ------------------------------------------------------------------------------------------------
# Visibility.

def _screen_rects(centers, half, pose, K, width, height):
  """Screen rectangles of primitive bounding boxes, clipped to the near plane.

  Returns: rects [M, 4] int (u0, u1, v0, v1; half-open pixel ranges), z_min [M] (a lower bound of
  the z-depth of any point of the primitive), visible [M] bool."""
  corners = centers[:, None, :] + half[:, None, :] * _CORNER_SIGNS  # [M, 8, 3]
  cam = (corners - pose[:3, 3]) @ pose[:3, :3]                     # world -> camera
  z = cam[..., 2]
  # Box edges crossing the near plane contribute their crossing points (exact clipped hull).
  a, b = cam[:, _BOX_EDGES[:, 0]], cam[:, _BOX_EDGES[:, 1]]
  za, zb = a[..., 2], b[..., 2]
  crosses = (za - _NEAR_CLIP) * (zb - _NEAR_CLIP) < 0
  with np.errstate(divide='ignore', invalid='ignore'):
    t = np.where(crosses, (_NEAR_CLIP - za) / (zb - za), 0.0)
  points = np.concatenate([cam, a + t[..., None] * (b - a)], axis=1)
  valid = np.concatenate([z >= _NEAR_CLIP, crosses], axis=1)
  pz = np.where(valid, points[..., 2], 1.0)
  u = K[0, 0] * points[..., 0] / pz + K[0, 2]
  v = K[1, 1] * points[..., 1] / pz + K[1, 2]
  any_valid = valid.any(axis=1)

  def bounds(c, size):
    lo = np.where(valid, c, np.inf).min(axis=1)
    hi = np.where(valid, c, -np.inf).max(axis=1)
    lo = np.clip(np.floor(np.nan_to_num(lo, posinf=size, neginf=0)), 0, size)
    hi = np.clip(np.ceil(np.nan_to_num(hi, posinf=size, neginf=0)) + 1, 0, size)
    return lo.astype(np.int64), hi.astype(np.int64)

  u0, u1 = bounds(u, width)
  v0, v1 = bounds(v, height)
  visible = any_valid & (u1 > u0) & (v1 > v0)
  z_min = np.where(any_valid, np.maximum(z.min(axis=1), _NEAR_CLIP), np.inf)
  return np.stack([u0, u1, v0, v1], axis=1), z_min, visible


def _visibility(origin, rays, pose, K, scene, centers):
  """Nearest hit per pixel. rays [H, W, 3] -> depth [H, W] (inf = sky), hit [H, W] int."""
  height, width = rays.shape[:2]
  ground = scene.ground
  depth = geometry.intersect_ground(origin, rays.reshape(-1, 3), ground.x_range, ground.y_range)
  depth = depth.reshape(height, width)
  hit = np.where(np.isfinite(depth), GROUND, SKY).astype(np.int64)
  prims = scene.prims
  if len(prims) == 0:
    return depth, hit
  rects, z_min, visible = _screen_rects(centers, prims.half, pose, K, width, height)
  for i in np.argsort(z_min):  # near to far: far primitives are often fully hidden already
    if not visible[i]:
      continue
    u0, u1, v0, v1 = rects[i]
    window = depth[v0:v1, u0:u1]
    if z_min[i] >= window.max():
      continue
    s = geometry.INTERSECTORS[prims.kind[i]](
        origin, rays[v0:v1, u0:u1].reshape(-1, 3), centers[i], prims.half[i]).reshape(window.shape)
    closer = s < window
    if closer.any():
      window[closer] = s[closer]
      hit[v0:v1, u0:u1][closer] = i
  return depth, hit


# ------------------------------------------------------------------------------------------------
# Surfaces.

@dataclasses.dataclass
class _Surface:
  """Attributes of N visible surface points (all arrays have N rows)."""
  hit: np.ndarray        # [N] primitive index or GROUND
  point: np.ndarray      # [N, 3] world position (at the frame's time for moving objects)
  local: np.ndarray      # [N, 3] position in the object's own frame (texture coordinates)
  normal: np.ndarray     # [N, 3]
  footprint: np.ndarray  # [N, 3] pixel footprint along the world axes, metres

  def subset(self, mask) -> '_Surface':
    return _Surface(*(getattr(self, f.name)[mask] for f in dataclasses.fields(self)))


def _surface(scene, centers, origin, rays, depth, hit, rotation, K) -> _Surface:
  """Positions, normals and footprints of hits. rays [N, 3], depth/hit [N]."""
  point = origin + depth[:, None] * rays
  normal = np.zeros_like(point)
  normal[:, 2] = 1.0  # ground
  local = point.copy()
  prims = scene.prims
  is_prim = hit >= 0
  idx = hit[is_prim]
  # Moving objects carry their texture with them: texture coordinates are the point at t = 0.
  local[is_prim] = point[is_prim] - (centers[idx] - prims.center[idx])
  for kind in (geometry.BOX, geometry.CYLINDER, geometry.ELLIPSOID):
    sel = np.flatnonzero(is_prim)[prims.kind[idx] == kind]
    if sel.size:
      k = hit[sel]
      normal[sel] = geometry.surface_normals(kind, point[sel], centers[k], prims.half[k])
  # Screen-space derivatives of the hit point on its tangent plane (what a GPU's ddx/ddy give).
  du, dv = rotation[:, 0] / K[0, 0], rotation[:, 1] / K[1, 1]
  n_dot_ray = np.einsum('ij,ij->i', normal, rays)
  limit = 0.02 * np.linalg.norm(rays, axis=1)
  n_dot_ray = np.where(np.abs(n_dot_ray) < limit, -limit, n_dot_ray)
  dp_du = depth[:, None] * (du - (normal @ du / n_dot_ray)[:, None] * rays)
  dp_dv = depth[:, None] * (dv - (normal @ dv / n_dot_ray)[:, None] * rays)
  footprint = np.minimum(_TEXTURE_BLUR * (np.abs(dp_du) + np.abs(dp_dv)), 50.0)
  return _Surface(hit=hit, point=point, local=local, normal=normal, footprint=footprint)


def _light(style, normal) -> np.ndarray:
  """[N] Lambertian shading factor: ambient + sun * max(0, n . L)."""
  sun = np.asarray(style.sun_direction)
  return style.ambient + style.sun_strength * np.maximum(normal @ sun, 0.0)


def _sky_color(style, rays, focal, seed) -> np.ndarray:
  """[N, 3] sky colour from the ray direction only (so it is the same in every frame)."""
  direction = rays / np.linalg.norm(rays, axis=1, keepdims=True)
  elevation = np.clip(direction[:, 2], 0.0, 1.0)
  color = mix(np.asarray(style.sky_horizon), np.asarray(style.sky_zenith), elevation ** 0.6)
  scale = 3.0
  clouds = fbm3(*(scale * direction.T), _TEXTURE_BLUR * scale / focal, seed,
                [(1.0, 0.6), (0.4, 0.3), (0.15, 0.15)])
  cover = np.clip(clouds * 1.6 + style.cloud_amount - 0.5, 0.0, 1.0)
  cover *= np.clip(elevation * 10.0, 0.0, 1.0)  # no clouds at the horizon
  return mix(color, np.asarray(style.cloud_color), cover * style.cloud_amount)


def _tone_map(style, rgb) -> np.ndarray:
  """Exposure, saturation and gamma of the domain, then 8-bit quantisation. [N, 3] -> uint8."""
  rgb = rgb * style.exposure
  gray = rgb.mean(axis=1, keepdims=True)
  rgb = np.clip(gray + style.saturation * (rgb - gray), 0.0, 1.0) ** style.gamma
  return np.round(rgb * 255.0).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Materials.

def _albedo(scene, surface: _Surface):
  """[N, 3] albedo, [N] Cityscapes labels, [N] lane-marking flags of the surface points."""
  n = len(surface.hit)
  albedo = np.empty((n, 3))
  label = np.empty(n, np.uint8)
  marking = np.zeros(n, bool)
  ground = surface.hit == GROUND
  if ground.any():
    albedo[ground], label[ground], marking[ground] = _ground(scene, surface.subset(ground))
  prims = scene.prims
  objects = np.flatnonzero(~ground)
  materials = prims.material[surface.hit[objects]]
  for material in np.unique(materials):
    sel = objects[materials == material]
    sub = surface.subset(sel)
    albedo[sel] = _SHADERS[material](scene.style, sub, _Params(prims, sub.hit))
    label[sel] = prims.label[sub.hit]
  return np.clip(albedo, 0.0, 1.0), label, marking


class _Params:
  """Per-point view of the hit primitives' attributes."""

  def __init__(self, prims, idx):
    self.color, self.color2 = prims.color[idx], prims.color2[idx]
    self.tex, self.seed = prims.tex[idx], prims.seed[idx]
    self.center, self.half = prims.center[idx], prims.half[idx]


def _vertical_coords(s: _Surface):
  """(h, fh): horizontal texture coordinate along a vertical face and its footprint."""
  along_x = np.abs(s.normal[:, 1]) > 0.5
  h = np.where(along_x, s.local[:, 0], s.local[:, 1])
  fh = np.where(along_x, s.footprint[:, 0], s.footprint[:, 1])
  return h, fh


def _grain(s: _Surface, seed, octaves) -> np.ndarray:
  """[N] band-limited 3D noise at the object-frame position."""
  x, y, z = s.local.T
  return fbm3(x, y, z, s.footprint.max(axis=1), seed, octaves)


def _facade(style, s, p):
  """Plaster or brick wall, a grid of tinted windows, shop windows, a darker roof."""
  scale = style.texture_scale
  h, fh = _vertical_coords(s)
  z, fz = s.local[:, 2], s.footprint[:, 2]
  f_iso = np.maximum(fh, fz)
  octaves = [(4.0 * scale, 0.07), (0.9 * scale, 0.05), (0.25 * scale, 0.04)]
  color = p.color * (1.0 + fbm2(h, z, f_iso, p.seed, octaves))[:, None]
  brick = p.tex[:, 5] > 0.5
  if brick.any():
    course, length = 0.09, 0.25
    rows = filtered_pulse(z, fz, course, 0.82)
    odd = filtered_pulse(z, fz, 2 * course, 0.5)  # every other course is shifted by half a brick
    joints = (odd * filtered_pulse(h, fh, length, 0.92)
              + (1 - odd) * filtered_pulse(h, fh, length, 0.92, length / 2))
    mortar = mix(np.full_like(color, 0.72), color, rows * joints)
    color = np.where(brick[:, None], mortar, color)
  period_u, period_v, frac_u, frac_v, ground_floor = p.tex[:, :5].T
  top = p.center[:, 2] + p.half[:, 2]
  win = (filtered_pulse(h, fh, period_u, frac_u, period_u * (1 - frac_u) / 2)
         * filtered_pulse(z - ground_floor, fz, period_v, frac_v, period_v * (1 - frac_v) / 2)
         * filtered_step(z, fz, ground_floor + 0.3) * filtered_step(top - z, fz, 0.8))
  # Window cells change tint at cell borders, which lie mid-wall (where `win` is 0).
  cell = hash01(np.floor(h / period_u).astype(np.int64),
                np.floor((z - ground_floor) / period_v).astype(np.int64), 3, p.seed)
  glass = p.color2 * (0.75 + 0.5 * cell)[:, None]
  color = mix(color, glass, win)
  shop = filtered_pulse(h, fh, 5.0, 0.6, 1.0) * filtered_interval(z, fz, 0.4, ground_floor - 0.7)
  color = mix(color * 0.85, p.color2 * 0.8, shop)
  color = color * (1.0 - 0.2 * np.exp(-z / 1.5))[:, None]  # soft darkening near the ground
  roof = s.normal[:, 2] > 0.5
  if roof.any():
    x, y = s.local[roof, 0], s.local[roof, 1]
    noise = fbm2(x, y, f_iso[roof], p.seed[roof], [(3.0, 0.1), (0.7, 0.08)])
    color[roof] = np.asarray(style.roof) * (1.0 + noise)[:, None]
  return color


def _sidewalk(style, s, p):
  """Square paving tiles with joints on top, concrete curb on the sides."""
  x, y, _ = s.local.T
  fx, fy = s.footprint[:, 0], s.footprint[:, 1]
  period = p.tex[:, 0]
  joint_x = filtered_pulse(x, fx, period, 0.06)
  joint_y = filtered_pulse(y, fy, period, 0.06)
  joint = 1.0 - (1.0 - joint_x) * (1.0 - joint_y)
  # Per-tile tint; tile borders lie inside the joints, which hide the jump.
  tile = hash01(np.floor(x / period).astype(np.int64), np.floor(y / period).astype(np.int64), 5,
                p.seed)
  noise = fbm2(x, y, np.maximum(fx, fy), p.seed, [(2.5, 0.06), (0.6, 0.05), (0.12, 0.05)])
  shade = (1.0 + 0.10 * (tile - 0.5) * (1.0 - joint) + noise) * (1.0 - 0.3 * joint)
  top = p.color * shade[:, None]
  side = p.color2 * (1.0 + _grain(s, p.seed, [(0.8, 0.05), (0.2, 0.04)]))[:, None]
  return np.where((s.normal[:, 2] > 0.5)[:, None], top, side)


def _paint(style, s, p):
  """A plain colour with grain of relative amplitude tex[0]."""
  amp = p.tex[:, 0]
  return p.color * (1.0 + amp * _grain(s, p.seed, [(1.0, 1.0), (0.25, 0.6)]))[:, None]


def _car(style, s, p):
  """Body colour above dark sills (where the wheels are)."""
  body = p.color * (1.0 + _grain(s, p.seed, [(1.5, 0.02)]))[:, None]
  sill = filtered_step(s.local[:, 2], s.footprint[:, 2], 0.4)
  return mix(p.color2, body, sill)


def _glass(style, s, p):
  """Car cabin: tinted glass brightening upward, a pillar mid-side, a body-coloured roof."""
  rel_z = (s.local[:, 2] - p.center[:, 2]) / (2 * p.half[:, 2]) + 0.5
  glass = p.color2 * (0.85 + 0.3 * np.clip(rel_z, 0, 1))[:, None]
  side = np.abs(s.normal[:, 0]) > 0.5
  pillar = side * filtered_interval(s.local[:, 1], s.footprint[:, 1], p.center[:, 1] - 0.08,
                                    p.center[:, 1] + 0.08)
  color = mix(glass, p.color, pillar)
  return np.where((s.normal[:, 2] > 0.5)[:, None], p.color, color)


def _sign(style, s, p):
  """A coloured plate with a white border on the face toward -y, bare metal elsewhere."""
  x, _, z = s.local.T
  border = 0.06
  inner = (filtered_interval(x, s.footprint[:, 0], p.center[:, 0] - p.half[:, 0] + border,
                             p.center[:, 0] + p.half[:, 0] - border)
           * filtered_interval(z, s.footprint[:, 2], p.center[:, 2] - p.half[:, 2] + border,
                               p.center[:, 2] + p.half[:, 2] - border))
  face = mix(p.color2, p.color, inner)
  front = s.normal[:, 1] < -0.5
  return np.where(front[:, None], face, np.asarray(style.metal))


_LAMP_COLORS = np.array([[0.95, 0.15, 0.1], [0.95, 0.7, 0.1], [0.1, 0.9, 0.4]])


def _traffic_light(style, s, p):
  """Dark housing with three lamps on the face toward -y; lamp tex[0] is lit."""
  x, _, z = s.local.T
  fx, fz = s.footprint[:, 0], s.footprint[:, 2]
  color = p.color.copy()
  front = (s.normal[:, 1] < -0.5)
  column = filtered_interval(x, fx, p.center[:, 0] - 0.1, p.center[:, 0] + 0.1)
  for k in range(3):
    zc = p.center[:, 2] + (1 - k) * 0.3
    lamp = front * column * filtered_interval(z, fz, zc - 0.1, zc + 0.1)
    lit = np.where((p.tex[:, 0] == k)[:, None], 1.0, 0.25)
    color = mix(color, _LAMP_COLORS[k] * lit, lamp)
  return color


def _bus(style, s, p):
  """Body colour, a window band with pillars, dark skirt."""
  h, fh = _vertical_coords(s)
  z, fz = s.local[:, 2], s.footprint[:, 2]
  body = p.color * (1.0 + _grain(s, p.seed, [(1.5, 0.03)]))[:, None]
  band = filtered_interval(z, fz, 1.3, 2.6) * (1.0 - filtered_pulse(h, fh, 1.4, 0.1))
  body = mix(body, p.color2, band * (np.abs(s.normal[:, 2]) < 0.5))
  return mix(np.full_like(body, 0.06), body, filtered_step(z, fz, 0.55))


def _person(style, s, p):
  """Shirt colour above the hip height tex[0], trousers below."""
  hip = filtered_step(s.local[:, 2], s.footprint[:, 2], p.tex[:, 0])
  return mix(p.color2, p.color, hip) * (1.0 + _grain(s, p.seed, [(0.3, 0.05)]))[:, None]


def _fence(style, s, p):
  """Vertical slats and two rails over dark gaps."""
  h, fh = _vertical_coords(s)
  z, fz = s.local[:, 2], s.footprint[:, 2]
  top = p.center[:, 2] + p.half[:, 2]
  slats = filtered_pulse(h, fh, 0.14, 0.65)
  rails = filtered_interval(z, fz, top - 0.25, top - 0.1) + filtered_interval(z, fz, 0.2, 0.35)
  return mix(p.color2, p.color, np.clip(slats + rails, 0.0, 1.0))


def _foliage(style, s, p):
  """Clumpy leaves: multi-octave 3D noise in brightness and a slow blend of two greens."""
  leaves = _grain(s, p.seed, [(1.3, 0.30), (0.45, 0.25), (0.15, 0.20)])
  hue = 0.5 + 0.5 * _grain(s, p.seed + 1, [(2.5, 1.0)])
  return mix(p.color, p.color2, hue) * (1.0 + leaves)[:, None]


_SHADERS = {
    scene_lib.MAT_FACADE: _facade, scene_lib.MAT_SIDEWALK: _sidewalk, scene_lib.MAT_PAINT: _paint,
    scene_lib.MAT_FOLIAGE: _foliage, scene_lib.MAT_GLASS: _glass, scene_lib.MAT_SIGN: _sign,
    scene_lib.MAT_LIGHT: _traffic_light, scene_lib.MAT_BUS: _bus, scene_lib.MAT_PERSON: _person,
    scene_lib.MAT_FENCE: _fence, scene_lib.MAT_CAR: _car,
}


def _marking_lines(ground, style):
  """(x_centre, width, dashed, colour) of the painted lines."""
  lines = []
  if style.centre_line == 'dashed':
    lines.append((0.0, 0.15, True, style.centre_marking))
  else:
    lines += [(-0.15, 0.1, False, style.centre_marking), (0.15, 0.1, False, style.centre_marking)]
  for side in (1, -1):
    for k in range(1, ground.lanes_per_side):
      lines.append((side * k * ground.lane_width, 0.12, True, style.marking))
    if ground.parking_width:  # between the driving lanes and the parking lane
      edge = ground.lanes_per_side * ground.lane_width
    else:
      edge = ground.road_half_width - 0.3
    lines.append((side * edge, 0.12, False, style.marking))
  return lines


def _ground(scene, s):
  """Asphalt with lane markings on the road, grass elsewhere. -> albedo, labels, marking flags."""
  style, ground = scene.style, scene.ground
  x, y, _ = s.point.T
  fx, fy = s.footprint[:, 0], s.footprint[:, 1]
  f_iso = np.maximum(fx, fy)
  road = np.abs(x) < ground.road_half_width
  albedo = np.empty((len(x), 3))
  marking = np.zeros(len(x), bool)
  if road.any():
    xr, yr, fxr, fyr = x[road], y[road], fx[road], fy[road]
    a = style.asphalt_noise
    octaves = [(6.0, 0.5 * a), (1.2, 0.4 * a), (0.3, 0.5 * a), (0.08, 0.4 * a)]
    noise = fbm2(xr, yr, f_iso[road], ground.seed, octaves)
    color = np.asarray(style.asphalt) * (1.0 + noise)[:, None]
    on_line = np.zeros(len(xr), bool)
    dash_period = 9.0 * style.texture_scale
    for xc, width, dashed, line_color in _marking_lines(ground, style):
      # Colour: the line box-filtered over the footprint; label: point-sampled at the pixel
      # centre like every other label (so thin far lines still get labelled pixels).
      line = filtered_interval(xr, fxr, xc - width / 2, xc + width / 2)
      centre = np.abs(xr - xc) < width / 2
      if dashed:
        line = line * filtered_pulse(yr, fyr, dash_period, 1 / 3)
        centre &= np.mod(yr, dash_period) < dash_period / 3
      color = mix(color, np.asarray(line_color), line)
      on_line |= centre
    albedo[road] = color
    marking[road] = on_line
  grass = ~road
  if grass.any():
    xg, yg = x[grass], y[grass]
    a = style.terrain_noise
    octaves = [(5.0, 0.4 * a), (1.0, 0.35 * a), (0.25, 0.35 * a), (0.06, 0.3 * a)]
    noise = fbm2(xg, yg, f_iso[grass], ground.seed + 11, octaves)
    dry = 0.5 + 0.5 * fbm2(xg, yg, f_iso[grass], ground.seed + 13, [(8.0, 1.0)])
    grass_color = mix(np.asarray(style.terrain), np.asarray(style.terrain_dry), dry)
    albedo[grass] = grass_color * (1.0 + noise)[:, None]
  label = np.where(road, labels.ROAD, labels.TERRAIN).astype(np.uint8)
  return albedo, label, marking
