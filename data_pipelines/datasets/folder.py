"""A generic layout for the user's own data: images, 8-bit class-id label maps, video frames and
cameras in plain folders, the classes described in classes.json (docs/folder_dataset.md).

Layout (relative to the root; a prepared tree keeps it):
  classes.json     {"classes": [{"name": "road", "colour": [128, 64, 128]}, ...],  index = class id
                    "ignore_id": 255,            optional (default 255): raw id of unlabelled pixels
                    "id_map": {"7": 0, "8": 1}}  optional: raw id in the label PNGs -> class id
                                                 (255 ignores a raw id); without it label pixels
                                                 are class ids
  intrinsics.json  {"default": ENTRY, "clips": {"<clip>": ENTRY, ...}}   (either key optional)
                   ENTRY: {"fx", "fy", "cx", "cy", "units": "pixels", "size": [W, H]}
                          {"fx", "fy", "cx", "cy", "units": "normalized"}      (fx/W, fy/H, ...)
                          {"hfov_deg": 90}   principal point at the centre, square pixels
  images/{train,val[,test]}/[<clip>/]<name>.{png,jpg}
  labels/{train,val[,test]}/[<clip>/]<name>.png     an image without a label is unlabeled
  sequences/<clip>/<frame>.{png,jpg}                video; <frame> ends in a frame number
  pairs.json       optional {"images/train/<clip>/<name>.jpg": "sequences/<clip>/000123.jpg"}
  depth/{train,val}/[<clip>/]<name>.{png,npy}     optional metric depth, data_pipelines.depth_truth

An image's clip is the first folder under images/<split> ('' when it has none); its example id is
its path under images/<split> without extension, '/' replaced by '_'. Its camera is its clip's
intrinsics entry, else "default", else unknown (NaN). Its video frame is its pairs.json entry, else
sequences/<clip>/<name>.* when its name is a frame of that clip; the frames numbered one less and
one more are its neighbours. pairs.json paths are matched without their extensions, so the entries
still hold in a prepared tree, whose images have the prepared format's extension.

The video is not split: sequences('train') holds every frame of sequences/*/ with both neighbours,
id '<clip>_<frame>', with its clip's camera (required). prepare copies classes.json and
pairs.json and writes intrinsics.json with every camera normalised (a size in pixels, or the aspect
ratio an hfov entry takes from the images, would not hold after resizing).
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os

from data_pipelines.datasets import common

CLASSES_FILE = 'classes.json'
INTRINSICS_FILE = 'intrinsics.json'
PAIRS_FILE = 'pairs.json'
SPLITS = ('train', 'val', 'test')
_CLASSES_EXAMPLE = ('{"classes": [{"name": "road", "colour": [128, 64, 128]}, ...], '
                    '"ignore_id": 255, "id_map": {"7": 0, ...}} (ignore_id and id_map optional)')
_CAMERA_KEYS = {'pixels': {'fx', 'fy', 'cx', 'cy', 'units', 'size'},
                'normalized': {'fx', 'fy', 'cx', 'cy', 'units'}}
_UNITS = {'pixels': 'pixels', 'normalized': 'normalized', 'normalised': 'normalized'}


# --------------------------------------------------------------------------------------------------
# classes.json

def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _class_entry(entry, where: str) -> tuple[str, tuple[int, int, int]]:
  """(name, colour) of one element of classes.json's "classes"."""
  if not isinstance(entry, dict):
    raise common.DataError(f'{where} is {entry!r}, expected {{"name": ..., "colour": [r, g, b]}}')
  unknown = sorted(set(entry) - {'name', 'colour'})
  if unknown:
    raise common.DataError(f'{where}: unknown keys {unknown} (a class has "name" and "colour")')
  name = entry.get('name')
  if not isinstance(name, str) or not name.strip():
    raise common.DataError(f'{where}: no "name" (each class needs a non-empty name and a colour)')
  colour = entry.get('colour')
  if (not isinstance(colour, list) or len(colour) != 3
      or not all(_is_int(c) and 0 <= c <= 255 for c in colour)):
    raise common.DataError(f'{where} ({name!r}): colour {colour!r} is not 3 integers in 0..255')
  return name, tuple(colour)


def _id_map(raw_map, num_classes: int, ignore_id: int, source: str) -> dict[int, int]:
  """raw id -> class id, or IGNORE_LABEL for raw ids mapped to 255."""
  if not isinstance(raw_map, dict) or not raw_map:
    raise common.DataError(f'{source}: "id_map" is {raw_map!r}, expected a non-empty object of '
                           'raw id -> class id, e.g. {"7": 0, "8": 1}')
  result = {}
  for key, value in raw_map.items():
    try:
      raw = int(key)
    except ValueError:
      raw = -1
    if not 0 <= raw <= 255:
      raise common.DataError(f'{source}: id_map key {key!r} is not a raw id in 0..255')
    if raw == ignore_id:
      raise common.DataError(f'{source}: id_map maps raw id {raw}, which is the ignore_id; '
                             'remove it from id_map or choose another ignore_id')
    if not _is_int(value) or not (0 <= value < num_classes or value == common.IGNORE_LABEL):
      raise common.DataError(f'{source}: id_map[{key!r}] is {value!r}, expected a class id in '
                             f'0..{num_classes - 1} (or {common.IGNORE_LABEL} to ignore it)')
    result[raw] = value
  return result


def parse_classes(data, source: str) -> common.LabelSpec:
  """The LabelSpec of a classes.json document (`source` names it in messages)."""
  if not isinstance(data, dict) or not isinstance(data.get('classes'), list):
    raise common.DataError(f'{source}: expected {_CLASSES_EXAMPLE}')
  unknown = sorted(set(data) - {'classes', 'ignore_id', 'id_map'})
  if unknown:
    raise common.DataError(f'{source}: unknown keys {unknown}; expected {_CLASSES_EXAMPLE}')
  entries = data['classes']
  if not 1 <= len(entries) <= 255:
    raise common.DataError(f'{source}: {len(entries)} classes; a dataset has 1 to 255')
  classes = [_class_entry(c, f'{source}: classes[{i}]') for i, c in enumerate(entries)]
  names = [name for name, _ in classes]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise common.DataError(f'{source}: class names {repeated} occur more than once')
  ignore_id = data.get('ignore_id', common.IGNORE_LABEL)
  if not _is_int(ignore_id) or not 0 <= ignore_id <= 255:
    raise common.DataError(f'{source}: ignore_id {ignore_id!r} is not an id in 0..255')
  if 'id_map' in data:
    mapping = _id_map(data['id_map'], len(classes), ignore_id, source)
    id_to_train = {raw: c for raw, c in mapping.items() if c != common.IGNORE_LABEL}
    valid = set(mapping) | {ignore_id}
  else:  # label pixels are class ids
    if ignore_id < len(classes):
      raise common.DataError(
          f'{source}: ignore_id {ignore_id} is the id of class {names[ignore_id]!r}; without an '
          f'id_map, label pixels are class ids, so the ignore_id must be >= {len(classes)}')
    id_to_train = {i: i for i in range(len(classes))}
    valid = set(id_to_train) | {ignore_id}
  return common.LabelSpec(class_names=tuple(names), id_to_train=id_to_train,
                          valid_ids=frozenset(valid), colours=tuple(c for _, c in classes))


def read_classes(root: str) -> common.LabelSpec:
  """The LabelSpec of <root>/classes.json; a missing or malformed file is a DataError naming it."""
  path = os.path.join(root, CLASSES_FILE)
  if not os.path.exists(path):
    raise common.DataError(f'{path}: missing; a folder dataset describes its classes there: '
                           f'{_CLASSES_EXAMPLE}')
  return parse_classes(common.read_json(path), path)


# --------------------------------------------------------------------------------------------------
# intrinsics.json

@dataclasses.dataclass(frozen=True)
class Camera:
  """One intrinsics.json entry: normalised (fx/W, fy/H, cx/W, cy/H), or a horizontal field of view
  whose fy follows the aspect ratio of the images it serves (square pixels)."""
  normalised: tuple[float, float, float, float] | None = None
  hfov_deg: float | None = None

  def at(self, size: tuple[int, int] | None) -> tuple[float, float, float, float]:
    """Normalised (fx, fy, cx, cy) for images of `size` (W, H; only an hfov entry needs it)."""
    if self.normalised is not None:
      return self.normalised
    fx = 0.5 / math.tan(math.radians(self.hfov_deg) / 2)
    width, height = size
    return (fx, fx * width / height, 0.5, 0.5)


def parse_camera(entry, where: str) -> Camera:
  """The Camera of one intrinsics.json ENTRY (`where` names the file and key in messages)."""
  if not isinstance(entry, dict):
    raise common.DataError(f'{where} is {entry!r}, expected an object with fx, fy, cx, cy and '
                           'units, or hfov_deg')
  if 'hfov_deg' in entry:
    hfov = entry['hfov_deg']
    if set(entry) != {'hfov_deg'}:
      raise common.DataError(f'{where}: hfov_deg stands alone (principal point at the centre, '
                             f'square pixels), but it also has {sorted(set(entry) - {"hfov_deg"})}')
    if not _is_number(hfov) or not 0 < hfov < 180:
      raise common.DataError(f'{where}: hfov_deg {hfov!r} is not a number of degrees in (0, 180)')
    return Camera(hfov_deg=float(hfov))
  units = _UNITS.get(entry.get('units'))
  if units is None:
    raise common.DataError(f'{where}: units {entry.get("units")!r}, expected "pixels" (with '
                           '"size": [W, H]) or "normalized" (fx/W, fy/H, cx/W, cy/H)')
  unknown = sorted(set(entry) - _CAMERA_KEYS[units])
  missing = sorted(_CAMERA_KEYS[units] - set(entry))
  if unknown or missing:
    raise common.DataError(f'{where}: an entry in {units} has exactly the keys '
                           f'{sorted(_CAMERA_KEYS[units])}' + (f'; missing {missing}' if missing
                                                               else f'; unknown {unknown}'))
  values = [entry[k] for k in ('fx', 'fy', 'cx', 'cy')]
  if not all(_is_number(v) for v in values) or values[0] <= 0 or values[1] <= 0:
    raise common.DataError(f'{where}: fx, fy, cx, cy are {values}, expected finite numbers with '
                           'positive fx, fy')
  if units == 'normalized':
    return Camera(normalised=tuple(float(v) for v in values))
  size = entry['size']
  if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
    raise common.DataError(f'{where}: size {size!r} is not [W, H], the positive image size in '
                           'pixels the intrinsics were measured at')
  width, height = size
  fx, fy, cx, cy = values
  return Camera(normalised=(fx / width, fy / height, cx / width, cy / height))


def read_cameras(root: str) -> tuple[Camera | None, dict[str, Camera]]:
  """(default camera or None, clip -> camera) of <root>/intrinsics.json (none if it is missing)."""
  path = os.path.join(root, INTRINSICS_FILE)
  if not os.path.exists(path):
    return None, {}
  data = common.read_json(path)
  if not isinstance(data, dict) or set(data) - {'default', 'clips'}:
    raise common.DataError(f'{path}: expected {{"default": ENTRY, "clips": {{"<clip>": ENTRY}}}} '
                           f'(either key optional), not {str(data)[:80]}')
  clips = data.get('clips', {})
  if not isinstance(clips, dict):
    raise common.DataError(f'{path}: "clips" is {clips!r}, expected {{"<clip>": ENTRY, ...}}')
  default = parse_camera(data['default'], f'{path}: default') if 'default' in data else None
  return default, {clip: parse_camera(entry, f'{path}: clips.{clip}')
                   for clip, entry in clips.items()}


def camera_entry(intrinsics: tuple[float, float, float, float]) -> dict:
  """The intrinsics.json ENTRY of normalised intrinsics."""
  return dict(zip(('fx', 'fy', 'cx', 'cy'), (float(v) for v in intrinsics)), units='normalized')


# --------------------------------------------------------------------------------------------------
# Files of the layout.

def _relative_stem(path: str, base: str) -> str:
  """'<base>/a/b.png' -> 'a/b' (always '/'-separated)."""
  return os.path.splitext(os.path.relpath(path, base))[0].replace(os.sep, '/')


def _strip_image_extension(path: str) -> str:
  stem, ext = os.path.splitext(path)
  return stem if ext.lower() in common.IMAGE_EXTENSIONS + ('.jpeg',) else path


class _Frames:
  """The video frames of sequences/, looked up by clip and name or by clip and frame number."""

  def __init__(self, frames: list[tuple[str, str, int, str]]):
    """frames: (clip, prefix, number, path) of every frame, sorted by path."""
    self.by_clip = {}  # clip -> [(prefix, number, path)] in path order
    self._by_name, self._by_number = {}, {}
    for clip, prefix, number, path in frames:
      self.by_clip.setdefault(clip, []).append((prefix, number, path))
      self._by_name[(clip, os.path.splitext(os.path.basename(path))[0])] = (prefix, number, path)
      self._by_number[(clip, prefix, number)] = path

  def find(self, clip: str, name: str) -> tuple[str, int, str] | None:
    """(prefix, number, path) of frame sequences/<clip>/<name>.*, or None."""
    return self._by_name.get((clip, name))

  def neighbour(self, clip: str, frame: tuple[str, int, str], step: int) -> str:
    """The path of the frame `step` numbers after `frame` in its clip, or ''."""
    prefix, number, _ = frame
    return self._by_number.get((clip, prefix, number + step), '')


class Folder(common.Reader):
  """The generic folder layout (module docstring); classes and cameras come from the tree."""
  name = 'folder'
  segmentation_splits = SPLITS
  sequence_splits = ('train',)
  prepare_patterns = (
      ('copy', CLASSES_FILE),
      ('copy', PAIRS_FILE),
      ('intrinsics', INTRINSICS_FILE),
      ('image', 'images/*/**/*.*'),
      ('label', 'labels/*/**/*.png'),
      ('image', 'sequences/*/*.*'),
  )

  def __init__(self, root: str, **kwargs):
    super().__init__(root, **kwargs)
    self.label_spec = read_classes(self.root)
    self._default_camera, self._cameras = read_cameras(self.root)
    self._sizes = {}  # clip -> (W, H) of its first frame, for hfov entries

  @classmethod
  def label_spec_at(cls, root: str) -> common.LabelSpec:
    return read_classes(root)

  # ---- listing ----

  def _frames(self) -> _Frames:
    """Every frame of sequences/<clip>/ (the sequence root, if one is set)."""
    base = os.path.join(self.sequence_root or self.root, 'sequences')
    stray = common.find_images(os.path.join(base, '*.*'))
    if stray:
      raise common.DataError(f'{stray[0]}: video frames belong in a clip folder, '
                             f'sequences/<clip>/<frame number>.png')
    frames = []
    for path in common.find_images(os.path.join(base, '*', '*.*')):
      prefix, number = common.trailing_number(os.path.splitext(os.path.basename(path))[0], path)
      frames.append((os.path.basename(os.path.dirname(path)), prefix, number, path))
    return _Frames(frames)

  def _pairs(self, frames: _Frames) -> dict[str, tuple[str, tuple[str, int, str]]]:
    """pairs.json as image stem ('images/<split>/<clip>/<name>') -> (clip, frame); an entry naming
    a missing frame is an error naming both."""
    path = os.path.join(self.root, PAIRS_FILE)
    if not os.path.exists(path):
      return {}
    data = common.read_json(path)
    if not isinstance(data, dict):
      raise common.DataError(f'{path}: expected {{"images/<split>/<clip>/<name>.jpg": '
                             '"sequences/<clip>/<frame>.jpg", ...}')
    pairs = {}
    for image, frame in data.items():
      parts = _strip_image_extension(str(frame)).split('/')
      if not isinstance(frame, str) or len(parts) != 3 or parts[0] != 'sequences':
        raise common.DataError(f'{path}: entry {image!r} -> {frame!r}: the frame must be a path '
                               'sequences/<clip>/<frame>.jpg relative to the dataset root')
      found = frames.find(parts[1], parts[2])
      if found is None:
        raise common.DataError(f'{path}: entry {image!r} names the frame {frame!r}, which is not '
                               f'in {os.path.join(self.sequence_root or self.root, "sequences")}; '
                               'fix the entry or add the frame')
      pairs[_strip_image_extension(image)] = (parts[1], found)
    return pairs

  def _split_images(self, split: str) -> dict[str, str]:
    """Image stem relative to images/<split> -> path, for a split that has an images folder."""
    if split not in SPLITS:
      raise common.DataError(f'{self.root}: no {split!r} split in the folder layout '
                             f'(splits: {", ".join(SPLITS)})')
    folder = common.require_dir(os.path.join(self.root, 'images', split), f'folder {split} images')
    images = {}
    for path in common.find_images(os.path.join(folder, '**', '*.*')):
      stem = _relative_stem(path, folder)
      if stem in images:
        raise common.DataError(f'{path}: {images[stem]} has the same name; keep one of them')
      images[stem] = path
    if not images:
      raise common.DataError(f'{folder}: no images (.png, .jpg)')
    return images

  def _split_labels(self, split: str, images: dict[str, str]) -> dict[str, str]:
    """Image stem -> label path; a label without its image is an error naming it."""
    folder = os.path.join(self.root, 'labels', split)
    labels = {}
    for path in sorted(glob.glob(os.path.join(folder, '**', '*.*'), recursive=True)):
      stem, ext = os.path.splitext(path)
      if ext.lower() not in common.IMAGE_EXTENSIONS + ('.jpeg',):
        continue
      if ext != '.png':
        raise common.DataError(f'{path}: label maps must be 8-bit PNG files (.png)')
      stem = _relative_stem(path, folder)
      if stem not in images:
        raise common.DataError(
            f'{path}: a label map without an image (expected '
            f'{os.path.join(self.root, "images", split, stem)}.png or .jpg); add the image or '
            'remove the label')
      labels[stem] = path
    return labels

  # ---- cameras ----

  def _camera(self, clip: str) -> Camera | None:
    return self._cameras.get(clip, self._default_camera) if clip else self._default_camera

  def _size(self, clip: str, frames: _Frames, image: str) -> tuple[int, int]:
    """(W, H) an hfov entry of `clip` is read at: its first frame's, else the image's own."""
    first = frames.by_clip.get(clip)
    if not first:
      return common.image_size(image)
    if clip not in self._sizes:
      self._sizes[clip] = common.image_size(first[0][2])
    return self._sizes[clip]

  def _intrinsics(self, clip: str, frames: _Frames, image: str) -> tuple | None:
    camera = self._camera(clip)
    if camera is None:
      return None
    return camera.at(None if camera.hfov_deg is None else self._size(clip, frames, image))

  def _missing_camera(self, clip: str, why: str) -> common.DataError:
    path = os.path.join(self.root, INTRINSICS_FILE)
    state = 'has no entry for it' if os.path.exists(path) else 'is missing'
    return common.DataError(f'{path}: {state}, but {why} needs the camera of clip {clip!r}; add '
                            f'an entry for clip {clip!r} under "clips" or a "default"')

  # ---- indices ----

  def _segmentation(self, split: str) -> common.ExampleIndex:
    images = self._split_images(split)
    labels = self._split_labels(split, images)
    frames = self._frames()
    pairs = self._pairs(frames)
    rows = []
    for stem, image in sorted(images.items(), key=lambda item: item[1]):
      clip = stem.split('/')[0] if '/' in stem else ''
      row = dict(id=stem.replace('/', '_'), image=image, label=labels.get(stem, ''))
      intrinsics = self._intrinsics(clip, frames, image)
      if intrinsics is not None:
        row['intrinsics'] = intrinsics
      row.update(self._neighbours(split, stem, clip, image, bool(row['label']), frames, pairs))
      rows.append(row)
    return common.ExampleIndex.from_rows(rows)

  def _neighbours(self, split, stem, clip, image, labeled, frames, pairs) -> dict:
    """{prev, next} of an image with a video frame; {} for one without, or for an unlabeled image
    named like a frame at a clip's end. A paired or labelled image's frame without both
    neighbours is an error naming both."""
    paired = pairs.get(f'images/{split}/{stem}')
    frame_clip, frame = paired if paired else (clip, frames.find(clip, stem.split('/')[-1]))
    if frame is None:
      return {}
    prev, nxt = (frames.neighbour(frame_clip, frame, step) for step in (-1, 1))
    if prev and nxt:
      return dict(prev=prev, next=nxt)
    if paired or labeled:
      lacking = frame[1] - 1 if not prev else frame[1] + 1
      how = f'paired with it in {os.path.join(self.root, PAIRS_FILE)}' if paired else 'of its name'
      raise common.DataError(
          f'{image}: its video frame {frame[2]} ({how}) has no neighbour frame number {lacking} '
          f'in {os.path.dirname(frame[2])}; add the frame or pair the image with another one')
    return {}

  def _sequences(self, split: str) -> common.ExampleIndex:
    if split != 'train':
      raise common.DataError(f'{self.root}: the folder layout\'s video is not split; its frames '
                             'are the sequences of split train')
    base = common.require_dir(os.path.join(self.sequence_root or self.root, 'sequences'),
                              'folder video frames, sequences/<clip>/<frame>.png')
    frames = self._frames()
    if not frames.by_clip:
      raise common.DataError(f'{base}: no frames (sequences/<clip>/<frame number>.png)')
    rows = []
    for clip, clip_frames in sorted(frames.by_clip.items()):
      folder = os.path.dirname(clip_frames[0][2])
      intrinsics = self._intrinsics(clip, frames, clip_frames[0][2])
      if intrinsics is None:
        raise self._missing_camera(clip, f'self-supervised depth on the frames of {folder}')
      clip_rows = common.triplets_from_numbered_frames(clip_frames, intrinsics)
      if not clip_rows:
        raise common.DataError(
            f'{folder}: no frame has both neighbours (t-1, t+1) among its {len(clip_frames)} '
            'frames; a clip needs three consecutively numbered frames')
      for row in clip_rows:
        row['id'] = f'{clip}_{row["id"]}'
      rows += clip_rows
    return common.ExampleIndex.from_rows(rows)

  # ---- validation and prepare ----

  def check_layout(self) -> None:
    """Lists every split the tree has and checks pairs.json against the images: the first bad
    file raises its DataError."""
    present = [s for s in SPLITS if os.path.isdir(os.path.join(self.root, 'images', s))]
    for split in SPLITS:
      labels = os.path.join(self.root, 'labels', split)
      if split not in present and os.path.isdir(labels):
        orphans = sorted(glob.glob(os.path.join(labels, '**', '*.png'), recursive=True))
        if orphans:
          raise common.DataError(f'{orphans[0]}: a label map without an image (there is no '
                                 f'{os.path.join(self.root, "images", split)} folder)')
    stems = set()
    for split in present:
      folder = os.path.join(self.root, 'images', split)
      stems |= {f'images/{split}/{_relative_stem(path, folder)}'
                for path in self._segmentation(split).images}
    for image in self._pairs(self._frames()):
      if image not in stems:
        raise common.DataError(f'{os.path.join(self.root, PAIRS_FILE)}: entry {image!r} names no '
                               'image of images/<split>/; fix the entry or add the image')
    if os.path.isdir(os.path.join(self.sequence_root or self.root, 'sequences')):
      self._sequences('train')

  def prepared_intrinsics(self) -> dict:
    """intrinsics.json for a prepared tree: every camera normalised, an hfov entry at the aspect
    ratio of the clip's images here (the prepared images may have another)."""
    frames = self._frames()
    clip_images = {}  # clip -> its first image, where it has images but no frames
    for split in SPLITS:
      folder = os.path.join(self.root, 'images', split)
      for path in common.find_images(os.path.join(folder, '**', '*.*')):
        stem = _relative_stem(path, folder)
        clip_images.setdefault(stem.split('/')[0] if '/' in stem else '', path)
    clips = {}
    for clip in sorted(set(self._cameras) | set(frames.by_clip) | set(clip_images) - {''}):
      camera = self._camera(clip)
      first = frames.by_clip[clip][0][2] if clip in frames.by_clip else clip_images.get(clip)
      if camera is not None and (camera.hfov_deg is None or first):
        clips[clip] = camera_entry(self._intrinsics(clip, frames, first))
    result = dict(clips=clips)
    default = self._default_camera
    if default is not None and default.hfov_deg is None:
      result['default'] = camera_entry(default.normalised)
    elif default is not None and '' in clip_images:  # images outside clip folders use it
      result['default'] = camera_entry(default.at(common.image_size(clip_images[''])))
    return result
