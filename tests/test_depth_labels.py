"""Depth labels from metric depth (config.depth_labels.source groundtruth | file): the conversion
into the SDE's disparity, the masked resize, depth files, and the stage on tiny trees (no networks:
neither source needs an SDE)."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import base
from data_pipelines import depth_maps
from data_pipelines import depth_truth
from data_pipelines import sources
from data_pipelines.datasets import DataError
from sdeseg_jax import artifacts
from sdeseg_jax import ops
from sdeseg_jax import stages
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.stages import data as data_stage
from sdeseg_jax.stages import depth_labels
from tests import fixtures

RES = (32, 16)  # the working resolution: half the raw trees' 64x32, so labels are resized


def test_disparity_inverts_the_sdes_disp_to_depth():
  depth = np.array([[0.1, 0.5, 3.0, 42.0], [99.9, 100.0, 0.01, 1e4]], np.float32)
  disparity = depth_maps.disparity_from_depth(depth, 0.1, 100.0)
  assert disparity.dtype == np.float32 and 0 <= disparity.min() and disparity.max() <= 1
  back = np.asarray(ops.disp_to_depth(jnp.asarray(disparity), 0.1, 100.0)[1])
  np.testing.assert_allclose(back, np.clip(depth, 0.1, 100.0), rtol=1e-4)
  assert disparity[0, 0] == 1 and disparity[1, 1] == 0  # min depth: 1, max depth: 0
  assert np.all(np.diff(disparity[0]) < 0)  # nearer is larger, as the SDE's


def test_unknown_depth_becomes_the_farthest_disparity():
  depth = np.array([[0.0, np.nan, -2.0, np.inf, 5.0]], np.float32)
  disparity = depth_maps.disparity_from_depth(depth, 0.1, 100.0)
  np.testing.assert_array_equal(disparity[0, :4], 0)
  assert disparity[0, 4] > 0
  np.testing.assert_array_equal(depth_maps.known_pixels(depth)[0], [0, 0, 0, 0, 1])


def test_the_resize_averages_known_disparities_only():
  disparity = np.array([[0.2, 0.4, 0.0, 0.0],
                        [0.0, 0.6, 0.0, 0.0],
                        [0.5, 0.5, 0.9, 0.1],
                        [0.5, 0.5, 0.3, 0.0]], np.float32)
  known = disparity > 0
  known[3, 3] = True  # known, at the far limit: counts as a far value
  resized = depth_maps.resize_disparity(disparity, known, (2, 2))
  np.testing.assert_allclose(resized, [[0.4, 0.0], [0.5, 1.3 / 4]], rtol=1e-5)
  # Same size: unchanged (unknown pixels 0); upsampling keeps unknown footprints unknown.
  np.testing.assert_array_equal(depth_maps.resize_disparity(disparity, known, (4, 4)),
                                np.where(known, disparity, 0))
  up = depth_maps.resize_disparity(disparity, known, (8, 8))
  assert up.shape == (8, 8) and (up[:4, 4:] == 0).all() and up[0, 0] == pytest.approx(0.2)
  label = depth_maps.depth_label(np.full((32, 64), 10.0, np.float32), size=RES, min_depth=0.1,
                                 max_depth=100.0)
  assert label.shape == (16, 32) and label.dtype == np.float32
  np.testing.assert_allclose(label, depth_maps.disparity_from_depth(np.float32([10.0]), 0.1,
                                                                    100.0)[0], rtol=1e-6)


def test_depth_files_npy_and_png(tmp_path):
  depth = np.array([[1.5, 0.0], [20.25, 3.0]], np.float32)
  np.save(tmp_path / 'a.npy', depth)
  np.save(tmp_path / 'c.npy', depth[..., None].astype(np.float64))
  Image.fromarray((depth * 256).astype(np.uint16)).save(tmp_path / 'b.png')
  for name in ('a.npy', 'b.png', 'c.npy'):
    read = depth_maps.read_depth_file(str(tmp_path / name))
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, depth)
  assert depth_maps.depth_file(str(tmp_path), 'b') == str(tmp_path / 'b.png')
  assert depth_maps.depth_file(str(tmp_path), 'd') is None
  Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / 'e.png')
  np.save(tmp_path / 'f.npy', np.zeros((2, 2), np.int32))
  (tmp_path / 'g.npy').write_bytes(b'not a numpy file')
  for name, message in (('e.png', 'a L PNG; depth PNGs are 16-bit'),
                        ('f.npy', 'depth int32 .* expected float metres'),
                        ('g.npy', 'unreadable depth file')):
    with pytest.raises(DataError, match=f'{name}: {message}'):
      depth_maps.read_depth_file(str(tmp_path / name))
  Image.fromarray(np.zeros((2, 2), np.uint16)).save(tmp_path / 'a.png')
  with pytest.raises(DataError, match=r"example 'a' has both .*a\.npy and .*a\.png"):
    depth_maps.depth_file(str(tmp_path), 'a')


def _config(raw, name='cityscapes', **labels):
  config = base.get_config()
  config.stages = 'data,depth_labels'
  config.data.target.update(name=name, raw_root=raw, resolution=RES)
  config.data.image_format = 'png'
  config.data.summary_max_labels = 4
  config.data.workers = 2
  config.depth_labels.update(labels)
  return config


def _labels(workdir):
  out = artifacts.depth_dir(workdir, 'target')
  return {f[:-len('.npy')]: np.load(os.path.join(out, f)) for f in sorted(os.listdir(out))}


def _images(config, workdir):
  """{example id: image path} of every segmentation split."""
  reader = sources.open_dataset(config.data.target, workdir, 'target')
  return {i: p for index in reader.indices('segmentation').values()
          for i, p in zip(index.ids.tolist(), index.images.tolist())}


def _expected(depth, config):
  return depth_maps.depth_label(depth, size=RES, min_depth=config.sde.min_depth,
                                max_depth=config.sde.max_depth)


def test_groundtruth_labels_of_the_synthetic_world(tmp_path):
  """source=groundtruth: the synthetic world's metric depth, converted and resized; no SDE is
  read or needed; a rerun writes nothing again."""
  workdir = str(tmp_path / 'work')
  config = _config('', source='groundtruth')
  config.data.target.synthetic.update(domain='city', size=(64, 32), sequences=3, frames=3)
  assert stages.run_stages(config, workdir) == ['data', 'depth_labels']
  raw, prepared = sources.roots(config.data.target, workdir, 'target')
  truth = depth_truth.DepthTruth(prepared, raw)
  assert truth.kind == 'synthetic'
  labels, images = _labels(workdir), _images(config, workdir)
  assert sorted(labels) == sorted(images) and len(labels) >= 3
  for example, label in labels.items():
    assert label.shape == (RES[1], RES[0]) and label.dtype == np.float32
    np.testing.assert_array_equal(label, _expected(truth(images[example]), config))
  assert any((label == 0).any() and (label > 0.01).any() for label in labels.values())  # sky, near
  assert depth_labels.write_depth_labels(config, workdir, 'target') == 0  # resumable


@pytest.fixture(scope='module')
def cityscapes(tmp_path_factory):
  """(raw tree, workdir): 2 train and 1 val Cityscapes images (no disparity), prepared at RES."""
  raw = fixtures.write_cityscapes(str(tmp_path_factory.mktemp('raw')))
  workdir = str(tmp_path_factory.mktemp('work'))
  data_stage.run(_config(raw), workdir)
  return raw, workdir


def _fresh(workdir, tmp_path):
  """A copy of the prepared run without depth labels."""
  import shutil
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  return copy


def test_file_labels_npy_and_png_and_a_missing_file(cityscapes, tmp_path):
  raw, workdir = cityscapes
  workdir = _fresh(workdir, tmp_path)
  files_dir = tmp_path / 'depth_files'
  files_dir.mkdir()
  config = _config(raw, source='file', depth_dir=str(files_dir))
  ids = sorted(_images(config, workdir))
  rng = np.random.default_rng(0)
  depths = {}
  for n, example in enumerate(ids):
    depth = rng.uniform(1, 80, (32, 64)).astype(np.float32)
    depth[:4] = 0  # unknown rows
    if n % 2:
      Image.fromarray(np.round(depth * 256).astype(np.uint16)).save(files_dir / f'{example}.png')
      depth = np.round(depth * 256) / 256
    else:
      np.save(files_dir / f'{example}.npy', depth)
    depths[example] = depth
  os.remove(files_dir / f'{ids[-1]}.{"png" if (len(ids) - 1) % 2 else "npy"}')
  with pytest.raises(DataError, match=f"depth_files/{ids[-1]}.npy: missing depth of example "
                                      f"'{ids[-1]}'"):
    stages.run_stages(config, workdir)
  np.save(files_dir / f'{ids[-1]}.npy', depths[ids[-1]].astype(np.float32))
  assert stages.run_stages(config, workdir) == ['depth_labels']
  labels = _labels(workdir)
  assert sorted(labels) == ids
  for example, label in labels.items():
    np.testing.assert_allclose(label, _expected(depths[example], config), atol=1e-6)
    assert (label[:2] == 0).all() and (label[2:] > 0).all()


def test_stereo_groundtruth_of_cityscapes(cityscapes, tmp_path):
  """source=groundtruth on Cityscapes: the stereo disparity maps and cameras of the raw tree (the
  Table 9 'stereo' row); an image without a disparity map is an error naming it."""
  raw, workdir = cityscapes
  workdir = _fresh(workdir, tmp_path)
  config = _config(raw, source='groundtruth')
  with pytest.raises(ConfigError, match=r"source='groundtruth': no ground-truth depth for "
                                        r'config.data.target .* set config.data.target.raw_root'):
    depth_labels.write_depth_labels(config, workdir, 'target')
  images = _images(config, workdir)
  for n, image in enumerate(sorted(images.values())):
    parts = os.path.relpath(image, os.path.join(workdir, 'data', 'target')).split(os.sep)
    stem = parts[3].removesuffix('_leftImg8bit.png')
    path = os.path.join(raw, 'disparity', parts[1], parts[2], f'{stem}_disparity.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    disparity = np.full((32, 64), 1 + 256 * (n + 2), np.uint16)
    disparity[:, :8] = 0  # no stereo match
    Image.fromarray(disparity).save(path)
  os.remove(path)  # the last image has none
  with pytest.raises(DataError, match=f'{image}: no ground-truth depth for example '):
    depth_labels.write_depth_labels(config, workdir, 'target')
  assert len(_labels(workdir)) == len(images) - 1  # those before the error are kept ...
  Image.fromarray(disparity).save(path)
  assert depth_labels.write_depth_labels(config, workdir, 'target') == 1  # ... and not redone
  truth = depth_truth.DepthTruth(os.path.join(workdir, 'data', 'target'), raw)
  for example, label in _labels(workdir).items():
    np.testing.assert_array_equal(label, _expected(truth(images[example]), config))
    assert (label[:, :4] == 0).all() and (label[:, 4:] > 0).all()


def test_sources_are_checked_and_need_no_sde(tmp_path):
  workdir = str(tmp_path)
  config = _config('/raw')
  for labels, message in ((dict(source='lidar'), "source='lidar': expected one of sde, "),
                          (dict(source='file'), "depth_dir, which is empty: set it")):
    config.depth_labels.update(labels)
    with pytest.raises(ConfigError, match=message):
      depth_labels.check_config(config)
  config.depth_labels.update(source='file', depth_dir=str(tmp_path / 'nowhere'))
  with pytest.raises(ConfigError, match=r"source='file' \(config.depth_labels.depth_dir\) reads "
                                        r'\S+/nowhere, which does not exist'):
    stages.check_inputs('depth_labels', config, workdir, ('data',))
  config.depth_labels.update(source='groundtruth')
  assert depth_labels.inputs(config, workdir) == []  # no SDE checkpoint
  config.depth_labels.update(source='sde', sde_checkpoint=str(tmp_path / 'city_sde'))
  [item] = depth_labels.inputs(config, workdir)
  assert item.path == str(tmp_path / 'city_sde') and item.maker == ''  # another run's SDE
  with pytest.raises(ConfigError, match='city_sde, which does not exist: run the sde_pretrain '
                                        'stage first or set config.depth_labels.sde_checkpoint'):
    stages.check_inputs('depth_labels', config, workdir, ('data', 'sde_pretrain'))
  # The source domain keeps its own SDE, whatever the target's source.
  config.depth_labels.update(source='groundtruth', roles=('target', 'source'))
  [item] = depth_labels.inputs(config, workdir)
  assert item.path == artifacts.sde_checkpoint(workdir, 'source') and item.maker == 'sde_source'
