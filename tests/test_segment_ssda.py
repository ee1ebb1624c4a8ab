"""Semi-supervised domain adaptation (SPEC 7): Cross-Domain mixing, the margin flip, Matching
Geometry Sampling, batch composition, configs, and an exactly resumable SSDA run
(demo ssda,tiny)."""

import itertools
import json
import os

import jax
import numpy as np
import pytest

from benchmarks import ssda_comparison
from configs import demo
from sdeseg_jax import stages
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.stages import segment
from sdeseg_jax.training import checkpointing
from tests import runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, '.cache', 'xla_tests')
C = 5  # classes of the toy batches


def _tiny():
  config = demo.get_config('ssda,tiny')
  config.compilation_cache_dir = CACHE
  return config


def _toy_batches(seed=0, batch=2, height=6, width=8):
  rng = np.random.default_rng(seed)
  source = dict(image=rng.uniform(size=(batch, height, width, 3)).astype(np.float32),
                label=rng.integers(0, C, (batch, height, width)).astype(np.int32),
                depth=rng.uniform(0.05, 0.3, (batch, height, width, 1)).astype(np.float32))
  source['label'][0, 0, 0] = 255  # an ignored source pixel
  target = dict(image=rng.uniform(size=(batch, height, width, 3)).astype(np.float32),
                label=np.full((batch, height, width), 255, np.int32),
                labeled=np.array([False, True][:batch]),
                depth=rng.uniform(0.05, 0.3, (batch, height, width, 1)).astype(np.float32))
  target['label'][-1] = rng.integers(0, C, (height, width))
  probs = rng.dirichlet(np.full(C, 0.3), (batch, height, width)).astype(np.float32)
  probs[-1] = np.eye(C, dtype=np.float32)[target['label'][-1]]  # labeled row: one-hot truth
  return source, target, probs


def _normalised(d):
  low, high = d.min(axis=(1, 2, 3), keepdims=True), d.max(axis=(1, 2, 3), keepdims=True)
  return (d - low) / (high - low)


@pytest.mark.parametrize('disparity', ['reference', 'normalized'])
def test_cross_domain_depthmix_labels_and_pixel_weights(disparity):
  config = _tiny()
  config.segment.source.update(margin_flip=False, disparity=disparity)
  cross = jax.jit(segment.make_cross_domain_mixing(config))
  source, target, probs = _toy_batches()
  out = jax.device_get(cross(source, probs, target, jax.random.key(0)))
  # Independent NumPy formulation of SPEC 7.
  d_src = source['depth'] if disparity == 'reference' else _normalised(source['depth'])
  mask = d_src >= _normalised(target['depth']) - 0.03
  np.testing.assert_array_equal(out['mask'], mask.astype(np.float32))
  teacher = np.where(probs.max(-1) > 0, probs.argmax(-1), 255)
  teacher[-1] = target['label'][-1]  # ground truth on the labeled target row
  np.testing.assert_array_equal(out['labels'], np.where(mask[..., 0], source['label'], teacher))
  confident = np.where(target['labeled'][:, None, None], 1.0, probs.max(-1)) >= 0.968
  q = confident.mean()
  np.testing.assert_allclose(out['quality'], q, rtol=1e-6)
  np.testing.assert_allclose(out['weights'], np.where(mask[..., 0], 1.0, q), rtol=1e-6)
  assert 0 < mask.mean() < 1 and q < 1  # both domains and both weights occur
  assert out['images'].shape == source['image'].shape


def test_cross_domain_margin_sign_flips_per_pair():
  config = _tiny()
  cross = jax.jit(segment.make_cross_domain_mixing(config))
  source, target, probs = _toy_batches(1)
  # Equal normalised disparities: +margin keeps every source pixel, -margin none.
  source['depth'] = _normalised(target['depth'])
  fractions = np.array([jax.device_get(cross(source, probs, target, jax.random.key(k))['mask'])
                        .mean(axis=(1, 2, 3)) for k in range(40)])
  assert set(np.unique(fractions)) == {0.0, 1.0}
  assert 0.2 < fractions.mean() < 0.8
  assert np.any(fractions[:, 0] != fractions[:, 1])  # one flip per pair, not per batch
  config.segment.source.margin_flip = False
  fixed = jax.device_get(jax.jit(segment.make_cross_domain_mixing(config))(
      source, probs, target, jax.random.key(3))['mask'])
  assert fixed.min() == 1.0


def test_dacs_mixes_half_of_the_source_classes():
  config = _tiny()
  config.segment.source.mix = 'classmix'
  source, target, probs = _toy_batches(2)
  out = jax.device_get(jax.jit(segment.make_cross_domain_mixing(config))(
      source, probs, target, jax.random.key(0)))
  for b in range(2):
    present = set(np.unique(source['label'][b])) - {255}
    pasted = set(np.unique(source['label'][b][out['mask'][b, ..., 0] > 0]))
    assert len(pasted) == len(present) // 2 and pasted <= present
    # Whole classes: every pixel of a chosen class is pasted.
    assert np.all(out['mask'][b, ..., 0][np.isin(source['label'][b], list(pasted))] == 1)


def test_matching_geometry_picks_the_least_geometric_difference():
  rng = np.random.default_rng(0)
  batch, k, h, w = 2, 4, 12, 6
  rows = (2, 3)
  target = rng.uniform(0.01, 0.3, (batch, h, w, 1)).astype(np.float32)
  candidates = rng.uniform(0.01, 0.3, (batch * k, h, w, 1)).astype(np.float32)
  candidates[1] = target[0] * 1.01          # target 0's near twin is its candidate 1
  candidates[k + 3] = target[1]             # target 1's exact twin is its candidate 3
  source = dict(depth=candidates, image=np.arange(batch * k, dtype=np.float32)[:, None, None, None]
                * np.ones((1, h, w, 3), np.float32), label=np.zeros((batch * k, h, w), np.int32))
  chosen, g = jax.jit(segment.match_geometry, static_argnums=2)(source, target, rows)
  kept = ((np.arange(h) >= rows[0]) & (np.arange(h) < h - rows[1]))[:, None, None]
  reference = np.array([[np.mean(np.abs(np.log1p(target[b].astype(np.float64)) -
                                        np.log1p(candidates[b * k + j].astype(np.float64))) * kept)
                         for j in range(k)] for b in range(batch)])
  np.testing.assert_allclose(g, reference, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(chosen['image'])[:, 0, 0, 0], [1, k + 3])
  np.testing.assert_array_equal(chosen['depth'][1], target[1])


@pytest.mark.parametrize('views,candidates', [(6, 1), (6, 3), (7, 7), (8, 5)])
def test_expected_choice_of_the_camera_height_benchmark(views, candidates):
  """The probability that the r-th best view wins a random draw equals its share of all draws."""
  draws = list(itertools.combinations(range(views), candidates))
  counted = np.bincount([min(d) for d in draws], minlength=views) / len(draws)
  np.testing.assert_allclose(ssda_comparison.choice_probabilities(views, candidates), counted)


def test_configs_name_the_ssda_rows():
  from configs import ssda_gta, ssda_synthia
  config = ssda_gta.get_config('labels=200,method=cdm_tdm,seed=1')
  seg = config.segment
  assert (seg.labels, seg.mix, seg.source.enabled, seg.source.mix, seg.network, config.seed) == (
      200, 'depthmix', True, 'depthmix', 'transfer', 1)
  assert not seg.source.matching_geometry
  ours = ssda_gta.get_config('')
  assert ours.segment.network == 'mtl' and ours.segment.source.matching_geometry
  assert ours.stages.split(',') == ['data', 'sde_pretrain', 'sde_source', 'depth_labels',
                                    'segment', 'evaluate']
  assert (ours.source_model.encoder.output_stride, ours.source_model.decoder.name) == (32, 'dec11')
  assert ours.data.source.name == 'gta5' and ours.depth_labels.roles == ('target', 'source')
  assert ssda_gta.get_config('method=dacs').segment.source.mix == 'classmix'
  assert not ssda_gta.get_config('method=target_only').segment.source.enabled
  synthia = ssda_synthia.get_config('labels=500')
  assert synthia.data.source.name == 'synthia' and synthia.evaluate.class_subsets == ('16', '13')
  with pytest.raises(ValueError, match="unknown method 'fda'"):
    ssda_gta.get_config('method=fda')


def test_impossible_ssda_configs_are_refused(tmp_path):
  config = _tiny()
  config.segment.source.batch_size = 3
  with pytest.raises(ConfigError, match='source.batch_size \\(3\\) equal to config.segment.mix_b'):
    segment.check_config(config)
  config = _tiny()
  segment.check_config(config)
  os.makedirs(tmp_path / 'depth' / 'target')
  for earlier in ((), ('depth_labels',)):
    config.depth_labels.roles = ('target',)
    with pytest.raises(ConfigError, match="depth_labels.roles including 'source'"):
      stages.check_inputs('segment', config, str(tmp_path), runs.MADE_EARLIER + earlier)
  config.depth_labels.roles = ('target', 'source')
  stages.check_inputs('segment', config, str(tmp_path),
                      runs.MADE_EARLIER + ('sde_source', 'depth_labels'))
  config.data.source.name = ''
  with pytest.raises(ConfigError, match='config.data.source.name'):
    segment.check_config(config)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """The tiny SSDA prerequisites: both worlds, both SDEs, depth labels of both domains."""
  path = str(tmp_path_factory.mktemp('ssda'))
  config = _tiny()
  config.stages = 'data,sde_pretrain,sde_source,depth_labels'
  assert stages.run_stages(config, path) == config.stages.split(',')
  return path


def _run(workdir, name):
  config = _tiny()
  config.stages = 'segment'
  config.segment.update(sde_checkpoint=os.path.join(workdir, 'sde', 'ckpt'), num_steps=6,
                        checkpoint_every=2, keep_checkpoints=5, eval_every=0)
  return config, runs.linked_run(workdir, name)


@pytest.mark.slow
def test_source_sde_and_both_depth_labels(workdir):
  for role in ('target', 'source'):
    files = os.listdir(os.path.join(workdir, 'depth', role))
    assert files and all(f.endswith('.npy') for f in files)
  assert os.path.isdir(os.path.join(workdir, 'sde_source', 'ckpt'))
  # The source SDE trained on the source video (its own run: checkpoints, logs, depth evaluation
  # against the game world's ground truth).
  source = checkpointing.read_arrays(os.path.join(workdir, 'sde_source', 'ckpt'))
  assert int(source['step']) == _tiny().source_sde.num_steps
  assert set(json.load(open(os.path.join(workdir, 'sde_source', 'eval.json')))) >= {'abs_rel'}


@pytest.mark.slow
def test_batch_composition_of_a_training_step(workdir):
  config, run_dir = _run(workdir, 'composition')
  cross = config.segment.source
  batch = next(iter(segment.source_batches(
      config, run_dir, os.path.join(run_dir, 'depth', 'source'), crop=tuple(config.data.crop),
      seed=0, flip_prob=0.5, strict_labels=True, start_step=0)))
  crop_w, crop_h = config.data.crop
  assert batch['image'].shape == (cross.batch_size * cross.candidates, crop_h, crop_w, 3)
  assert batch['depth'].shape == (cross.batch_size * cross.candidates, crop_h, crop_w, 1)
  assert 'frames' not in batch and batch['labeled'].all()


@pytest.mark.slow
def test_ssda_run_resumes_exactly(workdir):
  """Source + Cross- and Target-Domain DepthMix + Matching Geometry under multi-task: a run
  resumed from its step-2 checkpoint ends where an uninterrupted one does."""
  config, _ = _run(workdir, 'straight')
  straight = runs.assert_resumes_exactly(config, workdir, 'segment', interrupted_after=2)
  # Every SSDA loss term was trained, and the cross-domain mixes reached TensorBoard.
  import glob
  import tensorflow as tf
  tags = set()
  for events in glob.glob(os.path.join(straight, 'segment', 'logs', '*tfevents*')):
    for event in tf.compat.v1.train.summary_iterator(events):
      tags.update(value.tag for value in event.summary.value)
  assert {'loss/source', 'loss/cross_domain', 'loss/unlabeled', 'loss/sde_labeled',
          'matching_geometry/chosen_g', 'cross/mixed_augmented'} <= tags
  # As the reference's SSDA: Target-Domain DepthMix from the depth labels, no mixing-batch SDE loss.
  assert 'loss/sde_mix' not in tags
