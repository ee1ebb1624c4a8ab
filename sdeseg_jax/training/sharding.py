"""Everything about device placement: the mesh, shardings, global batches, the jitted step.

Data parallelism over one mesh axis 'data': batches are sharded along their first axis, the state is
replicated. Under jit the BatchNorm statistics are therefore computed over the global batch
(synchronised BN), unlike the reference's per-GPU BN. The mesh axis is Auto (not the Explicit
default), which accepts the gathers of image warping, bincount confusion matrices and batch
reductions.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from sdeseg_jax.errors import ConfigError

DATA_AXIS = 'data'


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over all (or the given) devices.

  Each process's devices are consecutive along the axis, in process order: the input pipelines give
  process p rows [p * B/P, (p + 1) * B/P) of the global batch, and
  make_array_from_process_local_data places a process's rows on its devices in mesh order, so only
  this order reproduces the single-process batch row for row. jax.make_mesh may order devices by
  physical topology.
  """
  devices = devices or jax.devices()
  mesh = jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))
  ordered = list(mesh.devices.flat)
  processes = [d.process_index for d in ordered]
  if processes != sorted(processes):
    # Stable sort: keeps jax.make_mesh's order among a process's own devices.
    ordered.sort(key=lambda d: d.process_index)
    mesh = jax.sharding.Mesh(np.array(ordered), (DATA_AXIS,),
                             axis_types=(jax.sharding.AxisType.Auto,))
  return mesh


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_global_batch(global_batch: int, mesh: jax.sharding.Mesh) -> None:
  if global_batch % mesh.size:
    raise ConfigError(f'global batch {global_batch} is not divisible by the {mesh.size} devices')


def global_batch(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """The global batch from each process's rows (every process passes its own local batch)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree (the train state) on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def jit_train_step(step: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """jit(step(state, batch) -> (state, metrics)): batch sharded, state replicated and donated."""
  return jax.jit(step, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def jit_eval_step(step: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """jit(step(variables, batch) -> per-example outputs), outputs sharded like the batch."""
  return jax.jit(step, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                 out_shardings=batch_sharding(mesh))


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of `x` as a NumPy array on every process.

  A batch-sharded array spanning several processes is gathered (a collective: every process must
  call this at the same point); replicated or single-process arrays are copied locally.
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  if x.is_fully_addressable:
    return np.asarray(x)
  shards = sorted(x.addressable_shards, key=lambda shard: shard.index[0].start or 0)
  return np.concatenate([np.asarray(shard.data) for shard in shards])
