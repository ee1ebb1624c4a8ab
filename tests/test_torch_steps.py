"""benchmarks/torch_steps.py, the PyTorch side of the train-step benchmark: every workload builds
its full-size networks and runs one step at a tiny size with a finite loss; training steps move the
parameters (and the mean teacher), inference leaves them alone; run() reports what the benchmark
scripts read."""

import math

import pytest

torch = pytest.importorskip('torch')

from benchmarks import torch_steps  # noqa: E402

# Images [2, 3, 64, 64]: the output-stride-16 encoders end at 4x4, the pose encoder (stride 32) at
# 2x2, so every BatchNorm still sees more than one value per channel.
SIZE = 64
CPU = torch.device('cpu')


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
  return [p.detach().clone() for p in module.parameters()]


def _changed_fraction(before: list[torch.Tensor], module: torch.nn.Module) -> float:
  """Fraction of the parameter tensors that differ from `before` anywhere."""
  after = list(module.parameters())
  assert len(after) == len(before)
  return sum(not torch.equal(a, b) for a, b in zip(before, after)) / len(after)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(torch_steps.WORKLOADS))
def test_workload_runs_one_step(name):
  work = torch_steps.build(name, 2, SIZE, SIZE, CPU)
  before = {key: _snapshot(module) for key, module in work.modules.items()}
  loss = float(work.step())
  assert math.isfinite(loss), (name, loss)
  for key, module in work.modules.items():
    fraction = _changed_fraction(before[key], module)
    if work.trains:
      # Not all: e.g. the depth student's disparity heads 1..3 get no gradient (its loss reads
      # disparity 0 only, as the JAX step's), so Adam leaves them in place.
      assert fraction > 0.9, (name, key, fraction)
    else:
      assert fraction == 0.0, (name, key, fraction)
  assert work.passes


def test_workloads_are_the_jax_stages():
  """The same names and segment rows as the JAX benchmark (benchmarks/train_step.py --stage)."""
  from benchmarks import train_step
  assert set(torch_steps.WORKLOADS) == set(train_step.STAGES)
  assert torch_steps.SEGMENT_ROWS == train_step.SEGMENT_ROWS


def test_run_reports_timings():
  report = torch_steps.run('inference:transfer', batch=1, width=SIZE, height=SIZE, repeats=2,
                           device=CPU)
  assert report['benchmark'] == 'torch_step' and report['framework'] == 'torch'
  assert report['workload'] == 'inference:transfer' and report['size'] == [SIZE, SIZE]
  assert report['device'] == 'cpu' and report['dtype'] == 'float32'
  assert 0 < report['step_ms_min'] <= report['step_ms_median'] <= report['step_ms_max']
  assert report['images_per_s'] == pytest.approx(1e3 / report['step_ms_median'])
  assert report['threads'] == torch.get_num_threads() and report['peak_rss_mib'] > 0
  assert math.isfinite(report['loss']) and 'no_grad' in report['passes']
