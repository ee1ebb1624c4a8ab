"""A stage's real train step compiled ahead of time for a TPU slice on this CPU host, as JSON.

    python -m benchmarks.tpu_plan --topology=v5e:2x2 --stage=segment:mtl+depthmix \
        --config=configs/ssl_cityscapes.py [--batch_per_chip=2] [--size=512x512] \
        [--dtype=bfloat16] [--set model.encoder.remat=True] [--out=FILE]

No TPU is needed: libtpu (the `tpu` extra) describes the slice (jax.experimental.topologies) and
compiles for it. The step is benchmarks/train_step.py's workload of --stage, built from abstract
shapes only (jax.eval_shape: no parameter or batch is allocated), jitted as the stage jits it
(sdeseg_jax.training.sharding: batch sharded over a mesh of all the slice's chips, state replicated
and donated) at a global batch of batch_per_chip x chips.

Reported per chip: XLA's memory analysis (argument, output, alias, temp bytes) against the chip's
HBM, and XLA's cost analysis (flops, bytes accessed). Times are ESTIMATES, never measurements: the
roofline `max(flops / peak, bytes accessed / HBM bandwidth)` with the chip's documented peaks is a
lower bound of the step time; XLA's own cost-model time (`optimal_seconds`) is reported only where
it is positive. Under data parallelism the gradient all-reduce adds ring traffic of
2 (n - 1) / n x the gradient bytes per chip; its time by the documented ICI bandwidth is reported
beside it (also a model, not a measurement).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks import common
from benchmarks import train_step

# Documented per-chip figures (Cloud TPU system-architecture pages): HBM GiB, peak bf16 TFLOP/s,
# HBM GB/s, bidirectional ICI GB/s. XLA:TPU runs float32 convolutions and matmuls at the default
# precision as bf16 passes on the MXU, so the bf16 peak is the roofline of float32 steps too.
CHIPS = {
    'v4': dict(hbm_gib=32, peak_tflops=275, hbm_gbps=1200, ici_gbps=None),
    'v5e': dict(hbm_gib=16, peak_tflops=197, hbm_gbps=819, ici_gbps=400),
    'v5p': dict(hbm_gib=95, peak_tflops=459, hbm_gbps=2765, ici_gbps=1200),
    'v6e': dict(hbm_gib=32, peak_tflops=918, hbm_gbps=1640, ici_gbps=800),
}
# A plan fits when arguments + outputs - aliased + temporaries stay within this share of the HBM:
# the rest is for the runtime's own buffers, fragmentation and the input pipeline's transfers.
HBM_HEADROOM = 0.9


class PlanError(Exception):
  """A request the planner cannot compile (unknown topology, indivisible batch, ...)."""


def topology_devices(topology: str):
  """'v5e:2x2' -> the abstract TPU devices of that slice (libtpu's description)."""
  chip, separator, shape = topology.partition(':')
  if not separator or chip not in CHIPS:
    raise PlanError(f'--topology={topology!r}: expected CHIP:SHAPE with CHIP one of '
                    f'{", ".join(CHIPS)} (e.g. v5e:2x2, v4:2x2x1, v5p:4x4x8)')
  try:
    from jax.experimental import topologies
  except ImportError as error:  # pragma: no cover - part of jax
    raise PlanError(f'jax.experimental.topologies: {error}') from None
  # Several planners (pytest workers, a matrix beside a test) may load libtpu at once: without this
  # the second fails on libtpu's lockfile, which guards real TPU chips, and there are none here.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  # v4 chips have two TensorCores that JAX runs as one device ("megacore"); libtpu's description
  # lists the cores unless asked for that configuration (v5p and later describe chips already).
  options = {'chip_config_name': 'megacore'} if chip == 'v4' else {}
  try:
    description = topologies.get_topology_desc(platform='tpu', topology_name=topology, **options)
  except Exception as error:  # noqa: BLE001 - libtpu raises XlaRuntimeError / RuntimeError
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if 'tpu' in detail.lower() and 'not' in detail.lower() and 'found' in detail.lower():
      detail += ' (install the tpu extra: pip install -e ".[tpu]")'
    raise PlanError(f'--topology={topology!r}: libtpu cannot describe this slice: '
                    f'{detail}') from None
  return description.devices


def abstract(tree, sharding):
  """jax.ShapeDtypeStructs of a pytree's shapes with `sharding` (no arrays)."""
  import jax
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def switches(config) -> dict:
  """The config values that change what the step computes or holds (recorded with each plan)."""
  seg = config.segment
  return dict(compute_dtype=config.model.compute_dtype,
              encoder_remat=bool(config.model.encoder.get('remat', False)),
              network=seg.network, mix=seg.mix, source=bool(seg.source.enabled),
              cross_domain_mix=seg.source.mix if seg.source.enabled else None,
              matching_geometry=bool(seg.source.enabled and seg.source.matching_geometry),
              depthmix_online_depth=bool(seg.depthmix_online_depth))


def plan(*, topology: str, stage: str, config, width: int, height: int, dtype: str,
         batch_per_chip: int = 0, global_batch: int = 0) -> dict:
  """Compiles the stage's step for the slice at batch_per_chip x chips (or global_batch); the
  plan as a JSON-able dict."""
  import jax
  from sdeseg_jax.errors import ConfigError
  from sdeseg_jax.training import sharding

  if stage not in train_step.STAGES:
    raise PlanError(f'--stage={stage!r}: expected one of {", ".join(sorted(train_step.STAGES))}')
  if max(batch_per_chip, global_batch) < 1:
    raise PlanError('expected --batch_per_chip or --global_batch of at least 1')
  devices = topology_devices(topology)
  mesh = sharding.make_mesh(list(devices))
  global_batch = global_batch or batch_per_chip * mesh.size
  try:
    sharding.check_global_batch(global_batch, mesh)
  except ConfigError as error:
    raise PlanError(f'--global_batch={global_batch} on {topology}: {error}') from None
  train_step.set_compute_dtype(config, dtype)
  workload = train_step.STAGES[stage](config, global_batch, width, height)
  state = jax.eval_shape(workload.init)
  batch = jax.eval_shape(workload.make_batch, jax.random.key(0))
  state = abstract(state, sharding.replicated(mesh))
  batch = abstract(batch, sharding.batch_sharding(mesh))

  start = time.perf_counter()
  compiled = workload.jit(mesh).lower(state, batch).compile()
  compile_s = time.perf_counter() - start

  memory = compiled.memory_analysis()
  cost = common.xla_cost(compiled)
  argument = memory.argument_size_in_bytes
  output = memory.output_size_in_bytes
  alias = memory.alias_size_in_bytes
  temp = memory.temp_size_in_bytes
  code = getattr(memory, 'generated_code_size_in_bytes', 0)
  total = argument + output - alias + temp + code
  chip = CHIPS[topology.partition(':')[0]]
  hbm = chip['hbm_gib'] * 2**30
  flops = float(cost.get('flops', 0.0))
  bytes_accessed = float(cost.get('bytes accessed', 0.0))
  compute_s = flops / (chip['peak_tflops'] * 1e12)
  memory_s = bytes_accessed / (chip['hbm_gbps'] * 1e9)
  optimal = float(cost.get('optimal_seconds', -1.0))
  # Data parallelism all-reduces one gradient per parameter (float32): a ring moves
  # 2 (n - 1) / n of them through each chip's links.
  parameters = _parameter_count(state, workload.inference)
  allreduce_bytes = 2 * (mesh.size - 1) / mesh.size * 4 * parameters if mesh.size > 1 else 0.0
  ici = chip['ici_gbps']
  gib = 2**30
  return dict(
      benchmark='tpu_plan', topology=topology, chip_kind=devices[0].device_kind,
      chips=mesh.size, hosts=len({d.process_index for d in devices}), stage=stage,
      global_batch=global_batch, batch_per_chip=global_batch // mesh.size, size=[width, height],
      dtype=dtype,
      switches=switches(config), hbm_per_chip_gib=chip['hbm_gib'],
      argument_gib=argument / gib, output_gib=output / gib, alias_gib=alias / gib,
      temp_gib=temp / gib, generated_code_gib=code / gib, total_gib=total / gib,
      fits=total <= HBM_HEADROOM * hbm, hbm_headroom=HBM_HEADROOM,
      flops_per_chip=flops, bytes_accessed_per_chip=bytes_accessed,
      estimate_roofline_ms=1e3 * max(compute_s, memory_s),
      estimate_bound='compute' if compute_s >= memory_s else 'memory',
      estimate_compute_ms=1e3 * compute_s, estimate_memory_ms=1e3 * memory_s,
      estimate_xla_optimal_ms=1e3 * optimal if optimal > 0 else None,
      parameters=parameters, estimate_allreduce_bytes_per_chip=allreduce_bytes,
      estimate_allreduce_ms=(1e3 * allreduce_bytes / (ici * 1e9)
                             if ici and allreduce_bytes else None),
      peaks=dict(chip, source='Cloud TPU system architecture pages'),
      compile_s=compile_s, machine=common.machine(), peak_rss_mib=common.peak_rss_mib())


def _parameter_count(state, inference: bool) -> int:
  """Trainable parameters of an abstract state (inference: of the variables' params)."""
  import jax
  params = state['params'] if inference else state.params
  return sum(int(x.size) for x in jax.tree.leaves(params))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--topology', default='v5e:2x2', help='CHIP:SHAPE, e.g. v5e:2x2, v4:2x2x1')
  parser.add_argument('--stage', default='segment:mtl+depthmix',
                      help=f'one of {", ".join(sorted(train_step.STAGES))}')
  parser.add_argument('--config', default='configs/ssl_cityscapes.py',
                      help='configs/x.py or configs/x.py:variant')
  parser.add_argument('--batch_per_chip', type=int, default=2)
  parser.add_argument('--global_batch', type=int, default=0,
                      help='the whole slice\'s batch instead of --batch_per_chip x chips')
  parser.add_argument('--size', default='512x512', help='WIDTHxHEIGHT')
  parser.add_argument('--dtype', default=None, choices=['float32', 'bfloat16'],
                      help='compute dtype (default: the TPU default of model.compute_dtype=auto, '
                      'bfloat16)')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override, e.g. model.encoder.remat=True')
  parser.add_argument('--out', default='')
  args = parser.parse_args(argv)
  from sdeseg_jax.models import networks
  try:
    width, height = common.parse_size(args.size)
  except ValueError:
    print(f'FATAL --size={args.size!r}: expected WIDTHxHEIGHT, e.g. 512x512', file=sys.stderr)
    return 1
  try:
    config = train_step.load_config(args.config)
  except (OSError, ValueError) as error:
    print(f'FATAL --config={args.config!r}: {error}', file=sys.stderr)
    return 1
  train_step.apply_overrides(config, args.set)
  try:
    report = plan(topology=args.topology, stage=args.stage, config=config, width=width,
                  height=height, dtype=args.dtype or networks.PLATFORM_DTYPES['tpu'],
                  batch_per_chip=args.batch_per_chip,
                  global_batch=args.global_batch)
  except PlanError as error:
    print(f'FATAL {error}', file=sys.stderr)
    return 1
  report.update(config=args.config, overrides=args.set)
  common.emit(report, args.out)
  return 0


if __name__ == '__main__':
  # libtpu looks for TPU hardware and the host's slice when it loads; neither exists here.
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  sys.exit(main())
