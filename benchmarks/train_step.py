"""Train-step time, compile time and memory of a stage's jitted step at full size, as JSON.

    python -m benchmarks.train_step --stage=sde [--config=configs/sde_cityscapes.py:C] [--batch=4]
        [--size=512x512] [--repeats=3] [--dtype=float32] [--out=FILE]
    python -m benchmarks.train_step --stage=segment:mtl+depthmix \
        --config=configs/ssl_cityscapes.py --batch=2
        # also segment:transfer, segment:transfer+pseudo, segment:transfer+depthmix
    python -m benchmarks.train_step --stage=ssda --config=configs/ssda_gta.py --batch=2
    python -m benchmarks.train_step --stage=student --config=configs/select_cityscapes.py
    python -m benchmarks.train_step --stage=inference:mtl --config=configs/ssl_cityscapes.py \
        --size=2048x1024 --batch=1     # also inference:transfer (evaluation mode, no gradients)
        # the full SSDA step of the config: labeled target, source (Matching Geometry candidates
        # included), Cross- and Target-Domain DepthMix, multi-task

Runs on whatever device JAX finds (all of them, data-parallel), on random inputs of the stage's
batch layout, so it needs no dataset. Step times: min / median / max over --repeats after one
warm-up step; compile time of the first call; XLA's FLOPs and memory analysis of the compiled step.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from benchmarks import common


def load_config(path: str):
  """configs/x.py or configs/x.py:variant -> its get_config(variant) (its default without one)."""
  path, _, variant = path.partition(':')
  spec = importlib.util.spec_from_file_location('benchmark_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


class Workload(NamedTuple):
  """One stage's jitted work, described without allocating it: `init()` builds the state (or the
  inference variables), `make_batch(key)` the global batch, so jax.eval_shape gives both shapes
  (benchmarks.tpu_plan) and calling them gives arrays (this benchmark)."""
  init: Callable[[], Any]
  step: Callable            # step(state, batch) -> (state, metrics); inference: -> outputs
  make_batch: Callable[[jax.Array], dict]
  inference: bool = False   # jitted as the evaluation step (no donation, outputs batch-sharded)

  def jit(self, mesh):
    """The step jitted exactly as its stage jits it."""
    from sdeseg_jax.training import sharding
    if self.inference:
      return sharding.jit_eval_step(self.step, mesh)
    return sharding.jit_train_step(self.step, mesh)


def _intrinsics(batch: int, width: int, height: int) -> jax.Array:
  """[B, 3, 3] pixel intrinsics of a Cityscapes-like camera at width x height."""
  k = jnp.array([[0.58 * width, 0, 0.5 * width], [0, 1.16 * height, 0.5 * height], [0, 0, 1]])
  return jnp.tile(k, (batch, 1, 1))


def sde_setup(config, batch: int, width: int, height: int) -> Workload:
  """The SDE stage's step on frame triplets."""
  from sdeseg_jax.models import networks
  from sdeseg_jax.stages import sde_pretrain
  network = networks.build('sde', config.model)

  def make_batch(key):
    frames = jax.random.uniform(key, (batch, 3, height, width, 3))
    return dict(frames=frames, frames_aug=frames, intrinsics=_intrinsics(batch, width, height))
  return Workload(lambda: sde_pretrain.create_state(config, config.model, network),
                  sde_pretrain.make_train_step(network, config.model, config.sde), make_batch)


# The four rows of the reference's runtime table (supplement Table S1).
SEGMENT_ROWS = {
    'transfer': dict(network='transfer', mix='none'),
    'transfer+pseudo': dict(network='transfer', mix='pseudo'),
    'transfer+depthmix': dict(network='transfer', mix='depthmix'),
    'mtl+depthmix': dict(network='mtl', mix='depthmix'),
}


def segment_setup(config, batch: int, width: int, height: int, row: str | None) -> Workload:
  """The segment stage's step (random init): one row of SEGMENT_ROWS, or with row None the
  config's own method (domain adaptation included)."""
  from sdeseg_jax.models import networks
  from sdeseg_jax.stages import segment
  config.segment.update(SEGMENT_ROWS.get(row, {}), init='none', mix_batch_size=batch)
  config.segment.source.batch_size = batch  # Matching Geometry: one source crop per target crop
  network = networks.build(config.segment.network, config.model)
  source = config.segment.source

  def examples(key, labeled: bool, rows: int = batch):
    keys = jax.random.split(key, 3)
    frames = jax.random.uniform(keys[0], (rows, 3, height, width, 3))
    return dict(image=frames[:, 1], frames=frames, intrinsics=_intrinsics(rows, width, height),
                label=jax.random.randint(keys[1], (rows, height, width), 0, 19, jnp.int32),
                labeled=jnp.full(rows, labeled),
                depth=jax.random.uniform(keys[2], (rows, height, width, 1)))

  def make_batch(key):
    keys = jax.random.split(key, 3)
    batches = dict(labeled=examples(keys[0], True), mix=examples(keys[1], False))
    if source.enabled:
      rows = batch * (source.candidates if source.matching_geometry else 1)
      batches['source'] = {k: v for k, v in examples(keys[2], True, rows).items() if k != 'frames'}
    return batches
  return Workload(lambda: segment.create_state(config, '', network),
                  segment.make_train_step(network, config, num_classes=19), make_batch)


def student_setup(config, batch: int, width: int, height: int) -> Workload:
  """The data-selection depth student's step (ResNet50 + dec9 + BN, berHu, Adam)."""
  import ml_collections
  from sdeseg_jax.stages.select_labels import students
  network = students.student_network(config, 'depth')
  optim_config = ml_collections.ConfigDict(config.select.student.optim.to_dict())
  optim_config.schedule.total_steps = max(config.select.student_steps)
  student = ml_collections.ConfigDict(config.select.student.to_dict())
  student.init_encoder = ''   # random weights: the step's cost does not depend on them

  def make_batch(key):
    keys = jax.random.split(key, 3)
    low = jax.random.uniform(keys[2], (batch,), minval=0.01, maxval=0.05)
    return dict(image=jax.random.uniform(keys[0], (batch, height, width, 3)),
                depth=jax.random.uniform(keys[1], (batch, height, width, 1), minval=0.05),
                disp_low=low, disp_high=low + 1.0)
  return Workload(lambda: students.create_student_state(student, optim_config, network,
                                                        jax.random.key(0)),
                  students.make_depth_student_step(network), make_batch)


def inference_setup(config, batch: int, width: int, height: int, kind: str) -> Workload:
  """Whole-image inference of the transfer or the multi-task segmentation network in evaluation
  mode (running BN statistics): the logits step the evaluate stage and predict jit."""
  from sdeseg_jax import evaluation
  from sdeseg_jax.models import networks
  return Workload(lambda: networks.init_variables(kind, config.model, jax.random.key(0)),
                  evaluation.predict_logits(networks.build(kind, config.model), kind),
                  lambda key: dict(image=jax.random.uniform(key, (batch, height, width, 3))),
                  inference=True)


STAGES = {'sde': sde_setup, 'ssda': lambda c, b, w, h: segment_setup(c, b, w, h, None),
          'student': student_setup,
          **{f'segment:{row}': (lambda row: lambda c, b, w, h: segment_setup(c, b, w, h, row))(row)
             for row in SEGMENT_ROWS},
          **{f'inference:{kind}':
                 (lambda kind: lambda c, b, w, h: inference_setup(c, b, w, h, kind))(kind)
             for kind in ('transfer', 'mtl')}}


def set_compute_dtype(config, dtype: str) -> None:
  """`dtype` for every network of the config (target, source SDE, selection student)."""
  for model in (config.model, config.source_model, config.student_model):
    model.compute_dtype = dtype


def apply_overrides(config, overrides: list[str]) -> None:
  """`--set key.path=value` items onto a config, each value parsed as the type of the key's."""
  for item in overrides:
    key, separator, value = item.partition('=')
    node = config
    *parents, leaf = key.split('.')
    try:
      for parent in parents:
        node = node[parent]
      current = node[leaf]
    except KeyError:
      raise SystemExit(f'--set {item}: the config has no key {key!r}') from None
    if not separator:
      raise SystemExit(f'--set {item}: expected KEY=VALUE')
    if isinstance(current, bool):
      if value not in ('True', 'False', 'true', 'false'):
        raise SystemExit(f'--set {item}: {key} is a bool (True or False)')
      node[leaf] = value in ('True', 'true')
    else:
      node[leaf] = type(current)(value)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--stage', default='sde', choices=sorted(STAGES))
  parser.add_argument('--config', default='configs/sde_cityscapes.py:C')
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--size', default='512x512', help='WIDTHxHEIGHT')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--out', default='')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override, e.g. segment.source.matching_geometry=False')
  parser.add_argument('--tiny', action='store_true',
                      help="the networks at the tests' tiny width and depth (a smoke test)")
  args = parser.parse_args()
  from sdeseg_jax.training import sharding

  width, height = common.parse_size(args.size)
  config = load_config(args.config)
  set_compute_dtype(config, args.dtype)
  if args.tiny:
    from configs import base
    for model in (config.model, config.source_model, config.student_model):
      base.make_tiny(model)
  apply_overrides(config, args.set)

  workload = STAGES[args.stage](config, args.batch, width, height)
  mesh = sharding.make_mesh()
  sharding.check_global_batch(args.batch, mesh)
  jitted = workload.jit(mesh)
  state = sharding.replicate(workload.init(), mesh)
  batch = sharding.global_batch(jax.device_get(workload.make_batch(jax.random.key(0))), mesh)
  start = time.perf_counter()
  compiled = jitted.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = common.xla_cost(compiled)
  memory = compiled.memory_analysis()

  def run(state):
    """One step, waited for: (state, its metrics or outputs)."""
    out = compiled(state, batch)
    state, out = (state, out) if workload.inference else out
    return state, jax.block_until_ready(out)
  state, out = run(state)  # warm-up
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    state, out = run(state)
    times.append(time.perf_counter() - start)
  times.sort()
  median = times[len(times) // 2]
  flops = float(cost.get('flops', 0.0))
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  peak = common.matmul_peak_flops(args.dtype)
  common.emit(dict(
      benchmark='train_step', stage=args.stage, config=args.config, overrides=args.set,
      tiny=args.tiny,
      batch=args.batch,
      size=[width, height], dtype=args.dtype, device=str(device), device_count=jax.device_count(),
      machine=common.machine(), compile_s=compile_s, step_ms_min=1e3 * times[0],
      step_ms_median=1e3 * median, step_ms_max=1e3 * times[-1],
      images_per_s=args.batch / median, flops_per_step=flops,
      tflops_per_s=flops / median / 1e12 if flops else None,
      matmul_peak_tflops_per_s=peak / 1e12, peak_fraction=flops / median / peak if flops else None,
      xla_temp_mib=getattr(memory, 'temp_size_in_bytes', 0) / 2**20,
      xla_argument_mib=getattr(memory, 'argument_size_in_bytes', 0) / 2**20,
      device_peak_mib=stats.get('peak_bytes_in_use', 0) / 2**20 or None,
      peak_rss_mib=common.peak_rss_mib(),
      loss=None if workload.inference else float(out.get('loss/total', out.get('loss/berhu')))),
      args.out)


if __name__ == '__main__':
  main()
