"""Train-step time, compile time and memory of a stage's jitted step at full size, as JSON.

    python -m benchmarks.train_step --stage=sde [--config=configs/sde_cityscapes.py:C] [--batch=4]
        [--size=512x512] [--repeats=3] [--dtype=float32] [--out=FILE]
    python -m benchmarks.train_step --stage=segment:mtl+depthmix --config=configs/ssl_cityscapes.py \
        --batch=2          # also segment:transfer, segment:transfer+pseudo, segment:transfer+depthmix
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

import jax
import numpy as np

from benchmarks import common


def load_config(path: str):
  """configs/x.py or configs/x.py:variant -> its get_config(variant) (its default without one)."""
  path, _, variant = path.partition(':')
  spec = importlib.util.spec_from_file_location('benchmark_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def sde_setup(config, batch: int, width: int, height: int):
  """(state, step, batch) of the SDE stage."""
  from sdeseg_jax.models import networks
  from sdeseg_jax.stages import sde_pretrain
  network = networks.build('sde', config.model)
  state = sde_pretrain.create_state(config, config.model, network)
  step = sde_pretrain.make_train_step(network, config.model, config.sde)
  rng = np.random.default_rng(0)
  frames = rng.uniform(size=(batch, 3, height, width, 3)).astype(np.float32)
  k = np.array([[0.58 * width, 0, 0.5 * width], [0, 1.16 * height, 0.5 * height], [0, 0, 1]],
               np.float32)
  return state, step, dict(frames=frames, frames_aug=frames, intrinsics=np.tile(k, (batch, 1, 1)))


# The four rows of the reference's runtime table (supplement Table S1).
SEGMENT_ROWS = {
    'transfer': dict(network='transfer', mix='none'),
    'transfer+pseudo': dict(network='transfer', mix='pseudo'),
    'transfer+depthmix': dict(network='transfer', mix='depthmix'),
    'mtl+depthmix': dict(network='mtl', mix='depthmix'),
}


def segment_setup(config, batch: int, width: int, height: int, row: str | None):
  """(state, step, batch) of the segment stage (random init): one row of SEGMENT_ROWS, or with
  row None the config's own method (domain adaptation included)."""
  from sdeseg_jax.models import networks
  from sdeseg_jax.stages import segment
  config.segment.update(SEGMENT_ROWS.get(row, {}), init='none', mix_batch_size=batch)
  config.segment.source.batch_size = batch  # Matching Geometry: one source crop per target crop
  network = networks.build(config.segment.network, config.model)
  state = segment.create_state(config, '', network)
  step = segment.make_train_step(network, config, num_classes=19)
  rng = np.random.default_rng(0)
  k = np.array([[0.58 * width, 0, 0.5 * width], [0, 1.16 * height, 0.5 * height], [0, 0, 1]],
               np.float32)

  def examples(labeled: bool, rows: int = batch):
    frames = rng.uniform(size=(rows, 3, height, width, 3)).astype(np.float32)
    return dict(image=frames[:, 1], frames=frames, intrinsics=np.tile(k, (rows, 1, 1)),
                label=rng.integers(0, 19, (rows, height, width)).astype(np.int32),
                labeled=np.full(rows, labeled),
                depth=rng.uniform(size=(rows, height, width, 1)).astype(np.float32))
  batches = dict(labeled=examples(True), mix=examples(False))
  source = config.segment.source
  if source.enabled:
    source_rows = batch * (source.candidates if source.matching_geometry else 1)
    batches['source'] = {k: v for k, v in examples(True, source_rows).items() if k != 'frames'}
  return state, step, batches


def student_setup(config, batch: int, width: int, height: int):
  """(state, step, batch) of the data-selection depth student (ResNet50 + dec9 + BN, berHu, Adam)."""
  import ml_collections
  from sdeseg_jax.stages import select_labels
  network = select_labels.student_network(config, 'depth')
  optim_config = ml_collections.ConfigDict(config.select.student.optim.to_dict())
  optim_config.schedule.total_steps = max(config.select.student_steps)
  student = ml_collections.ConfigDict(config.select.student.to_dict())
  student.init_encoder = ''   # random weights: the step's cost does not depend on them
  state = select_labels.create_student_state(student, optim_config, network, jax.random.key(0))
  rng = np.random.default_rng(0)
  low = rng.uniform(0.01, 0.05, size=(batch,)).astype(np.float32)
  return state, select_labels.make_depth_student_step(network), dict(
      image=rng.uniform(size=(batch, height, width, 3)).astype(np.float32),
      depth=rng.uniform(0.05, 1.0, size=(batch, height, width, 1)).astype(np.float32),
      disp_low=low, disp_high=low + 1.0)


def inference_setup(config, batch: int, width: int, height: int, kind: str):
  """(variables, step, batch) of whole-image inference in evaluation mode (running BN statistics)
  of the transfer or the multi-task segmentation network, as the evaluate stage and predict run it.
  The "step" returns the variables unchanged and the logits' mean as its 'loss/total'."""
  import jax.numpy as jnp
  from sdeseg_jax.models import networks
  network = networks.build(kind, config.model)
  variables = networks.init_variables(kind, config.model, jax.random.key(0))
  method = 'segment' if kind == 'mtl' else None

  def step(variables, batch):
    out = network.apply(variables, batch['image'], method=method)
    return variables, {'loss/total': jnp.mean(out['logits'])}
  rng = np.random.default_rng(0)
  return variables, step, dict(image=rng.uniform(size=(batch, height, width, 3)).astype(np.float32))


STAGES = {'sde': sde_setup, 'ssda': lambda c, b, w, h: segment_setup(c, b, w, h, None),
          'student': student_setup,
          **{f'segment:{row}': (lambda row: lambda c, b, w, h: segment_setup(c, b, w, h, row))(row)
             for row in SEGMENT_ROWS},
          **{f'inference:{kind}': (lambda kind: lambda c, b, w, h: inference_setup(c, b, w, h, kind))(kind)
             for kind in ('transfer', 'mtl')}}


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
  args = parser.parse_args()
  from sdeseg_jax.training import sharding

  width, height = (int(v) for v in args.size.lower().split('x'))
  config = load_config(args.config)
  config.model.compute_dtype = args.dtype
  for item in args.set:
    key, _, value = item.partition('=')
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else value == 'True'

  state, step, batch = STAGES[args.stage](config, args.batch, width, height)
  mesh = sharding.make_mesh()
  sharding.check_global_batch(args.batch, mesh)
  jitted = sharding.jit_train_step(step, mesh)
  state = sharding.replicate(state, mesh)
  batch = sharding.global_batch(batch, mesh)
  start = time.perf_counter()
  compiled = jitted.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  memory = compiled.memory_analysis()
  state, metrics = compiled(state, batch)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  times.sort()
  median = times[len(times) // 2]
  flops = float(cost.get('flops', 0.0))
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  peak = common.matmul_peak_flops(args.dtype)
  common.emit(dict(
      benchmark='train_step', stage=args.stage, config=args.config, overrides=args.set,
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
      loss=float(metrics.get('loss/total', metrics.get('loss/berhu')))), args.out)


if __name__ == '__main__':
  main()
