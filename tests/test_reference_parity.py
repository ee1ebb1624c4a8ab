"""benchmarks/reference_parity.py's own pieces (the comparison itself needs a checkout of the
reference, which the tests do not have): the gradients it reads back from our optimiser, the
status of a row, and the error for a folder that is not the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import reference_parity
from configs import base
from sdeseg_jax.training import optim


def test_adam_gradients_are_the_gradients_of_the_first_update():
  """Our grouped optimiser (a frozen group, two Adam groups): the first moments after one update
  give back the gradient of every trainable parameter, nested by path."""
  params = {'encoder': {'kernel': jnp.ones((2, 3))}, 'decoder': {'bias': jnp.ones(4)},
            'pose': {'w': jnp.ones(2)}}
  config = base.optim_config('adam', dict(
      encoder=dict(pattern='^encoder/', lr=1e-5), decoder=dict(pattern='^decoder/', lr=1e-4),
      pose=dict(pattern='^pose/', lr=1e-4, frozen=True)))
  tx = optim.build(config, params)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  _, state = tx.update(grads, tx.init(params), params)
  recovered = reference_parity.adam_gradients(state)
  assert set(recovered) == {'encoder', 'decoder'}  # the frozen group has no Adam state
  for group in recovered:
    for name, value in recovered[group].items():
      np.testing.assert_allclose(value, grads[group][name], rtol=1e-6)


def test_report_statuses():
  report = reference_parity.Report(tolerance=1e-4)
  ours = {'a': 1.0, 'b': 1.01, 'c': 1.01, 'automask/scale0': np.array([1, 0, 0, 0])}
  reference = {'a': 1.0, 'b': 1.0, 'c': 1.0, 'automask/scale0': np.array([1, 1, 0, 0])}
  # b: the reference's own float32 result is as far from its float64 one as ours is.
  reference64 = {'a': 1.0, 'b': 1.01, 'c': 1.0, 'automask/scale0': np.array([1, 1, 0, 0])}
  report.compare('x', ours, reference, reference64)
  status = {r['quantity']: r['status'] for r in report.rows}
  assert status == {'a': 'within', 'b': 'float32 rounding', 'c': 'OVER', 'automask/scale0': 'OVER'}
  mask = next(r for r in report.rows if r['quantity'] == 'automask/scale0')
  assert mask['max_relative_error'] == pytest.approx(0.25)  # one pixel of four differs


def test_report_trees_by_group_scale():
  """A zero-initialised bias moved by +-lr: a flipped sign counts against the group's scale."""
  report = reference_parity.Report(tolerance=1e-4)
  reference = {'g': {'kernel': np.full(3, 0.5), 'bias': np.array([1e-5, -1e-5])}}
  ours = {'g': {'kernel': np.full(3, 0.5), 'bias': np.array([1e-5, 1e-5])}}
  report.compare('x', {'params': ours}, {'params': reference}, {'params': reference})
  (row,) = report.rows
  assert row['quantity'] == 'params/g' and row['max_relative_error'] == pytest.approx(4e-5)
  assert row['worst_tensor'] == 'g/bias' and row['worst_tensor_relative_error'] == 2.0


def test_not_a_reference_checkout(tmp_path):
  with pytest.raises(SystemExit, match='not a checkout of .*missing train.py'):
    reference_parity.import_reference(str(tmp_path))


def test_dropout_masks_recorded_in_flax_replay_in_torch():
  """The units our (jitted) Dropout drops are the units the torch module drops after
  replay_dropout: equal outputs, and every recorded mask is used."""
  torch = pytest.importorskip('torch')
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dropout(0.5, deterministic=False)(nn.relu(x))

  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))

  @jax.jit
  def forward(x):
    with reference_parity.recorded_dropout() as masks:
      y = Net().apply({}, x, rngs={'dropout': jax.random.key(1)})
    return y, masks

  ours, masks = forward(x)
  assert len(masks) == 1 and 0 < float(jnp.mean(masks[0])) < 1
  module = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Dropout(0.5))
  unused = reference_parity.replay_dropout([module], masks)
  theirs = module(torch.from_numpy(np.moveaxis(np.asarray(x), -1, 1).copy()))
  np.testing.assert_allclose(np.moveaxis(theirs.numpy(), 1, -1), ours, rtol=1e-6)
  assert not unused


def test_report_explained_differences(monkeypatch):
  """A difference over the tolerance that EXPLAINED names is 'explained', with its reason."""
  monkeypatch.setitem(reference_parity.EXPLAINED, ('x', 'c'), 'why it differs')
  report = reference_parity.Report(tolerance=1e-4)
  report.compare('x', {'c': 1.5, 'd': 1.5}, {'c': 1.0, 'd': 1.0}, {'c': 1.0, 'd': 1.0})
  rows = {r['quantity']: r for r in report.rows}
  assert rows['c']['status'] == 'explained' and rows['c']['explanation'] == 'why it differs'
  assert rows['d']['status'] == 'OVER'  # the same error, not named


def test_replayed_python_random_gives_the_draws_then_restores():
  import random
  original = random.random, random.choice
  with reference_parity.replayed_python_random([2, 0], [0.75]):
    assert random.choice('abc') == 'c' and random.choice('abc') == 'a'
    assert random.random() == 0.75
  assert (random.random, random.choice) == original
  with pytest.raises(AssertionError, match='not used'):
    with reference_parity.replayed_python_random([1], []):
      pass
  assert (random.random, random.choice) == original


def test_cuda_on_cpu_is_the_identity_inside_only():
  torch = pytest.importorskip('torch')
  x = torch.ones(2)
  with reference_parity.cuda_on_cpu():
    assert x.cuda() is x
  assert torch.Tensor.cuda is not None and x.cuda.__name__ == 'cuda'


def test_differing_choices_between_near_ties_are_float32_rounding():
  """One pixel chooses another candidate: float32 rounding when its two candidates are closer
  than twice the reference's float32 error of the candidates, OVER otherwise."""
  ours = np.array([[[[3, 2]]]])                                  # [S, B, H, W]
  reference = {'choice': np.array([[[[3, 0]]]]), 'automask/scale0': np.array([[[1.0, 1.0]]])}
  exact = np.zeros((1, 1, 4, 1, 2))
  exact[0, 0, :, 0, 1] = [0.100004, 0.5, 0.100000, 0.5]         # candidates 0 and 2: 4e-6 apart
  for float32_error, expected in ((3e-6, 'float32 rounding'), (1e-6, 'OVER')):
    report = reference_parity.Report(tolerance=1e-4)
    reference['candidates'] = exact + float32_error
    report.compare('sde', {'choice': ours, 'automask/scale0': np.array([[[1.0, 0.0]]])},
                   reference, reference)
    reference_parity.classify_choices(report, 'sde', ours, reference, {'candidates': exact})
    assert {r['status'] for r in report.rows} == {expected}


def test_photometric_minimum_records_the_choices():
  torch = pytest.importorskip('torch')
  x = torch.tensor(np.random.default_rng(0).uniform(size=(2, 4, 3, 3)))
  taken = []
  with reference_parity.photometric_minimum(taken):
    values, index = torch.min(x, dim=1)
    assert torch.min(torch.ones(3)) == 1 and len(taken) == 1  # other calls are torch's own
  np.testing.assert_array_equal(taken[0][0], np.argmin(x.numpy(), 1))
  np.testing.assert_array_equal(taken[0][1], x.numpy())
  assert torch.min.__name__ == 'min'


def test_report_statuses_with_ours_in_float64():
  """With ours in float64 too, float32 rounding is decided by ours in float64 against the
  reference in float64 (FLOAT64_AGREEMENT): the same formula, whatever the two floors are."""
  exact = 1.0
  reference = {q: 1.0 + 1e-3 for q in 'abc'}         # the reference's floor: 1e-3
  reference64 = {q: exact for q in 'abc'}
  ours = {'a': 1.0 + 3e-3, 'b': 1.0 + 3e-3, 'c': 1.0 + 1e-3}
  # a: ours in float32 3e-3 from exact (three times the reference's floor; the rule without ours
  #    in float64 says OVER), but ours in float64 agrees to 1e-9: rounding (our own floor 3e-3).
  # b: ours in float64 is 1e-6 from the reference in float64: another formula.
  # c: ours in float32 equals the reference in float32 exactly, but not in float64: OVER would be
  #    too strict for an error of 0; it is within the tolerance first.
  ours64 = {'a': exact + 1e-9, 'b': exact + 1e-6, 'c': exact + 1e-6}
  report = reference_parity.Report(tolerance=1e-4)
  report.compare('sde', ours, reference, reference64, ours64)
  rows = {r['quantity']: r for r in report.rows}
  assert {q: r['status'] for q, r in rows.items()} == {
      'a': 'float32 rounding', 'b': 'OVER', 'c': 'within'}
  assert rows['b']['ours_float64_vs_reference_float64'] == pytest.approx(1e-6)
  assert rows['a']['ours_float32_vs_float64'] == pytest.approx(3e-3, rel=1e-5)
  # Without ours in float64, a is OVER: 3e-3 is more than twice the reference's floor.
  report = reference_parity.Report(tolerance=1e-4)
  report.compare('sde', {'a': ours['a']}, reference, reference64)
  assert report.rows[0]['status'] == 'OVER' and 'ours_float32_vs_float64' not in report.rows[0]


def test_report_trees_with_ours_in_float64():
  """Trees: per group, ours in float64 against the reference in float64 and its worst tensor."""
  reference = {'g': {'kernel': np.full(3, 0.5), 'bias': np.array([1e-5, -1e-5])}}
  ours64 = {'g': {'kernel': np.full(3, 0.5), 'bias': np.array([1e-5, -1e-5 + 1e-12])}}
  report = reference_parity.Report(tolerance=1e-4)
  report.compare('x', {'params': reference}, {'params': reference}, {'params': reference},
                 {'params': ours64})
  (row,) = report.rows
  assert row['ours_float64_vs_reference_float64'] == pytest.approx(2e-12)
  assert row['worst_tensor_float64'] == 'g/bias' and row['status'] == 'within'


def test_replayed_flax_dropout_applies_the_recorded_masks_in_float64():
  """Our float64 run drops the units our float32 run dropped (its own draw would differ)."""
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dropout(0.5, deterministic=False)(nn.relu(x))

  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  with reference_parity.recorded_dropout() as masks:
    ours = Net().apply({}, x, rngs={'dropout': jax.random.key(1)})
  with jax.enable_x64(True):
    with reference_parity.replayed_flax_dropout(masks):
      ours64 = jax.jit(lambda x: Net().apply({}, x, rngs={'dropout': jax.random.key(1)}))(
          jnp.asarray(x, jnp.float64))
    assert ours64.dtype == jnp.float64
  np.testing.assert_allclose(ours64, ours, rtol=1e-6)
  with pytest.raises(AssertionError, match='not used'):
    with reference_parity.replayed_flax_dropout(masks):
      pass


def test_float32_values_finds_what_a_float64_function_computes_in_float32():
  with jax.enable_x64(True):
    jaxpr = jax.make_jaxpr(lambda x: jnp.sin(x.astype(jnp.float32)).astype(jnp.float64) * 2)(
        jnp.ones(3, jnp.float64))
  found = reference_parity.float32_values(jaxpr)
  assert sorted(k.split(' ')[0] for k in found) == ['convert_element_type', 'sin']


def test_merged_result_keeps_the_other_parts(tmp_path):
  settings = dict(reference_commit='c', size=[64, 64], batch=2, seed=0, tolerance=1e-4)
  old = dict(settings, rows=[{'part': 'sde', 'quantity': 'q', 'status': 'OVER'},
                             {'part': 'segment', 'quantity': 'q', 'status': 'within'}],
             notes={'sde': 'old'})
  path = tmp_path / 'old.json'
  path.write_text(__import__('json').dumps(old))
  new = dict(settings, rows=[{'part': 'sde', 'quantity': 'q', 'status': 'within'}],
             notes={'sde': 'new'})
  merged = reference_parity.merged_result(str(path), new, ['sde'])
  assert [(r['part'], r['status']) for r in merged['rows']] == [('sde', 'within'),
                                                                  ('segment', 'within')]
  assert merged['notes'] == {'sde': 'new'} and merged['merged']['kept_parts'] == ['segment']
  with pytest.raises(SystemExit, match='other seed'):
    reference_parity.merged_result(str(path), dict(new, seed=1), ['sde'])


def test_relu_calls_record_and_decide():
  """reference_parity_relu's ReLU decisions: recorded per call; a decided call passes (value and
  derivative) exactly where its mask says, other calls stay relu; flax.linen.relu is restored."""
  import flax.linen as nn
  from benchmarks import reference_parity_relu
  f = lambda x: jnp.sum(nn.relu(nn.relu(x) - 1.0) * 3.0)
  x = jnp.array([-1.0, 0.5, 2.0, 3.0])
  with reference_parity_relu.relu_calls() as calls:
    f(x)
  np.testing.assert_array_equal(np.array(calls), [[False, True, True, True],
                                                  [False, False, True, True]])
  passes = jnp.array([True, True, False, True])       # pre-activations -1, -0.5, 1, 2
  with reference_parity_relu.relu_calls({1: passes}):
    value, gradient = jax.value_and_grad(f)(x)
  assert float(value) == pytest.approx(3.0 * (-1.0 - 0.5 + 2.0))
  np.testing.assert_array_equal(gradient, [0.0, 3.0, 0.0, 3.0])  # the first relu blocks x = -1
  assert nn.relu is jax.nn.relu
