"""Ground-truth depth for evaluating self-supervised depth, where a dataset has it.

- The synthetic world: metric z-depth beside every image (sdeseg_groundtruth/,
  docs/synthetic_world.md).
- Cityscapes: disparity/{split}/{city}/{stem}_disparity.png (SGM stereo, p > 0: d = (p - 1) / 256)
  with depth = baseline * fx / d from the image's camera JSON.
- The folder layout (docs/folder_dataset.md): depth/{split}/[<clip>/]<name>.png (16-bit, metres =
  value / 256, KITTI's convention) or .npy (float32 metres) beside images/{split}/[<clip>/]<name>.
  A folder tree's own depth comes before the synthetic world's ground truth (a synthetic world in
  the folder layout writes both), so that the layout's files are what is read.
Ground truth lives in the raw tree (prepare does not copy it) at the raw resolution; evaluation
resizes predictions to it, as monodepth2 does. 0 marks pixels without ground truth.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from data_pipelines.datasets import common


class DepthTruth:
  """depth(prepared image path) -> [H, W] float32 metres (0 = unknown), or None without truth."""

  def __init__(self, prepared_root: str, raw_root: str):
    self.prepared_root, self.raw_root = prepared_root, raw_root
    self._synthetic = {}
    index = os.path.join(raw_root, 'sdeseg_groundtruth', 'images.json') if raw_root else ''
    if index and os.path.exists(index):
      with open(index) as f:
        self._synthetic = {os.path.splitext(k)[0]: k for k in json.load(f)}
    self.kind = ('folder' if raw_root and _has_folder_depth(raw_root) else
                 'synthetic' if self._synthetic else
                 'cityscapes' if raw_root and os.path.isdir(os.path.join(raw_root, 'disparity'))
                 else None)

  @property
  def available(self) -> bool:
    return self.kind is not None

  def has(self, image_path: str) -> bool:
    """Whether `image_path` has ground truth (cheap: no depth is read)."""
    relative = os.path.splitext(os.path.relpath(image_path, self.prepared_root))[0]
    if self.kind == 'synthetic':
      return relative in self._synthetic
    if self.kind == 'cityscapes':
      return os.path.exists(self._cityscapes_paths(relative)[0] or '')
    if self.kind == 'folder':
      return bool(self._folder_path(relative))
    return False

  def __call__(self, image_path: str) -> np.ndarray | None:
    relative = os.path.splitext(os.path.relpath(image_path, self.prepared_root))[0]
    if self.kind == 'synthetic':
      from data_pipelines import synthetic  # lazily: readers of real data never need it
      key = self._synthetic.get(relative)
      if key is None:
        return None
      depth = synthetic.load_groundtruth(self.raw_root, key).depth
      return np.where(depth >= synthetic.FAR_DEPTH, 0.0, depth).astype(np.float32)
    if self.kind == 'cityscapes':
      return self._cityscapes(relative)
    if self.kind == 'folder':
      path = self._folder_path(relative)
      return read_depth_file(path) if path else None
    return None

  def _folder_path(self, relative: str) -> str:
    """The depth file of images/{split}/<rest> (a relative path without extension), or ''."""
    parts = relative.split(os.sep)
    if len(parts) < 3 or parts[0] != 'images':
      return ''
    stem = os.path.join(self.raw_root, 'depth', *parts[1:])
    return next((stem + ext for ext in ('.png', '.npy') if os.path.exists(stem + ext)), '')

  def _cityscapes_paths(self, relative: str) -> tuple[str | None, str | None]:
    parts = relative.split(os.sep)  # leftImg8bit/{split}/{city}/{stem}_leftImg8bit
    if len(parts) != 4 or parts[0] != 'leftImg8bit':
      return None, None
    stem = parts[3].removesuffix('_leftImg8bit')
    folder = (parts[1], parts[2])
    return (os.path.join(self.raw_root, 'disparity', *folder, f'{stem}_disparity.png'),
            os.path.join(self.raw_root, 'camera', *folder, f'{stem}_camera.json'))

  def _cityscapes(self, relative: str) -> np.ndarray | None:
    disparity_path, camera_path = self._cityscapes_paths(relative)
    if not (disparity_path and os.path.exists(disparity_path) and os.path.exists(camera_path)):
      return None
    camera = common.read_json(camera_path)
    raw = np.asarray(Image.open(disparity_path), np.float32)
    disparity = np.where(raw > 0, (raw - 1.0) / 256.0, 0.0)
    baseline, fx = camera['extrinsic']['baseline'], camera['intrinsic']['fx']
    with np.errstate(divide='ignore'):
      return np.where(disparity > 0, baseline * fx / disparity, 0.0).astype(np.float32)


def _has_folder_depth(root: str) -> bool:
  """Whether `root` is a folder-layout tree with a depth folder."""
  return (os.path.isdir(os.path.join(root, 'depth'))
          and os.path.exists(os.path.join(root, 'classes.json')))


def read_depth_file(path: str) -> np.ndarray:
  """[H, W] float32 metres (0 = unknown) of a 16-bit PNG (metres = value / 256) or a float .npy
  (NaN, infinite and negative values are unknown too); a bad file is a DataError naming it."""
  if path.endswith('.npy'):
    try:
      depth = np.load(path)
    except (OSError, ValueError) as e:
      raise common.DataError(f'{path}: unreadable depth ({e})') from e
    if depth.ndim != 2 or depth.dtype.kind != 'f':
      raise common.DataError(f'{path}: depth of shape {depth.shape} and dtype {depth.dtype}, '
                             'expected [H, W] floating-point metres')
    depth = depth.astype(np.float32)
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
  try:
    with Image.open(path) as image:
      mode, raw = image.mode, np.asarray(image)
  except (OSError, SyntaxError) as e:
    raise common.DataError(f'{path}: unreadable depth ({e})') from e
  if not mode.startswith('I'):  # Pillow reads 16-bit greyscale PNGs as I;16 (or I)
    raise common.DataError(f'{path}: depth PNG of mode {mode}, expected 16-bit greyscale with '
                           'metres = value / 256')
  return (raw.astype(np.float32) / 256.0).astype(np.float32)
