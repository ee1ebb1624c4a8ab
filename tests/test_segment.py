"""The segment and evaluate stages on the tiny demo config, and their configuration checks."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import comparison
from configs import base
from sdeseg_jax import stages
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.models import networks
from sdeseg_jax.stages import segment
from sdeseg_jax.training import optim
from tests import runs

_tiny = runs.tiny_config


@pytest.fixture(scope='module')
def workdir(tiny_demo):
  """The whole tiny method: data, SDE, depth labels, multi-task + DepthMix, evaluation."""
  return tiny_demo[1]


@pytest.mark.slow
def test_multitask_depthmix_trains_and_evaluates(workdir):
  report = json.load(open(os.path.join(workdir, 'eval.json')))
  assert 0 <= report['miou'] <= 1 and len(report['iou']) == 19
  confusion = np.array(report['confusion'])
  assert confusion.shape == (19, 19) and confusion.sum() > 0
  best = json.load(open(os.path.join(workdir, 'segment', 'best.json')))
  assert best['step'] in (2, 4) and best['miou'] == pytest.approx(max(best['miou'], 0))
  assert os.path.isdir(os.path.join(workdir, 'segment', 'best'))
  # TensorBoard holds the DepthMix images and the predictions vs ground truth.
  import glob
  import tensorflow as tf
  tags = set()
  for events in glob.glob(os.path.join(workdir, 'segment', 'logs', '*tfevents*')):
    for event in tf.compat.v1.train.summary_iterator(events):
      tags.update(value.tag for value in event.summary.value)
  assert {'mix/mask', 'mix/mixed_augmented', 'mix/pseudo_labels', 'labeled/prediction',
          'labeled/ground_truth', 'eval/miou', 'loss/total'} <= tags


def test_comparison_reads_the_evaluation_curve(workdir):
  """benchmarks/comparison.py's curve of a run: every periodic evaluation, the best of them the
  checkpoint best.json records."""
  curve = comparison.eval_curve(os.path.join(workdir, 'segment'))
  best = json.load(open(os.path.join(workdir, 'segment', 'best.json')))
  assert sorted(curve) == [2, 4]
  step = max(curve, key=curve.get)
  assert (step, curve[step]) == (best['step'], pytest.approx(best['miou']))
  assert comparison.best_so_far(curve) == {2: curve[2], 4: max(curve.values())}


@pytest.mark.slow
def test_transfer_with_depth_labels_runs_every_mix(workdir):
  # Reuses the tiny SDE and depth labels; one short run per mixing strategy of the transfer net.
  for mix in ('depthmix', 'classmix', 'pseudo', 'none'):
    config, run_dir = _segment_run(workdir, f'transfer_{mix}', network='transfer', mix=mix,
                                   num_steps=2, eval_every=0)
    assert stages.run_stages(config, run_dir) == ['segment'], mix
    assert json.load(open(os.path.join(run_dir, 'segment', 'best.json')))['step'] == 2


def _segment_run(workdir, name, **segment):
  config = _tiny()
  config.stages = 'segment'
  # A random labeled subset: the extra workdirs have no selection.json.
  config.segment.update(sde_checkpoint=os.path.join(workdir, 'sde', 'ckpt'), selection='',
                        **segment)
  return config, runs.linked_run(workdir, name)


@pytest.mark.slow
def test_resume_from_the_last_checkpoint_is_exact(workdir):
  """Multi-task + DepthMix (student, mean teacher, BN statistics, optimiser state): a run resumed
  from its step-2 checkpoint ends exactly where an uninterrupted run does."""
  config, _ = _segment_run(workdir, 'segment_resume', num_steps=6, checkpoint_every=2,
                           keep_checkpoints=5, eval_every=0)
  runs.assert_resumes_exactly(config, workdir, 'segment', interrupted_after=2)


def test_depthmix_without_depth_labels_is_refused(tmp_path):
  config = _tiny()
  config.segment.update(network='transfer', mix='depthmix')
  segment.check_config(config)
  with pytest.raises(ConfigError, match='run the depth_labels stage first'):
    stages.check_inputs('segment', config, str(tmp_path), runs.MADE_EARLIER)
  stages.check_inputs('segment', config, str(tmp_path), runs.MADE_EARLIER + ('depth_labels',))
  config.segment.mix = 'cutmix'
  with pytest.raises(ConfigError, match="mix='cutmix'"):
    segment.check_config(config)
  config.segment.update(mix='none', init='imagenet')
  with pytest.raises(ConfigError, match='needs config.segment.imagenet_encoder'):
    segment.check_config(config)


def test_multitask_depthmix_from_depth_labels_without_online_depth(tmp_path):
  """depthmix_online_depth=False (the reference's SSDA runs): multi-task DepthMix reads the depth
  labels, needs no frames of the mixing batch and gives it no SDE loss."""
  config = _tiny()
  config.segment.update(network='mtl', mix='depthmix', depthmix_online_depth=False)
  assert segment.needs_depth_labels(config.segment)['target']
  with pytest.raises(ConfigError, match='depthmix_online_depth=True'):
    stages.check_inputs('segment', config, str(tmp_path), runs.MADE_EARLIER)
  rng = np.random.default_rng(0)
  b, h, w, c = 2, 8, 6, 19
  mix_batch = dict(image=rng.uniform(size=(b, h, w, 3)).astype(np.float32),
                   depth=rng.uniform(0.05, 0.3, (b, h, w, 1)).astype(np.float32))
  probs = rng.dirichlet(np.ones(c), (b, h, w)).astype(np.float32)
  mix_inputs = segment.make_mixing(networks.build('mtl', config.model), config)
  mixed, stats = jax.jit(mix_inputs)({}, probs, {}, mix_batch,
                                     segment.step_keys(jax.random.key(0)))
  low = mix_batch['depth'].min(axis=(1, 2, 3), keepdims=True)
  d = (mix_batch['depth'] - low) / (mix_batch['depth'].max(axis=(1, 2, 3), keepdims=True) - low)
  np.testing.assert_array_equal(mixed['mask'], (d >= np.roll(d, -1, 0) - 0.03).astype(np.float32))
  assert float(mixed['sde_term']) == 0.0 and stats == {}
  config.segment.depthmix_online_depth = True  # the student's own disparity: no labels needed
  assert not segment.needs_depth_labels(config.segment)['target']
  stages.check_inputs('segment', config, str(tmp_path), runs.MADE_EARLIER)


@pytest.mark.parametrize('kind', ['transfer', 'mtl'])
def test_learning_rate_groups_reach_the_right_parameters(kind):
  config = base.get_config()
  params = jax.eval_shape(lambda: networks.init_variables(kind, base.make_tiny(config.model),
                                                          jax.random.key(0)))['params']
  labels = optim.parameter_paths(optim.group_labels(params, config.segment.optim.groups))
  rates = {name: g.lr for name, g in config.segment.optim.groups.items()}
  for path, group in labels.items():
    expected = ('encoder' if path.startswith('encoder/') else
                'pose' if path.startswith('pose/') else 'decoder')
    assert group == expected, path
  assert rates == {'encoder': 1e-3, 'decoder': 1e-2, 'pose': 1e-6}
  if kind == 'mtl':  # the reference quirk: the depth decoder learns at the decoder rate
    assert labels['pad/depth_decoder/blocks_level0_0/conv/kernel'] == 'decoder'


def test_ssl_cityscapes_variants_name_the_table_rows():
  from configs import ssl_cityscapes
  config = ssl_cityscapes.get_config('labels=100,method=classmix,seed=2')
  assert (config.segment.labels, config.segment.mix, config.segment.network, config.seed) == (
      100, 'classmix', 'transfer', 2)
  assert ssl_cityscapes.get_config('').segment.mix == 'depthmix'
  assert ssl_cityscapes.get_config('method=baseline').segment.init == 'imagenet'
  with pytest.raises(ValueError, match="unknown method 'fixmatch'"):
    ssl_cityscapes.get_config('method=fixmatch')
  with pytest.raises(ValueError, match="bad variant item 'lables=3'"):
    ssl_cityscapes.get_config('lables=3')


@pytest.mark.slow
def test_predict_cli_and_official_export(workdir, tmp_path):
  from sdeseg_jax import predict
  from sdeseg_jax.stages import evaluate
  from data_pipelines.datasets import cityscapes
  from PIL import Image
  val = os.path.join(workdir, 'data', 'target', 'leftImg8bit', 'val')
  out = str(tmp_path / 'predictions')
  best = os.path.join(workdir, 'segment', 'best')
  assert predict.run(best, [val], out) == 0
  images = sorted(os.listdir(os.path.join(val, os.listdir(val)[0])))
  name = images[0].removesuffix('_leftImg8bit.png')
  allowed = set(cityscapes.LABEL_SPEC.id_to_train)
  with Image.open(os.path.join(val, os.listdir(val)[0], images[0])) as image:
    size = image.size
  for suffix in ('seg', 'overlay', 'labelIds', 'disparity'):  # disparity: a multi-task network
    with Image.open(os.path.join(out, f'{name}_{suffix}.png')) as result:
      assert result.size == size
  ids = np.asarray(Image.open(os.path.join(out, f'{name}_labelIds.png')))
  assert set(np.unique(ids)) <= allowed
  assert predict.run(str(tmp_path / 'nothing'), [val], out) == 1

  # A video: one set of outputs per frame, at the video's size.
  import imageio.v3 as iio
  frames = np.stack([np.asarray(Image.open(os.path.join(val, os.listdir(val)[0], n)).convert('RGB'))
                     for n in images[:2]] * 3)
  video = str(tmp_path / 'drive.mp4')
  iio.imwrite(video, frames, plugin='FFMPEG', fps=5)
  video_out = str(tmp_path / 'video')
  assert predict.run(best, [video], video_out) == 0
  written = sorted(os.listdir(video_out))
  assert [n for n in written if n.endswith('_seg.png')] == [
      f'drive_{i:06d}_seg.png' for i in range(len(frames))]
  last = f'drive_{len(frames) - 1:06d}_disparity.png'
  with Image.open(os.path.join(video_out, last)) as result:
    assert result.size == size
  (tmp_path / 'clip.txt').write_text('not a video')
  assert predict.run(best, [str(tmp_path / 'clip.txt')], video_out) == 1
  # The command line (absl flags are global: a process of its own): --input once per input.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  command = subprocess.run(
      [sys.executable, '-m', 'sdeseg_jax.predict', '--checkpoint', best, '--input', video,
       '--input', str(tmp_path / 'clip.txt'), '--out', video_out], cwd=repo,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'), capture_output=True, text=True, timeout=300)
  assert command.returncode == 1
  assert f'error: {tmp_path / "clip.txt"}: not an image' in command.stderr

  config = _tiny()
  config.evaluate.export_splits = ('val',)
  evaluate.run(config, workdir)
  exported = sorted(os.listdir(os.path.join(workdir, 'predictions', 'val')))
  assert exported == [f'{n.removesuffix("_leftImg8bit.png")}_labelIds.png' for n in images]
  # Same network, same image: the stage's export equals the CLI's (both at the working size here).
  np.testing.assert_array_equal(
      np.asarray(Image.open(os.path.join(workdir, 'predictions', 'val', exported[0]))), ids)


def test_training_indices_split_labeled_and_mixing_images(tmp_path):
  from data_pipelines import prepare
  from tests import fixtures
  raw = fixtures.write_cityscapes(str(tmp_path / 'raw'), snippets=6)
  prepare.prepare('cityscapes', raw, str(tmp_path / 'prepared'), (64, 32), image_format='png')
  reader = prepare.open_prepared('cityscapes', str(tmp_path / 'prepared'), (64, 32))
  config = _tiny()
  config.segment.update(labels=2, network='transfer', mix='depthmix', selection='')
  labeled, mix = segment.training_indices(config, reader)
  assert len(labeled) == 2 and labeled.is_labeled.all()
  # DepthMix mixes all training images; only the labeled subset keeps its ground truth.
  assert len(mix) == 6 and mix.is_labeled.sum() == 2
  assert set(mix.ids[mix.is_labeled]) == set(labeled.ids)
  config.segment.mix = 'classmix'  # ClassMix: unlabeled images only
  _, mix = segment.training_indices(config, reader)
  assert len(mix) == 4 and not mix.is_labeled.any()
  config.segment.update(network='mtl', mix='depthmix')  # multi-task: the frames t-1, t+1 joined
  labeled, mix = segment.training_indices(config, reader)
  assert labeled.is_triplet.all() and mix.is_triplet.all()
  config.segment.labels = 0  # all labeled: DepthMix still mixes (ground truth), ClassMix cannot
  assert len(segment.training_indices(config, reader)[1]) == 6
  config.segment.update(network='transfer', mix='classmix')
  with pytest.raises(Exception, match='needs unlabeled images'):
    segment.training_indices(config, reader)
