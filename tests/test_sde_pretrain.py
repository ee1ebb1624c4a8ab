"""The SDE stages end to end on the tiny demo config: training, evaluation, depth labels, exact
resume after SIGTERM, data-parallel sharding, and clear errors for bad checkpoints."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from sdeseg_jax.stages import sde_pretrain
from sdeseg_jax.training import checkpointing
from tests import runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = runs.CACHE


def _tiny(**sde):
  config = runs.tiny_config()
  config.sde.update(sde)
  return config


@pytest.fixture(scope='module')
def trained(tiny_demo):
  """The tiny demo's data, SDE and depth labels (the stages data, sde_pretrain, depth_labels of
  the demo config, shared with the other stage tests)."""
  return tiny_demo


@pytest.mark.slow
def test_sde_trains_evaluates_and_writes_depth_labels(trained):
  config, workdir = trained
  evaluation = json.load(open(os.path.join(workdir, 'sde', 'eval.json')))
  assert evaluation['images'] >= 1
  for key in ('abs_rel', 'rmse', 'a1', 'constant/abs_rel'):
    assert np.isfinite(evaluation[key])
  assert checkpointing.Checkpointer(os.path.join(workdir, 'sde', 'ckpt')).latest_step() == 4
  assert os.listdir(os.path.join(workdir, 'sde', 'logs'))  # TensorBoard events
  labels = sorted(os.listdir(os.path.join(workdir, 'depth', 'target')))
  summary = json.load(open(os.path.join(workdir, 'data', 'summary.json')))['target']['splits']
  assert len(labels) == summary['segmentation/train'] + summary['segmentation/val']
  width, height = config.data.target.resolution
  disparity = np.load(os.path.join(workdir, 'depth', 'target', labels[0]))
  assert disparity.shape == (height, width) and disparity.dtype == np.float32
  assert 0 < disparity.min() <= disparity.max() < 1


@pytest.mark.slow
def test_missing_init_checkpoint_is_named(tmp_path):
  config = _tiny()
  config.sde.init.sde = str(tmp_path / 'no_such_checkpoint')
  model = config.model
  with pytest.raises(checkpointing.CheckpointError, match='no_such_checkpoint: no such checkpoint'):
    sde_pretrain.create_state(config, model, sde_pretrain.networks.build('sde', model))


def test_init_from_an_sde_run_loads_its_weights(trained, tmp_path):
  config, workdir = trained
  config = _tiny()
  config.sde.init.sde = os.path.join(workdir, 'sde', 'ckpt')
  network = sde_pretrain.networks.build('sde', config.model)
  state = sde_pretrain.create_state(config, config.model, network)
  saved = checkpointing.read_arrays(config.sde.init.sde)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(saved['params'])):
    np.testing.assert_array_equal(a, b)


def _main(workdir, *overrides):
  command = [sys.executable, '-m', 'sdeseg_jax.main', '--config=configs/demo.py:tiny',
             f'--workdir={workdir}', f'--config.compilation_cache_dir={CACHE}',
             '--config.stages=data,sde_pretrain', *overrides]
  return subprocess.Popen(command, cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_resume_after_sigterm_is_exact(tmp_path):
  steps = ['--config.sde.num_steps=30', '--config.sde.checkpoint_every=2',
           '--config.sde.eval_every=0', '--config.sde.images_every=0']
  straight = _main(tmp_path / 'straight', *steps)
  assert straight.wait(timeout=600) == 0, straight.stdout.read()[-3000:]

  interrupted = _main(tmp_path / 'interrupted', *steps)
  first = tmp_path / 'interrupted' / 'sde' / 'ckpt' / '2'
  deadline = time.time() + 300
  while not first.exists() and interrupted.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  interrupted.send_signal(signal.SIGTERM)
  output = interrupted.stdout.read()
  assert interrupted.wait(timeout=300) == 143, output[-3000:]
  assert 'preempted at step' in output
  stopped = checkpointing.Checkpointer(str(tmp_path / 'interrupted' / 'sde' / 'ckpt')).latest_step()
  assert 2 <= stopped < 30

  resumed = _main(tmp_path / 'interrupted', *steps)
  assert resumed.wait(timeout=600) == 0, resumed.stdout.read()[-3000:]
  a = checkpointing.read_arrays(str(tmp_path / 'straight' / 'sde' / 'ckpt'))
  b = checkpointing.read_arrays(str(tmp_path / 'interrupted' / 'sde' / 'ckpt'))
  assert int(a['step']) == int(b['step']) == 30
  for x, y in zip(jax.tree.leaves(a['params']), jax.tree.leaves(b['params'])):
    np.testing.assert_array_equal(x, y)


SHARDING_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from configs import demo
    from sdeseg_jax.models import networks
    from sdeseg_jax.stages import sde_pretrain
    from sdeseg_jax.training import sharding
    assert len(jax.devices()) == 8, jax.devices()
    from configs import base
    config = demo.get_config('tiny')
    # SGD, not the demo's Adam: Adam's first update is lr * sign(g), which flips for gradients
    # that are zero up to summation order, so its parameters cannot be compared at 1e-5.
    config.sde.optim = base.optim_config('sgd', dict(all=dict(pattern='.', lr=0.1)), momentum=0.9)
    network = networks.build('sde', config.model)
    state = jax.device_get(sde_pretrain.create_state(config, config.model, network))  # host copy
    rng = np.random.default_rng(0)
    frames = rng.uniform(size=(8, 3, 64, 64, 3)).astype(np.float32)
    k = np.array([[40.0, 0, 32], [0, 40, 32], [0, 0, 1]], np.float32)
    batch = dict(frames=frames, frames_aug=frames, intrinsics=np.tile(k, (8, 1, 1)))
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = sharding.make_mesh(devices)
      step = sharding.jit_train_step(
          sde_pretrain.make_train_step(network, config.model, config.sde), mesh)
      new, metrics = step(sharding.replicate(state, mesh), sharding.global_batch(batch, mesh))
      results.append((float(metrics['loss/total']), jax.device_get(new.params)))
    (loss1, params1), (loss8, params8) = results
    errors = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(params1),
                                                          jax.tree.leaves(params8))]
    moved = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(params1),
                                                         jax.tree.leaves(state.params))]
    print(json.dumps(dict(loss1=loss1, loss8=loss8, max_param_error=max(errors),
                          max_update=max(moved))))
''')


@pytest.mark.slow
def test_eight_device_step_equals_one_device_step():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             TF_CPP_MIN_LOG_LEVEL='3', JAX_COMPILATION_CACHE_DIR=CACHE)
  result = subprocess.run([sys.executable, '-c', SHARDING_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  values = json.loads(result.stdout.strip().splitlines()[-1])
  assert values['loss1'] == pytest.approx(values['loss8'], rel=1e-5)
  assert values['max_update'] > 1e-3  # the step really changed the parameters
  assert values['max_param_error'] < 1e-5


class _SequenceReader:
  """A reader of n sequence rows, every third one not a triplet (no frame t+1)."""

  def __init__(self, n):
    from data_pipelines.datasets.common import ExampleIndex
    self.index = ExampleIndex.from_rows([
        dict(id=f'f{i}', image=f'/f{i}.png', prev=f'/p{i}.png',
             next='' if i % 3 == 2 else f'/n{i}.png') for i in range(n)])

  def sequences(self, split):
    assert split == 'train'
    return self.index


def test_frame_fraction_trains_on_a_seeded_subset_of_the_triplets():
  reader = _SequenceReader(300)  # 200 triplets
  config = _tiny(frame_fraction=1.0)
  assert sde_pretrain.training_triplets(reader, config.sde, 0) is reader.index
  config.sde.frame_fraction = 0.1
  subset = sde_pretrain.training_triplets(reader, config.sde, 0)
  assert len(subset) == 20 and subset.is_triplet.all()
  again = sde_pretrain.training_triplets(reader, config.sde, 0)
  assert subset.ids.tolist() == again.ids.tolist()  # a resumed run: the same frames
  assert subset.ids.tolist() != sde_pretrain.training_triplets(reader, config.sde, 1).ids.tolist()
  config.sde.frame_fraction = 0.001
  assert len(sde_pretrain.training_triplets(reader, config.sde, 0)) == 1  # at least one
  sde_pretrain.check_config(config)
  from sdeseg_jax.errors import ConfigError
  for bad in (0.0, 2.0, -1):
    config.sde.frame_fraction = bad
    with pytest.raises(ConfigError, match=r'config\.sde\.frame_fraction=.*0 < fraction <= 1'):
      sde_pretrain.check_config(config)
  config.source_sde.frame_fraction = 0.0
  with pytest.raises(ConfigError, match=r'config\.source_sde\.frame_fraction=0\.0'):
    sde_pretrain.check_source_config(config)
