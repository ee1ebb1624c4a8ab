"""Procedural street scenes: one independent scene and camera path per snippet.

A scene is a straight street along +y (world frame: x right, y along the road, z up, metres):
road with lanes and markings, raised sidewalks, grass strips, building blocks with facades of
varying setback, height and texture, a cross street facade closing the view, a background
skyline, poles with traffic signs / lights, trees, parked and moving vehicles, pedestrians and
riders. Everything is a list of primitives (axis-aligned boxes, vertical cylinders, axis-aligned
ellipsoids) plus the ground plane; `render.py` ray-casts them.

Two domains differ in appearance (palettes, sun, texture statistics, tone curve) and in geometry
(camera height and pitch, street proportions): `city` plays Cityscapes, `game` plays GTA5/SYNTHIA.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from data_pipelines.synthetic import geometry, labels

DOMAINS = ('city', 'game')

# Materials: which shading function colours a primitive (see render.py).
MAT_FACADE, MAT_SIDEWALK, MAT_PAINT, MAT_FOLIAGE, MAT_GLASS, MAT_SIGN, MAT_LIGHT, MAT_BUS, \
    MAT_PERSON, MAT_FENCE, MAT_CAR = range(11)


@dataclasses.dataclass(frozen=True)
class SceneParams:
  """Content frequencies; the defaults follow the long tail of the real benchmarks
  (road, building, vegetation, sky common; trucks, buses, riders rare)."""
  truck_probability: float = 0.12       # per snippet: one truck somewhere ahead
  bus_probability: float = 0.10         # per snippet: one bus somewhere ahead
  rider_probability: float = 0.10       # per snippet: one cyclist
  parked_car_density: float = 0.6       # probability a parking slot is taken
  moving_cars: float = 2.0              # Poisson mean of cars driving in the lanes
  moving_vehicle_fraction: float = 0.5  # trucks / buses that drive (others stand)
  pedestrians_per_side: float = 2.5     # Poisson mean per sidewalk
  moving_pedestrian_fraction: float = 0.3
  tree_probability: float = 0.65        # per side: the side is tree-lined
  sign_probability: float = 0.5         # per pole: carries a traffic sign
  traffic_light_probability: float = 0.25  # per pole: carries a traffic light
  gap_probability: float = 0.2          # per building slot: a gap between blocks
  moving_objects: bool = True           # False: every object stands still (same scene otherwise)

  @classmethod
  def with_overrides(cls, overrides: Mapping[str, object] | None) -> 'SceneParams':
    """Defaults with named fields replaced. Raises ValueError for unknown names or bad values."""
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
      raise ValueError(f'unknown scene parameter(s) {unknown}; known: {sorted(fields)}')
    for name, value in overrides.items():
      if fields[name].type in (bool, 'bool'):
        if not isinstance(value, bool):
          raise ValueError(f'scene parameter {name} must be true or false, got {value!r}')
      elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
          name.endswith(('_probability', '_fraction', '_density')) and value > 1):
        raise ValueError(f'scene parameter {name} must be a number >= 0 (and <= 1 for '
                         f'probabilities, fractions and densities), got {value!r}')
    return dataclasses.replace(cls(), **overrides)

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Style:
  """Appearance of a domain. Colours are display RGB in [0, 1]."""
  sky_zenith: tuple
  sky_horizon: tuple
  cloud_color: tuple
  cloud_amount: float
  sun_direction: tuple          # unit vector toward the sun (world frame)
  sun_strength: float
  ambient: float
  asphalt: tuple
  asphalt_noise: float          # relative amplitude of asphalt noise
  marking: tuple
  centre_marking: tuple
  centre_line: str              # 'dashed' (single white dashes) or 'double' (two solid lines)
  sidewalk: tuple
  tile_period: float
  curb: tuple
  terrain: tuple
  terrain_dry: tuple
  terrain_noise: float
  facades: tuple
  brick_colors: tuple
  brick_probability: float
  window_colors: tuple
  roof: tuple
  foliage: tuple
  bark: tuple
  car_colors: tuple
  truck_colors: tuple
  bus_colors: tuple
  sign_colors: tuple
  clothes: tuple
  skins: tuple
  metal: tuple
  texture_scale: float          # multiplies texture wavelengths (other texture statistics)
  saturation: float
  gamma: float
  exposure: float
  # Each scene turns the sun about the vertical by an angle uniform in +-this (0: one sun for the
  # whole domain). A fixed sun lights the same faces in every image: the camera-facing sides of
  # signs and vehicles are then always lit, or always in shadow.
  sun_azimuth_spread_deg: float = 0.0


def _unit(v):
  v = np.asarray(v, np.float64)
  return tuple((v / np.linalg.norm(v)).tolist())


STYLES = {
    # Overcast-ish European street: muted colours, soft light, fine textures.
    'city': Style(
        sky_zenith=(0.50, 0.63, 0.80), sky_horizon=(0.80, 0.83, 0.86),
        cloud_color=(0.90, 0.90, 0.92), cloud_amount=0.6,
        sun_direction=_unit((-0.35, -0.45, 0.80)), sun_strength=0.55, ambient=0.55,
        asphalt=(0.31, 0.31, 0.33), asphalt_noise=0.10, marking=(0.86, 0.86, 0.84),
        centre_marking=(0.86, 0.86, 0.84), centre_line='dashed',
        sidewalk=(0.63, 0.61, 0.58), tile_period=0.5, curb=(0.70, 0.70, 0.68),
        terrain=(0.42, 0.52, 0.28), terrain_dry=(0.50, 0.48, 0.33), terrain_noise=0.18,
        facades=((0.74, 0.70, 0.62), (0.62, 0.58, 0.53), (0.80, 0.77, 0.72),
                 (0.66, 0.64, 0.60), (0.70, 0.66, 0.56), (0.56, 0.56, 0.58)),
        brick_colors=((0.55, 0.33, 0.26), (0.60, 0.42, 0.32)), brick_probability=0.25,
        window_colors=((0.22, 0.26, 0.30), (0.30, 0.34, 0.38), (0.18, 0.20, 0.22)),
        roof=(0.36, 0.34, 0.34),
        foliage=((0.27, 0.38, 0.15), (0.33, 0.42, 0.20), (0.22, 0.32, 0.14)),
        bark=(0.32, 0.27, 0.22),
        car_colors=((0.15, 0.15, 0.16), (0.75, 0.75, 0.77), (0.45, 0.46, 0.50),
                    (0.20, 0.25, 0.40), (0.55, 0.12, 0.12), (0.88, 0.88, 0.88)),
        truck_colors=((0.85, 0.85, 0.84), (0.35, 0.45, 0.60)),
        bus_colors=((0.85, 0.80, 0.30), (0.75, 0.20, 0.20)),
        sign_colors=((0.10, 0.30, 0.65), (0.75, 0.12, 0.12), (0.90, 0.75, 0.10)),
        clothes=((0.15, 0.15, 0.18), (0.30, 0.30, 0.35), (0.45, 0.40, 0.35),
                 (0.20, 0.25, 0.40), (0.55, 0.55, 0.55)),
        skins=((0.85, 0.68, 0.57), (0.65, 0.48, 0.38), (0.45, 0.32, 0.25)),
        metal=(0.45, 0.46, 0.48), texture_scale=1.0, saturation=0.85, gamma=1.0, exposure=1.0),
    # Sunny game city: saturated palette, hard warm sun with dark ambient (strong contrast),
    # coarser and higher-contrast textures, a yellow double centre line.
    'game': Style(
        sky_zenith=(0.12, 0.32, 0.78), sky_horizon=(0.86, 0.78, 0.62),
        cloud_color=(1.0, 0.97, 0.92), cloud_amount=0.25,
        sun_direction=_unit((0.65, 0.25, 0.45)), sun_strength=1.0, ambient=0.32,
        asphalt=(0.20, 0.20, 0.23), asphalt_noise=0.22, marking=(0.95, 0.95, 0.92),
        centre_marking=(0.95, 0.78, 0.10), centre_line='double',
        sidewalk=(0.66, 0.48, 0.42), tile_period=0.9, curb=(0.80, 0.78, 0.72),
        terrain=(0.55, 0.62, 0.22), terrain_dry=(0.70, 0.60, 0.35), terrain_noise=0.30,
        facades=((0.88, 0.62, 0.38), (0.92, 0.86, 0.62), (0.42, 0.62, 0.66),
                 (0.78, 0.42, 0.35), (0.96, 0.95, 0.90), (0.60, 0.70, 0.45)),
        brick_colors=((0.70, 0.30, 0.20), (0.62, 0.25, 0.18)), brick_probability=0.35,
        window_colors=((0.10, 0.30, 0.45), (0.35, 0.55, 0.70), (0.08, 0.12, 0.18)),
        roof=(0.45, 0.25, 0.20),
        foliage=((0.30, 0.55, 0.10), (0.42, 0.62, 0.12), (0.20, 0.45, 0.15)),
        bark=(0.40, 0.28, 0.18),
        car_colors=((0.85, 0.10, 0.10), (0.10, 0.35, 0.85), (0.95, 0.80, 0.10),
                    (0.10, 0.10, 0.10), (0.95, 0.95, 0.95), (0.15, 0.65, 0.30)),
        truck_colors=((0.90, 0.50, 0.10), (0.95, 0.95, 0.95)),
        bus_colors=((0.20, 0.50, 0.85), (0.95, 0.70, 0.10)),
        sign_colors=((0.05, 0.35, 0.80), (0.85, 0.05, 0.05), (0.10, 0.60, 0.20)),
        clothes=((0.80, 0.15, 0.15), (0.15, 0.40, 0.80), (0.95, 0.85, 0.20),
                 (0.10, 0.10, 0.10), (0.90, 0.90, 0.90)),
        skins=((0.90, 0.70, 0.55), (0.60, 0.42, 0.30), (0.40, 0.28, 0.20)),
        metal=(0.30, 0.32, 0.30), texture_scale=1.6, saturation=1.3, gamma=0.9, exposure=1.05,
        sun_azimuth_spread_deg=180.0),  # a game's time of day and street orientations vary
}


@dataclasses.dataclass(frozen=True)
class Primitives:
  """Struct of arrays of M primitives; positions at the annotated frame's time (t = 0)."""
  kind: np.ndarray       # [M] int: geometry.BOX / CYLINDER / ELLIPSOID
  center: np.ndarray     # [M, 3]
  half: np.ndarray       # [M, 3] box half extents; cylinder (r, r, half height); ellipsoid radii
  velocity: np.ndarray   # [M, 3] m/s (zero for static primitives)
  label: np.ndarray      # [M] Cityscapes labelId
  material: np.ndarray   # [M] MAT_*
  color: np.ndarray      # [M, 3] primary albedo
  color2: np.ndarray     # [M, 3] secondary albedo (windows, trousers, glass, ...)
  tex: np.ndarray        # [M, 6] material parameters
  seed: np.ndarray       # [M] int64 texture seed
  object_id: np.ndarray  # [M] int: primitives of one object share it

  def __len__(self) -> int:
    return len(self.kind)

  @property
  def moving(self) -> np.ndarray:
    """[M] bool: primitives that move between frames."""
    return np.any(self.velocity != 0.0, axis=1)


@dataclasses.dataclass(frozen=True)
class Ground:
  """The z = 0 plane: road where |x| < road_half_width, grass elsewhere, inside the bounds."""
  road_half_width: float
  lane_width: float
  lanes_per_side: int
  parking_width: float
  x_range: tuple
  y_range: tuple
  seed: int


@dataclasses.dataclass(frozen=True)
class CameraPath:
  """Camera poses of the F frames of a snippet (annotated frame F // 2 at time 0)."""
  positions: np.ndarray   # [F, 3] world
  yaws: np.ndarray        # [F] radians, 0 = along +y, positive turns right
  pitch: float            # radians, positive = looking up
  height: float           # metres above the road
  speed: float            # m/s
  frame_interval: float   # seconds between frames

  @property
  def num_frames(self) -> int:
    return len(self.yaws)

  def time(self, frame: int) -> float:
    """Seconds of `frame` relative to the annotated frame."""
    return (frame - self.num_frames // 2) * self.frame_interval

  def pose(self, frame: int) -> np.ndarray:
    """[4, 4] camera-to-world pose of `frame`."""
    return geometry.camera_to_world(self.positions[frame], self.yaws[frame], self.pitch)


@dataclasses.dataclass(frozen=True)
class Scene:
  domain: str
  style: Style
  prims: Primitives
  ground: Ground
  camera: CameraPath


# ------------------------------------------------------------------------------------------------
# Domain geometry: camera rigs and street proportions.

@dataclasses.dataclass(frozen=True)
class _Geometry:
  frame_interval: float
  speed: tuple
  lanes: tuple
  lane_width: tuple
  parking_probability: float
  sidewalk_width: tuple
  terrain_probability: float
  terrain_width: tuple
  building_width: tuple
  building_height: tuple
  setback_max: float
  street_length: tuple


_GEOMETRY = {
    'city': _Geometry(
        frame_interval=1 / 17, speed=(6.0, 12.0), lanes=(1, 1, 2), lane_width=(3.0, 3.4),
        parking_probability=0.7, sidewalk_width=(2.0, 4.0), terrain_probability=0.5,
        terrain_width=(1.0, 3.0), building_width=(10.0, 28.0), building_height=(9.0, 24.0),
        setback_max=3.0, street_length=(110.0, 260.0)),
    'game': _Geometry(
        frame_interval=1 / 12, speed=(5.0, 12.0), lanes=(1, 2, 2, 3), lane_width=(3.3, 3.8),
        parking_probability=0.5, sidewalk_width=(1.5, 5.5), terrain_probability=0.6,
        terrain_width=(1.0, 5.0), building_width=(8.0, 36.0), building_height=(5.0, 45.0),
        setback_max=6.0, street_length=(90.0, 300.0)),
}


def sample_camera_rig(rng: np.random.Generator, domain: str) -> tuple[float, float]:
  """(height_m, pitch_rad). city: car-mounted and level (1.2-1.6 m, pitch 0). game: pedestrian
  (0.9-1.2 m), car (1.3-2.2 m) or elevated (3-6 m) views, pitch in [-15, +5] degrees."""
  if domain == 'city':
    return float(rng.uniform(1.2, 1.6)), 0.0
  mode = rng.choice(3, p=[0.25, 0.35, 0.40])
  height = [rng.uniform(0.9, 1.2), rng.uniform(1.3, 2.2), rng.uniform(3.0, 6.0)][mode]
  pitch_deg = rng.uniform(-15.0, 0.0) if mode == 2 else rng.uniform(-15.0, 5.0)
  return float(height), float(np.deg2rad(pitch_deg))


def _camera_path(rng, geo: _Geometry, x0: float, height: float, pitch: float,
                 frames: int) -> CameraPath:
  """Forward drive with a smooth small yaw oscillation; the annotated frame sits at y = 0."""
  dt = geo.frame_interval
  speed = float(rng.uniform(*geo.speed))
  times = (np.arange(frames) - frames // 2) * dt
  yaw0 = np.deg2rad(rng.uniform(-2.0, 2.0))
  amp = np.deg2rad(rng.uniform(0.0, 1.5))
  omega, phase = rng.uniform(0.5, 1.5), rng.uniform(0.0, 2 * np.pi)
  yaws = yaw0 + amp * np.sin(omega * times + phase)
  # Each step advances along the mean heading of its two end frames.
  mid = 0.5 * (yaws[1:] + yaws[:-1])
  steps = speed * dt * np.stack([np.sin(mid), np.cos(mid)], axis=1)
  xy = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
  xy -= xy[frames // 2]
  positions = np.column_stack([xy[:, 0] + x0, xy[:, 1], np.full(frames, height)])
  return CameraPath(positions=positions, yaws=yaws, pitch=pitch, height=height, speed=speed,
                    frame_interval=dt)


# ------------------------------------------------------------------------------------------------
# Scene assembly.

class _Builder:
  """Accumulates primitives row by row."""

  def __init__(self, rng: np.random.Generator):
    self._rng = rng
    self._rows: list[tuple] = []
    self._next_object = 0

  def new_object(self) -> int:
    self._next_object += 1
    return self._next_object

  def add(self, kind, center, half, label, material, color, color2=(0.0, 0.0, 0.0),
          tex=(), obj=None, velocity=(0.0, 0.0, 0.0)) -> None:
    tex = tuple(tex) + (0.0,) * (6 - len(tex))
    obj = self.new_object() if obj is None else obj
    self._rows.append((kind, center, half, velocity, label, material, color, color2, tex,
                       int(self._rng.integers(1, 2**31)), obj))

  def add_box(self, lo, hi, label, material, color, **kw) -> None:
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    self.add(geometry.BOX, 0.5 * (lo + hi), 0.5 * np.abs(hi - lo), label, material, color, **kw)

  def build(self, moving_objects: bool) -> Primitives:
    """The primitives; with moving_objects False every velocity is zero (placement unchanged)."""
    cols = list(zip(*self._rows))
    floats = lambda i: np.asarray(cols[i], np.float64).reshape(len(self._rows), -1)
    ints = lambda i: np.asarray(cols[i], np.int64)
    velocity = floats(3) if moving_objects else np.zeros((len(self._rows), 3))
    return Primitives(
        kind=ints(0), center=floats(1), half=floats(2), velocity=velocity, label=ints(4),
        material=ints(5), color=np.clip(floats(6), 0.0, 1.0), color2=np.clip(floats(7), 0.0, 1.0),
        tex=floats(8), seed=ints(9), object_id=ints(10))


class _Lanes:
  """Occupied y-intervals per lane, so vehicles never overlap each other or the camera."""

  def __init__(self):
    self._busy: dict[object, list[tuple[float, float]]] = {}

  def reserve(self, lane, lo: float, hi: float) -> bool:
    intervals = self._busy.setdefault(lane, [])
    if any(lo < b and a < hi for a, b in intervals):
      return False
    intervals.append((lo, hi))
    return True


def _pick(rng, options):
  return options[int(rng.integers(len(options)))]


def _jitter(rng, color, amount=0.08):
  """A palette colour with a small per-object brightness variation."""
  return tuple(np.clip(np.asarray(color) * rng.uniform(1 - amount, 1 + amount), 0, 1).tolist())


def _box_x(side, x_near, x_far):
  """(x_min, x_max) of a box spanning |x| in [x_near, x_far] on `side` (+1 right, -1 left)."""
  xa, xb = side * x_near, side * x_far
  return min(xa, xb), max(xa, xb)


def build_scene(seed_sequence: np.random.SeedSequence, domain: str, frames: int,
                params: SceneParams) -> Scene:
  """Builds the scene and camera path of one snippet.

  Args:
    seed_sequence: the snippet's entropy (the same sequence gives the same scene).
    domain: 'city' or 'game'.
    frames: number of frames F of the snippet (the street is long enough for the drive).
    params: content frequencies.
  """
  rng = np.random.default_rng(seed_sequence)
  geo, style = _GEOMETRY[domain], STYLES[domain]
  b = _Builder(rng)
  lanes = _Lanes()

  n_lanes = int(_pick(rng, geo.lanes))
  lane_w = float(rng.uniform(*geo.lane_width))
  parking_w = 2.2 if rng.random() < geo.parking_probability else 0.0
  half_road = n_lanes * lane_w + parking_w
  height, pitch = sample_camera_rig(rng, domain)
  cam_x = lane_w * (n_lanes - 0.5) + rng.uniform(-0.25, 0.25)  # the outer right lane
  camera = _camera_path(rng, geo, cam_x, height, pitch, frames)
  y_cam0, y_cam1 = camera.positions[0, 1], camera.positions[-1, 1]
  y_end = float(max(rng.uniform(*geo.street_length), y_cam1 + 60.0))
  y_start = float(min(-80.0, y_cam0 - 80.0))
  # The camera's lane stays clear along its whole drive.
  lanes.reserve(('drive', 1, n_lanes), y_cam0 - 6.0, y_cam1 + 10.0)
  lanes.reserve(('edge', 1), y_cam0 - 6.0, y_cam1 + 10.0)

  for side in (1, -1):
    sidewalk_w = float(rng.uniform(*geo.sidewalk_width))
    terrain_w = 0.0
    if rng.random() < geo.terrain_probability:
      terrain_w = float(rng.uniform(*geo.terrain_width))
    _add_sidewalk(b, rng, style, side, half_road, sidewalk_w, y_start, y_end)
    _add_buildings(b, rng, style, geo, params, side, half_road + sidewalk_w + terrain_w,
                   y_start, y_end)
    _add_background(b, rng, style, side, y_start, y_end)
    _add_poles(b, rng, style, params, side, half_road, y_end)
    if rng.random() < params.tree_probability:
      _add_trees(b, rng, style, side, half_road, sidewalk_w, terrain_w, y_end)
    _add_pedestrians(b, rng, style, params, side, half_road, sidewalk_w)
  _add_cross_street(b, rng, style, y_end)

  timing = (camera.time(0), camera.time(frames - 1))
  if parking_w > 0:
    for side in (1, -1):
      x = side * (n_lanes * lane_w + parking_w / 2)
      _add_parked_cars(b, rng, style, params, lanes, side, x, y_end)
  _add_traffic(b, rng, style, params, lanes, n_lanes, lane_w, parking_w, timing)

  ground = Ground(road_half_width=half_road, lane_width=lane_w, lanes_per_side=n_lanes,
                  parking_width=parking_w, x_range=(-260.0, 260.0),
                  y_range=(y_start - 120.0, y_end + 40.0), seed=int(rng.integers(1, 2**31)))
  # Drawn last: the scene's geometry and colours are the same whatever the spread.
  style = _turn_sun(style, rng.uniform(-1.0, 1.0) * style.sun_azimuth_spread_deg)
  return Scene(domain=domain, style=style, prims=b.build(params.moving_objects), ground=ground,
               camera=camera)


def _turn_sun(style: Style, degrees: float) -> Style:
  """The style with its sun turned about the vertical (z) axis by `degrees`."""
  a = np.deg2rad(degrees)
  x, y, z = style.sun_direction
  return dataclasses.replace(style, sun_direction=(x * np.cos(a) - y * np.sin(a),
                                                   x * np.sin(a) + y * np.cos(a), z))


CURB_HEIGHT = 0.13


def _add_sidewalk(b, rng, style, side, half_road, width, y0, y1):
  """Raised sidewalk slab (curb height) between the road edge and the property line."""
  x_lo, x_hi = _box_x(side, half_road, half_road + width)
  # Split lengthwise so most pieces lie fully in front of the camera (tight screen bounds).
  edges = np.concatenate([np.arange(y0, 40.0, 30.0), np.arange(40.0, y1, 15.0), [y1]])
  edges = np.unique(np.clip(edges, y0, y1))
  tile = style.tile_period * rng.uniform(0.9, 1.1)
  for a, c in zip(edges[:-1], edges[1:]):
    b.add_box((x_lo, a, 0.0), (x_hi, c, CURB_HEIGHT), labels.SIDEWALK, MAT_SIDEWALK,
              style.sidewalk, color2=style.curb, tex=(tile,))


def _facade(b, rng, style, lo, hi):
  """A building block with windows (and bricks for some)."""
  brick = rng.random() < style.brick_probability
  color = _jitter(rng, _pick(rng, style.brick_colors if brick else style.facades))
  window = _jitter(rng, _pick(rng, style.window_colors), 0.15)
  period_u, period_v = rng.uniform(2.4, 4.2), rng.uniform(2.9, 3.6)
  ground_floor = rng.uniform(3.2, 4.6)
  b.add_box(lo, hi, labels.BUILDING, MAT_FACADE, color, color2=window,
            tex=(period_u, period_v, rng.uniform(0.35, 0.6), rng.uniform(0.4, 0.6), ground_floor,
                 1.0 if brick else 0.0))


def _add_buildings(b, rng, style, geo, params, side, x_front, y0, y1):
  """Blocks along the street with setbacks; gaps hold a hedge, fence, wall or nothing."""
  y = y0
  while y < y1:
    if rng.random() < params.gap_probability:
      gap = rng.uniform(3.0, 12.0)
      _add_gap_filler(b, rng, style, side, x_front, y, min(y + gap, y1))
      y += gap
      continue
    width = rng.uniform(*geo.building_width)
    depth = rng.uniform(10.0, 25.0)
    height = rng.uniform(*geo.building_height)
    setback = rng.uniform(0.0, geo.setback_max) if rng.random() < 0.5 else 0.0
    x_lo, x_hi = _box_x(side, x_front + setback, x_front + setback + depth)
    _facade(b, rng, style, (x_lo, y, 0.0), (x_hi, min(y + width, y1), height))
    y += width


def _add_gap_filler(b, rng, style, side, x_front, ya, yb):
  choice = rng.choice(4, p=[0.35, 0.25, 0.15, 0.25])
  if choice == 0:  # hedge
    x_lo, x_hi = _box_x(side, x_front + 0.2, x_front + 1.0)
    b.add_box((x_lo, ya, 0.0), (x_hi, yb, rng.uniform(0.8, 1.8)), labels.VEGETATION,
              MAT_FOLIAGE, _pick(rng, style.foliage), color2=_pick(rng, style.foliage))
  elif choice == 1:  # fence
    x_lo, x_hi = _box_x(side, x_front + 0.2, x_front + 0.25)
    b.add_box((x_lo, ya, 0.0), (x_hi, yb, rng.uniform(1.2, 2.0)), labels.FENCE, MAT_FENCE,
              _jitter(rng, (0.55, 0.50, 0.45)), color2=(0.20, 0.18, 0.16))
  elif choice == 2:  # wall
    x_lo, x_hi = _box_x(side, x_front + 0.2, x_front + 0.5)
    b.add_box((x_lo, ya, 0.0), (x_hi, yb, rng.uniform(1.0, 2.6)), labels.WALL, MAT_PAINT,
              _jitter(rng, (0.62, 0.60, 0.56)), tex=(0.12,))


def _add_background(b, rng, style, side, y0, y1):
  """A far skyline row that closes the view through the gaps between blocks."""
  x_bg = rng.uniform(90.0, 150.0)
  y = y0 - 100.0
  while y < y1 + 40.0:
    width = rng.uniform(30.0, 80.0)
    x_lo, x_hi = _box_x(side, x_bg, x_bg + 30.0)
    _facade(b, rng, style, (x_lo, y, 0.0), (x_hi, y + width, rng.uniform(15.0, 60.0)))
    y += width


def _add_cross_street(b, rng, style, y_end):
  """The facade across the end of the street."""
  _facade(b, rng, style, (-240.0, y_end, 0.0), (240.0, y_end + 25.0, rng.uniform(12.0, 35.0)))


def _add_poles(b, rng, style, params, side, half_road, y_end):
  """Poles at the curb; some carry a sign, a traffic light or a lamp arm."""
  x = side * (half_road + 0.35)
  y = rng.uniform(-30.0, -10.0)
  while y < min(y_end - 5.0, 160.0):
    obj = b.new_object()
    radius, height = rng.uniform(0.06, 0.12), rng.uniform(4.5, 8.0)
    b.add(geometry.CYLINDER, (x, y, height / 2), (radius, radius, height / 2), labels.POLE,
          MAT_PAINT, _jitter(rng, style.metal), tex=(0.05,), obj=obj)
    if rng.random() < 0.4:  # a lamp arm reaching over the road edge (not over the lanes)
      x_lo, x_hi = _box_x(side, half_road - 0.65, half_road + 0.35)
      b.add_box((x_lo, y - 0.06, height - 0.15), (x_hi, y + 0.06, height), labels.POLE,
                MAT_PAINT, _jitter(rng, style.metal), tex=(0.05,), obj=obj)
    if rng.random() < params.sign_probability:  # facing the camera's driving direction
      hw, hh, z = rng.uniform(0.28, 0.45), rng.uniform(0.28, 0.45), rng.uniform(2.2, 3.2)
      b.add_box((x - hw, y - radius - 0.05, z - hh), (x + hw, y - radius - 0.01, z + hh),
                labels.TRAFFIC_SIGN, MAT_SIGN, _pick(rng, style.sign_colors),
                color2=(0.92, 0.92, 0.92))
    if rng.random() < params.traffic_light_probability:
      z = height - rng.uniform(0.6, 1.2)
      b.add_box((x - 0.17, y - radius - 0.32, z - 0.5), (x + 0.17, y - radius - 0.02, z + 0.5),
                labels.TRAFFIC_LIGHT, MAT_LIGHT, (0.12, 0.12, 0.12),
                tex=(float(rng.integers(3)),))
    y += rng.uniform(12.0, 32.0)


def _add_trees(b, rng, style, side, half_road, sidewalk_w, terrain_w, y_end):
  """A row of trees on the grass strip (or the sidewalk), and a few bushes."""
  if terrain_w >= 1.2:
    x_abs = half_road + sidewalk_w + terrain_w / 2
  else:
    x_abs = half_road + rng.choice([0.8, max(sidewalk_w - 0.7, 0.8)])
  y = rng.uniform(-30.0, -15.0)
  while y < min(y_end - 10.0, 170.0):
    obj = b.new_object()
    trunk_r, trunk_h = rng.uniform(0.12, 0.25), rng.uniform(1.8, 3.5)
    # Crowns stay 1 m clear of the driving lanes: no (elevated) camera ends up inside one.
    crown_xy = min(rng.uniform(1.5, 3.2), x_abs - half_road + 1.0)
    crown_z = rng.uniform(1.6, 3.5)
    x = side * x_abs + rng.uniform(-0.1, 0.1)
    trunk_half = (trunk_h + crown_z * 0.5) / 2  # the trunk reaches into the crown
    b.add(geometry.CYLINDER, (x, y, trunk_half), (trunk_r, trunk_r, trunk_half),
          labels.VEGETATION, MAT_PAINT, _jitter(rng, style.bark), tex=(0.15,), obj=obj)
    b.add(geometry.ELLIPSOID, (x, y, trunk_h + 0.8 * crown_z),
          (crown_xy, crown_xy * rng.uniform(0.9, 1.3), crown_z), labels.VEGETATION, MAT_FOLIAGE,
          _pick(rng, style.foliage), color2=_pick(rng, style.foliage), obj=obj)
    y += rng.uniform(7.0, 14.0)
  if terrain_w >= 1.0:
    for _ in range(int(rng.poisson(3))):
      r = min(rng.uniform(0.4, 1.0), terrain_w / 2)
      x = side * (half_road + sidewalk_w + terrain_w / 2)
      b.add(geometry.ELLIPSOID, (x, rng.uniform(-10, 120), r * 0.6), (r, r * 1.3, r * 0.8),
            labels.VEGETATION, MAT_FOLIAGE, _pick(rng, style.foliage),
            color2=_pick(rng, style.foliage))


def _person(b, rng, style, x, y, z_base, velocity, label=labels.PERSON):
  """Body ellipsoid (shirt above the hip, trousers below) and an ellipsoid head."""
  obj = b.new_object()
  height = rng.uniform(1.55, 1.9)
  head_r = 0.11 * height / 1.75
  b.add(geometry.ELLIPSOID, (x, y, z_base + 0.44 * height), (0.23, 0.17, 0.44 * height), label,
        MAT_PERSON, _pick(rng, style.clothes), color2=_pick(rng, style.clothes),
        tex=(z_base + 0.5 * height,), obj=obj, velocity=velocity)
  b.add(geometry.ELLIPSOID, (x, y, z_base + height - head_r), (head_r, head_r, head_r * 1.1),
        label, MAT_PAINT, _pick(rng, style.skins), tex=(0.03,), obj=obj, velocity=velocity)


def _add_pedestrians(b, rng, style, params, side, half_road, sidewalk_w):
  """Standing or walking (along the street) pedestrians on a sidewalk."""
  for _ in range(int(rng.poisson(params.pedestrians_per_side))):
    x = side * rng.uniform(half_road + 0.5, half_road + max(sidewalk_w - 0.3, 0.6))
    walks = rng.random() < params.moving_pedestrian_fraction
    speed = rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.6)
    _person(b, rng, style, x, rng.uniform(-5.0, 90.0), CURB_HEIGHT,
            (0.0, float(speed) if walks else 0.0, 0.0))


def _car(b, rng, style, x, y, direction, velocity):
  """Body box (dark sills) plus a narrower glass cabin set toward the rear."""
  obj = b.new_object()
  length, width = rng.uniform(3.9, 4.9), rng.uniform(1.7, 1.95)
  body_top, roof = rng.uniform(0.9, 1.05), rng.uniform(1.4, 1.6)
  color = _jitter(rng, _pick(rng, style.car_colors), 0.05)
  b.add_box((x - width / 2, y - length / 2, 0.12), (x + width / 2, y + length / 2, body_top),
            labels.CAR, MAT_CAR, color, color2=(0.06, 0.06, 0.07), obj=obj, velocity=velocity)
  cy = y - direction * 0.08 * length
  b.add_box((x - width / 2 + 0.08, cy - 0.28 * length, body_top),
            (x + width / 2 - 0.08, cy + 0.28 * length, roof), labels.CAR, MAT_GLASS, color,
            color2=(0.12, 0.14, 0.17), obj=obj, velocity=velocity)


def _truck(b, rng, style, x, y, direction, velocity):
  """A cab in front of a tall cargo box."""
  obj = b.new_object()
  cargo_len, cargo_h = rng.uniform(5.0, 8.0), rng.uniform(3.0, 3.8)
  cab = _jitter(rng, _pick(rng, style.truck_colors))
  y_cab = y + direction * (cargo_len / 2 + 1.2)
  b.add_box((x - 1.2, y_cab - 1.1, 0.3), (x + 1.2, y_cab + 1.1, 3.0), labels.TRUCK, MAT_CAR, cab,
            color2=(0.06, 0.06, 0.07), obj=obj, velocity=velocity)
  b.add_box((x - 1.25, y - cargo_len / 2, 0.5), (x + 1.25, y + cargo_len / 2, 0.5 + cargo_h),
            labels.TRUCK, MAT_PAINT, _jitter(rng, (0.85, 0.85, 0.83)), tex=(0.04,), obj=obj,
            velocity=velocity)


def _bus(b, rng, style, x, y, direction, velocity):
  """A long box with a window band."""
  del direction  # symmetric
  length = rng.uniform(10.5, 13.0)
  b.add_box((x - 1.27, y - length / 2, 0.25), (x + 1.27, y + length / 2, 3.2), labels.BUS,
            MAT_BUS, _jitter(rng, _pick(rng, style.bus_colors)), color2=(0.10, 0.13, 0.16),
            velocity=velocity)


def _rider(b, rng, style, x, y, velocity):
  """A cyclist: bicycle (thin box, class bicycle) and a rider (class rider)."""
  obj = b.new_object()
  b.add_box((x - 0.06, y - 0.85, 0.05), (x + 0.06, y + 0.85, 0.95), labels.BICYCLE, MAT_PAINT,
            _pick(rng, style.car_colors), tex=(0.05,), obj=obj, velocity=velocity)
  _person(b, rng, style, x, y, 0.55, velocity, label=labels.RIDER)


def _place(lanes, lane, y, length, speed, timing, margin=2.0) -> bool:
  """Reserves the y-interval a vehicle sweeps over the snippet (t in `timing`) in its lane."""
  lo = y - length / 2 - margin + min(0.0, speed * timing[0], speed * timing[1])
  hi = y + length / 2 + margin + max(0.0, speed * timing[0], speed * timing[1])
  return lanes.reserve(lane, lo, hi)


def _add_parked_cars(b, rng, style, params, lanes, side, x, y_end):
  """Cars along a parking lane, slot by slot."""
  y = rng.uniform(-40.0, -25.0)
  while y < min(y_end - 10.0, 160.0):
    if rng.random() < params.parked_car_density:
      length = 4.9
      if _place(lanes, ('park', side), y + length / 2, length, 0.0, (0.0, 0.0), margin=0.2):
        _car(b, rng, style, x + side * rng.uniform(-0.1, 0.1), y + length / 2, 1, (0.0, 0.0, 0.0))
      y += length + rng.uniform(0.6, 3.0)
    else:
      y += rng.uniform(5.0, 15.0)


def _add_traffic(b, rng, style, params, lanes, n_lanes, lane_w, parking_w, timing):
  """Cars driving in the lanes (a minority of the objects), rare trucks, buses and a cyclist.

  Random draws do not depend on params.moving_objects, so switching motion off freezes the
  same scene (velocities are zeroed when the primitives are built)."""
  def lane_slot(allow_parking):
    side = int(rng.choice([1, -1]))
    options = [('drive', side, k) for k in range(1, n_lanes + 1)]
    if allow_parking and parking_w > 0:
      options.append(('park', side))
    lane = options[int(rng.integers(len(options)))]
    if lane[0] == 'park':
      return lane, side, side * (n_lanes * lane_w + parking_w / 2)
    return lane, side, side * lane_w * (lane[2] - 0.5)

  def spawn(make, length, moving_p, allow_parking, y_range):
    for _ in range(20):  # a few attempts to find a free slot
      lane, side, x = lane_slot(allow_parking)
      moves = lane[0] == 'drive' and rng.random() < moving_p
      speed = side * rng.uniform(5.0, 13.0) if moves else 0.0
      y = rng.uniform(*y_range)
      if _place(lanes, lane, y, length, speed, timing):
        make(b, rng, style, x, y, side, (0.0, speed, 0.0))
        return

  for _ in range(int(rng.poisson(params.moving_cars))):
    spawn(_car, 5.0, 1.0, False, (-10.0, 120.0))
  if rng.random() < params.truck_probability:
    spawn(_truck, 11.0, params.moving_vehicle_fraction, True, (15.0, 90.0))
  if rng.random() < params.bus_probability:
    spawn(_bus, 13.5, params.moving_vehicle_fraction, True, (15.0, 90.0))
  if rng.random() < params.rider_probability:
    side = int(rng.choice([1, -1]))
    x = side * (n_lanes * lane_w - 0.6)
    for _ in range(20):
      y = rng.uniform(8.0, 60.0)
      speed = side * rng.uniform(3.0, 6.0)
      # The cyclist rides at the edge of the outer driving lane: both must be free.
      if (_place(lanes, ('edge', side), y, 2.0, speed, timing)
          and _place(lanes, ('drive', side, n_lanes), y, 2.0, speed, timing)):
        _rider(b, rng, style, x, y, (0.0, speed, 0.0))
        break
