"""GTA5 (Playing for Data) segmentation set and a VIPER-layout video set for its depth model.

Layout:
  images/{id:05d}.png, labels/{id:05d}.png     palette PNGs whose indices are Cityscapes label ids
  <sequence_root>/{split}/img/{seq}/{seq}_{frame:05d}.png|jpg    video (default <root>/sequences)
GTA5 has no official split: the last `val_count` sorted images are val (as the reference does).
The game camera has fixed intrinsics (SPEC section 2).
"""

from __future__ import annotations

import os

from data_pipelines.datasets import cityscapes
from data_pipelines.datasets import common

INTRINSICS = (1.206285, 2.144507, 0.5, 0.5)


class GTA5(common.Reader):
  name = 'gta5'
  label_spec = cityscapes.LABEL_SPEC
  sequence_splits = ('train', 'val')
  splits_by_count = True
  prepare_patterns = (
      ('image', 'images/*.*'),
      ('label', 'labels/*.png'),
      ('image', 'sequences/*/img/*/*.*'),
  )

  def _segmentation(self, split: str) -> common.ExampleIndex:
    folder = common.require_dir(os.path.join(self.root, 'images'), 'GTA5 images')
    images = common.split_by_count(common.find_images(os.path.join(folder, '*.*')), split,
                                   self.val_count, folder)
    rows = []
    for image in images:
      stem = os.path.splitext(os.path.basename(image))[0]
      label = os.path.join(self.root, 'labels', stem + '.png')
      if not os.path.exists(label):
        raise common.DataError(f'{image}: no label map (expected {label})')
      rows.append(dict(id=stem, image=image, label=label, intrinsics=INTRINSICS))
    return common.ExampleIndex.from_rows(rows)

  def _sequences(self, split: str) -> common.ExampleIndex:
    root = self.sequence_root or os.path.join(self.root, 'sequences')
    folder = common.require_dir(os.path.join(root, split, 'img'), f'GTA video {split} frames')
    frames = common.find_images(os.path.join(folder, '*', '*.*'))
    keyed = []
    for path in frames:
      prefix, number = common.trailing_number(os.path.splitext(os.path.basename(path))[0], path)
      keyed.append(((os.path.dirname(path), prefix), number, path))
    rows = common.triplets_from_numbered_frames(keyed, INTRINSICS)
    if not rows:
      raise common.DataError(f'{folder}: no frame has both neighbours (t-1, t+1)')
    return common.ExampleIndex.from_rows(rows)
