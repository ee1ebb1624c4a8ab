"""TFDS / ArrayRecord backend: a prepared tree's examples as TFDS datasets, read by random access.

Why: pods read their data from cloud storage, where listing folders and opening thousands of small
files per step is slow. ArrayRecord shards keep the same files in a few large files with random
access by record number, so the step-indexed sampling is unchanged: a plan's index rows become
record reads (one batched read per step, data_pipelines.pipeline) and the bytes are decoded and
augmented exactly as the files are.

Built once from the prepared tree that data_pipelines.prepare makes from the manual download:

    python -m data_pipelines.build_shards --dataset=cityscapes --root=/data/cityscapes_1024x512 \
        --resolution=1024x512 --tfds_dir=gs://BUCKET/tfds
    python -m data_pipelines.build_shards --config=configs/demo.py --workdir=W   # each dataset role

One builder per dataset layout (`sdeseg_cityscapes`, `sdeseg_gta5`, `sdeseg_synthia`,
`sdeseg_camvid`), with configs `segmentation_<W>x<H>` (one record per row of
`reader.segmentation(split)`, for every split the tree has) and, for layouts with video,
`sequences_<W>x<H>` (one record per frame triplet of `reader.sequences(split)`: a triplet's three
frames share a record, so one read serves an SDE example, for about three times the frames' bytes).
Features mirror an ExampleIndex row: id; image, label, prev_frame, next_frame (the prepared files'
bytes verbatim, b'' where absent); their paths relative to the tree; intrinsics (normalised, NaN
where unknown). Records are in index order. `metadata.json` holds every split's index columns, so
opening the shards reads no record, and what they were built from.

Reading: `open_reader` returns a Reader whose indices equal the folder reader's (the same ids, paths
and intrinsics; the paths name files of the prepared tree, which need not exist where the shards are
read) and carry a `ShardStore` in their `storage` column. Where the prepared tree is present, each
split read is compared with it and stale shards are an error; every record read checks the path it
was built from. Other tools can read the shards as plain TFDS datasets:

    tfds.data_source('sdeseg_cityscapes/segmentation_1024x512', split='train', data_dir=DIR)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import tempfile
import threading
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import datasets
from data_pipelines import prepare
from data_pipelines.datasets import common

KINDS = ('segmentation', 'sequences')
# Index column -> the record feature with that file's bytes (its relative path: feature + '_path').
FEATURE_OF_COLUMN = {'images': 'image', 'labels': 'label', 'prev_frames': 'prev_frame',
                     'next_frames': 'next_frame'}
# The prepare-marker keys that decide the files' contents (its `source` may move with the tree).
_MARKER_KEYS = ('dataset', 'resolution', 'image_format', 'files')
_READ_AHEAD = 64  # rows whose files are read in parallel while the writer serialises the previous


def config_name(kind: str, resolution: Sequence[int]) -> str:
  """The builder config holding `kind` at `resolution`, e.g. 'segmentation_1024x512'."""
  return f'{kind}_{int(resolution[0])}x{int(resolution[1])}'


def builder_name(dataset: str) -> str:
  return f'sdeseg_{dataset}'


def kinds_of(reader_cls: type[common.Reader]) -> tuple[str, ...]:
  return KINDS if reader_cls.sequence_splits else KINDS[:1]


def _reader_class(dataset: str) -> type[common.Reader]:
  if dataset not in datasets.READERS:
    known = ', '.join(sorted(datasets.READERS))
    raise common.DataError(f'unknown dataset {dataset!r} (known: {known})')
  return datasets.READERS[dataset]


def _directory(path: str) -> str:
  """A local path made absolute; a URL (gs://...) kept as it is."""
  return path if '://' in path else os.path.abspath(os.path.expanduser(path))


def build_command(dataset: str, root: str, resolution: Sequence[int], tfds_dir: str, *,
                  val_count: int, sequence_root: str) -> str:
  """The command that builds the shards, for error messages."""
  command = (f'python -m data_pipelines.build_shards --dataset={dataset} --root={root} '
             f'--resolution={resolution[0]}x{resolution[1]} --tfds_dir={tfds_dir}')
  if _reader_class(dataset).splits_by_count:
    command += f' --val_count={val_count}'
  if sequence_root:
    command += f' --sequence_root={sequence_root}'
  return command


# ---- The builders ----

@dataclasses.dataclass
class ShardsConfig(tfds.core.BuilderConfig):
  """What a builder config stores: `kind` (segmentation | sequences) at `resolution` (W, H)."""
  kind: str = 'segmentation'
  resolution: tuple[int, int] = (1024, 512)


def _features() -> tfds.features.FeaturesDict:
  def file(what):
    return tfds.features.Tensor(shape=(), dtype=np.object_,
                                doc=f'{what}: the prepared file\'s bytes, b"" where absent')

  def path(what):
    return tfds.features.Text(doc=f'path of the {what} relative to the prepared tree, "" if absent')

  features = {'id': tfds.features.Text(doc='example id (names depth labels and predictions)'),
              'intrinsics': tfds.features.Tensor(
                  shape=(4,), dtype=np.float32,
                  doc='normalised (fx/W, fy/H, cx/W, cy/H); NaN where the dataset has none')}
  for feature, what in (('image', 'image (frame t)'), ('label', '8-bit raw-id label PNG'),
                        ('prev_frame', 'frame t-1'), ('next_frame', 'frame t+1')):
    features[feature] = file(what)
    features[feature + '_path'] = path(what)
  return tfds.features.FeaturesDict(features)


class _ShardsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The shards of one dataset layout; BUILDERS holds one subclass per reader.

  Not registered with TFDS by name: `python -m data_pipelines.build_shards` imports this module
  twice (as __main__ and as a package module), which registration rejects. TFDS still opens the
  shards by name from their files (`tfds.data_source(name, data_dir=...)`).
  """
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Rows of the prepared tree\'s example indices, files verbatim.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'The manual directory is the prepared tree: download the dataset, run python -m '
      'data_pipelines.prepare on it, then python -m data_pipelines.build_shards.')
  reader_cls: type[common.Reader]

  def __init__(self, *, config: ShardsConfig, val_count: int = 500, sequence_root: str = '',
               workers: int = 0, **kwargs):
    self._val_count, self._sequence_root, self._workers = val_count, sequence_root, workers
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    kind = self.builder_config.kind
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f'{self.reader_cls.name} {kind} examples of a prepared tree '
                     '(sdeseg_jax data_pipelines.tfds_backend); files stored verbatim.'),
        features=_features(),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True)  # record r is row r of the split's index (metadata.json)

  def _split_generators(self, dl_manager):
    kind, resolution = self.builder_config.kind, tuple(self.builder_config.resolution)
    root = os.fspath(dl_manager.manual_dir)
    reader = prepare.open_prepared(self.reader_cls.name, root, resolution,
                                   val_count=self._val_count, sequence_root=self._sequence_root)
    base = common.kind_root(reader.root, reader.sequence_root, kind)
    generators, splits, absent = {}, {}, {}
    for split in _splits(reader, kind):
      try:
        index = getattr(reader, kind)(split)
      except common.DataError as e:  # a split the tree lacks: readers of the shards say why
        absent[split] = str(e)
        continue
      splits[split] = _index_to_json(index, base)
      generators[split] = self._generate_examples(index, base)
    if not generators:
      raise common.DataError(f'{root}: no {kind} split of {reader.name} to build ({absent})')
    # tfds writes the metadata (metadata.json) with the dataset info once every split is written.
    self.info.metadata.update(
        dataset=reader.name, kind=kind, resolution=list(resolution),
        prepared={k: prepare.read_marker(root).get(k) for k in _MARKER_KEYS},
        val_count=reader.val_count if reader.splits_by_count else None,
        sequence_root=bool(reader.sequence_root), splits=splits, absent=absent,
        # The classes: the folder layout's come from its tree, which a pod may not have.
        label_spec=reader.label_spec.to_json())
    return generators

  def _generate_examples(self, index: common.ExampleIndex, base: str) -> Iterator:
    def example(row: int):
      features = dict(id=str(index.ids[row]), intrinsics=index.intrinsics[row])
      for column, feature in FEATURE_OF_COLUMN.items():
        path = str(getattr(index, column)[row])
        features[feature] = _read_file(path) if path else b''
        features[feature + '_path'] = _relative(path, base)
      return row, features

    with concurrent.futures.ThreadPoolExecutor(self._workers or os.cpu_count()) as pool:
      for start in range(0, len(index), _READ_AHEAD):
        yield from pool.map(example, range(start, min(start + _READ_AHEAD, len(index))))


BUILDERS = {name: type(f'Sdeseg{name.capitalize()}', (_ShardsBuilder,),
                       dict(name=builder_name(name), reader_cls=reader, __module__=__name__),
                       skip_registration=True)
            for name, reader in datasets.READERS.items()}


def _builder(dataset: str, kind: str, resolution: Sequence[int], tfds_dir: str,
             **kwargs) -> _ShardsBuilder:
  _reader_class(dataset)
  config = ShardsConfig(name=config_name(kind, resolution), kind=kind,
                        resolution=tuple(int(v) for v in resolution))
  return BUILDERS[dataset](config=config, data_dir=tfds_dir, file_format='array_record', **kwargs)


def _splits(reader: common.Reader, kind: str) -> tuple[str, ...]:
  return reader.segmentation_splits if kind == 'segmentation' else reader.sequence_splits


def _relative(path: str, base: str) -> str:
  if not path:
    return ''
  relative = os.path.relpath(path, base)
  if relative.startswith('..'):
    raise common.DataError(f'{path}: outside {base}, the tree the shards name files relative to')
  return relative


def _read_file(path: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise common.DataError(f'{path}: unreadable ({e})') from e


def _index_to_json(index: common.ExampleIndex, base: str) -> dict:
  """An index's columns for metadata.json: paths relative to `base`, NaN intrinsics as null."""
  columns = {column: [_relative(str(p), base) for p in getattr(index, column)]
             for column in FEATURE_OF_COLUMN}
  columns['ids'] = index.ids.tolist()
  columns['intrinsics'] = [[None if np.isnan(v) else float(v) for v in row]
                           for row in index.intrinsics]
  return columns


def build(dataset: str, root: str, resolution: Sequence[int], tfds_dir: str, *,
          val_count: int = 500, sequence_root: str = '', overwrite: bool = False,
          workers: int = 0) -> list[str]:
  """Builds the ArrayRecord shards of a prepared tree; returns their directories.

  Every kind the layout has (segmentation; sequences where the tree has video). Shards that exist
  are kept after checking them against the tree (stale ones are an error naming the rebuild
  command) unless `overwrite`, which rebuilds them.
  """
  reader_cls = _reader_class(dataset)
  root, tfds_dir = _directory(root), _directory(tfds_dir)
  sequence_root = sequence_root and _directory(sequence_root)
  reader = prepare.open_prepared(dataset, root, tuple(resolution), val_count=val_count,
                                 sequence_root=sequence_root)
  built, shard_reader = [], None
  for kind in kinds_of(reader_cls):
    builder = _builder(dataset, kind, resolution, tfds_dir, val_count=val_count,
                       sequence_root=sequence_root, workers=workers)
    if builder.is_prepared() and not overwrite:
      # Current shards are kept; comparing every split with the tree catches stale ones here.
      shard_reader = shard_reader or ShardReader(dataset, root, resolution, tfds_dir,
                                                 val_count=val_count, sequence_root=sequence_root)
      for split in shard_reader.shard_splits(kind):
        getattr(shard_reader, kind)(split)
      logging.info('%s is built and matches %s', builder.data_dir, root)
      built.append(builder.data_dir)
      continue
    if not any(_has_split(reader, kind, split) for split in _splits(reader, kind)):
      logging.info('%s: no %s in %s; no %s shards built', dataset, kind, root, kind)
      continue
    mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    logging.info('Building %s from %s', builder.data_dir, root)
    # Nothing is downloaded: a temporary download dir keeps tfds' empty folders out of tfds_dir.
    with tempfile.TemporaryDirectory() as downloads:
      builder.download_and_prepare(
          download_dir=downloads,
          download_config=tfds.download.DownloadConfig(manual_dir=root, download_mode=mode))
    built.append(builder.data_dir)
  return built


def _has_split(reader: common.Reader, kind: str, split: str) -> bool:
  try:
    getattr(reader, kind)(split)
  except common.DataError:
    return False
  return True


# ---- Reading ----

class _NotBuilt(common.DataError):
  """No shards of a builder config in the data dir."""


class _Shards:
  """One builder config's shards, opened and checked; its split indices with absolute paths."""

  def __init__(self, dataset: str, kind: str, resolution: tuple[int, int], tfds_dir: str, *,
               root: str, sequence_root: str, val_count: int, command: str):
    self.builder = _builder(dataset, kind, resolution, tfds_dir)
    self.name = f'{builder_name(dataset)}/{config_name(kind, resolution)}'
    self.where = f'{self.name} in {tfds_dir}'
    if not self.builder.is_prepared():
      raise _NotBuilt(
          f'{dataset}: no TFDS shards of its {kind} at {resolution[0]}x{resolution[1]} in '
          f'{tfds_dir} (no {self.builder.data_dir}); build them once from the prepared tree: '
          f'{command}')
    self.metadata = dict(self.builder.info.metadata)
    self._check_metadata(dataset, kind, resolution, sequence_root, val_count, command)
    self.base = common.kind_root(root, sequence_root, kind)
    self.absent = self.metadata['absent']
    self.splits = {split: self._columns(columns)
                   for split, columns in self.metadata['splits'].items()}
    for split in self.splits:
      self._check_files(split, command)

  def _check_metadata(self, dataset, kind, resolution, sequence_root, val_count, command):
    meta = self.metadata
    if (meta.get('dataset'), meta.get('kind'), tuple(meta.get('resolution', ()))) != (
        dataset, kind, tuple(resolution)):
      raise common.DataError(f'{self.builder.data_dir}: holds {meta.get("dataset")} '
                             f'{meta.get("kind")} at {meta.get("resolution")}, not {dataset} '
                             f'{kind} at {list(resolution)}')
    if meta['val_count'] is not None and meta['val_count'] != val_count:
      raise common.DataError(
          f'{self.where}: built with val_count={meta["val_count"]}, which decides the splits, but '
          f'val_count={val_count} was asked; set it, or rebuild: {command} --overwrite')
    if kind == 'sequences' and meta['sequence_root'] != bool(sequence_root):
      built = 'a separate sequence_root' if meta['sequence_root'] else 'the frames in the tree'
      raise common.DataError(
          f'{self.where}: built with {built}, but sequence_root={sequence_root!r} was asked (it '
          'decides which frames are read); set it as at build time, or rebuild: '
          f'{command} --overwrite')

  def _columns(self, columns: dict) -> dict:
    """A split's index columns from metadata.json: absolute paths, float32 intrinsics."""
    result = {c: np.array([self.absolute(p) for p in columns[c]], dtype=object).astype(str)
              for c in FEATURE_OF_COLUMN}
    result['ids'] = np.array(columns['ids'], dtype=object).astype(str)
    result['intrinsics'] = np.array(
        [[np.nan if v is None else v for v in row] for row in columns['intrinsics']],
        np.float32).reshape(-1, 4)
    return result

  def _check_files(self, split: str, command: str) -> None:
    info = self.builder.info.splits[split]
    if info.num_examples != len(self.splits[split]['ids']):
      raise common.DataError(
          f'{self.where}: split {split} has {info.num_examples} records but its metadata lists '
          f'{len(self.splits[split]["ids"])} examples; rebuild: {command} --overwrite')
    missing = [p for p in info.filepaths if not p.exists()]
    if missing:
      raise common.DataError(
          f'{missing[0]}: missing shard of {self.name} split {split} ({len(missing)} of '
          f'{len(info.filepaths)} missing); rebuild: {command} --overwrite')

  def absolute(self, relative: str) -> str:
    """The path of a file of the tree from its path relative to the kind's base."""
    return os.path.join(self.base, relative) if relative else ''


class ShardStore(common.FileStore):
  """A dataset's files in its shards (every kind and split), by their prepared-tree paths."""

  def __init__(self, shards: dict[str, _Shards]):
    self._shards = shards
    # column -> path -> (kind, split, record). A file may sit in several records (a frame is t-1 of
    # one triplet, t of the next); looking it up by its column finds the record that also holds the
    # rest of the row (a triplet's three frames), which the batched read then fetches once.
    self._where = {column: {} for column in FEATURE_OF_COLUMN}
    for kind, shard in shards.items():
      for split, columns in shard.splits.items():
        for column, where in self._where.items():
          for record, path in enumerate(columns[column]):
            if path:
              where.setdefault(path, (kind, split, record))
    self._sources = {}
    self._lock = threading.Lock()

  def _locate(self, column: str, path: str) -> tuple[str, str, int, str]:
    """(kind, split, record, feature) of a file."""
    for candidate in (column,) + tuple(c for c in self._where if c != column):
      found = self._where[candidate].get(path)
      if found:
        return found + (FEATURE_OF_COLUMN[candidate],)
    where = ', '.join(shard.where for shard in self._shards.values())
    raise common.DataError(f'{path}: not a file of the TFDS shards {where}')

  def _source(self, kind: str, split: str):
    """The tfds data source of a split, opened once (its ArrayRecord readers are thread-safe)."""
    with self._lock:
      if (kind, split) not in self._sources:
        self._sources[(kind, split)] = self._shards[kind].builder.as_data_source(split)
      return self._sources[(kind, split)]

  def read(self, items: Sequence[tuple[str, str]]) -> list[bytes]:
    located = [self._locate(column, path) if path else None for column, path in items]
    wanted = {}
    for place in located:
      if place:
        wanted.setdefault(place[:2], set()).add(place[2])
    examples = {}
    for (kind, split), records in wanted.items():
      records = sorted(records)  # each record once, however many of its files the step reads
      for record, example in zip(records, self._source(kind, split).__getitems__(records)):
        examples[(kind, split, record)] = example
    contents = []
    for (_, path), place in zip(items, located):
      if place is None:
        contents.append(b'')
        continue
      kind, split, record, feature = place
      example = examples[(kind, split, record)]
      stored = self._shards[kind].absolute(example[feature + '_path'].decode())
      if stored != path:  # metadata and records disagree: shards rewritten behind the metadata
        raise common.DataError(f'{path}: {self.describe(path)} holds {stored or "no file"} '
                               'instead; the shards are inconsistent, rebuild them (--overwrite)')
      contents.append(example[feature])
    return contents

  def describe(self, path: str) -> str:
    try:
      kind, split, record, feature = self._locate('images', path)
    except common.DataError:
      return 'not in the shards'
    return f'{feature} of record {record} of {self._shards[kind].where} split {split}'


class ShardReader(common.Reader):
  """The dataset's indices from its TFDS shards, equal to the folder reader's, read through them.

  `root` (and `sequence_root`) name the prepared tree the shards were built from: the indices' paths
  are its paths. Where the tree exists here, every split is compared with it (stale shards are an
  error); where it does not (a pod reading shards from cloud storage), the shards alone serve.
  """

  def __init__(self, dataset: str, root: str, resolution: Sequence[int], tfds_dir: str, *,
               val_count: int = 500, sequence_root: str = ''):
    folder_cls = _reader_class(dataset)
    self.name = folder_cls.name
    self.segmentation_splits = folder_cls.segmentation_splits
    self.sequence_splits = folder_cls.sequence_splits
    self.splits_by_count = folder_cls.splits_by_count
    self.prepare_patterns = folder_cls.prepare_patterns
    self.root, self.tfds_dir = _directory(root), _directory(tfds_dir)
    self.val_count = val_count
    self.sequence_root = sequence_root and _directory(sequence_root)
    self.resolution = tuple(int(v) for v in resolution)
    self._command = build_command(dataset, self.root, self.resolution, self.tfds_dir,
                                  val_count=val_count, sequence_root=self.sequence_root)
    self._shards, self._missing = {}, {}
    for kind in kinds_of(folder_cls):
      try:
        self._shards[kind] = _Shards(dataset, kind, self.resolution, self.tfds_dir, root=self.root,
                                     sequence_root=self.sequence_root, val_count=val_count,
                                     command=self._command)
      except _NotBuilt as e:
        if kind == 'segmentation':  # every use needs these; the video ones only video users
          raise
        self._missing[kind] = e  # raised when the sequences are asked for
    stored = self._shards['segmentation'].metadata.get('label_spec')
    # Shards built before they stored their classes are of layouts with fixed ones.
    self.label_spec = (common.LabelSpec.from_json(stored) if stored
                       else folder_cls.label_spec_at(self.root))
    self.store = ShardStore(self._shards)
    self._tree = self._prepared_tree()

  def _prepared_tree(self) -> common.Reader | None:
    """The folder reader of the prepared tree where it is here, after checking its marker."""
    marker = prepare.read_marker(self.root)
    if marker is None:
      logging.info('%s: no prepared tree here; reading the shards in %s unchecked against it',
                   self.root, self.tfds_dir)
      return None
    current = {k: marker.get(k) for k in _MARKER_KEYS}
    for shard in self._shards.values():
      if shard.metadata['prepared'] != current:
        raise common.DataError(
            f'{shard.where}: stale, built from a tree prepared as {shard.metadata["prepared"]} but '
            f'{self.root} is now prepared as {current}; rebuild: {self._command} --overwrite')
    tree = prepare.open_prepared(self.name, self.root, self.resolution, val_count=self.val_count,
                                 sequence_root=self.sequence_root)
    if tree.label_spec != self.label_spec:  # the folder layout's classes.json changed since
      raise common.DataError(
          f'{self._shards["segmentation"].where}: stale, built with the classes '
          f'{list(self.label_spec.class_names)} but {self.root} now has '
          f'{list(tree.label_spec.class_names)} (or other ids); rebuild: {self._command} '
          '--overwrite')
    return tree

  def check_layout(self) -> None:
    """The prepared tree's check, where the tree is here (the shards were built from it)."""
    if self._tree is not None:
      self._tree.check_layout()

  def shard_splits(self, kind: str) -> tuple[str, ...]:
    """The splits the shards of `kind` hold."""
    return tuple(self._shards[kind].splits) if kind in self._shards else ()

  def _segmentation(self, split: str) -> common.ExampleIndex:
    return self._index('segmentation', split)

  def _sequences(self, split: str) -> common.ExampleIndex:
    return self._index('sequences', split)

  def _index(self, kind: str, split: str) -> common.ExampleIndex:
    if kind not in self._shards:
      raise self._missing.get(kind) or common.DataError(
          f'{self.root}: the {self.name} layout has no video sequences')
    shard = self._shards[kind]
    if split not in shard.splits:
      reason = shard.absent.get(split)
      raise common.DataError(
          f'{shard.where}: no {kind} split {split!r} (splits: {", ".join(shard.splits)})' +
          (f'; the tree had none at build time: {reason}' if reason else ''))
    columns = shard.splits[split]
    index = common.ExampleIndex(
        ids=columns['ids'], images=columns['images'], labels=columns['labels'],
        prev_frames=columns['prev_frames'], next_frames=columns['next_frames'],
        intrinsics=columns['intrinsics'], storage=np.full(len(columns['ids']), self.store, object))
    if self._tree is not None:
      self._check_current(shard, kind, split, index)
    return index

  def _check_current(self, shard: _Shards, kind: str, split: str,
                     index: common.ExampleIndex) -> None:
    """Raises a DataError naming the first difference between the shards' index and the tree's."""
    stale = f'{shard.where}: stale {kind} split {split!r}'
    rebuild = f'rebuild: {self._command} --overwrite'
    try:
      tree = getattr(self._tree, kind)(split)
    except common.DataError as e:
      raise common.DataError(f'{stale}: the prepared tree no longer has it ({e}); {rebuild}') from e
    if len(tree) != len(index):
      gone = index.images[~np.isin(index.ids, tree.ids)]
      new = tree.images[~np.isin(tree.ids, index.ids)]
      first = f'{gone[0]} is gone from the tree' if len(gone) else f'{new[0]} is new in the tree'
      raise common.DataError(f'{stale}: {len(index)} examples in the shards, {len(tree)} in '
                             f'{self.root} ({first}); {rebuild}')
    for column in ('ids',) + tuple(FEATURE_OF_COLUMN):
      differ = np.flatnonzero(getattr(tree, column) != getattr(index, column))
      if len(differ):
        row = differ[0]
        raise common.DataError(
            f'{stale}: row {row} ({column}) is {getattr(index, column)[row]!r} in the shards, '
            f'{getattr(tree, column)[row]!r} in {self.root} ({len(differ)} rows differ); {rebuild}')
    same = (tree.intrinsics == index.intrinsics) | (np.isnan(tree.intrinsics) &
                                                    np.isnan(index.intrinsics))
    if not same.all():
      row = np.flatnonzero(~same.all(1))[0]
      raise common.DataError(f'{stale}: intrinsics of {index.ids[row]} are {index.intrinsics[row]} '
                             f'in the shards, {tree.intrinsics[row]} in {self.root}; {rebuild}')


def open_reader(dataset: str, root: str, resolution: Sequence[int], tfds_dir: str, *,
                val_count: int = 500, sequence_root: str = '') -> ShardReader:
  """The reader of a dataset's shards in `tfds_dir` built from the prepared tree at `root`."""
  return ShardReader(dataset, root, resolution, tfds_dir, val_count=val_count,
                     sequence_root=sequence_root)
