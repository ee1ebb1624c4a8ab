"""Ground-truth depth for SDE evaluation: Cityscapes disparity maps and the synthetic world."""

import os

import numpy as np
from PIL import Image

from data_pipelines import depth_truth
from data_pipelines import synthetic
from tests import fixtures


def test_cityscapes_disparity_becomes_metric_depth(tmp_path):
  raw = fixtures.write_cityscapes(str(tmp_path / 'raw'))  # camera: fx = 0.5 * 64 = 32 px
  stem = 'aachen_000000_000002'
  disparity = np.zeros((32, 64), np.uint16)
  disparity[:, :32] = 1 + 256 * 4      # d = 4 px
  disparity[:, 32:48] = 1 + 256 // 2   # d = 0.5 px
  path = f'{raw}/disparity/train/aachen/{stem}_disparity.png'
  os.makedirs(os.path.dirname(path))
  Image.fromarray(disparity).save(path)
  truth = depth_truth.DepthTruth(raw, raw)
  image = f'{raw}/leftImg8bit/train/aachen/{stem}_leftImg8bit.png'
  assert truth.kind == 'cityscapes' and truth.has(image)
  depth = truth(image)
  baseline, fx = 0.2, 32.0
  np.testing.assert_allclose(depth[:, :32], baseline * fx / 4, rtol=1e-6)
  np.testing.assert_allclose(depth[:, 32:48], baseline * fx / 0.5, rtol=1e-6)
  assert (depth[:, 48:] == 0).all()  # no disparity: unknown
  assert not truth.has(f'{raw}/leftImg8bit/train/aachen/aachen_000001_000002_leftImg8bit.png')


def test_synthetic_truth_matches_the_world_files(tmp_path):
  raw = str(tmp_path / 'world')
  synthetic.render_world(raw, domain='city', layout='cityscapes', size=(64, 32), sequences=2,
                         frames=3, seed=0)
  truth = depth_truth.DepthTruth(raw, raw)
  image = sorted(p for p in (os.path.join(d, f) for d, _, fs in os.walk(f'{raw}/leftImg8bit')
                             for f in fs))[0]
  assert truth.kind == 'synthetic' and truth.has(image)
  expected = synthetic.load_groundtruth(raw, os.path.relpath(image, raw)).depth
  depth = truth(image)
  sky = expected >= synthetic.FAR_DEPTH
  assert sky.any() and (depth[sky] == 0).all()  # the far plane is "no ground truth"
  np.testing.assert_array_equal(depth[~sky], expected[~sky])
