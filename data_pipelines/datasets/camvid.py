"""CamVid in the SegNet layout: {split}/{name}.png with {split}annot/{name}.png (11 classes + void).

CamVid ships no calibration: its intrinsics are unknown (NaN) unless the config gives them, so it
serves segmentation, not self-supervised depth. Images are 480x360 (resized to 672x512, SPEC).
"""

from __future__ import annotations

import os

from data_pipelines.datasets import common

LABEL_SPEC = common.LabelSpec(
    class_names=('sky', 'building', 'pole', 'road', 'pavement', 'tree', 'signsymbol', 'fence',
                 'car', 'pedestrian', 'bicyclist'),
    id_to_train={i: i for i in range(11)},  # 11 = unlabelled -> ignore
    valid_ids=frozenset(range(12)),
    # The colours of the SegNet CamVid release.
    colours=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
             (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
             (0, 128, 192)))


class CamVid(common.Reader):
  name = 'camvid'
  label_spec = LABEL_SPEC
  segmentation_splits = ('train', 'val', 'test')
  prepare_patterns = tuple(
      pair for split in ('train', 'val', 'test')
      for pair in (('image', f'{split}/*.*'), ('label', f'{split}annot/*.png')))

  def _segmentation(self, split: str) -> common.ExampleIndex:
    folder = common.require_dir(os.path.join(self.root, split), f'CamVid {split} images')
    images = common.find_images(os.path.join(folder, '*.*'))
    if not images:
      raise common.DataError(f'{folder}: no images')
    rows = []
    for image in images:
      stem = os.path.splitext(os.path.basename(image))[0]
      label = os.path.join(self.root, split + 'annot', stem + '.png')
      if not os.path.exists(label):
        raise common.DataError(f'{image}: no label map (expected {label})')
      rows.append(dict(id=stem, image=image, label=label))
    return common.ExampleIndex.from_rows(rows)
