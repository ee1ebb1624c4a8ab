"""A full disk (issue 38 item 3): a checkpoint, a standalone weight tree, a prepared dataset or a
stage's file that does not fit is a DiskFullError naming it, and what was written before stays
intact.

The small filesystem is a 256 KiB tmpfs mounted for the test where this process may mount (root
with CAP_SYS_ADMIN); elsewhere a 256 KiB file-size limit (RLIMIT_FSIZE, which fails a write with
EFBIG where a disk fails it with ENOSPC) on the process during the test.
"""

import contextlib
import json
import os
import resource
import signal
import subprocess

import numpy as np
from PIL import Image
import pytest

from data_pipelines import files
from data_pipelines import prepare
from sdeseg_jax import cli
from sdeseg_jax.training import checkpointing
from tests import fixtures

SMALL = 256 * 1024  # bytes the small disk holds
BIG = 2 * SMALL  # bytes of a write that cannot fit
NOISE_SIZE = (512, 256)


@contextlib.contextmanager
def _file_size_limit(limit: int):
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


@pytest.fixture
def small_disk(tmp_path):
  """A folder on a filesystem that holds SMALL bytes (see the module docstring)."""
  path = tmp_path / 'disk'
  path.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={SMALL}', 'tmpfs', str(path)],
                           capture_output=True).returncode == 0 if os.geteuid() == 0 else False
  if mounted:
    try:
      yield path
    finally:
      subprocess.run(['umount', '-l', str(path)], check=False)
  else:
    with _file_size_limit(SMALL):
      yield path


def _big_array():
  return np.random.default_rng(0).uniform(size=BIG // 4).astype(np.float32)  # incompressible


def test_an_atomic_write_that_does_not_fit_leaves_the_old_file(small_disk):
  path = str(small_disk / 'labels' / 'a.npy')
  files.write_atomic(path, lambda tmp: np.save(tmp, np.arange(10)))
  with pytest.raises(files.DiskFullError, match=rf'^{path}: no space left to write it \(.* MiB '
                     r'free .*\)\. Free space and rerun the same command'):
    files.write_atomic(path, lambda tmp: np.save(tmp, _big_array()))
  np.testing.assert_array_equal(np.load(path), np.arange(10))
  assert os.listdir(small_disk / 'labels') == ['a.npy']  # no temporary file left
  # Through an entry point: one FATAL line naming the file.
  with pytest.raises(SystemExit, match=rf'^FATAL DiskFullError: {path}: no space left'):
    with cli.exit_status():
      files.write_json(path, _big_array().tolist())


def test_errors_other_than_a_full_disk_are_not_renamed(tmp_path):
  with pytest.raises(ValueError, match='not a disk'):
    files.write_atomic(str(tmp_path / 'x.json'), lambda tmp: (_ for _ in ()).throw(
        ValueError('not a disk')))
  assert not os.listdir(tmp_path)
  # Libraries that wrap the OSError keep its text: that counts.
  assert files.is_disk_full(RuntimeError('Error writing "x": No space left on device'))
  assert not files.is_disk_full(OSError(2, 'No such file or directory'))


@pytest.mark.parametrize('async_save', [False, True])
def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one(small_disk, async_save):
  directory = str(small_disk / 'ckpt')
  small = {'w': np.arange(8, dtype=np.float32)}
  checkpointer = checkpointing.Checkpointer(directory, save_interval_steps=1,
                                            async_save=async_save)
  checkpointer.save(1, fixtures.ArrayState(small))
  checkpointer.wait()
  with pytest.raises(files.DiskFullError, match=rf'^{directory}: no space left'):
    checkpointer.save(2, fixtures.ArrayState({'w': _big_array()}))
    checkpointer.wait()  # an asynchronous save fails here
  with contextlib.suppress(files.DiskFullError):
    checkpointer.close()
  empty = fixtures.ArrayState({'w': np.zeros(8, np.float32)})
  restored = checkpointing.Checkpointer(directory).restore(empty)
  np.testing.assert_array_equal(restored.arrays['w'], small['w'])
  assert checkpointing.read_arrays(directory)['w'].tolist() == small['w'].tolist()


def test_overwriting_a_weight_tree_that_does_not_fit_keeps_the_old_tree(small_disk):
  best = str(small_disk / 'segment' / 'best')
  checkpointing.write_tree(best, {'w': np.arange(8, dtype=np.float32)})
  with pytest.raises(files.DiskFullError, match=rf'^{best}: no space left'):
    checkpointing.write_tree(best, {'w': _big_array()}, overwrite=True)
  np.testing.assert_array_equal(checkpointing.read_arrays(best)['w'], np.arange(8))
  checkpointing.write_tree(best, {'w': np.ones(8, np.float32)}, overwrite=True)  # room again
  np.testing.assert_array_equal(checkpointing.read_arrays(best)['w'], np.ones(8))


@pytest.fixture
def noisy_cityscapes(tmp_path):
  """A raw Cityscapes tree of noise frames (incompressible PNGs of 384 KiB each, more than the
  small disk holds); a fixture of its own so that it is written before small_disk limits writes."""
  raw = fixtures.write_cityscapes(str(tmp_path / 'raw'), size=NOISE_SIZE)
  rng = np.random.default_rng(0)
  for folder, _, names in os.walk(raw):
    for name in names:
      if name.endswith('_leftImg8bit.png'):
        Image.fromarray(rng.integers(0, 256, (NOISE_SIZE[1], NOISE_SIZE[0], 3), np.uint8)).save(
            os.path.join(folder, name))
  return raw


def test_preparing_onto_a_full_disk_is_named_and_writes_no_marker(noisy_cityscapes, small_disk):
  dst = str(small_disk / 'prepared')
  with pytest.raises(files.DiskFullError, match=rf'^{dst}/\S+: no space left'):
    prepare.prepare('cityscapes', noisy_cityscapes, dst, NOISE_SIZE, image_format='png',
                    workers=1)
  assert not os.path.exists(os.path.join(dst, prepare.MARKER))
  # Every file there is whole: no temporary file left, and each image decodes.
  for folder, _, names in os.walk(dst):
    for name in names:
      assert '.tmp' not in name, name
      if name.endswith('.png'):
        Image.open(os.path.join(folder, name)).load()
      elif name.endswith('.json'):
        json.load(open(os.path.join(folder, name)))
