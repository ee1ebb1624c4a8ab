"""Reading back the ground truth a synthetic world wrote (see docs/synthetic_world.md)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipelines.synthetic.layouts import GT_DIR, groundtruth_stem


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  depth: np.ndarray         # [H, W] float32 z-depth in metres (far_depth for sky)
  moving: np.ndarray        # [H, W] bool: pixels of objects that move during the snippet
  label_ids: np.ndarray     # [H, W] uint8 Cityscapes labelIds (every rendered frame has them)
  intrinsics: np.ndarray    # [3, 3] pixels of the written image
  cam_to_world: np.ndarray  # [4, 4] camera (x right, y down, z forward) to world (z up)
  frame: int                # frame index within the snippet
  snippet: dict             # the snippet's JSON record (all frames' poses, camera rig, ...)


def load_groundtruth(root, image_relpath: str) -> GroundTruth:
  """Ground truth of the image `root/image_relpath` (a path relative to the dataset root)."""
  root = Path(root)
  entry = json.loads((root / GT_DIR / 'images.json').read_text())[image_relpath]
  snippet = json.loads((root / GT_DIR / entry['snippet']).read_text())
  record = next(r for r in snippet['frames'] if r['frame'] == entry['frame'])
  stem = root / groundtruth_stem(image_relpath)
  return GroundTruth(
      depth=np.load(f'{stem}_depth.npy'),
      moving=np.asarray(Image.open(f'{stem}_moving.png')) > 0,
      label_ids=np.asarray(Image.open(f'{stem}_labelIds.png')),
      intrinsics=np.asarray(snippet['intrinsics']),
      cam_to_world=np.asarray(record['cam_to_world']),
      frame=entry['frame'], snippet=snippet)
