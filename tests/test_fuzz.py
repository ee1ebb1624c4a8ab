"""Corrupted inputs, fuzzed (issue 38 item 6).

For every file type the readers take, seeded random truncations and byte flips go through the real
reading functions of the pipelines, prepare and the stages. Each case must end in the project's
error naming the file (DataError, CheckpointError), or in a valid result: for a truncation exactly
the intact file's result (the reader saw all it needs), for a flip one of the right shape, dtype and
value set (a flip the format cannot detect, e.g. a pixel of compressed data). A raw library
exception fails the test with its traceback, and a reader that runs longer than TIMEOUT_S fails it
as a hang.

Cases per file type: 2 * CASES corrupted files (CASES truncations, CASES one-byte flips), each read
by every reader of that type; each test prints its tally (run with -s to see it) and asserts the
count, so the numbers in the README's reliability section are what runs here. With CASES = 20:
JPEG image 40 files x 2 readers (pipeline, prepare), 8-bit label PNG 40 x 3 (pipeline,
decode_label_png, prepare), Synthia 16-bit label PNG 40 x 2, .npy depth label 40 x 2 (pipeline,
the selection student's ranges), camera JSON 40 x 2 (reader, prepare), selection JSON 40 x 1,
Orbax _CHECKPOINT_METADATA and _METADATA 40 x 1 each: 560 reads, plus the WRONG_FILES cases.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import threading
from typing import Callable

import numpy as np
from PIL import Image
import pytest

from data_pipelines import pipeline
from data_pipelines import prepare
from data_pipelines import subsets
from data_pipelines.datasets import DataError
from data_pipelines.datasets import cityscapes
from data_pipelines.datasets import common
from data_pipelines.datasets import synthia
from sdeseg_jax.stages.select_labels import students
from sdeseg_jax.training import checkpointing
from tests import fixtures

CASES = 20  # truncations, and as many byte flips, per file type
TIMEOUT_S = 20  # a reader still running after this long hangs
RES = (16, 8)  # (W, H) of the files, small: the cases are many
SPEC = cityscapes.LABEL_SPEC


def corruptions(data: bytes, seed: int) -> list[tuple[str, bytes]]:
  """(what, corrupted bytes): CASES truncations, then CASES files with one byte XORed with a random
  non-zero value, at positions drawn by a generator seeded with `seed`."""
  rng = np.random.default_rng(seed)
  cases = [(f'truncated to {cut} of {len(data)} bytes', data[:cut])
           for cut in rng.integers(0, len(data), CASES)]
  for at, mask in zip(rng.integers(0, len(data), CASES), rng.integers(1, 256, CASES)):
    flipped = bytearray(data)
    flipped[at] ^= mask
    cases.append((f'byte {at} of {len(data)} XOR {mask:#04x}', bytes(flipped)))
  return cases


def within_time(read: Callable[[], object]):
  """read() in a watchdog thread: a hang, even inside a library's C code, fails the test instead of
  stalling it (the thread is a daemon and is left behind)."""
  outcome = {}

  def target():
    try:
      outcome['value'] = read()
    except BaseException as e:  # handed to the test thread as it is
      outcome['error'] = e

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(TIMEOUT_S)
  if thread.is_alive():
    pytest.fail(f'the reader hung (still running after {TIMEOUT_S} s)')
  if 'error' in outcome:
    raise outcome['error']
  return outcome['value']


@dataclasses.dataclass
class Reader:
  """One real reading function of a file type.

  read() returns what the reader makes of the file; check(result, intact) asserts that a result of
  a corrupted file is valid (right shape, dtype, values), given the intact file's result; errors are
  the exception types that are this reader's report of a bad file.
  """
  name: str
  read: Callable[[], object]
  check: Callable[[object, object], None]
  errors: tuple[type[Exception], ...] = (DataError,)


@dataclasses.dataclass
class Target:
  """A file written intact, the readers that take it, and what their errors must name: the file,
  or for a checkpoint its step folder (Orbax's errors do not say which of its files is at fault,
  and the folder is what a user deletes)."""
  path: str
  readers: list[Reader]
  named: str = ''

  def __post_init__(self):
    self.named = self.named or self.path


def assert_same(result, intact):
  """A truncation that still reads must have lost nothing the reader uses."""
  if isinstance(intact, dict):
    assert result.keys() == intact.keys()
    for key in intact:
      assert_same(result[key], intact[key])
  else:
    assert np.asarray(result).dtype == np.asarray(intact).dtype
    np.testing.assert_array_equal(result, intact, strict=True)  # shapes too


# ---- the file types and their readers ----

def _write(path: str, data: bytes) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)
  return path


def _encoded(array: np.ndarray, format_: str, **options) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format_, **options)
  return buffer.getvalue()


def _prepared_files(root: str) -> dict[str, str]:
  """One prepared example: a JPEG image, an 8-bit label PNG, a float32 depth label."""
  files = dict(
      image=_write(f'{root}/image.jpg', _encoded(fixtures.coded_image(RES), 'JPEG', quality=98)),
      label=_write(f'{root}/label.png',
                   _encoded(fixtures.label_ids(RES, fixtures.CITYSCAPES_IDS), 'PNG')),
      depth=os.path.join(root, 'depth', 'example.npy'))
  y, x = np.mgrid[:RES[1], :RES[0]]
  os.makedirs(os.path.dirname(files['depth']))
  np.save(files['depth'], (0.01 * (x + y) + 0.1).astype(np.float32))
  return files


def _pipeline_reader(files: dict[str, str]) -> Reader:
  """The validation pipeline over the one example (tf.data decodes it; Batches diagnoses a failure).
  Built once: every iteration reads the files again."""
  index = common.ExampleIndex.from_rows(
      [dict(id='example', image=files['image'], label=files['label'],
            intrinsics=(0.5, 0.5, 0.5, 0.5))])
  batches = pipeline.validation_batches(index, SPEC, resolution=RES,
                                        sharding=pipeline.Sharding(1),
                                        depth_dir=os.path.dirname(files['depth']))

  def check(batch, intact):
    assert batch['image'].shape == (1, RES[1], RES[0], 3) and batch['image'].dtype == np.float32
    assert 0 <= batch['image'].min() and batch['image'].max() <= 1
    assert batch['label'].shape == (1, RES[1], RES[0])
    assert set(np.unique(batch['label'])) <= set(range(SPEC.num_classes)) | {common.IGNORE_LABEL}
    assert batch['depth'].shape == (1, RES[1], RES[0], 1) and np.isfinite(batch['depth']).all()
  return Reader('pipeline', lambda: list(batches)[0], check)


def _prepare_reader(reader: common.Reader, kind: str, path: str, out: str) -> Reader:
  """prepare's conversion of one raw file into a prepared one."""
  def read():
    if os.path.exists(out):
      os.remove(out)
    prepare._convert(reader, kind, path, out, RES, 'png')  # pylint: disable=protected-access
    with open(out, 'rb') as f:
      return f.read()

  def check(written, intact):
    del intact
    if kind == 'camera':
      assert set(json.loads(written)['intrinsic']) >= {'fx', 'fy', 'u0', 'v0'}
    else:
      with Image.open(out) as image:
        assert image.size == RES
  return Reader(f'prepare {kind}', read, check)


def _check_label_ids(spec: common.LabelSpec):
  def check(ids, intact):
    assert ids.shape == intact.shape and ids.dtype == np.uint8
    assert not spec.invalid_ids(ids)
  return check


def jpeg_image(root: str) -> Target:
  files = _prepared_files(root)
  raw = cityscapes.Cityscapes(root)  # only its conversions are used
  return Target(files['image'], [_pipeline_reader(files),
                                 _prepare_reader(raw, 'image', files['image'], f'{root}/out.png')])


def png8_label(root: str) -> Target:
  files = _prepared_files(root)
  raw = cityscapes.Cityscapes(root)
  return Target(files['label'], [
      _pipeline_reader(files),
      Reader('decode_label_png', lambda: common.decode_label_png(files['label']),
             _check_label_ids(SPEC)),
      _prepare_reader(raw, 'label', files['label'], f'{root}/out.png')])


def png16_label(root: str) -> Target:
  """A raw Synthia label: 16-bit, 3 channels, class ids in channel 0."""
  ids = fixtures.label_ids(RES, (3, 4, 2, 22, 8, 1))
  label = np.stack([ids, np.full_like(ids, 7), np.zeros_like(ids)], -1)
  path = _write(f'{root}/RAND_CITYSCAPES/GT/LABELS/0000000.png', fixtures.encode_png16(label))
  raw = synthia.Synthia(root)
  return Target(path, [
      Reader('Synthia.decode_raw_label', lambda: raw.decode_raw_label(path),
             _check_label_ids(synthia.LABEL_SPEC)),
      _prepare_reader(raw, 'label', path, f'{root}/out.png')])


def npy_depth(root: str) -> Target:
  files = _prepared_files(root)
  folder = os.path.dirname(files['depth'])

  def check_range(ranges, intact):
    assert ranges.shape == (1, 2) and np.isfinite(ranges).all() and ranges[0, 0] <= ranges[0, 1]
  # The selection student's per-image normalisation reads the whole label outside the pipeline.
  student = Reader('student ranges',
                   lambda: students.disparity_ranges(folder, ['example'], RES), check_range)
  return Target(files['depth'], [_pipeline_reader(files), student])


def camera_json(root: str) -> Target:
  """A Cityscapes camera JSON, read by the reader (intrinsics) and rescaled by prepare."""
  fixtures.write_cityscapes(root, size=RES, frames=1, snippets=1, val_snippets=0)
  raw = cityscapes.Cityscapes(root)
  path = f'{root}/camera/train/aachen/aachen_000000_000000_camera.json'

  def check(intrinsics, intact):
    assert intrinsics.shape == intact.shape and np.isfinite(intrinsics).all()
    assert (intrinsics[:, :2] > 0).all()  # focal lengths
  return Target(path, [
      Reader('Cityscapes.segmentation', lambda: raw.segmentation('train').intrinsics, check),
      _prepare_reader(raw, 'camera', path, f'{root}/out.json')])


def selection_json(root: str) -> Target:
  """The select_labels stage's ordered id list, read by the segment stage for 3 labeled rows."""
  ids = [f'aachen_{i:06d}_000019' for i in range(8)]
  index = common.ExampleIndex.from_rows([dict(id=i, image=f'{root}/{i}.png') for i in ids])
  path = _write(f'{root}/selection.json', json.dumps(ids[::-1][:6]).encode())

  def check(rows, intact):
    assert len(rows) == len(intact) == len(set(rows.tolist()))
    assert rows.dtype == intact.dtype and ((0 <= rows) & (rows < len(index))).all()
  return Target(path, [Reader('subsets.labeled_rows',
                              lambda: subsets.labeled_rows(index, 3, seed=0, selection=path),
                              check)])


def _checkpoint(root: str) -> str:
  directory = os.path.join(root, 'ckpt')
  manager = checkpointing.Checkpointer(directory, save_interval_steps=1, async_save=False)

  class State:  # the one method Checkpointer.save asks of a TrainState
    def to_dict(self):
      return dict(params=dict(w=np.arange(6, dtype=np.float32).reshape(2, 3)),
                  step=np.array(5, np.int32))

  manager.save(5, State(), force=True)
  manager.close()
  return directory


def _orbax_reader(directory: str) -> Reader:
  def check(arrays, intact):
    assert_same(arrays, intact)  # a checkpoint's arrays are never approximately right
  return Reader('checkpointing.read_arrays', lambda: checkpointing.read_arrays(directory), check,
                (checkpointing.CheckpointError,))


def orbax_checkpoint_metadata(root: str) -> Target:
  directory = _checkpoint(root)
  return Target(os.path.join(directory, '5', '_CHECKPOINT_METADATA'), [_orbax_reader(directory)],
                os.path.join(directory, '5'))


def orbax_metadata(root: str) -> Target:
  directory = _checkpoint(root)
  return Target(os.path.join(directory, '5', 'default', '_METADATA'), [_orbax_reader(directory)],
                os.path.join(directory, '5'))


TARGETS = (jpeg_image, png8_label, png16_label, npy_depth, camera_json, selection_json,
           orbax_checkpoint_metadata, orbax_metadata)


@pytest.mark.parametrize('make_target', TARGETS, ids=[t.__name__ for t in TARGETS])
def test_corrupted_file_is_named_or_read_validly(make_target, tmp_path):
  target = make_target(str(tmp_path))
  with open(target.path, 'rb') as f:
    data = f.read()
  intact = [within_time(reader.read) for reader in target.readers]
  tally = collections.Counter()
  for n, (what, corrupted) in enumerate(corruptions(data, seed=n_seed(make_target))):
    _write(target.path, corrupted)
    for reader, intact_result in zip(target.readers, intact):
      context = f'{make_target.__name__} case {n} ({what}), {reader.name}'
      try:
        result = within_time(reader.read)
      except reader.errors as e:
        assert_names(e, target.named, context)
        tally['named error'] += 1
        continue
      except Exception as e:
        raise AssertionError(f'{context}: {type(e).__name__} escaped the reader') from e
      try:
        if 'truncated' in what:
          assert_same(result, intact_result)
        else:
          reader.check(result, intact_result)
      except AssertionError as e:
        raise AssertionError(f'{context}: read without error, but the result is wrong') from e
      tally['valid result'] += 1
  _write(target.path, data)
  print(f'\n{make_target.__name__}: {2 * CASES} corrupted files x {len(target.readers)} readers: '
        f'{dict(tally)}')
  assert sum(tally.values()) == 2 * CASES * len(target.readers)
  assert tally['named error'] >= CASES // 2  # most truncations at least are caught


def assert_names(error: Exception, path: str, context: str) -> None:
  assert path in str(error), f'{context}: the error does not name the file: {error}'
  # The pipeline's last resort lists every file of the step: it must have found the one at fault.
  assert 'pass the checks' not in str(error), f'{context}: the file at fault was not found: {error}'


def n_seed(make_target) -> int:
  """A fixed seed per file type (the position in TARGETS: stable across runs and Python hashes)."""
  return TARGETS.index(make_target)


# ---- well-formed files with wrong content: what no format check sees, the readers must ----

def _npy(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def _depth(**changes) -> np.ndarray:
  depth = np.full((RES[1], RES[0]), 0.5, np.float32)
  for where, value in changes.items():
    depth[{'first': 0, 'last': -1}[where], 0] = value
  return depth


def _camera(**intrinsic) -> bytes:
  k = dict(fx=8.0, fy=2.0, u0=6.4, v0=4.8)
  k.update(intrinsic)
  return json.dumps(dict(intrinsic={key: v for key, v in k.items() if v is not None})).encode()


def _synthia_label(class_id: int) -> bytes:
  ids = fixtures.label_ids(RES, (3, 4, 2)).astype(np.uint16)
  ids[0, 2] = class_id  # after the uint8 stripes: the id may exceed 255
  return fixtures.encode_png16(np.stack([ids, ids, ids], -1))


# (file type, what is wrong, the file's bytes, the readers that must report it: None = all)
WRONG_FILES = (
    ('npy_depth', 'a NaN', lambda: _npy(_depth(last=np.nan)), None),
    ('npy_depth', 'an infinity', lambda: _npy(_depth(first=np.inf)), None),
    ('npy_depth', 'shape (H, W - 1)', lambda: _npy(_depth()[:, 1:]), None),
    ('npy_depth', 'the transposed shape', lambda: _npy(np.zeros(RES, np.float32)), None),
    ('npy_depth', 'float64', lambda: _npy(_depth().astype(np.float64)), None),
    ('npy_depth', 'big-endian float32', lambda: _npy(_depth().astype('>f4')), None),
    ('npy_depth', 'Fortran order', lambda: _npy(np.asfortranarray(_depth())), None),
    ('jpeg_image', 'half the size', lambda: _encoded(fixtures.coded_image((8, 4)), 'JPEG'),
     ('pipeline',)),
    ('png8_label', 'one pixel wider',
     lambda: _encoded(fixtures.label_ids((RES[0] + 1, RES[1]), (7,)), 'PNG'), ('pipeline',)),
    ('png8_label', 'id 200, not a Cityscapes id',
     lambda: _encoded(fixtures.label_ids(RES, (7, 200)), 'PNG'), ('pipeline', 'prepare label')),
    ('png16_label', 'class id 300', lambda: _synthia_label(300), None),
    ('png16_label', 'class id 40, not a Synthia id', lambda: _synthia_label(40),
     ('prepare label',)),
    ('camera_json', 'fx negative', lambda: _camera(fx=-8.0), None),
    ('camera_json', 'fy zero', lambda: _camera(fy=0), None),
    ('camera_json', 'u0 a string', lambda: _camera(u0='6.4'), None),
    ('camera_json', 'v0 true', lambda: _camera(v0=True), None),
    ('camera_json', 'fx NaN', lambda: _camera(fx=float('nan')), None),
    ('camera_json', 'no fy', lambda: _camera(fy=None), None),
    ('camera_json', 'a list', lambda: b'[8.0, 2.0, 6.4, 4.8]', None),
    ('selection_json', 'a number', lambda: b'3', None),
    ('selection_json', 'numbers, not ids', lambda: b'[1, 2, 3]', None),
    ('selection_json', 'an unknown id after the first three',
     lambda: json.dumps([f'aachen_{i:06d}_000019' for i in (1, 2, 3, 99)]).encode(), None),
    ('selection_json', 'an id twice',
     lambda: json.dumps([f'aachen_{i:06d}_000019' for i in (1, 2, 1)]).encode(), None),
    ('selection_json', 'ids of another key', lambda: b'{"selected": ["aachen_000001_000019"]}',
     None),
    ('orbax_metadata', 'valid JSON, not Orbax metadata', lambda: b'{"tree_metadata": []}', None),
)


@pytest.mark.parametrize('file_type, what, contents, must_report', WRONG_FILES,
                         ids=[f'{t}: {w}' for t, w, _, _ in WRONG_FILES])
def test_wrong_content_is_named(file_type, what, contents, must_report, tmp_path):
  target = globals()[file_type](str(tmp_path))
  _write(target.path, contents())
  readers = [r for r in target.readers if must_report is None or r.name in must_report]
  assert len(readers) == len(must_report or target.readers)  # names that match a reader
  for reader in readers:
    with pytest.raises(reader.errors) as error:
      within_time(reader.read)
    assert_names(error.value, target.named, f'{file_type} with {what}, {reader.name}')
