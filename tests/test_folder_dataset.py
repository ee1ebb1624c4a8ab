"""The generic folder layout (data_pipelines/datasets/folder.py, docs/folder_dataset.md): a
synthetic world written in it, hand-written 5-class trees, prepare, depth, and every bad piece
named by the data stage."""

import json
import os
import re

import numpy as np
from PIL import Image
import pytest

from configs import base
from data_pipelines import datasets
from data_pipelines import depth_truth
from data_pipelines import prepare
from data_pipelines import statistics
from data_pipelines import synthetic
from data_pipelines.datasets import common
from data_pipelines.datasets import folder
from data_pipelines.synthetic import labels as world_labels
from sdeseg_jax import stages
from tests import fixtures

SIZE = (96, 48)


# --------------------------------------------------------------------------------------------------
# A synthetic world in the folder layout.

@pytest.fixture(scope='module')
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp('folder_world')
  raw, prepared = str(root / 'raw'), str(root / 'prepared')
  synthetic.render_world(raw, domain='city', layout='folder', size=SIZE, sequences=5, frames=3,
                         seed=3)
  prepare.prepare('folder', raw, prepared, SIZE, image_format='png')  # names as in the raw tree
  return raw, prepare.open_prepared('folder', prepared, SIZE)


def test_the_world_reads_back(world):
  raw, reader = world
  train, val = reader.segmentation('train'), reader.segmentation('val')
  assert train.ids.tolist() == [f'street{i:03d}_000001' for i in range(4)]
  assert val.ids.tolist() == ['street004_000001']
  assert train.is_labeled.all() and train.is_triplet.all()
  assert train.prev_frames[1] == os.path.join(reader.root, 'sequences', 'street001', '000000.png')
  assert train.next_frames[1] == os.path.join(reader.root, 'sequences', 'street001', '000002.png')
  triplets = reader.sequences('train')
  assert triplets.ids.tolist() == [f'street{i:03d}_000001' for i in range(5)]
  assert triplets.is_triplet.all()
  assert reader.label_spec.class_names == common.CITYSCAPES_CLASSES
  assert reader.label_spec.colours == common.CITYSCAPES_COLOURS


def test_intrinsics_of_every_form_equal_the_world_s(world):
  raw, reader = world
  width, height = SIZE
  for index in (reader.segmentation('train'), reader.segmentation('val'),
                reader.sequences('train')):
    for image, (fx, fy, cx, cy) in zip(index.images, index.intrinsics):
      truth = synthetic.load_groundtruth(raw, os.path.relpath(image, reader.root)).intrinsics
      np.testing.assert_allclose([fx * width, fy * height, cx * width, cy * height],
                                 [truth[0, 0], truth[1, 1], truth[0, 2], truth[1, 2]], rtol=1e-5)
  # The prepared tree's cameras are normalised (pixels and hfov would not survive resizing).
  cameras = json.load(open(os.path.join(reader.root, folder.INTRINSICS_FILE)))
  assert {c['units'] for c in cameras['clips'].values()} == {'normalized'}
  assert len(cameras['clips']) == 5


def test_labels_are_class_ids(world):
  raw, reader = world
  train = reader.segmentation('train')
  lookup = reader.label_spec.lookup_table()
  for image, label in zip(train.images, train.labels):
    ids = common.decode_label_png(label)
    assert not reader.label_spec.invalid_ids(ids)
    truth = synthetic.load_groundtruth(raw, os.path.relpath(image, reader.root)).label_ids
    np.testing.assert_array_equal(lookup[ids], world_labels.CLASS_ID_FROM_CITYSCAPES[truth])
  frequencies = statistics.class_frequencies(train, reader.label_spec, max_labels=10)
  assert frequencies['road'] > 0.1 and frequencies['(ignored)'] < 0.2


def test_depth_of_the_layout(world):
  raw, reader = world
  truth = depth_truth.DepthTruth(reader.root, raw)
  assert truth.kind == 'folder'  # the layout's own depth/, before the world's ground truth
  for image in reader.segmentation('val').images:
    assert truth.has(image)
    expected = synthetic.load_groundtruth(raw, os.path.relpath(image, reader.root)).depth
    depth = truth(image)
    assert depth.dtype == np.float32 and depth.shape == expected.shape
    known = depth > 0
    assert (~known).any() and known.mean() > 0.5
    assert (expected[~known] >= synthetic.FAR_DEPTH).all()
    np.testing.assert_allclose(depth[known], expected[known], atol=1 / 512 + 1e-5)
  assert not truth.has(reader.sequences('train').images[0])  # frames have no depth


# --------------------------------------------------------------------------------------------------
# Hand-written trees: 5 classes, an id_map, pairs.json, prepare.

def test_five_classes_with_an_id_map(tmp_path):
  root = fixtures.write_folder(str(tmp_path / 'f'), id_map=True)
  reader = datasets.get_reader('folder', root)
  spec = reader.label_spec
  assert spec.class_names == ('road', 'car', 'sky', 'person', 'tree') and spec.num_classes == 5
  table = spec.lookup_table()
  assert [int(table[raw]) for raw in (7, 26, 23, 24, 21, 0, 255)] == [0, 1, 2, 3, 4, 255, 255]
  assert spec.invalid_ids(np.array([0, 7, 8, 255, 254])) == [8, 254]  # not in the map
  assert spec.raw_id_table()[:5].tolist() == [7, 26, 23, 24, 21]
  train = reader.segmentation('train')
  # Stripes of the 7 raw ids: each class one seventh, the raw 0 and 255 ignored.
  frequencies = statistics.class_frequencies(train, spec, max_labels=10)
  assert frequencies['car'] == pytest.approx(1 / 7, abs=0.02)
  assert frequencies['(ignored)'] == pytest.approx(2 / 7, abs=0.04)


def test_segmentation_rows_of_a_hand_written_tree(tmp_path):
  root = fixtures.write_folder(str(tmp_path / 'f'))
  reader = datasets.get_reader('folder', root)
  train = reader.segmentation('train')
  assert train.ids.tolist() == ['c0_000002', 'c1_000002', 'extra_train']
  assert train.is_labeled.tolist() == [True, True, False]
  assert train.is_triplet.tolist() == [True, True, False]  # extra_train has no frame
  # c0 in pixels (fx = W/2, fy = W, cx = 0.4 W, cy = 0.6 H), c1 normalised, the rest the
  # default hfov of 90 degrees (fx = 0.5, square pixels at 2:1: fy = 1).
  np.testing.assert_allclose(train.intrinsics, [[0.5, 2.0, 0.4, 0.6], [0.7, 1.4, 0.5, 0.5],
                                                [0.5, 1.0, 0.5, 0.5]], rtol=1e-6)
  assert len(reader.sequences('train')) == 3 * 3  # frames 1..3 of clips c0, c1, v0
  assert reader.sequences('train').ids[0] == 'c0_000001'
  with pytest.raises(datasets.DataError, match="no 'kitti' split"):
    reader.segmentation('kitti')
  with pytest.raises(datasets.DataError, match='images/test: missing folder'):
    reader.segmentation('test')


def test_without_intrinsics_segmentation_has_nan_cameras(tmp_path):
  root = fixtures.write_folder(str(tmp_path / 'f'))
  os.remove(f'{root}/intrinsics.json')
  reader = datasets.get_reader('folder', root)
  assert np.isnan(reader.segmentation('train').intrinsics).all()
  with pytest.raises(datasets.DataError,
                     match=re.escape(f'{root}/intrinsics.json: is missing') + '.*clip .c0.'):
    reader.sequences('train')


def test_prepare_round_trip_with_pairs_json(tmp_path):
  raw = fixtures.write_folder(str(tmp_path / 'raw'))
  # The unlabeled image outside any clip is frame 2 of clip c0 (paths as written: .jpg and .png).
  with open(f'{raw}/pairs.json', 'w') as f:
    json.dump({'images/train/extra_train.jpg': 'sequences/c0/000002.png'}, f)
  dst = str(tmp_path / 'prepared')
  prepare.prepare('folder', raw, dst, (24, 12), image_format='jpg')
  before = datasets.get_reader('folder', raw)
  after = prepare.open_prepared('folder', dst, (24, 12))
  assert after.label_spec == before.label_spec
  for split in ('train', 'val'):
    a, b = before.segmentation(split), after.segmentation(split)
    assert b.ids.tolist() == a.ids.tolist()
    np.testing.assert_allclose(b.intrinsics, a.intrinsics, rtol=1e-6)
    assert b.is_labeled.tolist() == a.is_labeled.tolist()
    assert b.is_triplet.tolist() == a.is_triplet.tolist()
    assert all(p.endswith('.jpg') for p in b.images)
  train = after.segmentation('train')
  assert train.is_triplet.all()  # pairs.json still pairs extra_train, whose paths are now .jpg
  assert train.prev_frames[2] == f'{dst}/sequences/c0/000001.jpg'
  with Image.open(train.labels[0]) as label:
    assert label.size == (24, 12) and label.mode == 'L'
    assert set(np.unique(np.array(label)).tolist()) <= {0, 1, 2, 3, 4, 255}
  np.testing.assert_allclose(after.sequences('train').intrinsics,
                             before.sequences('train').intrinsics, rtol=1e-6)
  assert json.load(open(f'{dst}/pairs.json')) == json.load(open(f'{raw}/pairs.json'))


def test_depth_files_of_a_hand_written_tree(tmp_path):
  raw = fixtures.write_folder(str(tmp_path / 'raw'))
  depth = np.full((24, 48), 12.5, np.float32)
  depth[0, 0], depth[0, 1] = np.nan, -1.0
  os.makedirs(f'{raw}/depth/val/v0')
  np.save(f'{raw}/depth/val/v0/000002.npy', depth)
  os.makedirs(f'{raw}/depth/train/c0')
  png = f'{raw}/depth/train/c0/000002.png'
  Image.fromarray(np.full((24, 48), 7, np.uint8)).save(png)  # 8 bits: not a depth map
  dst = str(tmp_path / 'prepared')
  prepare.prepare('folder', raw, dst, (24, 12))
  truth = depth_truth.DepthTruth(dst, raw)
  read = truth(f'{dst}/images/val/v0/000002.jpg')
  assert read[0, 0] == read[0, 1] == 0 and (read.ravel()[2:] == 12.5).all()
  assert not truth.has(f'{dst}/images/val/extra_val.jpg')
  with pytest.raises(datasets.DataError, match=f'{png}: depth PNG of mode L'):
    truth(f'{dst}/images/train/c0/000002.jpg')


# --------------------------------------------------------------------------------------------------
# The data stage: a good tree is summarised, each bad piece is one DataError naming the file.

def _folder_config(raw):
  config = base.get_config()
  config.data.target.update(name='folder', raw_root=raw, resolution=(24, 12))
  config.data.image_format = 'png'
  config.lock()
  return config


def _data_stage(raw, workdir):
  return stages.run_stages(_folder_config(raw), workdir)


def test_data_stage_summarises_a_folder_tree(tmp_path):
  raw = fixtures.write_folder(str(tmp_path / 'raw'))
  assert _data_stage(raw, str(tmp_path / 'work')) == ['data']
  summary = json.load(open(tmp_path / 'work' / 'data' / 'summary.json'))['target']
  assert summary['classes'] == ['road', 'car', 'sky', 'person', 'tree']
  splits = summary['splits']
  assert (splits['segmentation/train'], splits['segmentation/val'], splits['sequences/train']) == (
      3, 2, 9)
  assert splits['segmentation/test'].startswith('absent')
  assert summary['class_frequencies']['car'] > 0.1
  # predict finds a folder run's classes in its prepared tree.
  from sdeseg_jax import predict
  spec = predict.run_label_spec(_folder_config(raw), str(tmp_path / 'work' / 'segment' / 'best'))
  assert spec.class_names == ('road', 'car', 'sky', 'person', 'tree')


def _rewrite_json(path, change):
  with open(path) as f:
    data = json.load(f)
  change(data)
  with open(path, 'w') as f:
    json.dump(data, f)


def _no_classes(root):
  os.remove(f'{root}/classes.json')
  return f'{root}/classes.json: missing'


def _nameless_class(root):
  _rewrite_json(f'{root}/classes.json', lambda d: d['classes'][2].pop('name'))
  return f'{root}/classes.json: classes[2]: no "name"'


def _bad_colour(root):
  _rewrite_json(f'{root}/classes.json', lambda d: d['classes'][1].update(colour=[0, 0]))
  return f"{root}/classes.json: classes[1] ('car'): colour [0, 0] is not 3 integers"


def _label_id_not_a_class(root):
  path = f'{root}/labels/train/c1/000002.png'
  fixtures._save(path, fixtures.label_ids((48, 24), (0, 1, 9)), 'L')
  return f'{path}: label ids [9]'


def _clip_without_camera(root):
  _rewrite_json(f'{root}/intrinsics.json', lambda d: (d.pop('default'), d['clips'].pop('c1')))
  return (f'{root}/intrinsics.json: has no entry for it, but self-supervised depth on the frames '
          f"of {root}/sequences/c1 needs the camera of clip 'c1'; add an entry for clip 'c1'")


def _clip_without_triplet(root):
  for frame in (0, 2, 4):
    fixtures._save(f'{root}/sequences/c9/{frame:06d}.png', fixtures.coded_image((48, 24)))
  return f'{root}/sequences/c9: no frame has both neighbours'


def _labelled_frame_without_neighbour(root):
  os.remove(f'{root}/sequences/c1/000003.png')
  return (f'{root}/images/train/c1/000002.png: its video frame {root}/sequences/c1/000002.png '
          '(of its name) has no neighbour frame number 3')


def _label_without_image(root):
  path = f'{root}/labels/val/v0/000004.png'
  fixtures._save(path, fixtures.label_ids((48, 24), (0,)), 'L')
  return f'{path}: a label map without an image'


def _pair_with_a_missing_frame(root):
  with open(f'{root}/pairs.json', 'w') as f:
    json.dump({'images/train/extra_train.jpg': 'sequences/c0/000099.jpg'}, f)
  return (f"{root}/pairs.json: entry 'images/train/extra_train.jpg' names the frame "
          "'sequences/c0/000099.jpg', which is not in")


def _pair_of_a_missing_image(root):
  with open(f'{root}/pairs.json', 'w') as f:
    json.dump({'images/train/gone.jpg': 'sequences/c0/000002.png'}, f)
  return f"{root}/pairs.json: entry 'images/train/gone' names no image"


@pytest.mark.parametrize('damage', [
    _no_classes, _nameless_class, _bad_colour, _label_id_not_a_class, _clip_without_camera,
    _clip_without_triplet, _labelled_frame_without_neighbour, _label_without_image,
    _pair_with_a_missing_frame, _pair_of_a_missing_image], ids=lambda f: f.__name__[1:])
def test_the_data_stage_names_a_bad_piece(tmp_path, damage):
  raw = fixtures.write_folder(str(tmp_path / 'raw'))
  message = damage(raw)
  with pytest.raises(datasets.DataError) as error:
    _data_stage(raw, str(tmp_path / 'work'))
  assert str(error.value).startswith(message), str(error.value)
  assert '\n' not in str(error.value)


def test_a_bad_piece_of_a_prepared_tree_is_named_by_the_data_stage(tmp_path):
  """A tree broken after it was prepared: the data stage checks the prepared tree it reads."""
  raw = fixtures.write_folder(str(tmp_path / 'raw'))
  workdir = str(tmp_path / 'work')
  _data_stage(raw, workdir)
  os.remove(os.path.join(workdir, 'data', 'done'))
  prepared = os.path.join(workdir, 'data', 'target')
  os.remove(f'{prepared}/sequences/c0/000001.png')
  with pytest.raises(datasets.DataError, match=re.escape(
      f'{prepared}/images/train/c0/000002.png: its video frame')):
    _data_stage(raw, workdir)


@pytest.mark.parametrize('classes, message', [
    ({'classes': []}, '0 classes; a dataset has 1 to 255'),
    ({'classes': fixtures.FOLDER_CLASSES, 'ignore_id': 3}, "ignore_id 3 is the id of class"),
    ({'classes': fixtures.FOLDER_CLASSES, 'id_map': {'7': 5}}, r"id_map\['7'\] is 5"),
    ({'classes': fixtures.FOLDER_CLASSES, 'id_map': {'255': 0}},
     'id_map maps raw id 255, which is the ignore_id'),
    ({'classes': fixtures.FOLDER_CLASSES, 'colours': []}, r"unknown keys \['colours'\]"),
    ({'classes': fixtures.FOLDER_CLASSES * 2}, "class names .* more than once"),
])
def test_malformed_classes_are_named(classes, message):
  with pytest.raises(datasets.DataError, match='classes.json: ' + message):
    folder.parse_classes(classes, 'classes.json')


@pytest.mark.parametrize('entry, message', [
    ({'fx': 1.0, 'fy': 1.0, 'cx': 0.5, 'cy': 0.5}, 'units None'),
    ({'fx': 100, 'fy': 100, 'cx': 50, 'cy': 25, 'units': 'pixels'}, r"missing \['size'\]"),
    ({'fx': 100, 'fy': 100, 'cx': 50, 'cy': 25, 'units': 'pixels', 'size': [0, 5]}, 'size'),
    ({'fx': -1.0, 'fy': 1.0, 'cx': 0.5, 'cy': 0.5, 'units': 'normalized'}, 'positive fx'),
    ({'hfov_deg': 180}, 'not a number of degrees'),
    ({'hfov_deg': 90, 'cx': 0.5}, 'hfov_deg stands alone'),
])
def test_malformed_cameras_are_named(entry, message):
  with pytest.raises(datasets.DataError, match='intrinsics.json: clips.a: .*' + message):
    folder.parse_camera(entry, 'intrinsics.json: clips.a')


def test_camera_forms_agree():
  pixels = folder.parse_camera(dict(fx=100.0, fy=100.0, cx=100.0, cy=50.0, units='pixels',
                                    size=[200, 100]), 'x')
  hfov = folder.parse_camera(dict(hfov_deg=90.0), 'x')
  np.testing.assert_allclose(pixels.at(None), [0.5, 1.0, 0.5, 0.5])
  np.testing.assert_allclose(hfov.at((200, 100)), [0.5, 1.0, 0.5, 0.5])
  np.testing.assert_allclose(hfov.at((100, 100)), [0.5, 0.5, 0.5, 0.5])


def test_tfds_shards_keep_the_classes_of_the_tree(world, tmp_path):
  """A pod reading the shards without the prepared tree still has the tree's classes."""
  from data_pipelines import tfds_backend  # imported here: TFDS loads only for this test
  _, reader = world
  tfds_dir = str(tmp_path / 'tfds')
  tfds_backend.build('folder', reader.root, SIZE, tfds_dir, workers=2)
  shards = tfds_backend.open_reader('folder', reader.root, SIZE, tfds_dir)
  for kind, split in (('segmentation', 'train'), ('sequences', 'train')):
    a, b = getattr(reader, kind)(split), getattr(shards, kind)(split)
    assert b.ids.tolist() == a.ids.tolist() and (b.images == a.images).all()
    np.testing.assert_array_equal(b.intrinsics, a.intrinsics)
  hidden = reader.root + '.hidden'
  os.rename(reader.root, hidden)
  try:
    alone = tfds_backend.open_reader('folder', reader.root, SIZE, tfds_dir)
  finally:
    os.rename(hidden, reader.root)
  assert alone.label_spec == reader.label_spec and alone.label_spec.num_classes == 19


def test_a_config_renders_the_world_in_the_folder_layout(tmp_path):
  """sources.materialise: synthetic.domain with name='folder' renders, prepares and reads it."""
  config = base.get_config()
  config.data.target.update(name='folder', resolution=(64, 32))
  config.data.target.synthetic.update(domain='game', size=(64, 32), sequences=4, frames=3)
  config.data.image_format = 'png'
  config.lock()
  workdir = str(tmp_path / 'work')
  assert stages.run_stages(config, workdir) == ['data']
  summary = json.load(open(os.path.join(workdir, 'data', 'summary.json')))['target']
  assert summary['classes'] == list(common.CITYSCAPES_CLASSES)
  assert (summary['splits']['segmentation/train'], summary['splits']['segmentation/val'],
          summary['splits']['sequences/train']) == (3, 1, 4)
  assert len(summary['intrinsics']) == 3  # clips 0..2: hfov 56, 62, 68 degrees
  assert os.path.exists(os.path.join(workdir, 'raw', 'target', 'depth'))
