"""Ground-truth depth for evaluating self-supervised depth, where a dataset has it.

- The synthetic world: metric z-depth beside every image (sdeseg_groundtruth/,
  docs/synthetic_world.md).
- Cityscapes: disparity/{split}/{city}/{stem}_disparity.png (SGM stereo, p > 0: d = (p - 1) / 256)
  with depth = baseline * fx / d from the image's camera JSON.
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
    self.kind = ('synthetic' if self._synthetic else
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
    return None

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
