"""Procedural texture primitives evaluated at world coordinates.

Everything here is a pure function of world position (plus a seed), so a surface point has the same
colour in every frame that sees it — the property the self-supervised photometric loss relies on.

One ray per pixel would alias fine patterns (bricks, tiles, lane dashes) into frame-dependent noise.
The patterns are therefore *box-filtered analytically* over the pixel footprint `w` (metres, along
the pattern's axis): periodic pulses use the exact integral of a square wave, and noise octaves
whose wavelength is below about two footprints fade out. This is the classic shader anti-aliasing
trick; it keeps the images smooth where sampling cannot resolve detail, like a mip-mapped texture.

All functions broadcast over NumPy arrays of any shape (float64 recommended: world coordinates reach
hundreds of metres while patterns are centimetres wide).
"""

from __future__ import annotations

import numpy as np

_MIN_WIDTH = 1e-6

# 64-bit odd multipliers for the lattice hash (splitmix64-style mixing).
_PRIME_X = np.uint64(0x9E3779B97F4A7C15)
_PRIME_Y = np.uint64(0xC2B2AE3D27D4EB4F)
_PRIME_Z = np.uint64(0x165667B19E3779F9)
_PRIME_S = np.uint64(0xD6E8FEB86659FD93)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def _as_u64(values: np.ndarray) -> np.ndarray:
  """Reinterpret int64 lattice coordinates (possibly negative) as uint64 bit patterns."""
  return np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)


def hash01(ix, iy, iz, seed) -> np.ndarray:
  """Uniform float64 in [0, 1) from integer lattice coordinates and seeds (all broadcast)."""
  ix, iy, iz, seed = np.broadcast_arrays(
      np.asarray(ix), np.asarray(iy), np.asarray(iz), np.asarray(seed))
  with np.errstate(over='ignore'):
    h = _as_u64(ix) * _PRIME_X
    h ^= _as_u64(iy) * _PRIME_Y
    h ^= _as_u64(iz) * _PRIME_Z
    h ^= _as_u64(seed) * _PRIME_S
    h ^= h >> np.uint64(30)
    h *= _MIX_1
    h ^= h >> np.uint64(27)
    h *= _MIX_2
    h ^= h >> np.uint64(31)
  return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _smooth(t: np.ndarray) -> np.ndarray:
  return t * t * (3.0 - 2.0 * t)


def value_noise2(x: np.ndarray, y: np.ndarray, seed) -> np.ndarray:
  """Smooth 2D value noise with unit lattice spacing; values in [-1, 1]."""
  fx, fy = np.floor(x), np.floor(y)
  ix, iy = fx.astype(np.int64), fy.astype(np.int64)
  tx, ty = _smooth(x - fx), _smooth(y - fy)
  v00 = hash01(ix, iy, 0, seed)
  v10 = hash01(ix + 1, iy, 0, seed)
  v01 = hash01(ix, iy + 1, 0, seed)
  v11 = hash01(ix + 1, iy + 1, 0, seed)
  a = v00 + (v10 - v00) * tx
  b = v01 + (v11 - v01) * tx
  return 2.0 * (a + (b - a) * ty) - 1.0


def value_noise3(x: np.ndarray, y: np.ndarray, z: np.ndarray, seed) -> np.ndarray:
  """Smooth 3D value noise with unit lattice spacing; values in [-1, 1]."""
  fx, fy, fz = np.floor(x), np.floor(y), np.floor(z)
  ix, iy, iz = fx.astype(np.int64), fy.astype(np.int64), fz.astype(np.int64)
  tx, ty, tz = _smooth(x - fx), _smooth(y - fy), _smooth(z - fz)
  out = 0.0
  for dz, wz in ((0, 1.0 - tz), (1, tz)):
    plane = 0.0
    for dy, wy in ((0, 1.0 - ty), (1, ty)):
      v0 = hash01(ix, iy + dy, iz + dz, seed)
      v1 = hash01(ix + 1, iy + dy, iz + dz, seed)
      plane = plane + wy * (v0 + (v1 - v0) * tx)
    out = out + wz * plane
  return 2.0 * out - 1.0


def octave_fade(footprint: np.ndarray, wavelength: float) -> np.ndarray:
  """Weight of a noise octave: 1 while the footprint is below wavelength/4, 0 from wavelength/2.

  Sampling one ray per pixel cannot represent detail finer than two footprints (Nyquist); fading
  those octaves out replaces aliasing by their mean (zero)."""
  return np.clip(2.0 - 4.0 * footprint / wavelength, 0.0, 1.0)


def fbm2(x, y, footprint, seed, octaves) -> np.ndarray:
  """Band-limited sum of 2D value-noise octaves.

  Args:
    x, y: world coordinates in metres (same shape).
    footprint: pixel footprint in metres (broadcastable).
    octaves: iterable of (wavelength_m, amplitude).
  Returns: noise with zero mean, amplitude ~ sum of amplitudes."""
  out = np.zeros(np.shape(x))
  for k, (wavelength, amplitude) in enumerate(octaves):
    weight = octave_fade(footprint, wavelength)
    if np.any(weight > 0):
      out += amplitude * weight * value_noise2(x / wavelength, y / wavelength, seed + 7919 * k)
  return out


def fbm3(x, y, z, footprint, seed, octaves) -> np.ndarray:
  """Band-limited sum of 3D value-noise octaves (see fbm2)."""
  out = np.zeros(np.shape(x))
  for k, (wavelength, amplitude) in enumerate(octaves):
    weight = octave_fade(footprint, wavelength)
    if np.any(weight > 0):
      out += amplitude * weight * value_noise3(
          x / wavelength, y / wavelength, z / wavelength, seed + 7919 * k)
  return out


def _pulse_integral(x: np.ndarray, period: float, duty: float) -> np.ndarray:
  """Integral from 0 to x of the square wave that is 1 on [k*period, (k+duty)*period)."""
  q = x / period
  n = np.floor(q)
  return period * (n * duty + np.minimum(q - n, duty))


def filtered_pulse(x, width, period: float, duty: float, phase: float = 0.0) -> np.ndarray:
  """Box-filtered periodic pulse: mean over [x - width/2, x + width/2] of the square wave that is
  1 on [phase + k*period, phase + (k + duty)*period). Exact, so no aliasing; tends to `duty` as
  the footprint grows."""
  w = np.maximum(width, _MIN_WIDTH)
  x = np.asarray(x) - phase
  upper = _pulse_integral(x + 0.5 * w, period, duty)
  lower = _pulse_integral(x - 0.5 * w, period, duty)
  return (upper - lower) / w


def filtered_interval(x, width, lo, hi) -> np.ndarray:
  """Box-filtered indicator of lo <= x < hi (fraction of the footprint inside the interval)."""
  w = np.maximum(width, _MIN_WIDTH)
  overlap = np.minimum(x + 0.5 * w, hi) - np.maximum(x - 0.5 * w, lo)
  return np.clip(overlap / w, 0.0, 1.0)


def filtered_step(x, width, edge) -> np.ndarray:
  """Box-filtered indicator of x >= edge."""
  w = np.maximum(width, _MIN_WIDTH)
  return np.clip((x - edge) / w + 0.5, 0.0, 1.0)


def mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Linear blend of colours a, b ([..., 3]) by weight t ([...])."""
  t = np.asarray(t)[..., None]
  return a + (b - a) * t
