"""Automatic data selection (SPEC section 8): the ops against independent NumPy / torch references,
and the select_labels stage on the tiny demo: end to end into the segment stage, every method,
resume between steps, the CLI."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from configs import demo
from configs import select_cityscapes
from data_pipelines.datasets import DataError
from data_pipelines.datasets import ExampleIndex
from sdeseg_jax import ops
from sdeseg_jax import stages
from sdeseg_jax.stages import segment
from sdeseg_jax.stages import select_labels
from sdeseg_jax.stages.select_labels import schedule
from sdeseg_jax.stages.select_labels import students
from sdeseg_jax.training import checkpointing
from tests import runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = runs.CACHE


# ---------------------------------------------------------------------------------------------
# Farthest point selection.

def brute_force_fps(features, initial, n_new, scores=None, weight=0.0):
  """SPEC section 8 literally, in float64 with the full N x N distance matrix."""
  f = np.asarray(features, np.float64)
  distances = np.sqrt(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1))
  bias = np.zeros(len(f)) if scores is None else weight * np.asarray(scores, np.float64)
  selected, chosen, terms = list(initial), [], []
  for _ in range(n_new):
    nearest = distances[selected].min(axis=0)
    objective = nearest + bias
    objective[selected] = -np.inf
    j = int(np.argmax(objective))
    chosen.append(j)
    terms.append(nearest[j])
    selected.append(j)
  return np.array(chosen), np.array(terms)


@pytest.mark.parametrize('case', range(6))
def test_farthest_point_selection_equals_brute_force(case):
  rng = np.random.default_rng(case)
  n, d = int(rng.integers(20, 90)), int(rng.integers(1, 40))
  # Clustered points, so that both far and near candidates exist.
  centres = rng.normal(0, 4, (5, d))
  features = (centres[rng.integers(0, 5, n)] + rng.normal(0, 1, (n, d))).astype(np.float32)
  initial = rng.choice(n, int(rng.integers(1, 4)), replace=False)
  n_new = int(rng.integers(1, n - len(initial) + 1))
  chosen = np.asarray(ops.farthest_point_selection(features, initial, n_new))
  expected, _ = brute_force_fps(features, initial, n_new)
  np.testing.assert_array_equal(chosen, expected)
  assert len(set(chosen.tolist()) | set(initial.tolist())) == len(initial) + n_new
  # With scores: the score of a candidate is added to each of its distances (weight lambda_E).
  scores = rng.uniform(0, 1, n).astype(np.float32)
  weight = float(rng.choice([0.5, 3.0, 50.0]))
  chosen, terms = ops.farthest_point_selection_with_distances(features, initial, n_new, scores,
                                                              weight)
  expected, expected_terms = brute_force_fps(features, initial, n_new, scores, weight)
  np.testing.assert_array_equal(np.asarray(chosen), expected)
  np.testing.assert_allclose(np.asarray(terms), expected_terms, rtol=1e-5, atol=1e-5)


def test_farthest_point_selection_from_many_initial_points():
  """More initial points than one distance matmul takes (ops.selection.INITIAL_CHUNK): the chunks
  and the padding of the last one."""
  from sdeseg_jax.ops import selection
  rng = np.random.default_rng(7)
  n, d = 400, 12
  centres = rng.normal(0, 4, (8, d))
  features = (centres[rng.integers(0, 8, n)] + rng.normal(0, 1, (n, d))).astype(np.float32)
  initial = rng.choice(n, 2 * selection.INITIAL_CHUNK + 5, replace=False)
  scores = rng.uniform(0, 1, n).astype(np.float32)
  chosen, terms = ops.farthest_point_selection_with_distances(features, initial, 20, scores, 2.0)
  expected, expected_terms = brute_force_fps(features, initial, 20, scores, 2.0)
  np.testing.assert_array_equal(np.asarray(chosen), expected)
  np.testing.assert_allclose(np.asarray(terms), expected_terms, rtol=1e-5, atol=1e-5)


def test_scores_change_the_choice_and_dominate_with_a_large_weight():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(40, 6)).astype(np.float32)
  scores = rng.uniform(size=40).astype(np.float32)
  pure = np.asarray(ops.farthest_point_selection(features, [0], 5))
  dominated = np.asarray(ops.farthest_point_selection(features, [0], 5, scores, weight=1e6))
  order = [j for j in np.argsort(-scores, kind='stable') if j != 0][:5]
  np.testing.assert_array_equal(dominated, order)
  assert not np.array_equal(pure, dominated)


def test_farthest_point_selection_errors_name_the_problem():
  features = np.zeros((5, 3), np.float32)
  with pytest.raises(ValueError, match='initial` is empty'):
    ops.farthest_point_selection(features, [], 1)
  with pytest.raises(ValueError, match='cannot add 5 points, 4 of 5'):
    ops.farthest_point_selection(features, [2, 2], 5)
  with pytest.raises(ValueError, match='NaN'):
    ops.farthest_point_selection(features, [0], 1, np.array([0, np.nan, 0, 0, 0]), 1.0)
  with pytest.raises(ValueError, match=r'scores must be \[5\]'):
    ops.farthest_point_selection(features, [0], 1, np.zeros(4), 1.0)


# ---------------------------------------------------------------------------------------------
# Features.

@pytest.mark.parametrize('height,width', [(64, 128), (13, 22), (4, 8)])
def test_adaptive_avg_pool_equals_torch(height, width):
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(1).normal(size=(2, height, width, 3)).astype(np.float32)
  expected = torch.nn.functional.adaptive_avg_pool2d(
      torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2), (4, 8)).permute(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(ops.adaptive_avg_pool(x, (4, 8))), expected.numpy(),
                             rtol=1e-5, atol=1e-6)


def test_features_are_standardised_per_channel_over_images_and_positions():
  rng = np.random.default_rng(2)
  x = (rng.normal(size=(7, 4, 8, 5)) * [1, 2, 3, 4, 0] + [0, 1, -1, 5, 3]).astype(np.float32)
  flat = np.asarray(ops.standardize_features(x))
  assert flat.shape == (7, 4 * 8 * 5)
  x64 = x.astype(np.float64)
  mean = x64.mean(axis=(0, 1, 2))
  std = x64.std(axis=(0, 1, 2), ddof=1)
  expected = np.where(std > 0, (x64 - mean) / np.where(std > 0, std, 1), 0.0)
  np.testing.assert_allclose(flat, expected.reshape(7, -1), rtol=1e-4, atol=1e-5)
  assert np.all(flat.reshape(x.shape)[..., 4] == 0)          # a constant channel: 0, not NaN


# ---------------------------------------------------------------------------------------------
# The depth student's loss and the selection error E (independent float64 formulations).

def numpy_student_loss(pred, target):
  """berHu with the bottom 10% of the rows masked: c = 0.2 max |masked error| over the batch;
  mean over all elements."""
  pred, target = pred.astype(np.float64), target.astype(np.float64)
  height = pred.shape[1]
  mask = np.ones_like(pred)
  mask[:, int(height * 0.9):] = 0
  absdiff = np.abs(target - pred) * mask
  c = 0.2 * absdiff.max()
  if c == 0:
    return 0.0
  return np.mean(np.where(absdiff <= c, absdiff, (absdiff ** 2 + c ** 2) / (2 * c)))


@pytest.mark.parametrize('height', [20, 64, 37])
def test_depth_student_loss_matches_spec(height):
  rng = np.random.default_rng(height)
  pred = rng.uniform(0, 1, (2, height, 9, 1)).astype(np.float32)
  target = rng.uniform(0, 1, (2, height, 9, 1)).astype(np.float32)
  target[:, int(height * 0.9):] = 50.0        # huge errors in the masked rows must not count
  loss, grad = jax.value_and_grad(ops.depth_student_loss)(pred, target)
  np.testing.assert_allclose(float(loss), numpy_student_loss(pred, target), rtol=1e-5)
  assert np.all(np.asarray(grad)[:, int(height * 0.9):] == 0)
  # c is a constant: the gradient is the derivative of the piecewise loss with c frozen.
  absdiff = np.abs(target - pred).astype(np.float64)
  absdiff[:, int(height * 0.9):] = 0
  c = 0.2 * absdiff.max()
  sign = np.sign(pred - target)
  expected = np.where(absdiff <= c, sign, absdiff / c * sign) / pred.size
  expected[:, int(height * 0.9):] = 0
  np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-9)


def numpy_selection_error(student, teacher):
  """E: mean |log(1+s) - log(1+t)| with a 7x7 dilation of [t < 0.07] and rows >= int(0.87 H)
  zeroed, divided by all pixels."""
  student, teacher = student.astype(np.float64), teacher.astype(np.float64)
  errors = []
  for s, t in zip(student[..., 0], teacher[..., 0]):
    excluded = ndimage.binary_dilation(t < 0.07, structure=np.ones((7, 7)), border_value=0)
    error = np.abs(np.log1p(s) - np.log1p(t)) * ~excluded
    error[int(0.87 * t.shape[0]):] = 0
    errors.append(error.mean())
  return np.array(errors)


def test_selection_error_matches_spec():
  rng = np.random.default_rng(3)
  student = rng.uniform(0, 1, (3, 40, 30, 1)).astype(np.float32)
  teacher = rng.uniform(0.2, 1, (3, 40, 30, 1)).astype(np.float32)
  teacher[0, 5, 5] = 0.01                                     # one far pixel: a 7x7 hole
  teacher[1, 0, 29] = 0.05                                    # at the border: clipped window
  teacher[2, 10:20, 0:12] = 0.0                               # a far region
  np.testing.assert_allclose(np.asarray(ops.selection_error(student, teacher)),
                             numpy_selection_error(student, teacher), rtol=1e-5)
  mask = np.asarray(ops.selection_error_mask(teacher))[..., 0]
  kept_rows = int(0.87 * 40)                                  # 34
  assert mask[0, 2:9, 2:9].sum() == 0 and mask[0, :kept_rows].sum() == kept_rows * 30 - 49
  assert mask[1, :4, 26:].sum() == 0 and mask[1, :kept_rows].sum() == kept_rows * 30 - 16
  assert mask[:, kept_rows:].sum() == 0


def test_normalisation_and_entropy():
  disp = np.random.default_rng(4).uniform(0.1, 0.6, (2, 8, 8, 1)).astype(np.float32)
  low, high = disp.min(axis=(1, 2, 3)), disp.max(axis=(1, 2, 3))
  np.testing.assert_allclose(ops.normalize_by_range(disp, low, high),
                             ops.normalize_disparity(disp), atol=1e-6)
  # A crop normalised by its whole image's range, not its own.
  crop = disp[:, 2:5, 2:5]
  np.testing.assert_allclose(ops.normalize_by_range(crop, low, high),
                             (crop - low[:, None, None, None]) / (high - low)[:, None, None, None],
                             rtol=1e-5)
  assert float(ops.normalize_by_range(disp, low, low).max()) == 0.0   # constant: 0, not NaN
  logits = np.zeros((1, 2, 2, 19), np.float32)
  logits[0, 0, 0, 3] = 60.0
  entropy = np.asarray(ops.normalized_entropy(logits))
  assert entropy[0, 0, 0] == pytest.approx(0.0, abs=1e-6) and entropy[0, 1, 1] == pytest.approx(1.0)
  p = jax.nn.softmax(jnp.array([1.0, 2.0, 0.5]))
  expected = -float(jnp.sum(p * jnp.log2(p))) / np.log2(3)
  assert float(ops.normalized_entropy(jnp.array([[[[1.0, 2.0, 0.5]]]]))[0, 0, 0]) == (
      pytest.approx(expected, rel=1e-5))


# ---------------------------------------------------------------------------------------------
# Configuration.

def test_config_errors_name_the_key():
  config = demo.get_config('tiny')
  for key, value, message in (('method', 'coreset', "method='coreset'"),
                              ('initial', 'kmeans', "initial='kmeans'"),
                              ('sizes', (2, 2), 'increasing sizes'),
                              ('student_steps', (), 'student_steps=()')):
    broken = demo.get_config('tiny')
    broken.select[key] = value
    with pytest.raises(ValueError, match=message):
      select_labels.check_config(broken)
  select_labels.check_config(config)
  with pytest.raises(Exception, match='run that stage first'):
    segment.selection_file('select_labels', '/nonexistent')
  assert segment.selection_file('', '/w') == ''
  assert segment.selection_file('/lists/a.json', '/w') == '/lists/a.json'


def test_the_sde_a_selection_reads_is_required_before_any_stage_runs(tmp_path):
  """ds_us reads the SDE for its features (the sde_pretrain stage's, unless select.sde_checkpoint
  names one) and the depth_labels stage's depth labels for the depth student's teacher."""
  config, workdir = demo.get_config('tiny'), str(tmp_path)
  config.select.method = 'ds_us'
  with pytest.raises(ValueError, match=r"method='ds_us' \(initial='diversity'\), for the SDE "
                                       'features reads .*sde/ckpt, which does not exist'):
    stages.check_inputs('select_labels', config, workdir)
  with pytest.raises(ValueError, match='for the depth labels its student learns from reads '
                                       '.*depth/target, which does not exist: run the '
                                       'depth_labels stage first'):
    stages.check_inputs('select_labels', config, workdir, earlier=('data', 'sde_pretrain'))
  stages.check_inputs('select_labels', config, workdir,
                      earlier=('data', 'sde_pretrain', 'depth_labels'))
  config.select.sde_checkpoint = str(tmp_path / 'features_sde')
  os.makedirs(config.select.sde_checkpoint)
  with pytest.raises(ValueError, match='for the depth labels its student learns from reads'):
    stages.check_inputs('select_labels', config, workdir)
  os.makedirs(tmp_path / 'depth' / 'target')
  stages.check_inputs('select_labels', config, workdir)


def test_missing_depth_labels_of_the_depth_student_are_named(tmp_path):
  index = ExampleIndex.from_rows([dict(id=i, image=f'{i}.png') for i in ('a', 'b', 'c')])
  folder = tmp_path / 'depth' / 'target'
  folder.mkdir(parents=True)
  for example in ('a', 'c'):
    np.save(folder / f'{example}.npy', np.ones((2, 2), np.float32))
  with pytest.raises(DataError, match=r'depth/target: no depth labels of 1 training images '
                                      r'\(e\.g\. b\.npy\).*run the depth_labels stage'):
    students.teacher_dir(str(tmp_path), index)
  np.save(folder / 'b.npy', np.ones((2, 2), np.float32))
  assert students.teacher_dir(str(tmp_path), index) == str(folder)


def test_select_cityscapes_variants_are_the_table_rows():
  config = select_cityscapes.get_config('method=us,labels=100,seed=2')
  assert (config.select.method, config.select.initial, config.segment.labels, config.seed) == (
      'us', 'random', 100, 2)
  assert tuple(config.select.sizes) == (25, 50, 100, 200, 372, 744)
  assert tuple(config.select.student_steps) == (4000, 8000, 12000, 16000, 20000)
  assert config.select.lambda_e == 1000.0 and config.segment.selection == 'select_labels'
  assert (config.segment.network, config.segment.init, config.segment.mix) == (
      'transfer', 'imagenet', 'none')
  assert select_cityscapes.get_config('').select.initial == 'diversity'
  assert 'select_labels,segment' in select_cityscapes.get_config('method=entropy').stages
  with pytest.raises(ValueError, match="unknown method 'coreset'"):
    select_cityscapes.get_config('method=coreset')
  with pytest.raises(ValueError, match='exceeds'):
    select_cityscapes.get_config('labels=2975')
  for method in select_cityscapes.METHODS:
    select_labels.check_config(select_cityscapes.get_config(f'method={method}'))


# ---------------------------------------------------------------------------------------------
# The stage on the tiny demo.

_tiny = runs.tiny_config


@pytest.fixture(scope='module')
def demo_run(tiny_demo):
  """The whole tiny demo: data, SDE, depth labels, selection, segmentation on it, evaluation."""
  return tiny_demo


def _run_dir(workdir, name, **select):
  """A selection in its own workdir, on the demo's world, SDE and depth labels."""
  config = _tiny()
  config.stages = 'select_labels'
  config.select.update(select)
  run_dir = os.path.join(workdir, name)
  os.makedirs(run_dir, exist_ok=True)
  for link in ('data', 'depth', 'raw', 'sde'):
    if not os.path.exists(os.path.join(run_dir, link)):
      os.symlink(os.path.join(workdir, link), os.path.join(run_dir, link))
  return config, run_dir


def _train_ids(workdir):
  from data_pipelines import sources
  config = _tiny()
  return sources.open_dataset(config.data.target, workdir, 'target').segmentation('train').ids


def test_demo_selects_then_segments_with_the_selection(demo_run):
  config, workdir = demo_run
  ids = json.load(open(os.path.join(workdir, 'selection.json')))
  train = _train_ids(workdir)
  assert len(ids) == config.select.sizes[-1] and len(set(ids)) == len(ids)
  assert set(ids) <= set(train.tolist())
  report = json.load(open(os.path.join(workdir, 'select_labels', 'report.json')))
  assert [s['size'] for s in report['steps']] == list(config.select.sizes)
  assert sum(len(s['chosen']) for s in report['steps']) == len(ids)
  assert [c['id'] for s in report['steps'] for c in s['chosen']] == ids
  last = report['steps'][-1]
  assert last['student']['kind'] == 'depth' and last['student']['images'] == config.select.sizes[-2]
  for chosen in last['chosen']:      # DS+US: the objective is distance + lambda_E * E
    assert chosen['error'] > 0 and chosen['diversity'] > 0
    assert chosen['objective'] == pytest.approx(chosen['diversity'] + 1000.0 * chosen['error'])
  frequency = last['class_frequency']
  assert sum(frequency['whole'].values()) == pytest.approx(1.0, abs=1e-6)
  for name, ratio in frequency['ratio'].items():
    if ratio is not None:
      assert ratio == pytest.approx(frequency['selection'][name] / frequency['whole'][name])
  assert os.path.getsize(os.path.join(workdir, 'select_labels', 'class_frequency.png')) > 1000
  # The segment stage trained on the selection's first config.segment.labels images.
  from data_pipelines import sources
  from sdeseg_jax.stages import segment
  reader = sources.open_dataset(config.data.target, workdir, 'target')
  labeled, _ = segment.training_indices(config, reader, workdir)
  assert set(labeled.ids.tolist()) == set(ids[:config.segment.labels])
  assert os.path.exists(os.path.join(workdir, 'eval.json'))


@pytest.mark.slow
def test_each_method_follows_its_rule(demo_run):
  _, workdir = demo_run
  train = _train_ids(workdir)
  results = {}
  for method in ('ds', 'us', 'random', 'entropy'):
    config, run_dir = _run_dir(workdir, f'method_{method}', method=method, sizes=(1, 2, 3),
                               student_steps=(1, 1), keep_students=True,
                               initial='random' if method in ('us', 'entropy') else 'diversity')
    config.lock()
    assert stages.run_stages(config, run_dir) == ['select_labels'], method
    ids = json.load(open(os.path.join(run_dir, 'selection.json')))
    assert sorted(ids) == sorted(train.tolist()), method    # all 3 images, each once
    results[method] = (config, run_dir, ids)
  position = {i: n for n, i in enumerate(train.tolist())}
  order = schedule.random_order(0, len(train))
  # random: the seeded order; us / entropy start with its first image.
  assert [position[i] for i in results['random'][2]] == order.tolist()
  assert position[results['us'][2][0]] == order[0] == position[results['entropy'][2][0]]
  # ds: one random image, then the brute-force farthest points of the cached features.
  features = np.load(os.path.join(results['ds'][1], 'select_labels', 'features.npy'))
  assert features.shape == (len(train), 4 * 8 * 32)
  expected, _ = brute_force_fps(features, [order[0]], 2)
  assert [position[i] for i in results['ds'][2]] == [order[0]] + expected.tolist()
  # us: the image of highest E under the step's student, recomputed from its checkpoint.
  config, run_dir, ids = results['us']
  from data_pipelines import sources
  from sdeseg_jax.training import sharding
  reader = sources.open_dataset(config.data.target, run_dir, 'target')
  arrays = checkpointing.read_arrays(os.path.join(run_dir, 'select_labels', 'student_01', 'ckpt'))
  variables = {'params': arrays['params'], 'batch_stats': arrays['batch_stats']}
  candidates = np.array([position[i] for i in ids[1:]])
  errors = students.depth_errors(
      config, students.student_network(config, 'depth'), variables,
      reader.segmentation('train').subset(candidates), reader,
      os.path.join(run_dir, 'depth', 'target'), sharding.make_mesh())
  assert ids[1] == train[candidates[np.argmax(errors)]]
  step = json.load(open(os.path.join(run_dir, 'select_labels', 'steps', '01.json')))
  assert step['chosen'][0]['error'] == pytest.approx(float(errors.max()), rel=1e-5)
  entropy_step = json.load(open(os.path.join(results['entropy'][1], 'select_labels', 'steps',
                                             '01.json')))
  assert entropy_step['student']['kind'] == 'segmentation'
  assert 0 < entropy_step['chosen'][0]['error'] <= 1           # mean normalised entropy


@pytest.mark.slow
def test_selection_resumes_at_the_next_step(demo_run, monkeypatch):
  _, workdir = demo_run
  longer = dict(sizes=(1, 2, 3), student_steps=(2, 2))
  config, straight = _run_dir(workdir, 'select_straight', **longer)
  assert stages.run_stages(config, straight) == ['select_labels']
  expected = json.load(open(os.path.join(straight, 'selection.json')))

  # Interrupted while training the student of step 2: steps 0 and 1 are on disk.
  config, resumed = _run_dir(workdir, 'select_resumed', **longer)
  trained_steps = []
  original = students.train_student

  def crash_at_step_2(*args, step, **kwargs):
    if step == 2:
      raise KeyboardInterrupt('interrupted')
    trained_steps.append(step)
    return original(*args, step=step, **kwargs)

  monkeypatch.setattr(students, 'train_student', crash_at_step_2)
  with pytest.raises(KeyboardInterrupt):
    stages.run_stages(config, resumed)
  steps = os.path.join(resumed, 'select_labels', 'steps')
  assert sorted(os.listdir(steps)) == ['00.json', '01.json']
  assert not os.path.exists(os.path.join(resumed, 'selection.json'))

  # The rerun trains only the student of step 2 and ends where the uninterrupted run did.
  def counted(*args, step, **kwargs):
    trained_steps.append(step)
    return original(*args, step=step, **kwargs)

  trained_steps.clear()
  monkeypatch.setattr(students, 'train_student', counted)
  assert stages.run_stages(config, resumed) == ['select_labels']
  assert trained_steps == [2]
  assert json.load(open(os.path.join(resumed, 'selection.json'))) == expected
  for step in ('00.json', '01.json', '02.json'):
    a = json.load(open(os.path.join(straight, 'select_labels', 'steps', step)))
    b = json.load(open(os.path.join(steps, step)))
    assert a == b, step

  # A schedule extended at its end continues; a changed step is refused.
  config, extended = _run_dir(workdir, 'select_extended', sizes=(1, 2), student_steps=(2,))
  assert stages.run_stages(config, extended) == ['select_labels']
  config.select.update(longer)
  trained_steps.clear()
  assert schedule.select(config, extended) == expected and trained_steps == [2]
  config.select.lambda_e = 10.0
  with pytest.raises(ValueError, match='01.json: this finished selection step was made with a '
                                       'different config'):
    schedule.select(config, extended)


@pytest.mark.slow
def test_cli_writes_the_list(demo_run, tmp_path):
  _, workdir = demo_run
  _, run_dir = _run_dir(workdir, 'select_cli')
  out = str(tmp_path / 'annotate' / 'list.json')
  command = [sys.executable, '-m', 'sdeseg_jax.select', '--config=configs/demo.py:tiny',
             f'--workdir={run_dir}', f'--out={out}', '--config.select.method=random',
             '--config.select.sizes=(1,3)', f'--config.compilation_cache_dir={CACHE}']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  ids = json.load(open(out))
  train = _train_ids(workdir)
  assert [list(train).index(i) for i in ids] == schedule.random_order(0, len(train)).tolist()
  # Random selection needs neither the SDE nor depth labels: only data (done) and select_labels.
  assert os.path.exists(os.path.join(run_dir, 'select_labels', 'done'))
  assert not os.path.exists(os.path.join(run_dir, 'sde_pretrain', 'done'))
  assert '3 images to annotate' in result.stdout
