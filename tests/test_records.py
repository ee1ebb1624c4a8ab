"""The data stage's record of every split (data_pipelines.records) and the check of each split a
stage lists against it: a file that disappears from the prepared tree is an error naming the file
and its split, or with config.data.<role>.allow_missing a warning and a smaller split. Tiny trees,
no networks."""

import json
import logging
import os
import re
import shutil

import pytest

from configs import base
from data_pipelines import records
from data_pipelines import sources
from data_pipelines.datasets import common
from sdeseg_jax import artifacts
from sdeseg_jax.stages import data as data_stage
from tests import fixtures

RES = (32, 16)
PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'sdeseg_jax')


def _config(raw: str, name: str = 'cityscapes', **entry):
  config = base.get_config()
  config.data.target.update(name=name, raw_root=raw, resolution=RES, **entry)
  config.data.image_format = 'png'
  config.data.summary_max_labels = 4
  config.data.workers = 2
  return config


def _reader(config, workdir: str) -> common.Reader:
  """The target reader as every stage opens it."""
  return sources.open_dataset(config.data.target, workdir, 'target')


@pytest.fixture(scope='module')
def recorded(tmp_path_factory):
  """(raw tree, workdir): a Cityscapes tree of 3 train and 2 val images (and their 5-frame
  snippets), prepared and recorded by the data stage."""
  raw = fixtures.write_cityscapes(str(tmp_path_factory.mktemp('raw')), snippets=3, val_snippets=2)
  workdir = str(tmp_path_factory.mktemp('work'))
  data_stage.run(_config(raw), workdir)
  return raw, workdir


@pytest.fixture
def run(recorded, tmp_path):
  """(config, workdir): a private copy of the recorded workdir, for a test that deletes files."""
  raw, workdir = recorded
  copy = str(tmp_path / 'work')
  shutil.copytree(workdir, copy)
  return _config(raw), copy


def test_the_data_stage_records_the_examples_of_every_split(recorded):
  raw, workdir = recorded
  summary = json.load(open(artifacts.data_summary(workdir)))['target']
  record = summary[records.SUMMARY_KEY]
  sizes = {k: v for k, v in summary['splits'].items() if isinstance(v, int)}
  assert sizes == {'segmentation/train': 3, 'segmentation/val': 2, 'sequences/train': 9,
                   'sequences/val': 6}
  assert {k: len(v) for k, v in record.items()} == sizes  # absent splits (test) are not recorded
  reader = _reader(_config(raw), workdir)
  val = reader.segmentation('val')
  assert list(record['segmentation/val']) == val.ids.tolist()
  assert [os.path.join(reader.root, p) for p in record['segmentation/val'].values()] == (
      val.images.tolist())
  assert record['segmentation/val']['frankfurt_000001_000002'] == (
      'leftImg8bit/val/frankfurt/frankfurt_000001_000002_leftImg8bit.png')


def test_a_deleted_validation_image_is_an_error_naming_it_and_its_split(run):
  config, workdir = run
  reader = _reader(config, workdir)
  val, train = reader.segmentation('val'), reader.segmentation('train')
  os.remove(val.images[1])
  with pytest.raises(common.DataError, match=re.escape(
      f'{val.images[1]}: gone from target split segmentation/val, recorded by the data stage with '
      f'2 examples in {artifacts.data_summary(workdir)} (1 gone, 0 not recorded); restore')) as e:
    reader.segmentation('val')
  assert 'config.data.target.allow_missing=True' in str(e.value)
  assert reader.segmentation('train').ids.tolist() == train.ids.tolist()  # the others still read


def test_a_deleted_training_image_or_frame_is_an_error_naming_it(run):
  config, workdir = run
  reader = _reader(config, workdir)
  image = reader.segmentation('train').images[0]
  os.remove(image)
  with pytest.raises(common.DataError, match=re.escape(
      f'{image}: gone from target split segmentation/train')):
    reader.segmentation('train')
  # The first frame of a snippet is no triplet's centre: the triplet it completed goes with it,
  # and the error names that triplet's frame t, which is still here.
  triplets = reader.sequences('train')
  first = triplets.prev_frames[0]
  os.remove(first)
  with pytest.raises(common.DataError, match=re.escape(
      f'{triplets.images[0]} (still here, but a file its example needs, e.g. a neighbouring frame, '
      'is not, or it moved to another split): gone from target split sequences/train')):
    reader.sequences('train')
  # A triplet's centre frame that is gone is named itself (before the triplets it completed).
  os.remove(triplets.images[-1])
  with pytest.raises(common.DataError, match=re.escape(
      f'{triplets.images[-1]}: gone from target split sequences/train')):
    reader.sequences('train')


def test_every_split_of_a_recorded_dataset_is_listed_or_an_error(run):
  """What depth_labels reads: every recorded split (a split with a file gone is an error, not a
  split left out); without a record, the splits that list."""
  config, workdir = run
  reader = _reader(config, workdir)
  assert sorted(reader.indices('segmentation')) == ['train', 'val']  # no test split recorded
  os.remove(reader.segmentation('val').images[0])
  with pytest.raises(common.DataError, match='gone from target split segmentation/val'):
    reader.indices('segmentation')
  unrecorded = sources.open_dataset(config.data.target, workdir, 'target', check_record=False)
  assert len(unrecorded.indices('segmentation')['val']) == 1


def test_allow_missing_warns_with_the_files_and_the_split_shrinks(run, caplog):
  config, workdir = run
  config.data.target.allow_missing = True
  reader = _reader(config, workdir)
  val, train = reader.segmentation('val'), reader.segmentation('train')
  os.remove(val.images[0])
  caplog.set_level(logging.WARNING)
  shrunk = reader.segmentation('val')
  assert shrunk.ids.tolist() == val.ids[1:].tolist()
  assert (f'config.data.target.allow_missing: target split segmentation/val holds 1 of the 2 '
          f'examples the data stage recorded in {artifacts.data_summary(workdir)}; files gone: '
          f'{val.images[0]}') in caplog.text
  caplog.clear()
  assert reader.segmentation('train').ids.tolist() == train.ids.tolist()
  assert not caplog.text  # a split as recorded says nothing


def test_rerunning_the_data_stage_records_the_tree_as_it_is(run):
  config, workdir = run
  val = _reader(config, workdir).segmentation('val')
  os.remove(val.images[0])
  data_stage.run(config, workdir)
  assert _reader(config, workdir).segmentation('val').ids.tolist() == val.ids[1:].tolist()


def test_a_workdir_without_a_record_is_read_as_found_with_a_warning(run, caplog):
  """Backwards compatible: a summary written before summaries held records (or no summary, when
  the data stage has not run in the workdir) leaves the splits unchecked, and says so."""
  config, workdir = run
  path = artifacts.data_summary(workdir)
  summary = json.load(open(path))
  del summary['target'][records.SUMMARY_KEY]
  json.dump(summary, open(path, 'w'))
  val = _reader(config, workdir).segmentation('val')
  os.remove(val.images[0])
  caplog.set_level(logging.WARNING)
  assert len(_reader(config, workdir).segmentation('val')) == 1
  assert (f'{path}: no record of the target examples (the summary predates records of the '
          'examples)') in caplog.text
  os.remove(path)
  caplog.clear()
  assert len(_reader(config, workdir).segmentation('val')) == 1
  assert 'no data stage has run in this workdir' in caplog.text


def test_a_gta5_val_image_deleted_does_not_move_a_training_image_into_val(tmp_path, caplog):
  """GTA5's val split is its last val_count images: with one of them gone, the last training image
  would slide into val. The record names the gone image; with allow_missing val keeps only what
  it recorded, so no training image is evaluated on."""
  raw = fixtures.write_gta5(str(tmp_path / 'raw'), images=6)
  config, workdir = _config(raw, 'gta5', val_count=2), str(tmp_path / 'work')
  data_stage.run(config, workdir)
  reader = _reader(config, workdir)
  assert reader.segmentation('val').ids.tolist() == ['00005', '00006']
  gone = reader.segmentation('val').images[-1]
  os.remove(gone)
  with pytest.raises(common.DataError, match=re.escape(
      f'{gone}: gone from target split segmentation/val, recorded by the data stage with 2 '
      'examples') + r'.*\(1 gone, 1 not recorded\)'):
    reader.segmentation('val')
  config.data.target.allow_missing = True
  caplog.set_level(logging.WARNING)
  reader = _reader(config, workdir)
  assert reader.segmentation('val').ids.tolist() == ['00005']
  assert re.search(r'files gone: \S+/images/00006.png; left out, not recorded: '
                   r'\S+/images/00004.png', caplog.text)
  caplog.clear()
  assert reader.segmentation('train').ids.tolist() == ['00001', '00002', '00003']
  assert re.search(r'left out as a file they need is gone \(e.g. a neighbouring frame\) or as '
                   r'they moved to another split: \S+/images/00004.png', caplog.text)


def test_stages_list_splits_only_through_the_recorded_reader():
  """Every stage gets the check: no module of the package opens a dataset another way, and only
  the data stage, which writes the record, opens one without it."""
  bypasses = ('open_prepared(', 'get_reader(', 'open_reader(', 'check_record=False')
  offenders = []
  for folder, _, names in os.walk(PACKAGE):
    for name in names:
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      text = open(path, encoding='utf-8').read()
      for bypass in bypasses:
        if bypass in text and not (path.endswith(os.path.join('stages', 'data.py')) and
                                   bypass == 'check_record=False'):
          offenders.append(f'{os.path.relpath(path, PACKAGE)}: {bypass}')
  assert not offenders, offenders
  assert 'check_record=False' in open(os.path.join(PACKAGE, 'stages', 'data.py')).read()
