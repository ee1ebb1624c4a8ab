"""Multi-process start-up and the few cross-process helpers the stage runner needs.

One JAX process per host (TPU pods) or per GPU (SLURM); `jax.distributed.initialize` connects them
before anything touches a device. `initialize(mode, ...)` decides whether to call it:

  mode 'off'   never (a single process, whatever the environment says);
  mode 'on'    always; arguments not given are detected by JAX itself (SLURM, Open MPI, the Cloud
               TPU metadata server, JAX_COORDINATOR_ADDRESS);
  mode 'auto'  when `detect()` finds a multi-process environment or an argument is given.

Processes must share the workdir (NFS, Filestore, a gcsfuse mount at the same path): Orbax writes
one checkpoint from all of them, and process 0 writes the stage markers the others read.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sdeseg_jax.errors import ConfigError
from sdeseg_jax.training import sharding

MODES = ('auto', 'on', 'off')
# Seconds without heartbeats after which a process counts as lost (JAX's default is 100 s): the
# coordination service then aborts every other process, naming the lost one, instead of leaving
# them waiting in a collective (gloo's collectives wait 30 minutes).
HEARTBEAT_TIMEOUT_S = 120
# PCI vendor id of Google's TPU chips (what JAX's own TPU detection looks for in sysfs).
_GOOGLE_PCI_VENDOR = '0x1ae0'


def _count(env: Mapping[str, str], name: str) -> int:
  try:
    return int(env.get(name, '0'))
  except ValueError:
    return 0


def _tpu_chips_present() -> bool:
  for vendor in glob.glob('/sys/bus/pci/devices/*/vendor'):
    try:
      with open(vendor) as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def detect(env: Mapping[str, str] | None = None, *,
           tpu_vm: bool | None = None) -> str | None:
  """Why this process is one of several (a sentence for the log), or None for a single process.

  Args:
    env: the environment (default os.environ).
    tpu_vm: whether this is a Cloud TPU VM (default: libtpu installed and a TPU chip on the PCI
      bus). A TPU VM initialises even alone: JAX learns the pod's workers from the metadata server.
  """
  env = os.environ if env is None else env
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return f'JAX_COORDINATOR_ADDRESS={env["JAX_COORDINATOR_ADDRESS"]}'
  # srun sets SLURM_STEP_NODELIST; a batch script's own shell (one task) is not a multi-process run.
  if _count(env, 'SLURM_NTASKS') > 1 and 'SLURM_PROCID' in env and 'SLURM_STEP_NODELIST' in env:
    return (f'SLURM job {env.get("SLURM_JOB_ID", "?")}: task {env["SLURM_PROCID"]} of '
            f'{env["SLURM_NTASKS"]}')
  if _count(env, 'OMPI_COMM_WORLD_SIZE') > 1:
    return f'Open MPI: rank {env.get("OMPI_COMM_WORLD_RANK", "?")} of {env["OMPI_COMM_WORLD_SIZE"]}'
  hosts = env.get('TPU_WORKER_HOSTNAMES') or env.get('TPU_PROCESS_ADDRESSES') or ''
  if ',' in hosts:  # GKE TPU slices list their workers here
    return f'TPU slice of {len(hosts.split(","))} workers (TPU_WORKER_HOSTNAMES)'
  if tpu_vm is None:
    tpu_vm = importlib.util.find_spec('libtpu') is not None and _tpu_chips_present()
  if tpu_vm:
    return 'Cloud TPU VM (workers from the metadata server)'
  return None


def initialize(mode: str = 'auto', *, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               local_device_ids: Sequence[int] | None = None,
               heartbeat_timeout: int = HEARTBEAT_TIMEOUT_S,
               env: Mapping[str, str] | None = None) -> bool:
  """Calls jax.distributed.initialize when `mode` says so; returns whether it did.

  Must run before anything initialises a JAX backend (jax.devices(), a computation). A process
  that sends no heartbeat for `heartbeat_timeout` seconds (killed, its host lost) ends the others:
  JAX's coordination service aborts them (exit status 134) with "The following tasks are unhealthy
  (stopped sending heartbeats): <process ids>", or, where process 0 (the service) was lost, "the
  leader task was preempted/died". Rerunning every process resumes from the last checkpoint.
  """
  if heartbeat_timeout <= 0:
    raise ConfigError(f'--heartbeat_timeout={heartbeat_timeout}: expected a positive number of '
                      'seconds')
  if mode not in MODES:
    raise ConfigError(f'--distributed={mode!r}: expected one of {", ".join(MODES)}')
  if mode == 'off':
    return False
  explicit = {k: v for k, v in dict(coordinator_address=coordinator_address,
                                    num_processes=num_processes, process_id=process_id).items()
              if v is not None}
  reason = ('flags ' + ', '.join(f'--{k}={v}' for k, v in explicit.items()) if explicit
            else detect(env))
  if mode == 'auto' and reason is None:
    return False
  logging.info('Initialising jax.distributed: %s', reason or '--distributed=on')
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids,
                               heartbeat_timeout_seconds=heartbeat_timeout)
  except (ValueError, TypeError) as e:
    # JAX's own message says which value is missing; add where values come from.
    raise ConfigError(
        f'jax.distributed.initialize failed ({e}); detected: {reason or "no cluster"}. Pass '
        '--coordinator_address=HOST:PORT --num_processes=N --process_id=I (all three), run under '
        'SLURM/Open MPI/a Cloud TPU VM, or --distributed=off for one process.') from e
  logging.info('Process %d of %d; %d local of %d devices; a process silent for %d s counts as '
               'lost', jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), heartbeat_timeout)
  _connect_collectives()
  return True


def _connect_collectives() -> None:
  """Runs a barrier and a sum over the data mesh while all processes have just connected.

  XLA connects the devices of a collective lazily, at its first execution, and on CPU (gloo) all
  processes must arrive there within a fixed 30 s (XLA's gloo key-value deadline; collectives on a
  connected group wait 30 minutes). Left to the training loop, the first collective is the first
  step's gradient reduction, which each process reaches after compiling the step itself: on busy
  cores their compile times differ by more than that. The connections last for the process's
  life, so making them here, where the processes are in step, covers every later program: they all
  use the data mesh's devices (and barriers the per-process groups).
  """
  barrier('jax.distributed connected')
  mesh = sharding.make_mesh()
  ones = sharding.global_batch({'x': np.ones(jax.local_device_count(), np.int32)}, mesh)['x']
  total = int(jax.jit(jnp.sum, out_shardings=sharding.replicated(mesh))(ones))
  if total != jax.device_count():
    raise RuntimeError(f'a sum over the {jax.device_count()} devices of {jax.process_count()} '
                       f'processes gave {total}: the collectives do not reach every device')
  logging.info('Collectives connected across %d devices', total)


def is_primary() -> bool:
  """Whether this process writes the run's shared files (markers, JSON, summaries)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def process_index() -> int:
  return jax.process_index()
