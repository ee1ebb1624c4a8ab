"""Tiny raw dataset trees with the real datasets' naming conventions, written by the tests.

Image pixels encode where they come from, so tests can check crops, flips and frame order:
red = column x, green = row y, blue = 10 * frame number (mod 256) of the sequence.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

CITYSCAPES_PALETTE = np.zeros((256, 3), np.uint8)  # only the indices matter for palette PNGs
CITYSCAPES_PALETTE[7] = (128, 64, 128)
CITYSCAPES_PALETTE[26] = (0, 0, 142)


def coded_image(size, frame=0) -> np.ndarray:
  """[H, W, 3] uint8: red = x, green = y, blue = 10 * frame."""
  width, height = size
  y, x = np.mgrid[:height, :width]
  return np.stack([x % 256, y % 256, np.full_like(x, (10 * frame) % 256)], -1).astype(np.uint8)


def label_ids(size, ids) -> np.ndarray:
  """[H, W] uint8 vertical stripes cycling through `ids`."""
  width, height = size
  return np.tile(np.array(ids, np.uint8)[np.arange(width) % len(ids)], (height, 1))


def _save(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
  if mode == 'P':
    image.putpalette(CITYSCAPES_PALETTE.ravel().tolist())
  image.save(path)
  return path


CITYSCAPES_IDS = (7, 8, 11, 26, 0, 23, 33, 255)  # road, sidewalk, building, car, unlabeled, sky...


def write_cityscapes(root, size=(64, 32), frames=5, snippets=2, camera=True, val_snippets=1):
  """train: aachen (snippets), val: frankfurt (val_snippets); annotated frame = frames // 2."""
  annotated = frames // 2
  for split, city, count in (('train', 'aachen', snippets), ('val', 'frankfurt', val_snippets)):
    for seq in range(count):
      for frame in range(frames):
        stem = f'{city}_{seq:06d}_{frame:06d}'
        image = coded_image(size, frame)
        _save(f'{root}/leftImg8bit_sequence/{split}/{city}/{stem}_leftImg8bit.png', image)
        if frame != annotated:
          continue
        _save(f'{root}/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png', image)
        _save(f'{root}/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png',
              label_ids(size, CITYSCAPES_IDS), 'L')
        if camera:
          path = f'{root}/camera/{split}/{city}/{stem}_camera.json'
          os.makedirs(os.path.dirname(path), exist_ok=True)
          with open(path, 'w') as f:
            json.dump(dict(extrinsic=dict(baseline=0.2, pitch=0.0, roll=0.0, x=1.7, y=0.0, z=1.2,
                                          yaw=0.0),
                           intrinsic=dict(fx=0.5 * size[0], fy=0.25 * size[1], u0=0.4 * size[0],
                                          v0=0.6 * size[1])), f)
  return root


def write_gta5(root, size=(64, 32), images=6, sequence_frames=4):
  for i in range(1, images + 1):
    _save(f'{root}/images/{i:05d}.png', coded_image(size, i))
    _save(f'{root}/labels/{i:05d}.png', label_ids(size, (7, 26, 0, 23)), 'P')
  for split in ('train', 'val'):
    for seq in (1, 2):
      for frame in range(sequence_frames):
        _save(f'{root}/sequences/{split}/img/{seq:03d}/{seq:03d}_{frame:05d}.png',
              coded_image(size, frame))
  return root


def encode_png16(array: np.ndarray) -> bytes:
  import tensorflow as tf
  return tf.io.encode_png(array.astype(np.uint16)).numpy()


def write_synthia(root, size=(64, 32), images=5, sequence_frames=4):
  for i in range(images):
    _save(f'{root}/RAND_CITYSCAPES/RGB/{i:07d}.png', coded_image(size, i))
    ids = label_ids(size, (3, 4, 2, 22, 8, 1))
    label = np.stack([ids, np.full_like(ids, 7), np.zeros_like(ids)], -1).astype(np.uint16)
    path = f'{root}/RAND_CITYSCAPES/GT/LABELS/{i:07d}.png'
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(encode_png16(label))
  for sequence in ('SYNTHIA-SEQS-01-SUMMER', 'SYNTHIA-SEQS-02-SPRING'):
    for frame in range(sequence_frames):
      _save(f'{root}/{sequence}/RGB/Stereo_Left/Omni_F/{frame:06d}.png', coded_image(size, frame))
  return root


def write_camvid(root, size=(48, 36)):
  for split, count in (('train', 3), ('val', 2), ('test', 1)):
    for i in range(count):
      name = f'0001TP_{i * 30:06d}'
      _save(f'{root}/{split}/{name}.png', coded_image(size, i))
      _save(f'{root}/{split}annot/{name}.png', label_ids(size, (0, 3, 8, 11)), 'L')
  return root


FOLDER_CLASSES = [dict(name='road', colour=[128, 64, 128]), dict(name='car', colour=[0, 0, 142]),
                  dict(name='sky', colour=[70, 130, 180]),
                  dict(name='person', colour=[220, 20, 60]),
                  dict(name='tree', colour=[107, 142, 35])]
# raw id in the label PNGs -> class id of a folder tree written with an id_map (0: ignored).
FOLDER_ID_MAP = {7: 0, 26: 1, 23: 2, 24: 3, 21: 4, 0: 255}


def _write_json(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(value, f)


def write_folder(root, size=(48, 24), frames=5, id_map=False):
  """A 5-class folder-layout tree: clips c0, c1 (train) and v0 (val) of `frames` frames, the
  middle frame labelled under images/<split>/<clip>/<frame>.png, and one unlabeled image outside
  any clip per split. Cameras: c0 in pixels, c1 normalised, v0 from the default (hfov 90).
  Labels: class ids 0..4 and 255, or with `id_map` the raw ids of FOLDER_ID_MAP."""
  classes = dict(classes=FOLDER_CLASSES)
  if id_map:
    classes['id_map'] = {str(raw): c for raw, c in FOLDER_ID_MAP.items()}
  _write_json(f'{root}/classes.json', classes)
  width, height = size
  _write_json(f'{root}/intrinsics.json', dict(
      default=dict(hfov_deg=90),
      clips=dict(c0=dict(fx=0.5 * width, fy=width, cx=0.4 * width, cy=0.6 * height, units='pixels',
                         size=[width, height]),
                 c1=dict(fx=0.7, fy=1.4, cx=0.5, cy=0.5, units='normalized'))))
  ids = tuple(FOLDER_ID_MAP) + (255,) if id_map else (0, 1, 2, 3, 4, 255)
  annotated = frames // 2
  for split, clips in (('train', ('c0', 'c1')), ('val', ('v0',))):
    for clip in clips:
      for frame in range(frames):
        _save(f'{root}/sequences/{clip}/{frame:06d}.png', coded_image(size, frame))
      _save(f'{root}/images/{split}/{clip}/{annotated:06d}.png', coded_image(size, annotated))
      _save(f'{root}/labels/{split}/{clip}/{annotated:06d}.png', label_ids(size, ids), 'L')
    _save(f'{root}/images/{split}/extra_{split}.jpg', coded_image(size, 9))
  return root


class ArrayState:
  """The least a checkpointing.Checkpointer saves and restores: a dict of arrays with
  to_dict/from_dict, as a TrainState has."""

  def __init__(self, arrays):
    self.arrays = arrays

  def to_dict(self):
    return self.arrays

  def from_dict(self, arrays):
    return ArrayState(arrays)
