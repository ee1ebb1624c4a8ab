"""The synthetic world read back through the real-layout readers, prepare and the pipelines, and the
demo config end to end: no code path exists only for synthetic data."""

import json
import os

import numpy as np
import pytest

from configs import demo
from data_pipelines import pipeline
from data_pipelines import prepare
from data_pipelines import synthetic
from sdeseg_jax import stages
from data_pipelines import statistics

SIZE = (96, 48)
SEQUENCES, FRAMES = 5, 3
LAYOUTS = {'cityscapes': 'city', 'gta5': 'game', 'synthia': 'game', 'camvid': 'city',
           'folder': 'city'}


@pytest.fixture(scope='module', params=sorted(LAYOUTS))
def world(request, tmp_path_factory):
  layout = request.param
  root = str(tmp_path_factory.mktemp(layout))
  raw, prepared = os.path.join(root, 'raw'), os.path.join(root, 'prepared')
  summary = synthetic.render_world(raw, domain=LAYOUTS[layout], layout=layout, size=SIZE,
                                   sequences=SEQUENCES, frames=FRAMES, seed=3)
  prepare.prepare(layout, raw, prepared, SIZE, image_format='png')
  reader = prepare.open_prepared(layout, prepared, SIZE, val_count=1)
  return layout, raw, reader, summary


def test_every_reader_reads_the_world(world):
  layout, raw, reader, _ = world
  train = reader.segmentation('train')
  assert len(train) + len(reader.segmentation('val')) >= SEQUENCES - 1  # camvid also has test
  assert len(train) >= 1 and train.is_labeled.all()
  # Every label id is one the real dataset can contain, and most pixels are classes, not ignore.
  frequencies = statistics.class_frequencies(train, reader.label_spec, max_labels=100)
  assert frequencies['(ignored)'] < 0.2
  assert max(frequencies[c] for c in reader.label_spec.class_names) > 0.1
  if layout == 'camvid':
    return
  triplets = reader.sequences('train')
  assert len(triplets) >= 1 and triplets.is_triplet.all()


def test_intrinsics_agree_with_ground_truth(world):
  layout, raw, reader, _ = world
  if layout == 'camvid':
    pytest.skip('CamVid has no calibration for the reader to read')
  index = reader.sequences('train')
  image = os.path.relpath(index.images[0], reader.root)
  truth = synthetic.load_groundtruth(raw, image).intrinsics  # prepared as png: same names
  width, height = SIZE
  fx, fy, cx, cy = index.intrinsics[0]
  np.testing.assert_allclose([fx * width, fy * height, cx * width, cy * height],
                             [truth[0, 0], truth[1, 1], truth[0, 2], truth[1, 2]], rtol=1e-5)


def test_pipelines_serve_the_world(world):
  layout, _, reader, _ = world
  sharding = pipeline.Sharding(2)
  train = reader.segmentation('train')
  batch = next(iter(pipeline.segmentation_batches(
      train, reader.label_spec, resolution=SIZE, crop=(48, 48), sharding=sharding, seed=0,
      stream='labeled')))
  assert batch['image'].shape == (2, 48, 48, 3) and batch['label'].shape == (2, 48, 48)
  assert (batch['label'] != 255).mean() > 0.8
  if layout == 'camvid':
    return
  batch = next(iter(pipeline.sde_batches(reader.sequences('train'), resolution=SIZE,
                                         crop=(48, 48), sharding=sharding, seed=0)))
  assert batch['frames'].shape == (2, 3, 48, 48, 3)
  # Consecutive frames of a moving camera differ, but not by much (photometric consistency).
  difference = np.abs(batch['frames'][:, 1] - batch['frames'][:, 0]).mean()
  assert 0.001 < difference < 0.2


def test_tiny_demo_runs_the_data_stage(tmp_path, capsys):
  config = demo.get_config('tiny')
  config.stages = 'data'
  config.lock()
  workdir = str(tmp_path / 'demo')
  assert stages.run_stages(config, workdir) == ['data']
  printed = capsys.readouterr().out
  assert '== target: cityscapes' in printed and '== source: gta5' in printed
  summary = json.load(open(os.path.join(workdir, 'data', 'summary.json')))
  for role in ('target', 'source'):
    assert summary[role]['splits']['segmentation/train'] > 0
    assert summary[role]['splits']['sequences/train'] > 0
    assert summary[role]['class_frequencies']['road'] > 0.1
  # The game domain plays GTA5: its camera is GTA's.
  assert summary['source']['intrinsics'][0]['normalised'] == [1.206285, 2.144507, 0.5, 0.5]
