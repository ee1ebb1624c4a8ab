"""benchmarks/tpu_plan.py: every stage's step lowers for GPUs and TPUs, and a tiny one compiles
for a TPU slice with libtpu (ahead of time, on this CPU host)."""

import jax
import pytest

from benchmarks import run_all
from benchmarks import tpu_plan
from benchmarks import train_step
from configs import base
from sdeseg_jax.models import layers
from sdeseg_jax.training import sharding


def tiny_config(stage: str):
  """The stage's benchmark config (run_all.STEPS) with its networks at the tests' tiny size."""
  config = train_step.load_config(run_all.STEPS[stage][0])
  for model in (config.model, config.source_model, config.student_model):
    base.make_tiny(model)
  return config


def exported_step(stage: str, platforms, width=512, height=512):
  """jax.export of the stage's jitted step (as its stage jits it) from abstract shapes at the
  reference's crop: nothing is compiled or allocated, so the full crop costs no more than a small
  one."""
  workload = train_step.STAGES[stage](tiny_config(stage), 2, width, height)
  mesh = sharding.make_mesh()
  state = tpu_plan.abstract(jax.eval_shape(workload.init), sharding.replicated(mesh))
  batch = tpu_plan.abstract(jax.eval_shape(workload.make_batch, jax.random.key(0)),
                            sharding.batch_sharding(mesh))
  return jax.export.export(workload.jit(mesh), platforms=platforms)(state, batch)


@pytest.mark.slow
@pytest.mark.parametrize('stage', sorted(train_step.STAGES))
def test_every_step_lowers_for_cuda_and_tpu(stage, monkeypatch):
  # The CPU-only convolution must stay on the CPU: with it switched on, the GPU and TPU lowering
  # still holds XLA's convolutions (jax.export itself rejects host callbacks and custom calls
  # that are not stable across platforms).
  monkeypatch.setenv(layers.CPU_CONVOLUTION_ENV, 'im2col')
  exported = exported_step(stage, ('cuda', 'tpu'))
  assert exported.platforms == ('cuda', 'tpu')
  module = exported.mlir_module()
  assert 'stablehlo.convolution' in module
  assert 'callback' not in module
  assert exported.nr_devices == jax.device_count()


def test_cpu_lowering_takes_the_im2col_switch(monkeypatch):
  """The control of the test above: lowered for the CPU alone, the switch does replace the
  convolutions, so their presence for cuda and tpu is the platform choice, not an unused switch."""
  monkeypatch.setenv(layers.CPU_CONVOLUTION_ENV, 'im2col')
  module = exported_step('inference:transfer', ('cpu',), 64, 64).mlir_module()
  assert 'stablehlo.convolution' not in module


@pytest.mark.slow
def test_tiny_step_compiles_for_a_v5e_slice():
  report = tpu_plan.plan(topology='v5e:2x2', stage='segment:transfer',
                         config=tiny_config('segment:transfer'), batch_per_chip=1, width=64,
                         height=64, dtype='float32')
  assert report['chips'] == 4 and report['hosts'] == 1 and report['global_batch'] == 4
  assert 'v5' in report['chip_kind'].lower()
  assert report['fits'] and 0 < report['total_gib'] < 1
  assert report['argument_gib'] > 0 and report['temp_gib'] > 0
  # The state is donated: the updated state's outputs alias the arguments.
  assert report['alias_gib'] > 0
  assert report['flops_per_chip'] > 0 and report['estimate_roofline_ms'] > 0
  assert report['parameters'] == sum(
      x.size for x in jax.tree.leaves(jax.eval_shape(train_step.STAGES['segment:transfer'](
          tiny_config('segment:transfer'), 4, 64, 64).init).params))


@pytest.mark.parametrize('arguments, message', [
    (['--topology=v9x:2x2'], "--topology='v9x:2x2': expected CHIP:SHAPE"),
    (['--topology=v5e:3x7'],
     "--topology='v5e:3x7': libtpu cannot describe this slice: INVALID_ARGUMENT"),
    (['--topology=v5e:2x2', '--global_batch=6'], '--global_batch=6 on v5e:2x2: global batch 6 is '
     'not divisible by the 4 devices'),
    (['--stage=nosuch'], "--stage='nosuch': expected one of"),
    (['--config=configs/nosuch.py'], "--config='configs/nosuch.py':"),
])
def test_bad_requests_are_one_line(arguments, message, capsys):
  assert tpu_plan.main(['--config=configs/demo.py:tiny', '--size=64x64', *arguments]) == 1
  error = capsys.readouterr().err.strip().splitlines()
  assert error[-1].startswith('FATAL ') and message in error[-1], error


def test_v4_slices_have_one_device_per_chip():
  # JAX runs a v4 chip's two TensorCores as one device (megacore); libtpu describes cores unless
  # asked, and a mesh over cores is refused.
  devices = tpu_plan.topology_devices('v4:2x2x1')
  assert len(devices) == 4 and len({tuple(d.coords) for d in devices}) == 4
  assert sharding.make_mesh(list(devices)).size == 4
