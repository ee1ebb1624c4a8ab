"""Metric depth maps (a sensor's, a dataset's ground truth, a user's files) as depth labels.

The depth labels every consumer reads (DepthMix, Matching Geometry Sampling, the data-selection
student) are the SDE's level-0 sigmoid disparity d in [0, 1] at the working resolution, with
depth = 1 / (1/max + (1/min - 1/max) d) (SPEC 4, sdeseg_jax.ops.disp_to_depth). A metric depth z
becomes the d the SDE would have to output for it:

    d = (1/z - 1/max) / (1/min - 1/max),   z clipped to [min, max]

so labels from a sensor and from an SDE share one scale and one direction (near = large d).
Unknown pixels (0, negative or not finite: no stereo match, the sky) become d = 0, the farthest
disparity: DepthMix puts them behind everything, and the selection's error masks d < 0.07 out.

Resizing to the working resolution: an area average of the disparity over the known pixels of each
output pixel's footprint (a masked box filter), d = sum(d * known) / sum(known); a pixel whose
footprint holds no known pixel stays unknown (0). Why not nearest: stereo disparity has holes, and
nearest keeps a hole wherever it happens to sample one, while the masked average fills a hole from
its known neighbours and never mixes "unknown" into a known value. Why disparity, not depth: the
SDE's own outputs are resized in disparity, and averaging inverse depth keeps a thin near object
near. At equal sizes the map is unchanged.

Files (config.depth_labels.source='file'): <example id>.npy, float metres [H, W] (or [H, W, 1]),
or <example id>.png, 16-bit with metres = value / 256; 0 = unknown in both.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from data_pipelines.datasets import common

FILE_EXTENSIONS = ('.npy', '.png')
PNG_SCALE = 256.0  # metres = 16-bit value / PNG_SCALE (the KITTI depth convention)


def known_pixels(depth: np.ndarray) -> np.ndarray:
  """[H, W] bool: where a metric depth map holds a depth (> 0 and finite)."""
  with np.errstate(invalid='ignore'):
    return np.isfinite(depth) & (depth > 0)


def disparity_from_depth(depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
  """[H, W] metres -> [H, W] float32 sigmoid disparity in [0, 1] (the inverse of disp_to_depth
  for depths in [min_depth, max_depth]); unknown pixels -> 0."""
  known = known_pixels(depth)
  clipped = np.clip(np.where(known, depth, max_depth), min_depth, max_depth).astype(np.float64)
  low, high = 1.0 / max_depth, 1.0 / min_depth
  disparity = (1.0 / clipped - low) / (high - low)
  return np.where(known, np.clip(disparity, 0.0, 1.0), 0.0).astype(np.float32)


def _box(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """[H, W] float32 area-resized to (W, H) = size."""
  return np.asarray(Image.fromarray(values.astype(np.float32)).resize(size, Image.BOX),
                    np.float32)


def resize_disparity(disparity: np.ndarray, known: np.ndarray,
                     size: tuple[int, int]) -> np.ndarray:
  """[H, W] disparity -> [h, w] at size = (w, h): the masked area average of the module
  docstring (0 where the footprint holds no known pixel)."""
  if disparity.shape == (size[1], size[0]):
    return np.where(known, disparity, 0.0).astype(np.float32)
  weight = _box(known.astype(np.float32), size)
  total = _box(np.where(known, disparity, 0.0), size)
  # The box filter's float sums leave ~1e-7 of weight beside a fully unknown footprint.
  filled = weight > 1e-4
  return np.where(filled, np.clip(total / np.where(filled, weight, 1.0), 0.0, 1.0),
                  0.0).astype(np.float32)


def depth_label(depth: np.ndarray, *, size: tuple[int, int], min_depth: float,
                max_depth: float) -> np.ndarray:
  """A metric depth map [H, W] (0 = unknown) -> the depth label [h, w] float32 at size = (w, h)."""
  return resize_disparity(disparity_from_depth(depth, min_depth, max_depth), known_pixels(depth),
                          size)


def depth_file(directory: str, example_id: str) -> str | None:
  """The depth file of an example in `directory` (<id>.npy or <id>.png), None when there is
  none; both is an error (which one is meant?)."""
  found = [p for p in (os.path.join(directory, example_id + e) for e in FILE_EXTENSIONS)
           if os.path.exists(p)]
  if len(found) > 1:
    raise common.DataError(f'{found[0]}: example {example_id!r} has both {found[0]} and '
                           f'{found[1]}; keep one')
  return found[0] if found else None


def _load(path: str) -> tuple[np.ndarray, str]:
  """(the file's array, its PNG mode or '' for .npy); an unreadable file is a DataError."""
  try:
    if path.endswith('.npy'):
      return np.load(path), ''
    with Image.open(path) as image:
      return np.asarray(image), image.mode
  except (OSError, ValueError) as e:
    raise common.DataError(f'{path}: unreadable depth file ({e})') from e


def read_depth_file(path: str) -> np.ndarray:
  """[H, W] float32 metres (0 = unknown) of a .npy (float metres) or 16-bit .png (value / 256)."""
  depth, mode = _load(path)
  if mode:
    if mode not in ('I;16', 'I;16B', 'I;16L', 'I'):
      raise common.DataError(f'{path}: a {mode} PNG; depth PNGs are 16-bit with metres = '
                             f'value / {PNG_SCALE:g}')
    return depth.astype(np.float32) / PNG_SCALE
  if depth.ndim == 3 and depth.shape[-1] == 1:
    depth = depth[..., 0]
  if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
    raise common.DataError(f'{path}: depth {depth.dtype} {depth.shape}, expected float metres '
                           '[H, W]')
  return depth.astype(np.float32)
