"""Training machinery: optimiser groups, mean teacher, checkpoints, the loop's guards and resume."""

import gc
import os
import re
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base

from sdeseg_jax.training import checkpointing, loop, optim, sharding, train_state
from tests import fixtures


def _optim_config(**groups):
  return ml_collections.ConfigDict(dict(
      name='sgd', momentum=0.0, weight_decay=0.0, clip_norm=0.0,
      schedule=dict(kind='constant', boundaries=(), factor=0.1, power=0.9, total_steps=0),
      groups=groups))


PARAMS = {'encoder': {'w': jnp.ones((3,))}, 'decoder': {'w': jnp.ones((2,)), 'b': jnp.ones(())}}
GRADS = jax.tree.map(jnp.ones_like, PARAMS)


def test_groups_give_each_parameter_its_learning_rate_and_freeze():
  config = _optim_config(encoder=dict(pattern='^encoder/', lr=0.1, frozen=False),
                         decoder=dict(pattern='^decoder/', lr=0.01, frozen=False))
  tx = optim.build(config, PARAMS)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(updates['encoder']['w'], -0.1)
  np.testing.assert_allclose(updates['decoder']['b'], -0.01)
  config.groups.encoder.frozen = True
  tx = optim.build(config, PARAMS)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  np.testing.assert_array_equal(updates['encoder']['w'], 0.0)
  np.testing.assert_allclose(updates['decoder']['w'], -0.01)


def test_uncovered_and_ambiguous_parameters_are_errors():
  with pytest.raises(ValueError, match=r"match no optimiser group.*encoder/w"):
    optim.build(_optim_config(decoder=dict(pattern='^decoder/', lr=1.0, frozen=False)), PARAMS)
  with pytest.raises(ValueError, match=r'decoder/\w matches several optimiser groups'):
    optim.build(_optim_config(all=dict(pattern='.', lr=1.0, frozen=False),
                              dec=dict(pattern='^decoder/', lr=1.0, frozen=False)), PARAMS)


def test_clipping_counts_only_trainable_parameters_and_decay_follows_torch():
  config = _optim_config(encoder=dict(pattern='^encoder/', lr=1.0, frozen=True),
                         decoder=dict(pattern='^decoder/', lr=1.0, frozen=False))
  config.clip_norm = 1.0
  tx = optim.build(config, PARAMS)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  # Trainable gradients: three ones, norm sqrt(3) -> scaled to norm 1.
  np.testing.assert_allclose(updates['decoder']['w'], -1 / np.sqrt(3), rtol=1e-6)
  config.clip_norm, config.weight_decay = 0.0, 0.5
  tx = optim.build(config, PARAMS)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(updates['decoder']['w'], -(1 + 0.5 * 1.0))  # grad + wd * param


def test_step_and_poly_schedules():
  config = _optim_config(all=dict(pattern='.', lr=1.0, frozen=False))
  config.schedule.update(kind='step', boundaries=(10,), factor=0.1)
  assert optim.learning_rates(config, 9)['lr/all'] == pytest.approx(1.0)
  assert optim.learning_rates(config, 10)['lr/all'] == pytest.approx(0.1)
  config.schedule.update(kind='poly', power=0.9, total_steps=100)
  assert optim.learning_rates(config, 50)['lr/all'] == pytest.approx(0.5**0.9)


def test_mean_teacher_follows_each_update_with_the_configured_decay():
  params = {'w': jnp.zeros(())}
  tx = optim.build(_optim_config(all=dict(pattern='.', lr=1.0, frozen=False)), params)
  state = train_state.TrainState.create(params=params, batch_stats={}, tx=tx, ema=True,
                                        rng=jax.random.key_data(jax.random.key(0)))
  state = state.apply_gradients({'w': -jnp.ones(())})
  assert float(state.ema_params['w']) == 0.0  # the optimiser step leaves the teacher alone
  moved = float(state.params['w'])
  assert moved != 0.0
  # Step 1: a = min(1 - 1/2, decay): half of the student, for any decay >= 0.5; a lower decay
  # caps a.
  assert float(train_state.follow_mean_teacher(state, 0.99).ema_params['w']) == pytest.approx(
      moved / 2)
  assert float(train_state.follow_mean_teacher(state, 0.2).ema_params['w']) == pytest.approx(
      0.8 * moved)


def test_mean_teacher_schedule():
  ema, params = {'w': jnp.zeros(())}, {'w': jnp.ones(())}
  assert float(train_state.ema_update(ema, params, jnp.array(1), 0.99)['w']) == pytest.approx(0.5)
  assert (float(train_state.ema_update(ema, params, jnp.array(1000), 0.99)['w'])
          == pytest.approx(0.01))


# --------------------------------------------------------------------------------------------------
# A toy regression trained by the real loop.

# A failed Orbax restore leaves reads pending; they end with tracebacks (harmless) when their event
# loop has closed or they are garbage-collected, which pytest would repeat as warnings.
FAILED_RESTORES = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _toy_state(seed=0):
  config = _optim_config(all=dict(pattern='.', lr=0.1, frozen=False))
  params = {'w': jnp.zeros((4,)), 'b': jnp.zeros(())}
  return train_state.TrainState.create(params=params, batch_stats={},
                                       tx=optim.build(config, params),
                                       rng=jax.random.key_data(jax.random.key(seed)), ema=True)


def _toy_step(state, batch):
  def loss_fn(params):
    noise = jax.random.normal(state.key)
    prediction = batch['x'] @ params['w'] + params['b'] + 0.01 * noise
    return jnp.mean((prediction - batch['y'])**2)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return train_state.follow_mean_teacher(state.apply_gradients(grads), 0.99), {'loss': loss}


def _toy_batches(start, nan_at=None, sigterm_at=None):
  step = start
  while True:
    rng = np.random.default_rng(step)
    x = rng.normal(size=(4, 4)).astype(np.float32)
    y = (x @ np.arange(4, dtype=np.float32) + 1).astype(np.float32)
    if step == nan_at:
      y[0] = np.nan
    if step == sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)
    yield dict(x=x, y=y)
    step += 1


def _run(tmp_path, name, num_steps, **batch_kwargs):
  mesh = sharding.make_mesh()
  checkpointer = checkpointing.Checkpointer(str(tmp_path / name), save_interval_steps=5)
  state, _ = checkpointer.restore_or_init(sharding.replicate(_toy_state(), mesh))
  step = sharding.jit_train_step(_toy_step, mesh)
  writer = loop.create_writer(str(tmp_path / name / 'logs'))
  try:
    return loop.train(state, step, _toy_batches(int(state.step), **batch_kwargs), mesh=mesh,
                      num_steps=num_steps, checkpointer=checkpointer, writer=writer, log_every=2)
  finally:
    checkpointer.close()


def test_loop_trains_and_resume_after_sigterm_is_exact(tmp_path):
  reference = _run(tmp_path, 'straight', 20)
  assert float(jnp.abs(reference.params['w'] - jnp.arange(4)).max()) < 1.0  # it learns
  with pytest.raises(loop.Preempted, match='preempted at step 8'):
    _run(tmp_path, 'interrupted', 20, sigterm_at=7)
  assert checkpointing.Checkpointer(str(tmp_path / 'interrupted')).latest_step() == 8
  resumed = _run(tmp_path, 'interrupted', 20)
  assert int(resumed.step) == 20
  for a, b in zip(jax.tree.leaves(reference.to_dict()), jax.tree.leaves(resumed.to_dict())):
    np.testing.assert_array_equal(a, b)


def test_zero_steps_save_the_initial_state_once(tmp_path):
  """num_steps=0 (a stage started from released weights, trained no further) still leaves its
  checkpoint: the initial state, at step 0; a rerun finds it and writes nothing."""
  _run(tmp_path, 'zero', 0)
  checkpointer = checkpointing.Checkpointer(str(tmp_path / 'zero'))
  assert checkpointer.latest_step() == 0
  restored = checkpointer.restore(sharding.replicate(_toy_state(seed=1), sharding.make_mesh()))
  for a, b in zip(jax.tree.leaves(_toy_state().to_dict()), jax.tree.leaves(restored.to_dict())):
    np.testing.assert_array_equal(a, b)
  checkpointer.close()
  written = os.path.getmtime(tmp_path / 'zero' / '0')
  _run(tmp_path, 'zero', 0)
  assert os.path.getmtime(tmp_path / 'zero' / '0') == written


def test_nan_metrics_stop_with_step_and_metric_named(tmp_path):
  with pytest.raises(loop.NonFiniteError, match=r"step 4: non-finite training metrics \{'loss'"):
    _run(tmp_path, 'nan', 20, nan_at=3)
  # Nothing was saved after the bad step.
  assert checkpointing.Checkpointer(str(tmp_path / 'nan')).latest_step() is None


@FAILED_RESTORES
def test_resume_after_a_torn_latest_checkpoint_is_exact_and_saves_that_step_again(tmp_path, caplog):
  reference = _run(tmp_path, 'torn', 10)  # checkpoints at steps 5 and 10
  (data_file,) = _truncate_array_files(tmp_path / 'torn' / '10')
  resumed = _run(tmp_path, 'torn', 10)  # from step 5
  assert f'Broken checkpoint {tmp_path / "torn" / "10"}: ' in caplog.text
  assert f'of local file "{data_file}"' in caplog.text
  assert 'restored step 5' in caplog.text
  for a, b in zip(jax.tree.leaves(reference.to_dict()), jax.tree.leaves(resumed.to_dict())):
    np.testing.assert_array_equal(a, b)
  assert (tmp_path / 'torn' / '10.broken').is_dir()  # set aside; step 10 was written again
  assert checkpointing.Checkpointer(str(tmp_path / 'torn')).latest_step() == 10


# -------------------------------------------------------------------------------------------------
# Torn checkpoints: each fault in the newest of two checkpoints, then in both.

def _arrays(step):
  return {'w': np.full((3,), step, np.float32), 'b': np.arange(4, dtype=np.float32) * step}


def _write_steps(directory, steps=(1, 2)):
  checkpointer = checkpointing.Checkpointer(str(directory), save_interval_steps=1)
  for step in steps:
    checkpointer.save(step, fixtures.ArrayState(_arrays(step)))
  checkpointer.close()  # waits for the saves


def _array_files(step_dir):
  """The OCDBT data files of a step's arrays (one for a tree this small)."""
  files = sorted((step_dir / 'default' / 'd').iterdir())
  assert files, step_dir
  return files


def _truncate_array_files(step_dir):
  files = _array_files(step_dir)
  for path in files:
    os.truncate(path, os.path.getsize(path) // 2)
  return files


def _delete_array_files(step_dir):
  files = _array_files(step_dir)
  for path in files:
    os.remove(path)
  return files


def _delete_file(name):
  def delete(step_dir):
    os.remove(step_dir / name)
    return [step_dir / name]
  return delete


# Each tears a step folder and returns the files the error must name.
TEARS = {'truncated array file': _truncate_array_files,
         'deleted array file': _delete_array_files,
         'missing step metadata': _delete_file('_CHECKPOINT_METADATA'),
         'missing tree metadata': _delete_file('default/_METADATA')}


def _assert_values_of_step(arrays, step):
  for name, value in _arrays(step).items():
    np.testing.assert_array_equal(arrays[name], value)


@FAILED_RESTORES
@pytest.mark.parametrize('tear', TEARS)
def test_a_torn_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, tear):
  _write_steps(tmp_path)
  torn = tmp_path / '2'
  files = TEARS[tear](torn)
  # read_arrays: the previous step, the torn folder left as it is; asked for explicitly, an error.
  _assert_values_of_step(checkpointing.read_arrays(str(tmp_path)), 1)
  assert f'Broken checkpoint {torn}: ' in caplog.text
  assert all(str(f) in caplog.text for f in files)
  with pytest.raises(checkpointing.CheckpointError, match=re.escape(f'{torn} (')) as error:
    checkpointing.read_arrays(str(tmp_path), step=2)
  assert all(str(f) in str(error.value) for f in files)
  # The Checkpointer: the previous step, the torn folder set aside; step 2 can be saved again.
  checkpointer = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=1)
  _assert_values_of_step(checkpointer.restore(fixtures.ArrayState(_arrays(0))).arrays, 1)
  assert checkpointer.latest_step() == 1
  assert sorted(os.listdir(tmp_path)) == ['1', '2.broken']
  checkpointer.save(2, fixtures.ArrayState(_arrays(2)))
  checkpointer.wait()
  _assert_values_of_step(checkpointer.restore(fixtures.ArrayState(_arrays(0))).arrays, 2)
  checkpointer.close()


@FAILED_RESTORES
def test_with_every_checkpoint_torn_one_error_names_them_all(tmp_path):
  _write_steps(tmp_path)
  _truncate_array_files(tmp_path / '2')
  _delete_file('default/_METADATA')(tmp_path / '1')
  listing = (rf'{tmp_path}: no intact checkpoint among steps \[2, 1\]: {tmp_path}/2 \(.+\); '
             rf'{tmp_path}/1 \(.+_METADATA is missing\)\. Delete these folders')
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  with pytest.raises(checkpointing.CheckpointError, match=listing):
    checkpointer.restore(fixtures.ArrayState(_arrays(0)))
  checkpointer.close()
  with pytest.raises(checkpointing.CheckpointError, match=listing):
    checkpointing.read_arrays(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['1', '2']  # nothing set aside: the user decides


@FAILED_RESTORES
def test_checkpoints_that_do_not_fit_or_do_not_exist_are_named_and_not_set_aside(tmp_path):
  _write_steps(tmp_path)
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  # Another config's state: no older checkpoint would fit either, so no fall-back. (Device arrays,
  # as a TrainState holds: into a NumPy target Orbax restores the saved shape without a word.)
  other = fixtures.ArrayState({'w': jnp.zeros((5,)), 'b': jnp.zeros((4,))})
  with pytest.raises(checkpointing.CheckpointError,
                     match=re.escape(f"{tmp_path / '2'}: does not fit this state (['w'] has shape "
                                     '(3,), not (5,))')):
    checkpointer.restore(other)
  with pytest.raises(checkpointing.CheckpointError, match=re.escape(f"{tmp_path / '7'}: no such")):
    checkpointer.restore(other, step=7)
  checkpointer.close()
  gc.collect()  # Orbax's abandoned reads end here, under FAILED_RESTORES, not in a later test
  assert sorted(os.listdir(tmp_path)) == ['1', '2']
  with pytest.raises(checkpointing.CheckpointError, match='nowhere: no such checkpoint directory'):
    checkpointing.read_arrays(str(tmp_path / 'nowhere'))


def test_merge_by_mapping_reports_missing_and_unused():
  target = {'pad': {'seg_decoder': {'a': np.zeros(2), 'b': np.zeros(3)}},
            'encoder': {'c': np.zeros(1)}}
  source = {'depth_decoder': {'a': np.ones(2), 'heads': np.ones(5)}}
  merged, report = checkpointing.merge_by_mapping(target, source,
                                                  {'depth_decoder': 'pad/seg_decoder'})
  np.testing.assert_array_equal(merged['pad']['seg_decoder']['a'], 1.0)
  np.testing.assert_array_equal(merged['pad']['seg_decoder']['b'], 0.0)
  assert report == dict(loaded=['pad/seg_decoder/a'], missing=['pad/seg_decoder/b'],
                        unused=['depth_decoder/heads'])
  with pytest.raises(checkpointing.CheckpointError, match=r'depth_decoder/a has shape \(3,\)'):
    checkpointing.merge_by_mapping(target, {'depth_decoder': {'a': np.ones(3)}},
                                   {'depth_decoder': 'pad/seg_decoder'})


# -------------------------------------------------------------------------------------------------
# Gradient accumulation (config optim.accumulate_steps): a k times larger batch in the memory of
# one, with the same result.

def _toy_loss(params, batch):
  """A BatchNorm-free model: mean squared error of a linear layer with a tanh."""
  prediction = jnp.tanh(batch['x'] @ params['encoder']['w'] + params['encoder']['b'])
  return jnp.mean((prediction @ params['head']['w'] - batch['y']) ** 2)


def _accumulating_optim_config(accumulate_steps: int) -> ml_collections.ConfigDict:
  # Adam with weight decay, a step schedule and clipping: every stage of the chain must see the
  # averaged gradient for the accumulated update to equal the big-batch update.
  return base.optim_config('adam', dict(encoder=dict(pattern='^encoder/', lr=1e-2),
                                        head=dict(pattern='^head/', lr=3e-2)),
                           kind='step', boundaries=(1,), factor=0.5, weight_decay=1e-3,
                           clip_norm=0.5, accumulate_steps=accumulate_steps)


@pytest.mark.slow
@pytest.mark.parametrize('k', [2, 4])
def test_accumulated_micro_batches_equal_one_big_batch(k):
  rng = np.random.default_rng(0)
  params = {'encoder': {'w': jnp.asarray(rng.normal(size=(5, 8)), jnp.float32),
                        'b': jnp.zeros((8,), jnp.float32)},
            'head': {'w': jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)}}
  micro = 3
  steps = 2  # two big steps: the second uses the schedule's second value and Adam's moments
  data = {'x': rng.normal(size=(steps, k * micro, 5)).astype(np.float32),
          'y': rng.normal(size=(steps, k * micro, 2)).astype(np.float32)}
  grad = jax.jit(jax.grad(_toy_loss))

  def new_state(accumulate):
    return train_state.TrainState.create(
        params=params, batch_stats={},
        tx=optim.build(_accumulating_optim_config(accumulate), params),
        rng=jax.random.key_data(jax.random.key(0)), ema=True)

  def update(state, grads):  # the segment step's order: optimiser, then the mean teacher
    return train_state.follow_mean_teacher(state.apply_gradients(grads), 0.99)

  big = new_state(1)
  for s in range(steps):
    big = update(big, grad(big.params, jax.tree.map(lambda a: a[s], data)))

  small = new_state(k)
  for s in range(steps):
    for m in range(k):
      before = small.params, small.ema_params
      rows = slice(m * micro, (m + 1) * micro)
      small = update(small, grad(small.params, jax.tree.map(lambda a: a[s, rows], data)))
      if m < k - 1:  # between updates nothing moves, the teacher neither
        jax.tree.map(np.testing.assert_array_equal, (small.params, small.ema_params), before)
  assert int(small.step) == k * steps and int(big.step) == steps
  for name, a, b in (('params', big.params, small.params),
                     ('mean teacher', big.ema_params, small.ema_params)):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=name)
  for moving in (big.params, big.ema_params):
    moved = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(moving),
                                                              jax.tree.leaves(params)))
    assert moved > 1e-3
  # Logged learning rates follow updates, not micro-batches: the boundary is update 1 = step k.
  config = _accumulating_optim_config(k)
  assert optim.learning_rates(config, k - 1)['lr/encoder'] == pytest.approx(1e-2)
  assert optim.learning_rates(config, k)['lr/encoder'] == pytest.approx(5e-3)


def test_bad_accumulate_steps_is_named():
  config = _accumulating_optim_config(0)
  with pytest.raises(ValueError, match='config.optim.accumulate_steps=0'):
    optim.build(config, {'encoder': {'w': jnp.ones(2)}, 'head': {'w': jnp.ones(2)}})
