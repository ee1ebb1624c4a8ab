"""The on-disk layouts of the real datasets, and the ground truth written beside them.

`plan_layout` decides, per snippet, which frames are rendered and under which file names (and
split) each frame is written; `write_frame` writes one rendered frame to all its targets, each with
its label in the dataset's own raw convention, plus the ground truth under `sdeseg_groundtruth/`;
`write_layout_files` writes the files a layout has once per world (the folder layout's
classes.json and intrinsics.json).
See docs/synthetic_world.md for the exact formats.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipelines.synthetic import geometry, labels, pngio
from data_pipelines.synthetic.render import FAR_DEPTH, RenderedFrame

LAYOUTS = ('cityscapes', 'gta5', 'synthia', 'camvid', 'folder')
GT_DIR = 'sdeseg_groundtruth'
CITIES = ('synthcity_a', 'synthcity_b', 'synthcity_c')
CAMVID_PREFIXES = ('0001TP', '0006R0', '0016E5', 'Seq05VD')
SYNTHIA_CONDITION = 'SUMMER'
CITYSCAPES_BASELINE = 0.209313
# The folder layout: snippet i is clip street{i:03d}, whose camera (square pixels, principal point
# at the centre) has the horizontal field of view FOLDER_HFOV_DEG[i % 4], written to
# intrinsics.json in the form FOLDER_CAMERA_FORMS[i % 4] ('default': the clip has no entry and
# reads the default one), so that the reader's every form of camera is exercised.
FOLDER_HFOV_DEG = (56.0, 62.0, 68.0, 60.0)
FOLDER_CAMERA_FORMS = ('pixels', 'normalized', 'hfov_deg', 'default')
# Metric depth PNGs hold round(256 * metres) in 16 bits (KITTI's convention); 0 = unknown.
DEPTH_PNG_SCALE = 256.0


@dataclasses.dataclass(frozen=True)
class ImageTarget:
  """One written copy of a rendered frame (paths relative to the dataset root)."""
  image: str
  label: str | None = None
  label_format: str | None = None  # 'cityscapes' | 'gta5' | 'viper' | 'synthia' | 'camvid' |
                                   # 'folder'
  camera: str | None = None        # Cityscapes camera JSON
  depth: str | None = None         # folder layout: metric depth as a 16-bit PNG


@dataclasses.dataclass(frozen=True)
class SnippetPlan:
  index: int                 # global snippet index (0-based)
  split: str | None          # the layout's split folder, None where the layout has no split
  frames: tuple              # frame indices to render
  targets: dict              # frame -> tuple[ImageTarget, ...]


def folder_clip(snippet: int) -> str:
  """The folder layout's clip (folder name) of a snippet."""
  return f'street{snippet:03d}'


def layout_intrinsics(layout: str, width: int, height: int, snippet: int = 0) -> np.ndarray:
  """[3, 3] intrinsics in pixels of a width x height image, from each dataset's normalised ones
  (the folder layout's differ per snippet, the others' are one camera)."""
  if layout == 'cityscapes':
    return geometry.intrinsics_matrix(2262.52 / 2048 * width, 2265.3018 / 1024 * height,
                                      1096.98 / 2048 * width, 513.137 / 1024 * height)
  if layout == 'gta5':
    return geometry.intrinsics_matrix(1.206285 * width, 2.144507 * height,
                                      0.5 * width, 0.5 * height)
  if layout == 'synthia':
    return geometry.intrinsics_matrix(532.740352 / 1280 * width, 532.740352 / 760 * height,
                                      0.5 * width, 0.5 * height)
  if layout == 'camvid':
    # CamVid ships no calibration: a 53-degree horizontal field of view, square pixels at 4:3.
    return geometry.intrinsics_matrix(1.0 * width, 4.0 / 3.0 * height,
                                      0.5 * width, 0.5 * height)
  if layout == 'folder':
    focal = 0.5 * width / math.tan(math.radians(FOLDER_HFOV_DEG[snippet % 4]) / 2)
    return geometry.intrinsics_matrix(focal, focal, 0.5 * width, 0.5 * height)
  raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")


def held_out_count(n: int, fraction: float) -> int:
  """Snippets held out for evaluation: round(fraction * n), at least 1 (if fraction > 0 and
  n >= 2) and leaving at least one for training."""
  if fraction <= 0 or n < 2:
    return 0
  return int(min(max(round(fraction * n), 1), n - 1))


def assign_splits(layout: str, n: int, val_fraction: float) -> list:
  """Split of each snippet: training first, held-out snippets last (deterministic)."""
  if layout == 'synthia':
    return [None] * n
  # folder: train and val (its layout allows test; the world holds out one split, as Cityscapes)
  n_val = held_out_count(n, val_fraction)
  n_test = 0
  if layout == 'camvid' and n - n_val >= 2:  # CamVid also has a test split
    n_test = held_out_count(n - n_val, val_fraction)
  n_train = n - n_val - n_test
  return ['train'] * n_train + ['val'] * n_val + ['test'] * n_test


def plan_layout(layout: str, sequences: int, frames: int, val_fraction: float) -> list:
  """[SnippetPlan] for every snippet of a world."""
  splits = assign_splits(layout, sequences, val_fraction)
  anno = frames // 2
  counters: dict = {}
  plans = []
  for index, split in enumerate(splits):
    position = counters.get(split, 0)
    counters[split] = position + 1
    targets = {f: [] for f in range(frames)}
    if layout == 'cityscapes':
      # As in Cityscapes, the cities of different splits differ, so example ids are unique.
      city, seq = CITIES[position % len(CITIES)], position // len(CITIES)
      city = city if split == 'train' else f'{city}_{split}'
      for f in range(frames):
        targets[f].append(ImageTarget(
            f'leftImg8bit_sequence/{split}/{city}/{city}_{seq:06d}_{f:06d}_leftImg8bit.png'))
      stem = f'{city}/{city}_{seq:06d}_{anno:06d}'
      targets[anno].append(ImageTarget(
          f'leftImg8bit/{split}/{stem}_leftImg8bit.png',
          f'gtFine/{split}/{stem}_gtFine_labelIds.png', 'cityscapes',
          camera=f'camera/{split}/{stem}_camera.json'))
    elif layout == 'gta5':
      targets[anno].append(
          ImageTarget(f'images/{index + 1:05d}.png', f'labels/{index + 1:05d}.png', 'gta5'))
      seq = position + 1
      for f in range(frames):
        name = f'{seq:03d}/{seq:03d}_{f:05d}.png'
        targets[f].append(ImageTarget(f'sequences/{split}/img/{name}',
                                      f'sequences/{split}/cls/{name}', 'viper'))
    elif layout == 'synthia':
      targets[anno].append(ImageTarget(f'RAND_CITYSCAPES/RGB/{index:07d}.png',
                                       f'RAND_CITYSCAPES/GT/LABELS/{index:07d}.png', 'synthia'))
      folder = f'SYNTHIA-SEQS-{index + 1:02d}-{SYNTHIA_CONDITION}'
      for f in range(frames):
        targets[f].append(ImageTarget(f'{folder}/RGB/Stereo_Left/Omni_F/{f:06d}.png',
                                      f'{folder}/GT/LABELS/Stereo_Left/Omni_F/{f:06d}.png',
                                      'synthia'))
    elif layout == 'camvid':
      name = f'{CAMVID_PREFIXES[index % len(CAMVID_PREFIXES)]}_{30 * index + anno:06d}.png'
      targets[anno].append(ImageTarget(f'{split}/{name}', f'{split}annot/{name}', 'camvid'))
    elif layout == 'folder':
      # The annotated image is named by its frame number, so the reader pairs it with its frame.
      clip = folder_clip(index)
      stem = f'{split}/{clip}/{anno:06d}'
      targets[anno].append(ImageTarget(f'images/{stem}.png', f'labels/{stem}.png', 'folder',
                                       depth=f'depth/{stem}.png'))
      if frames >= 3:  # a video needs a frame with both neighbours
        for f in range(frames):
          targets[f].append(ImageTarget(f'sequences/{clip}/{f:06d}.png'))
    else:
      raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    targets = {f: tuple(t) for f, t in targets.items() if t}
    plans.append(SnippetPlan(index=index, split=split, frames=tuple(sorted(targets)),
                             targets=targets))
  return plans


# ------------------------------------------------------------------------------------------------
# Writers.

def groundtruth_stem(image_relpath: str) -> str:
  """'a/b/name.png' -> 'sdeseg_groundtruth/a/b/name' (append '_depth.npy' etc.)."""
  return f'{GT_DIR}/{os.path.splitext(image_relpath)[0]}'


def _ensure_parent(path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  return path


def _save_pil(image: Image.Image, path: Path) -> None:
  image.save(_ensure_parent(path), format='PNG')


def _write_label(root: Path, target: ImageTarget, frame: RenderedFrame) -> None:
  path = _ensure_parent(root / target.label)
  ids = frame.label
  fmt = target.label_format
  if fmt == 'cityscapes':
    _save_pil(Image.fromarray(ids), path)
  elif fmt == 'gta5':
    # Palette indices are the labelIds themselves, as GTA5 ships its labels.
    image = Image.frombytes('P', (ids.shape[1], ids.shape[0]), np.ascontiguousarray(ids).tobytes())
    image.putpalette(labels.cityscapes_palette())
    _save_pil(image, path)
  elif fmt == 'viper':
    _save_pil(Image.fromarray(labels.cityscapes_colors()[ids]), path)
  elif fmt == 'synthia':
    classes = labels.SYNTHIA_FROM_CITYSCAPES[ids]
    classes = np.where(frame.lane_marking, labels.SYNTHIA_LANE_MARKING, classes)
    classes = classes.astype(np.uint16)
    zeros = np.zeros_like(classes)
    pngio.write_png_u16(path, np.stack([classes, zeros, zeros], axis=-1))
  elif fmt == 'camvid':
    _save_pil(Image.fromarray(labels.CAMVID_FROM_CITYSCAPES[ids]), path)
  elif fmt == 'folder':
    _save_pil(Image.fromarray(labels.CLASS_ID_FROM_CITYSCAPES[ids]), path)
  else:
    raise ValueError(f'unknown label format {fmt!r}')


def cityscapes_camera_json(K: np.ndarray, height_m: float, pitch_rad: float) -> dict:
  """Cityscapes camera JSON; intrinsics in pixels of the written images. Cityscapes' pitch is
  positive when the camera looks down, the opposite of the world's nose-up pitch."""
  return {
      'extrinsic': {'baseline': CITYSCAPES_BASELINE, 'pitch': 0.0 - float(pitch_rad), 'roll': 0.0,
                    'x': 1.7, 'y': 0.0, 'yaw': 0.0, 'z': float(height_m)},
      'intrinsic': {'fx': float(K[0, 0]), 'fy': float(K[1, 1]),
                    'u0': float(K[0, 2]), 'v0': float(K[1, 2])},
  }


def _write_json(path: Path, payload) -> None:
  with open(_ensure_parent(path), 'w') as f:
    json.dump(payload, f, indent=1, sort_keys=True)
    f.write('\n')


def depth_png(depth: np.ndarray) -> np.ndarray:
  """[H, W] uint16 round(256 * metres) of [H, W] float metres; 0 (unknown) for the sky and for
  depths a 16-bit PNG cannot hold."""
  scaled = np.round(depth.astype(np.float64) * DEPTH_PNG_SCALE)
  return np.where((depth < FAR_DEPTH) & (scaled <= 65535), scaled, 0).astype(np.uint16)


def write_frame(root: Path, targets, frame: RenderedFrame, K: np.ndarray, height_m: float,
                pitch_rad: float) -> None:
  """Writes a rendered frame to every target (image, label, camera JSON, depth PNG) and its ground
  truth."""
  rgb = Image.fromarray(frame.image)
  moving = Image.fromarray(np.where(frame.moving, 255, 0).astype(np.uint8))
  label_ids = Image.fromarray(frame.label)
  for target in targets:
    _save_pil(rgb, root / target.image)
    if target.label:
      _write_label(root, target, frame)
    if target.camera:
      _write_json(root / target.camera, cityscapes_camera_json(K, height_m, pitch_rad))
    if target.depth:
      _save_pil(Image.fromarray(depth_png(frame.depth)), root / target.depth)
    stem = root / groundtruth_stem(target.image)
    np.save(_ensure_parent(Path(f'{stem}_depth.npy')), frame.depth)
    _save_pil(moving, Path(f'{stem}_moving.png'))
    _save_pil(label_ids, Path(f'{stem}_labelIds.png'))


def folder_camera(form: str, K: np.ndarray, width: int, height: int, hfov_deg: float) -> dict:
  """The intrinsics.json ENTRY of camera K in one of the folder layout's forms."""
  fx, fy, cx, cy = (float(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
  if form == 'pixels':
    return {'fx': fx, 'fy': fy, 'cx': cx, 'cy': cy, 'units': 'pixels', 'size': [width, height]}
  if form == 'normalized':
    return {'fx': fx / width, 'fy': fy / height, 'cx': cx / width, 'cy': cy / height,
            'units': 'normalized'}
  return {'hfov_deg': hfov_deg}


def write_layout_files(root: Path, layout: str, plans, width: int, height: int) -> None:
  """The files a layout has once per world: the folder layout's classes.json and intrinsics.json
  (one camera per clip, in the forms FOLDER_CAMERA_FORMS)."""
  if layout != 'folder':
    return
  _write_json(root / 'classes.json', {'classes': labels.folder_classes(),
                                      'ignore_id': labels.IGNORE_ID})
  clips = {}
  for plan in plans:
    form = FOLDER_CAMERA_FORMS[plan.index % 4]
    if form != 'default':
      K = layout_intrinsics(layout, width, height, plan.index)
      clips[folder_clip(plan.index)] = folder_camera(form, K, width, height,
                                                     FOLDER_HFOV_DEG[plan.index % 4])
  default = {'hfov_deg': FOLDER_HFOV_DEG[FOLDER_CAMERA_FORMS.index('default')]}
  _write_json(root / 'intrinsics.json', {'default': default, 'clips': clips})


def write_json(path: Path, payload) -> None:
  """Writes pretty, key-sorted JSON (deterministic bytes), creating parent folders."""
  _write_json(path, payload)
