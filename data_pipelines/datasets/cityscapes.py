"""Cityscapes: leftImg8bit, leftImg8bit_sequence, gtFine *_labelIds.png and camera/*.json.

Layout (as the official archives unpack; a prepared tree keeps it):
  leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png     annotated frames
  gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png              label ids 0..33
  leftImg8bit_sequence/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png    30-frame snippets
  camera/{split}/{city}/{city}_{seq}_{frame}_camera.json                     intrinsics in pixels
Camera JSONs give intrinsics in pixels of the images beside them (2048x1024 for the official data;
the prepare step rescales them with the images). Without a camera folder the official values are
used.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re

from data_pipelines.datasets import common

# Official intrinsics at 2048x1024, normalised (SPEC section 2).
DEFAULT_INTRINSICS = (2262.52 / 2048, 2265.3018 / 1024, 1096.98 / 2048, 513.137 / 1024)

# labelIds 0..33; 255 stands for the license plate's -1 in 8-bit maps.
LABEL_SPEC = common.LabelSpec(
    class_names=common.CITYSCAPES_CLASSES,
    id_to_train={raw: train for train, raw in enumerate(
        [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33])},
    valid_ids=frozenset(range(34)) | {255}, colours=common.CITYSCAPES_COLOURS)

_NAME = re.compile(r'(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit$')


def parse_name(path: str) -> tuple[str, str, int]:
  """(city, sequence, frame number) of a leftImg8bit file."""
  stem = os.path.splitext(os.path.basename(path))[0]
  match = _NAME.fullmatch(stem)
  if not match:
    raise common.DataError(f'{path}: not a Cityscapes image name '
                           '({city}_{seq}_{frame}_leftImg8bit)')
  return match['city'], match['seq'], int(match['frame'])


class Cityscapes(common.Reader):
  name = 'cityscapes'
  label_spec = LABEL_SPEC
  segmentation_splits = ('train', 'val', 'test')
  sequence_splits = ('train', 'val', 'test')
  prepare_patterns = (
      ('image', 'leftImg8bit/*/*/*_leftImg8bit.*'),
      ('image', 'leftImg8bit_sequence/*/*/*_leftImg8bit.*'),
      ('label', 'gtFine/*/*/*_gtFine_labelIds.png'),
      ('camera', 'camera/*/*/*_camera.json'),
  )

  def _segmentation(self, split: str) -> common.ExampleIndex:
    folder = common.require_dir(os.path.join(self.root, 'leftImg8bit', split),
                                f'Cityscapes {split} images')
    images = common.find_images(os.path.join(folder, '*', '*_leftImg8bit.*'))
    if not images:
      raise common.DataError(f'{folder}: no *_leftImg8bit images in its city folders')
    intrinsics = self._intrinsics(split, images)
    rows = []
    for image in images:
      city, seq, frame = parse_name(image)
      stem = f'{city}_{seq}_{frame:06d}'
      label = os.path.join(self.root, 'gtFine', split, city, f'{stem}_gtFine_labelIds.png')
      if not os.path.exists(label):
        if split == 'test':  # the official test labels are placeholders; absent is fine
          label = ''
        else:
          raise common.DataError(f'{image}: no label map (expected {label})')
      rows.append(dict(id=stem, image=image, label=label, intrinsics=intrinsics[(city, seq)]))
    return common.ExampleIndex.from_rows(rows)

  def _sequences(self, split: str) -> common.ExampleIndex:
    root = self.sequence_root or self.root
    folder = common.require_dir(os.path.join(root, 'leftImg8bit_sequence', split),
                                f'Cityscapes {split} video snippets')
    frames = common.find_images(os.path.join(folder, '*', '*_leftImg8bit.*'))
    parsed = [parse_name(f) for f in frames]
    rows = common.triplets_from_numbered_frames(
        [((city, seq), frame, path) for (city, seq, frame), path in zip(parsed, frames)])
    if not rows:
      raise common.DataError(f'{folder}: no frame has both neighbours (t-1, t+1)')
    intrinsics = self._intrinsics(split, frames)
    for row in rows:
      city, seq, _ = parse_name(row['image'])
      row['id'] = row['id'].removesuffix('_leftImg8bit')
      row['intrinsics'] = intrinsics[(city, seq)]
    return common.ExampleIndex.from_rows(rows)

  def _intrinsics(self, split: str, images: list[str]) -> dict:
    """Normalised intrinsics per (city, sequence), from camera JSONs where they exist."""
    cameras = {}
    for path in glob.glob(os.path.join(self.root, 'camera', split, '*', '*_camera.json')):
      city, seq, _ = parse_name(path.replace('_camera.json', '_leftImg8bit.json'))
      cameras[(city, seq)] = path
    sizes = {}  # one header read per city: a city's images share a size
    result = {}
    missing = 0
    for image in images:
      city, seq, _ = parse_name(image)
      if (city, seq) in result:
        continue
      if (city, seq) not in cameras:
        missing += 1
        result[(city, seq)] = DEFAULT_INTRINSICS
        continue
      if city not in sizes:
        sizes[city] = common.image_size(image)
      width, height = sizes[city]
      k = read_camera(cameras[(city, seq)])['intrinsic']
      result[(city, seq)] = (k['fx'] / width, k['fy'] / height, k['u0'] / width, k['v0'] / height)
    if missing:
      logging.info('Cityscapes %s: %d snippets without camera JSON use the official intrinsics',
                   split, missing)
    return result


def read_camera(path: str) -> dict:
  """A camera JSON whose intrinsics (pixels) are finite numbers with positive focal lengths, else
  a DataError naming the file (the intrinsics of self-supervised depth come from here)."""
  camera = common.read_json(path)
  k = camera.get('intrinsic') if isinstance(camera, dict) else None
  if not isinstance(k, dict):
    raise common.DataError(f'{path}: no "intrinsic" object')
  for key in ('fx', 'fy', 'u0', 'v0'):
    if key not in k:
      raise common.DataError(f'{path}: missing intrinsic key {key!r}')
    value = k[key]
    # bool is an int to Python, but never an intrinsic
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise common.DataError(f'{path}: intrinsic {key} is {value!r}, expected a finite number')
  if k['fx'] <= 0 or k['fy'] <= 0:
    raise common.DataError(f'{path}: focal lengths fx={k["fx"]}, fy={k["fy"]} must be positive')
  return camera


def rescale_camera(camera: dict, scale_x: float, scale_y: float) -> dict:
  """A camera JSON for images resized by (scale_x, scale_y): intrinsics follow the pixels."""
  k = dict(camera['intrinsic'])
  k.update(fx=k['fx'] * scale_x, u0=k['u0'] * scale_x, fy=k['fy'] * scale_y, v0=k['v0'] * scale_y)
  return dict(camera, intrinsic=k)
