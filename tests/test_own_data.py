"""README "Train on your own data", end to end at tiny sizes, with the commands the README shows:
a synthetic world written in the folder layout with one clip as an .mp4, import_video, pair_frames,
then every stage (configs/own_data.py); a no-video run (the SDE of another world); a depth-sensor
run (depth labels from the tree's depth/)."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import base as configs_base
from data_pipelines import depth_maps
from tests.runs import CACHE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_WORLD = ['--domain=city', '--layout=folder', '--size=128x64', '--sequences=4', '--frames=5']



def _tree(tmp_path, classes=3) -> str:
  """A tree with just its classes.json: what configs/own_data.py reads."""
  root = tmp_path / 'tree'
  root.mkdir()
  (root / 'classes.json').write_text(json.dumps({'classes': [
      {'name': f'class{i}', 'colour': [i, i, i]} for i in range(classes)]}))
  return str(root)


@pytest.mark.parametrize('variant, stages', [
    ('', 'data,sde_pretrain,depth_labels,segment,evaluate'),
    ('select=true', 'data,sde_pretrain,depth_labels,select_labels,segment,evaluate'),
    ('sde=/runs/city/sde/ckpt', 'data,depth_labels,segment,evaluate'),
])
def test_config_stages_and_classes_follow_the_variant(tmp_path, variant, stages):
  from configs import own_data
  root = _tree(tmp_path, classes=5)
  config = own_data.get_config(f'root={root},{variant}')
  assert config.stages == stages
  assert config.model.num_classes == 5  # from classes.json
  assert config.data.target.name == 'folder' and config.data.target.raw_root == root
  if 'sde=' in variant:  # one SDE for the transfer, the depth labels and the selection
    assert (config.segment.sde_checkpoint == config.depth_labels.sde_checkpoint
            == config.select.sde_checkpoint == '/runs/city/sde/ckpt')
    assert config.segment.network == 'transfer'  # multi-task training needs video
  if 'select' in variant:
    assert config.select.sizes == (25, 50, 100) and len(config.select.student_steps) == 2


@pytest.mark.parametrize('variant, message', [
    ('labels=10', 'name your tree'),
    ('root=ROOT,depth=lidar', "depth='lidar'"),
    ('root=ROOT,tiny=yes', "tiny='yes'"),
    ('root=ROOT,colour=red', "bad variant item 'colour=red'"),
])
def test_config_errors_name_the_item(tmp_path, variant, message):
  from configs import own_data
  with pytest.raises(ValueError, match=message):
    own_data.get_config(variant.replace('ROOT', _tree(tmp_path)))


def test_config_without_classes_json_names_it(tmp_path):
  from configs import own_data
  with pytest.raises(ValueError, match=re.escape(f'{tmp_path}/classes.json: missing')):
    own_data.get_config(f'root={tmp_path}')


def run(*command: str) -> str:
  """Runs a README command (python -m ...) from the repository; its output. A failure shows it."""
  result = subprocess.run([sys.executable, '-m', *command], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'), timeout=1500)
  output = result.stdout + result.stderr
  assert result.returncode == 0, f'{command}\n{output[-4000:]}'
  return output


def train(root: str, workdir: str, *variant: str) -> dict:
  """All the stages of configs/own_data.py on `root`; its eval.json."""
  run('sdeseg_jax.main', f'--config=configs/own_data.py:root={root},tiny=true,{",".join(variant)}',
      f'--workdir={workdir}', f'--config.compilation_cache_dir={CACHE}')
  with open(os.path.join(workdir, 'eval.json')) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def walkthrough(tmp_path_factory):
  """(tree, workdir) of the README walkthrough: world -> import_video -> pair_frames -> stages."""
  root = str(tmp_path_factory.mktemp('own') / 'mydata')
  run('data_pipelines.synthetic', f'--out={root}', *TINY_WORLD, '--videos=1')
  clip = os.path.join(root, 'sequences', 'street000')
  assert not os.path.exists(clip)  # that clip is a video: frames come from the import
  printed = run('data_pipelines.import_video', f'--video={root}/videos/street000.mp4',
                f'--out={clip}')
  assert '5 frames at 10 fps, 128x64' in printed
  run('data_pipelines.pair_frames', f'--root={root}')
  workdir = str(tmp_path_factory.mktemp('own') / 'run')
  report = train(root, workdir, 'select=true')
  return root, workdir, report


@pytest.mark.slow
def test_walkthrough_runs_every_stage_on_the_imported_video(walkthrough):
  root, workdir, report = walkthrough
  for stage in ('data', 'sde_pretrain', 'depth_labels', 'select_labels', 'segment', 'evaluate'):
    assert os.path.exists(os.path.join(workdir, stage, 'done')), stage
  with open(os.path.join(root, 'pairs.json')) as f:
    pairs = json.load(f)
  # The imported clip's labelled image is paired with its frame, the others with theirs.
  assert pairs['images/train/street000/000002.png'] == 'sequences/street000/000002.jpg'
  # The SDE trained on the imported clip's frames too: 3 triplets of 5 frames in each of 4 clips.
  with open(os.path.join(workdir, 'data', 'summary.json')) as f:
    summary = json.load(f)
  assert summary['target']['splits']['sequences/train'] == 12, summary['target']['splits']
  with open(os.path.join(workdir, 'selection.json')) as f:
    assert len(json.load(f)) == 2  # the 2 labeled images of tiny=true, chosen by select_labels
  with open(os.path.join(root, 'classes.json')) as f:
    classes = [c['name'] for c in json.load(f)['classes']]
  assert list(report['iou']) == classes  # the tree's classes, in its order
  assert 0.0 <= report['miou'] <= 1.0


@pytest.mark.slow
def test_no_video_run_uses_the_sde_of_another_world(walkthrough, tmp_path):
  _, trained, _ = walkthrough
  root = str(tmp_path / 'photos')
  # Another world (the game domain), one frame per scene: no video at all.
  run('data_pipelines.synthetic', f'--out={root}', '--domain=game', '--layout=folder',
      '--size=128x64', '--sequences=4', '--frames=1', '--seed=3')
  assert not os.path.exists(os.path.join(root, 'sequences'))
  workdir = str(tmp_path / 'run')
  report = train(root, workdir, f'sde={trained}/sde/ckpt')
  assert not os.path.exists(os.path.join(workdir, 'sde'))  # no SDE trained here
  assert len(glob.glob(os.path.join(workdir, 'depth', 'target', '*.npy'))) == 4
  assert 0.0 <= report['miou'] <= 1.0


@pytest.mark.slow
def test_depth_sensor_run_takes_its_depth_labels_from_the_tree(walkthrough, tmp_path):
  root, trained, _ = walkthrough
  workdir = str(tmp_path / 'run')
  train(root, workdir, 'depth=sensor', f'sde={trained}/sde/ckpt')
  labels = sorted(glob.glob(os.path.join(workdir, 'depth', 'target', '*.npy')))
  assert len(labels) == 4
  sde = configs_base.sde_config()
  for label in labels:  # <clip>_000002.npy: the sensor's depth of that image, as SDE disparity
    clip = os.path.basename(label)[:-len('_000002.npy')]
    (sensor,) = glob.glob(os.path.join(root, 'depth', '*', clip, '000002.png'))
    metres = depth_maps.read_depth_file(sensor)
    expected = depth_maps.depth_label(metres, size=(128, 64), min_depth=sde.min_depth,
                                      max_depth=sde.max_depth)
    np.testing.assert_allclose(np.load(label), expected, atol=1e-6)
    assert (metres == 0).any() and (metres > 0).any()  # the sky is unknown, the street is not
