"""XLA's TPU cost analysis of single ops, compiled ahead of time for one chip, as JSON.

    python -m benchmarks.tpu_op_cost [--topology=v5e:2x2] [--size=512x512] [--batch=2] [--out=FILE]

Why: the TPU plans' byte count (benchmarks/tpu_plan.py) is far above the bytes a step can move.
This compiles, for one chip of the slice, the photometric warp (ops.warp: the SDE loss's bilinear
sampling, one gather of 4 neighbours per pixel) forward and forward + backward, and a 3x3 64->64
bfloat16 convolution forward + backward at the same size for scale, and reports XLA's flops and
bytes accessed beside the bytes of the op's own inputs. All figures are XLA's cost model, not
measurements.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import tpu_plan


def costs(compiled) -> dict:
  cost = common.xla_cost(compiled)
  return dict(flops=float(cost.get('flops', 0.0)),
              bytes_accessed=float(cost.get('bytes accessed', 0.0)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--topology', default='v5e:2x2')
  parser.add_argument('--size', default='512x512', help='WIDTHxHEIGHT')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  from sdeseg_jax import ops
  width, height = common.parse_size(args.size)
  device = tpu_plan.topology_devices(args.topology)[0]
  mesh = jax.sharding.Mesh(np.array([device]), ('data',))
  one = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def spec(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=one)

  def compiled(fn, *inputs):
    return costs(jax.jit(fn, in_shardings=(one,) * len(inputs), out_shardings=one)
                 .lower(*inputs).compile())

  b = args.batch
  warp_inputs = (spec((b, height, width, 3)), spec((b, height, width, 1)), spec((b, 4, 4)),
                 spec((b, 3, 3)))
  input_bytes = sum(np.prod(x.shape) * x.dtype.itemsize for x in warp_inputs)

  def warp_loss(source, depth, transform, intrinsics):
    return jnp.sum(ops.warp(source, depth, transform, intrinsics))

  def conv_loss(x, kernel):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(y.astype(jnp.float32))

  conv_inputs = (spec((b, height, width, 64), jnp.bfloat16), spec((3, 3, 64, 64), jnp.bfloat16))
  rows = {
      'warp_forward': dict(compiled(ops.warp, *warp_inputs), input_bytes=float(input_bytes)),
      'warp_forward_backward': dict(
          compiled(jax.grad(warp_loss, argnums=(0, 1)), *warp_inputs),
          input_bytes=float(input_bytes)),
      'conv3x3_64_bf16_forward_backward': dict(
          compiled(jax.grad(conv_loss, argnums=(0, 1)), *conv_inputs),
          input_bytes=float(sum(np.prod(x.shape) * 2 for x in conv_inputs))),
  }
  common.emit(dict(benchmark='tpu_op_cost', topology=args.topology, chip_kind=device.device_kind,
                   batch=b, size=[width, height], estimate=True, ops=rows), args.out)


if __name__ == '__main__':
  main()
