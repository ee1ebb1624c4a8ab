"""Memory and speed switches: gradient accumulation (config optim.accumulate_steps) and
rematerialised encoder blocks (config model.encoder.remat) change memory, not results."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base
from sdeseg_jax.models import networks
from sdeseg_jax.models import resnet
from sdeseg_jax.training import optim
from sdeseg_jax.training import train_state


def _toy_loss(params, batch):
  """A BatchNorm-free model: mean squared error of a linear layer with a tanh."""
  prediction = jnp.tanh(batch['x'] @ params['encoder']['w'] + params['encoder']['b'])
  return jnp.mean((prediction @ params['head']['w'] - batch['y']) ** 2)


def _optim_config(accumulate_steps: int) -> ml_collections.ConfigDict:
  # Adam with weight decay, a step schedule and clipping: every stage of the chain must see the
  # averaged gradient for the accumulated update to equal the big-batch update.
  return base.optim_config('adam', dict(encoder=dict(pattern='^encoder/', lr=1e-2),
                                        head=dict(pattern='^head/', lr=3e-2)),
                           kind='step', boundaries=(1,), factor=0.5, weight_decay=1e-3,
                           clip_norm=0.5, accumulate_steps=accumulate_steps)


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
        params=params, batch_stats={}, tx=optim.build(_optim_config(accumulate), params),
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
  config = _optim_config(k)
  assert optim.learning_rates(config, k - 1)['lr/encoder'] == pytest.approx(1e-2)
  assert optim.learning_rates(config, k)['lr/encoder'] == pytest.approx(5e-3)


def test_bad_accumulate_steps_is_named():
  config = _optim_config(0)
  with pytest.raises(ValueError, match='config.optim.accumulate_steps=0'):
    optim.build(config, {'encoder': {'w': jnp.ones(2)}, 'head': {'w': jnp.ones(2)}})


@pytest.mark.parametrize('depth,output_stride', [(18, 32), (50, 16)])
def test_remat_gives_identical_gradients_and_statistics(depth, output_stride):
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  plain = resnet.ResNet(depth, output_stride, width=8, stage_sizes=(1, 2, 1, 1))
  remat = plain.clone(remat=True)
  variables = plain.init(jax.random.key(0), x)
  # The same variables fit both: checkpoints move freely between the settings.
  assert (jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(0), x)) ==
          jax.tree.structure(variables))

  def grads_and_stats(module):
    def loss(params):
      features, updates = module.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                       x, train=True, mutable=['batch_stats'])
      return sum(jnp.mean(f ** 2) for f in features), updates['batch_stats']
    return jax.jit(jax.grad(loss, has_aux=True))(variables['params'])

  (g1, s1), (g2, s2) = grads_and_stats(plain), grads_and_stats(remat)
  # Equal up to float32 rounding (XLA fuses the recomputed forward pass differently): each
  # array's largest difference against its largest value.
  for a, b in zip(jax.tree.leaves((g1, s1)), jax.tree.leaves((g2, s2))):
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * float(jnp.max(jnp.abs(a))) + 1e-12
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g1)) > 0
  # Rematerialisation really happens: the backward pass recomputes (the jaxpr has remat calls).
  jaxpr = str(jax.make_jaxpr(lambda p: remat.apply(
      {'params': p, 'batch_stats': variables['batch_stats']}, x, train=True,
      mutable=['batch_stats']))(variables['params']))
  assert 'checkpoint' in jaxpr or 'remat' in jaxpr


def test_remat_switch_reaches_the_encoders_from_config():
  config = base.make_tiny(base.model_config())
  config.encoder.remat = True
  encoder = networks.encoder_from_config(config.encoder, jnp.float32)
  assert encoder.remat
  assert not networks.encoder_from_config(config.pose_encoder, jnp.float32).remat
