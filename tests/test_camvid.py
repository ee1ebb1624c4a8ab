"""CamVid (the paper's Table 11) and the depth rows of Table 9: their configs, the check that the
network's classes are the dataset's, and a tiny CamVid run on the synthetic world's CamVid layout
with depth labels from its ground truth (no SDE: CamVid has no video)."""

import json
import os

import pytest

from configs import base
from configs import ssl_camvid
from configs import ssl_cityscapes
from data_pipelines import datasets
from sdeseg_jax import stages
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.stages import base as stage_base
from sdeseg_jax.stages import evaluate
from sdeseg_jax.stages import segment
from sdeseg_jax.stages import select_labels
from tests import runs


def test_camvid_config_is_table_11s_setup():
  config = ssl_camvid.get_config('labels=50,method=ours,seed=2,sde=/runs/city/sde/ckpt')
  assert config.data.target.name == 'camvid' and tuple(config.data.target.resolution) == (672, 512)
  assert tuple(config.data.crop) == (512, 512) and config.model.num_classes == 11
  seg = config.segment
  assert (seg.network, seg.init, seg.mix, seg.labels) == ('transfer', 'sde', 'depthmix', 50)
  assert seg.num_steps == 20_000 and tuple(seg.optim.schedule.boundaries) == (15_000,)
  assert config.evaluate.split == 'test' and config.seed == 2
  assert config.stages == 'data,depth_labels,select_labels,segment,evaluate'
  assert seg.selection == 'select_labels' and tuple(config.select.sizes) == (25, 50)
  assert tuple(config.select.student_steps) == (4000,)
  assert tuple(ssl_camvid.get_config('method=ours,labels=100').select.sizes) == (25, 50, 100)
  # One SDE (another dataset's) for the transfer, the depth labels and the selection features.
  assert {seg.sde_checkpoint, config.depth_labels.sde_checkpoint,
          config.select.sde_checkpoint} == {'/runs/city/sde/ckpt'}
  config.lock()
  config.segment.sde_checkpoint = '/elsewhere'  # what --config.segment.sde_checkpoint does
  assert config.depth_labels.sde_checkpoint == config.select.sde_checkpoint == '/elsewhere'
  for method, stage_list, mix in (
      ('baseline', 'data,segment,evaluate', 'none'),
      ('classmix', 'data,segment,evaluate', 'classmix'),
      ('ours_no_selection', 'data,depth_labels,segment,evaluate', 'depthmix')):
    config = ssl_camvid.get_config(f'method={method},labels=367')
    assert (config.stages, config.segment.mix, config.segment.selection) == (stage_list, mix, '')
    assert config.segment.network == 'transfer'  # no multi-task: CamVid has no sequences
  assert ssl_camvid.get_config('method=baseline').segment.init == 'imagenet'
  with pytest.raises(ValueError, match='method=ours labels the first of 100 .* labels=367'):
    ssl_camvid.get_config('method=ours,labels=367')
  with pytest.raises(ValueError, match="unknown method 'fixmatch'"):
    ssl_camvid.get_config('method=fixmatch')


def test_table9_variants():
  stereo = ssl_cityscapes.get_config('labels=100,method=ours,depth=stereo')
  assert stereo.depth_labels.source == 'groundtruth' and stereo.sde.frame_fraction == 1.0
  assert stereo.stages == 'data,sde_pretrain,depth_labels,select_labels,segment,evaluate'
  assert stereo.segment.selection == 'select_labels' and stereo.segment.network == 'mtl'
  # The selection stops at 100 images (the later steps would not change the first 100).
  assert tuple(stereo.select.sizes) == (25, 50, 100)
  assert tuple(stereo.select.student_steps) == (4000, 8000)
  assert tuple(ssl_cityscapes.get_config('method=ours,labels=744').select.sizes) == (
      25, 50, 100, 200, 372, 744)
  with pytest.raises(ValueError, match='labels=2975 is not in 1..744'):
    ssl_cityscapes.get_config('method=ours,labels=2975')
  for depth, fraction in (('sde100', 1.0), ('sde10', 0.1), ('sde1', 0.01), ('sde0.1', 0.001)):
    config = ssl_cityscapes.get_config(f'labels=100,method=ours,depth={depth}')
    assert config.depth_labels.source == 'sde' and config.sde.frame_fraction == fraction
    assert depth in config.experiment
  # An explicit selection file replaces the select_labels stage.
  config = ssl_cityscapes.get_config('method=ours,labels=100,selection=/ids.json')
  assert 'select_labels' not in config.stages and config.segment.selection == '/ids.json'
  with pytest.raises(ValueError, match="unknown depth 'lidar'"):
    ssl_cityscapes.get_config('depth=lidar')


def test_the_networks_classes_must_be_the_datasets():
  config = ssl_camvid.get_config('method=ours_no_selection')
  segment.check_config(config)
  evaluate.check_config(config)
  config.model.num_classes = 19
  message = (r'config.model.num_classes=19, but the dataset config.data.target \(camvid\) has 11 '
             'classes: set --config.model.num_classes=11')
  for check in (segment.check_config, evaluate.check_config):
    with pytest.raises(ConfigError, match=message):
      check(config)
  config.select.method = 'entropy'  # a segmentation student
  config.student_model.num_classes = 19
  with pytest.raises(ConfigError, match='config.student_model.num_classes=19, .* has 11 '):
    select_labels.check_config(config)
  # Domain adaptation: the source dataset too.
  config = base.get_config()
  config.data.source.name = 'camvid'
  config.segment.source.enabled = True
  with pytest.raises(ConfigError, match=r'the dataset config.data.source \(camvid\) has 11'):
    segment.check_config(config)
  # A dataset opened at run time (a layout whose classes come with the data).
  with pytest.raises(ConfigError, match='num_classes=11, but the dataset /x has 19 classes: set '
                                        '--config.model.num_classes=19'):
    stage_base.check_num_classes(11, datasets.Cityscapes.label_spec, model_key='model',
                                 dataset='/x')


def _tiny_camvid(workdir_stages: str):
  """configs/ssl_camvid.py:ours_no_selection at the tiny demo's size on the synthetic world's
  CamVid layout; its depth labels from the world's ground truth and a random initialisation
  (there is no SDE to transfer from here)."""
  config = ssl_camvid.get_config('method=ours_no_selection,labels=2')
  tiny = runs.tiny_config()
  config.compilation_cache_dir = tiny.compilation_cache_dir
  config.model = tiny.model
  config.model.num_classes = 11
  config.stages = workdir_stages
  config.data.target.update(resolution=(128, 64), val_count=1)
  config.data.target.synthetic.update(domain='city', size=(128, 64), sequences=6, frames=3)
  config.data.image_format = 'png'
  config.data.crop = (64, 64)
  config.depth_labels.update(source='groundtruth', batch_size=2)
  seg = config.segment
  seg.update(init='none', num_steps=2, eval_every=2, log_every=2, checkpoint_every=2,
             images_every=2, eval_batch_size=1)
  seg.optim.schedule.boundaries = (1,)
  return config


@pytest.mark.slow
def test_tiny_camvid_run_evaluates_11_classes_on_the_test_split(tmp_path):
  workdir = str(tmp_path / 'camvid')
  config = _tiny_camvid('data,depth_labels,segment,evaluate')
  assert stages.run_stages(config, workdir) == ['data', 'depth_labels', 'segment', 'evaluate']
  report = json.load(open(os.path.join(workdir, 'eval.json')))
  assert report['split'] == 'test' and len(report['iou']) == 11
  assert list(report['iou']) == list(datasets.CamVid.label_spec.class_names)
  summary = json.load(open(os.path.join(workdir, 'data', 'summary.json')))['target']['splits']
  counted = sum(map(sum, report['confusion']))  # the test pixels not void
  assert 0 < counted <= summary['segmentation/test'] * 128 * 64
  assert len(os.listdir(os.path.join(workdir, 'depth', 'target'))) == sum(
      summary[f'segmentation/{s}'] for s in ('train', 'val', 'test'))
  # A split the dataset does not have is named.
  config.evaluate.split = 'holdout'
  with pytest.raises(ConfigError, match="config.evaluate.split='holdout': the dataset camvid has "
                                        'the segmentation splits train, val, test'):
    evaluate.run(config, workdir)


def test_another_datasets_sde_is_read_by_every_stage_that_needs_one(tmp_path):
  """sde=PATH (a Cityscapes run's SDE): the depth labels, the selection features and the
  transfer initialisation read PATH, not this workdir's sde/ckpt, so no sde_pretrain stage is
  needed; a missing PATH is named by the first stage that reads it."""
  workdir = str(tmp_path / 'run')
  sde = tmp_path / 'city' / 'sde' / 'ckpt'
  config = ssl_camvid.get_config(f'method=ours,labels=50,sde={sde}')
  names = stages.parse_stages(config.stages)
  with pytest.raises(ConfigError, match=f'the depth labels of target reads {sde}, which does not '
                                        'exist: run the sde_pretrain stage first or set '
                                        'config.depth_labels.sde_checkpoint'):
    stages.check_inputs('depth_labels', config, workdir, names[:1])
  for name in ('select_labels', 'segment'):
    with pytest.raises(ConfigError, match=f'reads {sde}, which does not exist'):
      stages.check_inputs(name, config, workdir, names[:names.index(name)])
  os.makedirs(sde)
  for i, name in enumerate(names):
    stages.check_inputs(name, config, workdir, names[:i])
