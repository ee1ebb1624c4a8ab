"""Train-step time, compile time and memory of a stage's jitted step at full size, as JSON.

    python -m benchmarks.train_step --stage=sde [--config=configs/sde_cityscapes.py] [--batch=4]
        [--size=512x512] [--repeats=3] [--dtype=float32] [--out=FILE]
    python -m benchmarks.train_step --stage=segment:mtl+depthmix --config=configs/ssl_cityscapes.py \
        --batch=2          # also segment:transfer, segment:transfer+pseudo, segment:transfer+depthmix
    python -m benchmarks.train_step --stage=ssda --config=configs/ssda_gta.py --batch=2
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
  """configs/x.py or configs/x.py:variant -> its get_config(variant)."""
  path, _, variant = path.partition(':')
  spec = importlib.util.spec_from_file_location('benchmark_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


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


STAGES = {'sde': sde_setup, 'ssda': lambda c, b, w, h: segment_setup(c, b, w, h, None),
          **{f'segment:{row}': (lambda row: lambda c, b, w, h: segment_setup(c, b, w, h, row))(row)
             for row in SEGMENT_ROWS}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--stage', default='sde', choices=sorted(STAGES))
  parser.add_argument('--config', default='configs/sde_cityscapes.py')
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
  common.emit(dict(
      benchmark='train_step', stage=args.stage, config=args.config, overrides=args.set,
      batch=args.batch,
      size=[width, height], dtype=args.dtype, device=str(device), device_count=jax.device_count(),
      machine=common.machine(), compile_s=compile_s, step_ms_min=1e3 * times[0],
      step_ms_median=1e3 * median, step_ms_max=1e3 * times[-1],
      images_per_s=args.batch / median, flops_per_step=flops,
      tflops_per_s=flops / median / 1e12 if flops else None,
      xla_temp_mib=getattr(memory, 'temp_size_in_bytes', 0) / 2**20,
      xla_argument_mib=getattr(memory, 'argument_size_in_bytes', 0) / 2**20,
      device_peak_mib=stats.get('peak_bytes_in_use', 0) / 2**20 or None,
      peak_rss_mib=common.peak_rss_mib(),
      loss=float(metrics['loss/total'])), args.out)


if __name__ == '__main__':
  main()
