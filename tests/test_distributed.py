"""Two JAX processes on this machine (CPU, localhost coordinator, gloo collectives, two fake
devices each) train the tiny SDE and segment stages, and end where one process with the same
global batch ends (1e-5); their checkpoints restore onto another device and process count. On the
way, one of the two processes is SIGKILLed (a lost host) after SDE checkpoint 2: the other exits
within the heartbeat timeout naming it, and a rerun of both resumes from checkpoint 2.

The reference is one process with the same four devices. The device layout alone changes float32
summation order, and the per-pixel minimum of the photometric loss amplifies that in the pose
decoder: one vs four devices differ by 5e-6 after two SDE steps and 1.2e-5 after four; two
processes x two devices vs one process x four devices (gloo's reductions vs in-process ones) by
3e-7 after two steps and 5e-6 after four, the largest parameter difference. A resume is bitwise
exact. What is under test is the multi-process machinery: per-process input rows, global batches,
collectives, checkpoints from every process, process-0-only logging; an error there (a wrong row,
a missing reduction) shows at 1e-2.

The segment stage runs the transfer network with ClassMix (mean teacher, pseudo-labels, mixing)
rather than the demo's multi-task + DepthMix: the same multi-process machinery at a third of the
compile time on two cores. Both optimisers are SGD: Adam's first step is lr * sign(g), which flips
for gradients that are zero up to summation order and cannot be compared at 1e-5.

A further two-process script has one process reach its first collective 40 s after the other
(gloo gives a group of devices 30 s to connect; distributed.initialize connects them up front).

Time: as `make test` runs it on a clean clone (after the other tests, whose compilation cache holds
none of the 4-device programs), 5 minutes on two otherwise idle cores (the fixture's three runs 4.2
min, the late-process script 41 s); 10-14 minutes on two cores busy with other work.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import NamedTuple

import flax
import jax
import numpy as np
import pytest

from configs import demo
from sdeseg_jax import artifacts
from sdeseg_jax.models import networks
from sdeseg_jax.stages import sde_pretrain
from sdeseg_jax.training import checkpointing
from sdeseg_jax.training import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, '.cache', 'xla_tests')
STEPS = 4
# The lost-process scenario's heartbeat timeout: short, but long enough that a live process on two
# busy cores never misses it.
HEARTBEAT_S = 20
# Global batches of 4: divisible by the 4 devices of two processes with two devices each.
COMMON = [
    '--config=configs/demo.py:tiny', f'--config.compilation_cache_dir={CACHE}',
    '--config.sde.batch_size=4', '--config.sde.optim.name=sgd',
    '--config.sde.optim.groups.all.lr=0.1', '--config.sde.checkpoint_every=2',
    '--config.sde.log_every=2', '--config.sde.images_every=2',
    '--config.segment.network=transfer', '--config.segment.mix=classmix',
    '--config.segment.batch_size=4', '--config.segment.mix_batch_size=4',
    '--config.segment.eval_batch_size=4', '--config.segment.checkpoint_every=2',
    '--config.segment.log_every=2', '--config.segment.eval_every=0',
    '--config.segment.images_every=0', '--config.segment.selection=',  # a random labeled subset
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  for name in ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    env.pop(name, None)  # this test decides how many processes there are
  return env


def _show(pytestconfig, line: str) -> None:
  """Writes `line` to the terminal at once, past pytest's output capture (as capsys.disabled()
  does): the module fixture's three runs take minutes under one test's name."""
  capture = pytestconfig.pluginmanager.getplugin('capturemanager')
  terminal = pytestconfig.pluginmanager.getplugin('terminalreporter')
  if terminal is not None:
    with capture.global_and_fixture_disabled():
      terminal.write_line(line)


class Lost(NamedTuple):
  """What a run with a lost process left: each process's output and exit status, and how long
  the others ran on after the loss."""
  outputs: list[str]
  codes: list[int]
  seconds_after_loss: float


def _launch(command: list[str], *, processes: int, devices: int, log_name: str, log_dir,
            pytestconfig, lose: tuple[int, str] | None = None) -> list[str] | Lost:
  """Runs `command` in `processes` processes joined by a localhost coordinator (the flags
  --coordinator_address, --num_processes and --process_id are appended); returns each one's output,
  asserting that all exited 0. With lose=(i, path), process i is SIGKILLed as soon as `path`
  exists (a lost host) and a Lost is returned instead.
  """
  if processes > 1:
    port = _free_port()
    commands = [command + [f'--coordinator_address=localhost:{port}',
                           f'--num_processes={processes}', f'--process_id={i}']
                for i in range(processes)]
  else:
    commands = [command]
  logs = [os.path.join(log_dir, f'{log_name}_{len(os.listdir(log_dir))}_{i}.log')
          for i in range(len(commands))]
  what = [f'{processes} process{"es" if processes > 1 else ""} x {devices} devices',
          *(arg[2:] for arg in command if arg.startswith('--config.stages='))]
  if lose is not None:
    what.append(f'process {lose[0]} lost once {os.path.basename(lose[1])} exists')
  _show(pytestconfig, f'  launched {log_name}: {", ".join(what)}; log {logs[0]}')
  running = []
  for c, log in zip(commands, logs):
    with open(log, 'w') as out:
      running.append(subprocess.Popen(c, cwd=REPO, env=_env(devices), stdout=out,
                                      stderr=subprocess.STDOUT))
  lost_at = None
  if lose is not None:
    victim, path = lose
    deadline = time.time() + 600
    while not os.path.exists(path) and running[victim].poll() is None and time.time() < deadline:
      time.sleep(0.02)
    running[victim].kill()
    lost_at = time.time()
  codes = []
  for p in running:
    try:
      codes.append(p.wait(timeout=600))
    except subprocess.TimeoutExpired:
      for q in running:
        q.kill()
      raise
  outputs = [open(log).read() for log in logs]
  if lose is not None:
    return Lost(outputs, codes, time.time() - lost_at)
  for i, (code, output) in enumerate(zip(codes, outputs)):
    assert code == 0, f'process {i} of {len(commands)} exited {code}:\n{output[-4000:]}'
  return outputs


def _run(workdir, *, processes: int, devices: int, args: list[str], log_dir, pytestconfig,
         lose: tuple[int, str] | None = None) -> list[str] | Lost:
  """Runs sdeseg_jax.main in `processes` processes; returns each one's output (see _launch)."""
  command = [sys.executable, '-m', 'sdeseg_jax.main', f'--workdir={workdir}', *COMMON, *args]
  return _launch(command, processes=processes, devices=devices,
                 log_name=os.path.basename(workdir), log_dir=log_dir,
                 pytestconfig=pytestconfig, lose=lose)


def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(tree, sep='/')


def _errors(a: dict, b: dict) -> dict[str, tuple[float, float]]:
  """{key: (max |a - b|, max |a|)} over the float arrays of two checkpoints."""
  a, b = _flat(a), _flat(b)
  assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))[:5]
  out = {}
  for k in a:
    x, y = np.asarray(a[k]), np.asarray(b[k])
    if x.dtype.kind == 'f' and x.size:  # not the empty leaves (None) of unused state fields
      x, y = x.astype(np.float64), y.astype(np.float64)
      out[k] = (float(np.max(np.abs(x - y))), float(np.max(np.abs(x))))
  return out


def _worst(errors: dict, keys) -> str:
  ranked = sorted(keys, key=lambda k: -errors[k][0])[:3]
  return '; '.join(f'{k}: {errors[k][0]:.3g} (values up to {errors[k][1]:.3g})' for k in ranked)


def _assert_equal_runs(a: dict, b: dict, what: str) -> None:
  """Parameters and mean teacher within 1e-5; BatchNorm statistics (running variances up to ~5)
  within 1e-5 of their scale; optimiser state (momentum: sums of gradients) within 1e-4, which is
  1e-5 in parameter units at the largest learning rate here (0.1)."""
  errors = _errors(a, b)
  groups = {'params': 1e-5, 'ema_params': 1e-5, 'batch_stats': None, 'opt_state': 1e-4}
  for group, tolerance in groups.items():
    keys = [k for k in errors if k.split('/')[0] == group]
    bad = [k for k in keys if errors[k][0] > (
        tolerance if tolerance is not None else 1e-5 * max(1.0, errors[k][1]))]
    assert not bad, f'{what}, {group}: {_worst(errors, bad)}'
  assert any(k.startswith('params/') for k in errors)


class Runs(NamedTuple):
  single: str           # the one-process workdir
  multi: str            # the two-process workdir
  lost: Lost            # its first run, which lost process 1
  resumed: list[str]    # the output of each process of its rerun
  last_checkpoint: int  # the SDE's newest checkpoint when process 1 was lost


@pytest.fixture(scope='module')
def runs(tmp_path_factory, pytestconfig):
  root = tmp_path_factory.mktemp('multihost')
  logs = str(root / 'logs')
  os.makedirs(logs)
  single, multi = str(root / 'single'), str(root / 'multi')
  steps = [f'--config.sde.num_steps={STEPS}', f'--config.segment.num_steps={STEPS}']
  # The reference: one process, four devices, straight through.
  _run(single, processes=1, devices=4, log_dir=logs, pytestconfig=pytestconfig,
       args=['--config.stages=data,sde_pretrain,segment', *steps])
  # Two processes x two devices: SDE towards step 4, and process 1 is SIGKILLed (a lost host) as
  # soon as checkpoint 2 is written. Process 0, waiting for it in the next step's collectives,
  # must exit on its own within the heartbeat timeout ...
  lost = _run(multi, processes=2, devices=2, log_dir=logs, pytestconfig=pytestconfig,
              lose=(1, os.path.join(multi, 'sde', 'ckpt', '2')),
              args=['--config.stages=data,sde_pretrain', *steps,
                    f'--heartbeat_timeout={HEARTBEAT_S}'])
  assert not os.path.exists(artifacts.done_marker(multi, 'sde_pretrain'))
  ckpt = os.path.join(multi, 'sde', 'ckpt')
  last = max(int(s) for s in os.listdir(ckpt) if s.isdigit())  # 2, or 4 if its save had finished
  # ... and a rerun of both processes resumes SDE from its last checkpoint to step 4, then segment.
  # The multi-process restore is the SDE's; the segment stage's exact resume has its own
  # (single-process) tests, which keeps this module a run shorter.
  resumed = _run(multi, processes=2, devices=2, log_dir=logs, pytestconfig=pytestconfig,
                 args=['--config.stages=sde_pretrain,segment', *steps])
  # Left for inspection after a failure; pytest keeps the last three base temp folders.
  return Runs(single, multi, lost, resumed, last)


def test_two_processes_with_resume_equal_one_process(runs):
  single, multi = runs.single, runs.multi
  for stage in ('sde', 'segment'):
    a = checkpointing.read_arrays(os.path.join(single, stage, 'ckpt'))
    b = checkpointing.read_arrays(os.path.join(multi, stage, 'ckpt'))
    assert int(a['step']) == int(b['step']) == STEPS
    _assert_equal_runs(a, b, f'{stage} checkpoint at step {STEPS}')
  # The SDE trained between its checkpoints 2 and 4 (before the loss or after the rerun).
  before = _flat(checkpointing.read_arrays(os.path.join(multi, 'sde', 'ckpt'), step=2)['params'])
  after = _flat(checkpointing.read_arrays(os.path.join(multi, 'sde', 'ckpt'))['params'])
  assert max(float(np.max(np.abs(after[k] - before[k]))) for k in after) > 1e-5
  # Depth evaluation (a cross-process sum) agrees as well.
  depth = [json.load(open(os.path.join(w, 'sde', 'eval.json'))) for w in (single, multi)]
  for key in ('abs_rel', 'rmse', 'a1'):
    assert depth[0][key] == pytest.approx(depth[1][key], rel=1e-4, abs=1e-6)
  assert depth[0]['images'] == depth[1]['images']


def test_a_lost_process_ends_the_other_and_a_rerun_resumes(runs):
  lost, primary = runs.lost, runs.resumed[0]
  assert lost.codes[1] == -signal.SIGKILL, (
      f'process 1 exited {lost.codes[1]} before it could be killed:\n{lost.outputs[1][-3000:]}')
  # Process 0 did not wait in a collective for the lost process: JAX's coordination service
  # aborted it once process 1's heartbeats had stopped for HEARTBEAT_S, naming process 1.
  assert lost.codes[0] not in (0, None), lost.outputs[0][-3000:]
  assert lost.seconds_after_loss < HEARTBEAT_S + 60
  assert re.search(r'stopped sending heartbeats\):\s*1\b', lost.outputs[0]), lost.outputs[0][-3000:]
  assert f'a process silent for {HEARTBEAT_S} s counts as lost' in lost.outputs[0]
  # The rerun resumed from the last checkpoint written before the loss.
  resumed_from = rf'Resuming from \S*/sde/ckpt/{runs.last_checkpoint}\b'
  assert re.search(resumed_from, primary), primary[-3000:]


def test_a_two_process_checkpoint_restores_onto_one_device(runs):
  """The train state saved by 2 processes x 2 devices, restored into this process's one device."""
  multi = runs.multi
  config = demo.get_config('tiny')
  config.sde.batch_size = 4
  config.sde.optim.name, config.sde.optim.groups.all.lr = 'sgd', 0.1
  network = networks.build('sde', config.model)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = sharding.replicate(sde_pretrain.create_state(config, config.model, network), mesh)
  directory = os.path.join(multi, 'sde', 'ckpt')
  checkpointer = checkpointing.Checkpointer(directory)
  try:
    restored = checkpointer.restore(state)
  finally:
    checkpointer.close()
  assert int(restored.step) == STEPS
  saved = _flat(checkpointing.read_arrays(directory))
  mine = _flat(jax.device_get(restored.to_dict()))
  assert sorted(saved) == sorted(mine)
  for key, value in saved.items():
    np.testing.assert_array_equal(np.asarray(mine[key]), np.asarray(value), err_msg=key)
  leaf = jax.tree.leaves(restored.params)[0]
  assert leaf.sharding.device_set == set(mesh.devices.flat)


def test_only_process_zero_logs_and_writes_summaries(runs):
  multi, (primary, secondary) = runs.multi, runs.resumed
  assert 'Process 0 of 2; 2 local of 4 devices' in primary
  assert 'Collectives connected across 4 devices' in primary
  assert 'steps_per_sec' in primary and 'Running stage' in primary
  # Process 1 says nothing at INFO (its CLU logging writer is silenced with it).
  assert 'steps_per_sec' not in secondary and 'Running stage' not in secondary
  # Image summaries are gathered across processes: process 0 logged the whole batch of 4.
  assert "Got images: {'disparity': (4," in primary
  assert os.listdir(os.path.join(multi, 'sde', 'logs'))


# Process 1 reaches its first collective 40 s after process 0, as after a slower compile: longer
# than gloo's fixed 30 s for connecting a group of devices, which initialize() does up front.
_LATE_PROCESS = """
import sys, time
import jax, jax.numpy as jnp, numpy as np
from sdeseg_jax.training import distributed, sharding
flags = dict(a[2:].split('=') for a in sys.argv[1:])
distributed.initialize('on', coordinator_address=flags['coordinator_address'],
                       num_processes=int(flags['num_processes']),
                       process_id=int(flags['process_id']))
if jax.process_index() == 1:
  time.sleep(40)
mesh = sharding.make_mesh()
rows = jax.process_index() * jax.local_device_count() + np.arange(jax.local_device_count())
x = sharding.global_batch({'x': rows.astype(np.float32)}, mesh)['x']
print('max over devices:', float(jax.jit(jnp.max, out_shardings=sharding.replicated(mesh))(x)))
"""


def test_a_process_late_to_its_first_collective(tmp_path, pytestconfig):
  outputs = _launch([sys.executable, '-c', _LATE_PROCESS], processes=2, devices=2,
                    log_name='late', log_dir=str(tmp_path), pytestconfig=pytestconfig)
  for output in outputs:
    assert 'max over devices: 3.0' in output


def test_cluster_detection():
  from sdeseg_jax.training import distributed
  assert distributed.detect({}, tpu_vm=False) is None
  slurm = dict(SLURM_JOB_ID='42', SLURM_NTASKS='8', SLURM_PROCID='3', SLURM_LOCALID='3',
               SLURM_STEP_NODELIST='gpu[01-02]')
  assert distributed.detect(slurm, tpu_vm=False) == 'SLURM job 42: task 3 of 8'
  # One task, or the batch script's own shell (no job step): a single process.
  assert distributed.detect(dict(slurm, SLURM_NTASKS='1'), tpu_vm=False) is None
  assert distributed.detect({k: v for k, v in slurm.items() if k != 'SLURM_STEP_NODELIST'},
                            tpu_vm=False) is None
  assert 'JAX_COORDINATOR_ADDRESS=10.0.0.1:1234' in distributed.detect(
      {'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, tpu_vm=False)
  assert 'Open MPI' in distributed.detect({'OMPI_COMM_WORLD_SIZE': '4'}, tpu_vm=False)
  assert 'TPU slice of 2 workers' in distributed.detect({'TPU_WORKER_HOSTNAMES': 'a,b'},
                                                        tpu_vm=False)
  assert distributed.detect({'TPU_WORKER_HOSTNAMES': 'a'}, tpu_vm=False) is None
  assert 'Cloud TPU VM' in distributed.detect({}, tpu_vm=True)
  with pytest.raises(ValueError, match="--distributed='maybe'"):
    distributed.initialize('maybe')
  # This machine is no cluster: auto and off leave JAX single-process.
  assert not distributed.initialize('auto', env={})
  assert not distributed.initialize('off', coordinator_address='localhost:1')
