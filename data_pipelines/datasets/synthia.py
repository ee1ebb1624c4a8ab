"""SYNTHIA: RAND-CITYSCAPES for segmentation, SYNTHIA-SEQS for its depth model.

Layout (folders as the archives unpack, side by side under one root):
  RAND_CITYSCAPES/RGB/{id:07d}.png, RAND_CITYSCAPES/GT/LABELS/{id:07d}.png
      labels: 16-bit 3-channel PNGs, channel 0 = class id (0..22), channel 1 = instance id
  SYNTHIA-SEQS-{nn}-{CONDITION}/RGB/Stereo_Left/Omni_F/{frame:06d}.png
No official split: the last `val_count` sorted images are val. fx = fy = 532.740352 px at 1280x760.
A prepared tree stores labels as 8-bit class ids.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from data_pipelines.datasets import common

INTRINSICS = (532.740352 / 1280, 532.740352 / 760, 0.5, 0.5)

LABEL_SPEC = common.LabelSpec(
    class_names=common.CITYSCAPES_CLASSES,
    id_to_train={3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11,
                 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18},
    valid_ids=frozenset(range(23)), colours=common.CITYSCAPES_COLOURS)

# Synthia is also evaluated on 16 and 13 of the 19 classes (SPEC section 2).
CLASSES_16 = tuple(c for c in common.CITYSCAPES_CLASSES if c not in ('terrain', 'truck', 'train'))
CLASSES_13 = tuple(c for c in CLASSES_16 if c not in ('wall', 'fence', 'pole'))


class Synthia(common.Reader):
  name = 'synthia'
  label_spec = LABEL_SPEC
  sequence_splits = ('train',)
  splits_by_count = True
  prepare_patterns = (
      ('image', 'RAND_CITYSCAPES/RGB/*.*'),
      ('label', 'RAND_CITYSCAPES/GT/LABELS/*.png'),
      ('image', 'SYNTHIA-SEQS-*/RGB/Stereo_Left/Omni_F/*.*'),
  )

  def _segmentation(self, split: str) -> common.ExampleIndex:
    base = os.path.join(self.root, 'RAND_CITYSCAPES')
    folder = common.require_dir(os.path.join(base, 'RGB'), 'SYNTHIA RAND-CITYSCAPES images')
    images = common.split_by_count(common.find_images(os.path.join(folder, '*.*')), split,
                                   self.val_count, folder)
    rows = []
    for image in images:
      stem = os.path.splitext(os.path.basename(image))[0]
      label = os.path.join(base, 'GT', 'LABELS', stem + '.png')
      if not os.path.exists(label):
        raise common.DataError(f'{image}: no label map (expected {label})')
      rows.append(dict(id=stem, image=image, label=label, intrinsics=INTRINSICS))
    return common.ExampleIndex.from_rows(rows)

  def _sequences(self, split: str) -> common.ExampleIndex:
    if split not in ('train', 'all'):
      raise common.DataError(f'SYNTHIA-SEQS has no {split!r} split (use train)')
    root = self.sequence_root or self.root
    sequences = sorted(glob.glob(os.path.join(root, 'SYNTHIA-SEQS-*')))
    if not sequences:
      raise common.DataError(f'{root}: no SYNTHIA-SEQS-* folders')
    keyed = []
    for sequence in sequences:
      for path in common.find_images(os.path.join(sequence, 'RGB', 'Stereo_Left', 'Omni_F', '*.*')):
        _, number = common.trailing_number(os.path.splitext(os.path.basename(path))[0], path)
        keyed.append((sequence, number, path))
    rows = common.triplets_from_numbered_frames(keyed, INTRINSICS)
    if not rows:
      raise common.DataError(f'{root}: no SYNTHIA-SEQS frame has both neighbours (t-1, t+1)')
    for row in rows:  # frame numbers repeat across sequences: prefix the sequence name
      sequence = row['image'].split(os.sep)[-5]
      row['id'] = f"{sequence}_{row['id']}"
    return common.ExampleIndex.from_rows(rows)

  def decode_raw_label(self, path: str) -> np.ndarray:
    """Class ids from channel 0 of a 16-bit label PNG (or an 8-bit id map of a prepared tree)."""
    with open(path, 'rb') as f:
      data = f.read()
    # The signature and the IHDR chunk's bit depth (byte 24) are read before any decoder.
    if data[:8] != b'\x89PNG\r\n\x1a\n' or len(data) < 25:
      raise common.DataError(f'{path}: not a PNG file ({len(data)} bytes)')
    if data[24] == 8:  # the IHDR chunk's bit depth
      return common.decode_label_png(path)
    import tensorflow as tf  # PIL cannot read 16-bit multi-channel PNGs
    try:
      raw = tf.io.decode_png(data, dtype=tf.uint16).numpy()
    except tf.errors.OpError as e:
      raise common.DataError(f'{path}: unreadable label map ({e.message})') from e
    ids = raw[..., 0]
    if ids.max(initial=0) > 255:
      raise common.DataError(f'{path}: class ids '
                             f'{sorted(set(np.unique(ids)) - set(range(256)))[:5]}'
                             ' outside 0..255')
    return ids.astype(np.uint8)
