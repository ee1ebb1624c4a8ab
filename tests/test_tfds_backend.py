"""The TFDS / ArrayRecord backend (data_pipelines.tfds_backend) on the tiny synthetic world: the
same indices and batches as the folder backend, selected by config, and clear errors for missing or
stale shards."""

import contextlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import demo
from data_pipelines import pipeline
from data_pipelines import sampling
from data_pipelines import sources
from data_pipelines import subsets
from data_pipelines import tfds_backend
from data_pipelines.datasets import common
from sdeseg_jax.stages import data as data_stage

ROLES = ('target', 'source')  # the demo's Cityscapes and GTA5 (VIPER video) layouts
COLUMNS = ('ids', 'images', 'labels', 'prev_frames', 'next_frames')


@pytest.fixture(scope='module')
def world(tmp_path_factory):
  """(config, workdir): the tiny demo world rendered and prepared; with the config's backend set to
  tfds, the data stage's materialise step has built both roles' shards into <workdir>/tfds."""
  workdir = str(tmp_path_factory.mktemp('tfds_world'))
  config = demo.get_config('tiny')
  for role in ROLES:
    config.data[role].backend = 'tfds'
    sources.materialise(config.data[role], workdir, role, image_format=config.data.image_format,
                        workers=2)
  return config, workdir


def _readers(world, role):
  """(folder reader, tfds reader) of a role, both opened through the config."""
  config, workdir = world
  entry = config.data[role]
  folder = entry.copy_and_resolve_references()
  folder.backend = 'folder'
  return sources.open_dataset(folder, workdir, role), sources.open_dataset(entry, workdir, role)


def _assert_indices_equal(a, b):
  assert len(a) == len(b) > 0
  for column in COLUMNS:
    np.testing.assert_array_equal(getattr(a, column), getattr(b, column), err_msg=column)
  np.testing.assert_array_equal(a.intrinsics, b.intrinsics)


def _collect(batches):
  return [dict(batch) for batch in batches]


def _assert_batches_equal(a, b):
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_config_selects_the_backend_and_the_indices_are_the_folder_indices(world):
  for role in ROLES:
    folder, shards = _readers(world, role)
    assert isinstance(shards, tfds_backend.ShardReader)
    assert not isinstance(folder, tfds_backend.ShardReader)
    assert (shards.name, shards.label_spec, shards.root) == (folder.name, folder.label_spec,
                                                             folder.root)
    for kind, splits in (('segmentation', folder.segmentation_splits),
                         ('sequences', folder.sequence_splits)):
      assert shards.shard_splits(kind)
      for split in shards.shard_splits(kind):
        a, b = getattr(folder, kind)(split), getattr(shards, kind)(split)
        _assert_indices_equal(a, b)
        assert all(s is None for s in a.storage)
        assert all(s is shards.store for s in b.storage)
      for split in set(splits) - set(shards.shard_splits(kind)):  # Cityscapes test: not rendered
        with pytest.raises(common.DataError, match=f"no {kind} split '{split}'.*missing folder"):
          getattr(shards, kind)(split)


@contextlib.contextmanager
def _prepared_trees_hidden(world):
  """Moves both roles' prepared trees away for the block, so that no file of them can be read."""
  config, workdir = world
  hidden = {}
  try:
    for role in ROLES:
      root = sources.roots(config.data[role], workdir, role)[1]
      hidden[root] = root + '.hidden'
      os.rename(root, hidden[root])
    yield
  finally:
    for root, away in hidden.items():
      os.rename(away, root)


def test_tfds_batches_equal_folder_batches_with_the_tree_gone(world):
  """Every pipeline yields exactly the folder backend's batches from the shards alone: the prepared
  tree is moved away while the tfds pipelines run, so no file of it can be read."""
  config, _ = world
  crop, seed = tuple(config.data.crop), 3
  target_res = tuple(config.data.target.resolution)
  source_res = tuple(config.data.source.resolution)

  def pipelines(target, source):
    train = subsets.with_neighbours(target.segmentation('train'), target.sequences('train'))
    labeled_rows = subsets.labeled_rows(train, 2, seed=seed)
    shared = dict(resolution=target_res, crop=crop, seed=seed, num_steps=3)
    return {
        # multi-task: frames t-1, t, t+1 joined from the sequence shards; half the rows unlabeled
        'segmentation': pipeline.segmentation_batches(
            subsets.semi_supervised(train, labeled_rows), target.label_spec, stream='mix',
            with_frames=True, sharding=pipeline.Sharding(2), **shared),
        # the second of two processes' rows
        'labeled': pipeline.segmentation_batches(
            train.subset(labeled_rows), target.label_spec, stream='labeled',
            sharding=pipeline.Sharding(4, process_index=1, process_count=2), start_step=5,
            **shared),
        'validation': pipeline.validation_batches(  # 3 images, 2 per batch: the last one padded
            target.segmentation('train'), target.label_spec, resolution=target_res,
            sharding=pipeline.Sharding(2)),
        'sde_target': pipeline.sde_batches(
            target.sequences('train'), sharding=pipeline.Sharding(4),
            color=sampling.ColorJitter(prob=1.0), **shared),
        'sde_source': pipeline.sde_batches(  # the VIPER-layout video of the GTA5 role
            source.sequences('val'), resolution=source_res, crop=crop, seed=seed,
            sharding=pipeline.Sharding(2), num_steps=2),
    }

  (folder_target, tfds_target), (folder_source, tfds_source) = (_readers(world, r) for r in ROLES)
  expected = {k: _collect(v) for k, v in pipelines(folder_target, folder_source).items()}
  tfds_pipelines = pipelines(tfds_target, tfds_source)  # indices checked against the tree here
  with _prepared_trees_hidden(world):
    got = {k: _collect(v) for k, v in tfds_pipelines.items()}
  for name in expected:
    _assert_batches_equal(expected[name], got[name])
  assert {'image', 'label', 'labeled', 'intrinsics', 'frames'} <= set(got['segmentation'][0])
  assert not got['segmentation'][0]['labeled'].all() or not got['segmentation'][1]['labeled'].all()
  assert not got['validation'][-1]['valid'].all()
  assert {'frames', 'frames_aug', 'intrinsics'} <= set(got['sde_target'][0])


def test_data_summary_from_the_shards_alone_equals_the_folder_summary(world):
  """The data stage's summary (class frequencies read from the label maps) on a machine that has
  only the shards: read through the store, equal to the summary of the prepared tree."""
  config, workdir = world
  for role in ROLES:
    folder, _ = _readers(world, role)
    expected = data_stage.summarise(config.data[role], folder, max_labels=100, workers=2)
    with _prepared_trees_hidden(world):  # opened here, the shards are not checked against a tree
      shards = sources.open_dataset(config.data[role], workdir, role)
      got = data_stage.summarise(config.data[role], shards, max_labels=100, workers=2)
    for key in ('class_frequencies', 'intrinsics', 'classes'):
      assert got[key] == expected[key], key
    assert got['class_frequencies']['(label maps scanned)'] > 0
    # absent splits give their reason in the shards' words; the sizes are the tree's
    assert {k: v for k, v in got['splits'].items() if isinstance(v, int)} == {
        k: v for k, v in expected['splits'].items() if isinstance(v, int)}


def test_shards_are_plain_tfds_datasets(world):
  """Other tools read the shards by name from their files, records in index order, files
  verbatim."""
  config, workdir = world
  folder, _ = _readers(world, 'target')
  index = folder.segmentation('train')
  config_name = tfds_backend.config_name('segmentation', config.data.target.resolution)
  source = tfds.data_source(f'sdeseg_cityscapes/{config_name}', split='train',
                            data_dir=sources.tfds_dir(config.data.target, workdir, 'target'),
                            download=False)
  assert len(source) == len(index)
  for row in (0, len(index) - 1):
    record = source[row]
    assert record['id'].decode() == index.ids[row]
    with open(index.images[row], 'rb') as f:
      assert record['image'] == f.read()
    with open(index.labels[row], 'rb') as f:
      assert record['label'] == f.read()
    assert record['prev_frame'] == b''


def _copies(world, tmp_path, role='target'):
  """A private copy of the role's prepared tree and shards: (entry, root, tfds_dir)."""
  config, workdir = world
  entry = config.data[role].copy_and_resolve_references()
  root, tfds_dir = str(tmp_path / 'prepared'), str(tmp_path / 'tfds')
  shutil.copytree(sources.roots(entry, workdir, role)[1], root)
  shutil.copytree(sources.tfds_dir(entry, workdir, role), tfds_dir)
  return entry, root, tfds_dir


def _open(entry, root, tfds_dir, **kwargs):
  return tfds_backend.open_reader(entry.name, root, tuple(entry.resolution), tfds_dir,
                                  **dict(dict(val_count=entry.val_count), **kwargs))


def test_missing_shards_are_named_with_the_build_command(world, tmp_path):
  config, workdir = world
  entry = config.data.target
  root = sources.roots(entry, workdir, 'target')[1]
  empty = str(tmp_path / 'no_shards')
  with pytest.raises(common.DataError) as error:
    _open(entry, root, empty)
  message = str(error.value)
  for part in ('cityscapes', 'segmentation', '128x64', empty,
               f'python -m data_pipelines.build_shards --dataset=cityscapes --root={root}'):
    assert part in message


def test_missing_shard_file_is_named(world, tmp_path):
  entry, root, tfds_dir = _copies(world, tmp_path)
  version = os.path.join(tfds_dir, 'sdeseg_cityscapes', 'sequences_128x64', '1.0.0')
  shard = [f for f in os.listdir(version) if '-train.array_record' in f][0]
  os.remove(os.path.join(version, shard))
  with pytest.raises(common.DataError, match=f'{shard}: missing shard of .*sequences_128x64 split '
                     'train.*--overwrite'):
    _open(entry, root, tfds_dir)


def test_stale_shards_are_an_error_until_rebuilt(world, tmp_path):
  entry, root, tfds_dir = _copies(world, tmp_path)
  train = _open(entry, root, tfds_dir).segmentation('train')
  # The tree loses a training image after the shards were built.
  os.remove(train.images[-1])
  os.remove(train.labels[-1])
  reader = _open(entry, root, tfds_dir)
  with pytest.raises(common.DataError, match=f"segmentation_128x64 in {tfds_dir}: stale "
                     f"segmentation split 'train': {len(train)} examples in the shards, "
                     f"{len(train) - 1} in {root} \\({train.images[-1]} is gone from the tree\\); "
                     "rebuild: .* --overwrite"):
    reader.segmentation('train')
  reader.segmentation('val')  # the other splits still match
  with pytest.raises(common.DataError, match='stale'):
    tfds_backend.build(entry.name, root, tuple(entry.resolution), tfds_dir,
                       val_count=entry.val_count)
  tfds_backend.build(entry.name, root, tuple(entry.resolution), tfds_dir,
                     val_count=entry.val_count, overwrite=True)
  rebuilt = _open(entry, root, tfds_dir).segmentation('train')
  assert rebuilt.ids.tolist() == train.ids[:-1].tolist()


def test_shards_of_another_val_count_or_sequence_root_are_refused(world, tmp_path):
  entry, root, tfds_dir = _copies(world, tmp_path, role='source')  # GTA5: val_count splits
  with pytest.raises(common.DataError, match=f'built with val_count={entry.val_count}, .* but '
                     f'val_count={entry.val_count + 1} was asked'):
    _open(entry, root, tfds_dir, val_count=entry.val_count + 1)
  with pytest.raises(common.DataError, match="built with the frames in the tree, but "
                     "sequence_root='/elsewhere' was asked"):
    _open(entry, root, tfds_dir, sequence_root='/elsewhere').sequences('train')


def test_command_line_builds_shards(world, tmp_path):
  config, workdir = world
  entry = config.data.target
  root = sources.roots(entry, workdir, 'target')[1]
  tfds_dir = str(tmp_path / 'cli')
  width, height = entry.resolution
  result = subprocess.run(
      [sys.executable, '-m', 'data_pipelines.build_shards', '--dataset=cityscapes',
       f'--root={root}', f'--resolution={width}x{height}', f'--tfds_dir={tfds_dir}', '--workers=2'],
      capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'{tfds_dir}/sdeseg_cityscapes/sequences_{width}x{height}/1.0.0' in result.stdout
  _assert_indices_equal(_open(entry, root, tfds_dir).sequences('val'),
                        _readers(world, 'target')[0].sequences('val'))
