"""What every dataset reader shares: the example index, label tables, errors and file helpers.

A reader turns an on-disk layout into an `ExampleIndex`: parallel NumPy columns, one row per
example. Paths are absolute strings; an empty string means "absent" (an unlabeled image, a frame
without neighbours). Intrinsics are normalised by the image size (fx/W, fy/H, cx/W, cy/H), so they
hold at any resolution the images are resized to. A row's files are read from the file system, or
from the `FileStore` in its `storage` column (the TFDS backend keeps the same paths in ArrayRecord
shards).
"""

from __future__ import annotations

import abc
import dataclasses
import glob
import io
import json
import logging
import os
import re
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

IGNORE_LABEL = 255

# The 19 evaluation classes of Cityscapes, in trainId order.
CITYSCAPES_CLASSES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
    'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
    'bicycle')
# Their official colours (cityscapesscripts' labels.py), in the same order.
CITYSCAPES_COLOURS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32))

IMAGE_EXTENSIONS = ('.png', '.jpg')


class DataError(ValueError):
  """Bad input data: the message names the file, folder, key or value at fault."""


class FileStore(abc.ABC):
  """Prepared files kept somewhere other than the file system, looked up by their paths.

  Index rows whose `storage` is a store are read through it; their paths stay those of the prepared
  tree, so ids, paths and intrinsics are the same whichever backend serves the bytes.
  """

  @abc.abstractmethod
  def read(self, items: Sequence[tuple[str, str]]) -> list[bytes]:
    """The bytes of (index column, path) pairs; b'' for an empty path.

    The column ('images', 'labels', 'prev_frames', 'next_frames') lets a store that keeps a file in
    several records pick the one that serves the rest of the row. Raises a DataError naming a path
    the store does not hold.
    """

  @abc.abstractmethod
  def describe(self, path: str) -> str:
    """Where the store keeps `path` (for error messages)."""


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  """How a dataset's raw label ids map to training ids.

  Attributes:
    class_names: names of the training classes, index = training id.
    id_to_train: raw id -> training id; raw ids in `valid_ids` but not here map to IGNORE_LABEL.
    valid_ids: every raw id the dataset may contain; anything else is corrupt data.
    colours: (r, g, b) of each training class, for pictures of predictions.
  """
  class_names: tuple[str, ...]
  id_to_train: Mapping[int, int]
  valid_ids: frozenset[int]
  colours: tuple[tuple[int, int, int], ...]

  def __post_init__(self):
    if len(self.colours) != len(self.class_names):
      raise ValueError(f'LabelSpec: {len(self.colours)} colours for '
                       f'{len(self.class_names)} classes')

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def lookup_table(self) -> np.ndarray:
    """[256] uint8: raw id -> training id (IGNORE_LABEL for ignored and invalid ids)."""
    table = np.full(256, IGNORE_LABEL, np.uint8)
    for raw, train in self.id_to_train.items():
      table[raw] = train
    return table

  def colour_table(self) -> np.ndarray:
    """[256, 3] uint8: training id -> colour (black for the ignore id and unused ids)."""
    table = np.zeros((256, 3), np.uint8)
    table[:self.num_classes] = self.colours
    return table

  def raw_id_table(self) -> np.ndarray:
    """[256] uint8: training id -> the dataset's raw label id (the official result format)."""
    table = np.zeros(256, np.uint8)
    for raw, train in self.id_to_train.items():
      table[train] = raw
    return table

  def valid_table(self) -> np.ndarray:
    """[256] bool: whether a raw id may occur."""
    valid = np.zeros(256, bool)
    valid[sorted(self.valid_ids)] = True
    return valid

  def invalid_ids(self, raw: np.ndarray) -> list[int]:
    """Sorted raw ids of `raw` that the dataset cannot contain."""
    valid = self.valid_table()
    return [int(i) for i in np.unique(raw) if i > 255 or not valid[i]]

  def to_json(self) -> dict:
    """A JSON-able dict that `from_json` turns back into this spec."""
    return dict(class_names=list(self.class_names),
                id_to_train=[[int(r), int(t)] for r, t in sorted(self.id_to_train.items())],
                valid_ids=sorted(int(i) for i in self.valid_ids),
                colours=[list(c) for c in self.colours])

  @classmethod
  def from_json(cls, data: dict) -> 'LabelSpec':
    return cls(class_names=tuple(data['class_names']),
               id_to_train={int(r): int(t) for r, t in data['id_to_train']},
               valid_ids=frozenset(int(i) for i in data['valid_ids']),
               colours=tuple(tuple(int(v) for v in c) for c in data['colours']))


@dataclasses.dataclass(frozen=True)
class ExampleIndex:
  """Columns of a dataset split, one row per example.

  Attributes:
    ids: [N] str, unique example ids (also used to name depth labels and predictions).
    images: [N] str, path of the image (the centre frame t for sequences).
    labels: [N] str, path of the raw-id label map, '' where the example is unlabeled.
    prev_frames, next_frames: [N] str, paths of frames t-1 and t+1, '' where not a triplet.
    intrinsics: [N, 4] float32, normalised (fx, fy, cx, cy); NaN where the dataset has none.
    storage: [N] object, where the row's files are read: None = the file system, else the FileStore
      that holds them. A column, not one attribute, so that subsets, joins and concatenations of
      indices keep it without knowing about it.
  """
  ids: np.ndarray
  images: np.ndarray
  labels: np.ndarray
  prev_frames: np.ndarray
  next_frames: np.ndarray
  intrinsics: np.ndarray
  storage: np.ndarray

  @classmethod
  def from_rows(cls, rows: Sequence[dict]) -> 'ExampleIndex':
    """Builds an index of files from dicts with keys id, image and optional label, prev, next,
    intrinsics."""
    def column(key):
      return np.array([r.get(key, '') for r in rows], dtype=object).astype(str) if rows else (
          np.zeros([0], str))
    intrinsics = np.array([r.get('intrinsics', (np.nan,) * 4) for r in rows], np.float32)
    index = cls(ids=column('id'), images=column('image'), labels=column('label'),
                prev_frames=column('prev'), next_frames=column('next'),
                intrinsics=intrinsics.reshape(-1, 4), storage=np.full(len(rows), None, object))
    ids, counts = np.unique(index.ids, return_counts=True)
    if np.any(counts > 1):
      dup = str(ids[counts > 1][0])
      raise DataError(f'duplicate example id {dup!r}: {index.images[index.ids == dup].tolist()}')
    return index

  def __len__(self) -> int:
    return len(self.ids)

  def subset(self, rows: Iterable[int] | np.ndarray) -> 'ExampleIndex':
    rows = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, np.int64)
    return ExampleIndex(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))

  def select_ids(self, ids: Sequence[str]) -> 'ExampleIndex':
    """The rows of `ids`, in that order; an unknown id is an error naming it."""
    position = {i: n for n, i in enumerate(self.ids.tolist())}
    missing = [i for i in ids if i not in position]
    if missing:
      raise DataError(f'unknown example ids {missing[:5]} ({len(missing)} in all)')
    return self.subset([position[i] for i in ids])

  def without_labels(self) -> 'ExampleIndex':
    return dataclasses.replace(self, labels=np.full(len(self), '', dtype=self.labels.dtype))

  @property
  def is_labeled(self) -> np.ndarray:
    return self.labels != ''

  @property
  def store(self) -> FileStore | None:
    """The storage all rows are read from (None: the file system); mixed storages are an error."""
    stores = {id(store): store for store in self.storage}
    if len(stores) > 1:
      where = ', '.join(sorted({'files' if s is None else type(s).__name__
                                for s in stores.values()}))
      raise DataError(f'the index mixes rows of {len(stores)} storages ({where}), e.g. '
                      f'{self.images[0]}; a pipeline reads from one')
    return next(iter(stores.values()), None)

  @property
  def is_triplet(self) -> np.ndarray:
    return (self.prev_frames != '') & (self.next_frames != '')


def require_dir(path: str, what: str) -> str:
  if not os.path.isdir(path):
    raise DataError(f'{path}: missing folder ({what})')
  return path


def find_images(pattern: str) -> list[str]:
  """Sorted files matching a glob pattern ending in '.*' ('**' matches any depth of folders),
  restricted to image extensions."""
  return sorted(p for p in glob.glob(pattern, recursive=True)
                if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS)


def with_image_extension(path_without_ext: str) -> str:
  """The existing image file for a path without extension, or '' when there is none."""
  for ext in IMAGE_EXTENSIONS:
    if os.path.exists(path_without_ext + ext):
      return path_without_ext + ext
  return ''


def image_size(path: str) -> tuple[int, int]:
  """(width, height) of an image, from its header."""
  try:
    with Image.open(path) as image:
      return image.size
  except (OSError, SyntaxError) as e:
    raise DataError(f'{path}: unreadable image ({e})') from e


def read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: unreadable JSON ({e})') from e


def split_by_count(paths: list[str], split: str, val_count: int, source: str) -> list[str]:
  """Datasets without official splits (GTA5, Synthia): the last `val_count` sorted files are val."""
  if split not in ('train', 'val', 'all'):
    raise DataError(f'{source}: unknown split {split!r} (this dataset has train, val, all)')
  if split == 'all':
    return paths
  if not 0 <= val_count < len(paths):
    raise DataError(f'{source}: val_count={val_count} does not leave training images '
                    f'({len(paths)} images in all)')
  return paths[len(paths) - val_count:] if split == 'val' else paths[:len(paths) - val_count]


def triplets_from_numbered_frames(frames: Sequence[tuple[str, int, str]],
                                  intrinsics: Sequence[float] | None = None) -> list[dict]:
  """Index rows for every frame whose two neighbours exist.

  Args:
    frames: (sequence key, frame number, path) for every frame of a sequence set.
    intrinsics: normalised (fx, fy, cx, cy) shared by all frames, or None to leave them unset.
  Returns:
    rows for `ExampleIndex.from_rows`, id = file name without extension, sorted by path.
  """
  by_key = {(key, number): path for key, number, path in frames}
  rows = []
  for key, number, path in sorted(frames, key=lambda f: f[2]):
    prev, nxt = by_key.get((key, number - 1)), by_key.get((key, number + 1))
    if prev and nxt:
      row = dict(id=os.path.splitext(os.path.basename(path))[0], image=path, prev=prev, next=nxt)
      if intrinsics is not None:
        row['intrinsics'] = tuple(intrinsics)
      rows.append(row)
  return rows


def trailing_number(stem: str, source: str) -> tuple[str, int]:
  """Splits 'prefix_00042' or '00042' into ('prefix', 42)."""
  match = re.fullmatch(r'(.*?)_?(\d+)', stem)
  if not match:
    raise DataError(f'{source}: file name {stem!r} does not end in a frame number')
  return match.group(1), int(match.group(2))


def open_source(path: str, column: str, store: FileStore | None) -> tuple[str, str | io.BytesIO]:
  """(name for messages, what Image.open reads) of a file of an index `column` ('images', 'labels')
  on the file system or, given one, in the FileStore that holds `path`."""
  if store is None:
    return path, path
  # a path the store lacks raises its DataError here
  return f'{path} ({store.describe(path)})', io.BytesIO(store.read([(column, path)])[0])


def decode_label_png(path: str, store: FileStore | None = None) -> np.ndarray:
  """[H, W] uint8 raw ids of a grayscale or palette PNG (a palette PNG's pixels are its indices),
  read from the file system or, given one, from the FileStore that holds `path`."""
  name, source = open_source(path, 'labels', store)
  try:
    with Image.open(source) as image:
      if image.mode not in ('L', 'P'):
        raise DataError(f'{name}: label map has mode {image.mode}, expected grayscale or '
                        'palette ids')
      return np.array(image, np.uint8)
  except (OSError, SyntaxError) as e:
    raise DataError(f'{name}: unreadable label map ({e})') from e


def kind_root(root: str, sequence_root: str, kind: str) -> str:
  """The tree the paths of a kind ('segmentation', 'sequences') are relative to: sequences may
  live in a tree of their own."""
  return sequence_root if kind == 'sequences' and sequence_root else root


class Reader(abc.ABC):
  """Parses one dataset's on-disk layout (raw or prepared) into example indices.

  Subclasses set `name`, `label_spec` (a class attribute, or an instance attribute for layouts
  whose classes are in the tree, which then override `label_spec_at`), `prepare_patterns` ((kind,
  glob relative to the root, '**' for any depth) for every file `data_pipelines.prepare` converts;
  kind is 'image', 'label', 'camera' (a Cityscapes camera JSON), 'intrinsics' (the reader's
  `prepared_intrinsics()`) or 'copy' (copied as it is)) and implement
  `_segmentation`; those with video implement `_sequences` and list `sequence_splits`. Callers
  list a split with `segmentation` / `sequences`, the one way in, which checks the listing against
  the data stage's record where the reader has one (`record`, set by data_pipelines.sources).
  """
  name: str
  label_spec: LabelSpec
  prepare_patterns: tuple[tuple[str, str], ...]
  segmentation_splits: tuple[str, ...] = ('train', 'val')
  sequence_splits: tuple[str, ...] = ()
  # Whether `val_count` decides the segmentation splits (datasets without official splits).
  splits_by_count: bool = False

  def __init__(self, root: str, *, val_count: int = 500, sequence_root: str = ''):
    self.root = os.path.abspath(os.path.expanduser(root))
    self.val_count = val_count
    self.sequence_root = sequence_root and os.path.abspath(os.path.expanduser(sequence_root))
    require_dir(self.root, f'{self.name} dataset root')

  # What the data stage recorded of this dataset's splits (a data_pipelines.records.SplitRecord):
  # with one, a split listed without an example it recorded is an error, not a smaller split.
  # None: splits are returned as the layout lists them (preparing, summarising, building shards).
  record = None

  def segmentation(self, split: str) -> ExampleIndex:
    """The images of a split with their label maps."""
    return self._as_recorded('segmentation', split, self._segmentation(split))

  def sequences(self, split: str) -> ExampleIndex:
    """Frame triplets (t-1, t, t+1) of a split's videos, for self-supervised depth."""
    return self._as_recorded('sequences', split, self._sequences(split))

  def _as_recorded(self, kind: str, split: str, index: ExampleIndex) -> ExampleIndex:
    return index if self.record is None else self.record.check(kind, split, index, self)

  def indices(self, kind: str) -> dict[str, ExampleIndex]:
    """split -> index, for every split of `kind` ('segmentation', 'sequences') the dataset has.
    With a record, the splits it holds, each listed as recorded: a split with files missing is an
    error, not a split to leave out. Without one, the splits that list (the others are logged)."""
    splits = self.segmentation_splits if kind == 'segmentation' else self.sequence_splits
    if self.record is not None:
      return {s: getattr(self, kind)(s) for s in splits if self.record.has(kind, s)}
    found = {}
    for split in splits:
      try:
        found[split] = getattr(self, kind)(split)
      except DataError as e:  # a split the tree does not have (e.g. no test images)
        logging.info('%s %s/%s: absent (%s)', self.root, kind, split, e)
    return found

  @abc.abstractmethod
  def _segmentation(self, split: str) -> ExampleIndex:
    """The layout's images of a split with their label maps, as found."""

  def _sequences(self, split: str) -> ExampleIndex:
    """The layout's frame triplets of a split, as found."""
    raise DataError(f'{self.root}: the {self.name} layout has no video sequences')

  def decode_raw_label(self, path: str) -> np.ndarray:
    """[H, W] uint8 raw ids of a label file as the dataset ships it."""
    return decode_label_png(path)

  @classmethod
  def label_spec_at(cls, root: str) -> LabelSpec:
    """The classes of the dataset whose tree is at `root` (prepared or raw), without listing it:
    for most layouts fixed by the dataset, for some described in the tree."""
    del root  # the class's own table
    return cls.label_spec

  def check_layout(self) -> None:
    """Raises a DataError naming the first bad file of the layout (the data stage and prepare
    call it before using the tree). Layouts whose listing of a split already checks what it reads
    check nothing more here; a missing split is not an error (it is recorded as absent)."""
