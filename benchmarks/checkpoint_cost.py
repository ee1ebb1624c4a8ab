"""What a checkpoint save costs the training loop, with Orbax's asynchronous saves and without.

    python -m benchmarks.checkpoint_cost [--stage=segment:mtl+depthmix] [--config=FILE[:variant]]
        [--saves=3] [--every=10] [--step_seconds=2] [--dir=DIR] [--out=FILE]

The state is the stage's real train state at full size (parameters, mean teacher, optimiser state,
BatchNorm statistics: what `checkpointing.Checkpointer` writes), built as benchmarks.train_step
builds it. The step is a stand-in: it reads and rewrites every array of the state (a jitted scaled
copy), then the host waits `step_seconds`, as it waits while an accelerator runs a real step (on
this CPU a real full-size step would compete with the background write for the same two cores).
What is measured is how long the loop is held up by a save. For each mode (no saves, synchronous,
asynchronous) the loop runs saves x every steps, saving every `every` steps, then waits for the
last save; reported: the loop's time per step, the extra time per save over the no-save loop, and
the time from the loop's end to the end of the last write.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import jax
import numpy as np

from benchmarks import common
from benchmarks import train_step


def _tree_bytes(tree) -> int:
  return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree) if hasattr(x, 'nbytes'))


def _loop(state, step, checkpointer, steps: int, every: int,
          step_seconds: float) -> tuple[float, float]:
  """(seconds of the loop, seconds of the final wait for the saves) over `steps` steps."""
  start = time.perf_counter()
  for i in range(1, steps + 1):
    state = jax.block_until_ready(step(state))
    time.sleep(step_seconds)
    if checkpointer is not None and i % every == 0:
      checkpointer.save(i, state)
  loop_s = time.perf_counter() - start
  if checkpointer is not None:
    checkpointer.wait()
  return loop_s, time.perf_counter() - start - loop_s


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--stage', default='segment:mtl+depthmix', choices=sorted(train_step.STAGES))
  parser.add_argument('--config', default='configs/ssl_cityscapes.py')
  parser.add_argument('--saves', type=int, default=3)
  parser.add_argument('--every', type=int, default=10)
  parser.add_argument('--step_seconds', type=float, default=2.0,
                      help='host idle time per step (an accelerator running the step)')
  parser.add_argument('--dir', default='', help='where to write (default: a temporary folder)')
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  from sdeseg_jax.training import checkpointing

  config = train_step.load_config(args.config)
  workload = train_step.STAGES[args.stage](config, 2, 64, 64)  # the batch does not matter here
  state = workload.init()
  # The stand-in step: every array read and written once (floats scaled, others copied).
  step = jax.jit(lambda s: jax.tree.map(
      lambda x: x * 1.0 if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x, s))
  state = jax.block_until_ready(step(state))  # compiled
  steps = args.saves * args.every
  root = args.dir or tempfile.mkdtemp(prefix='checkpoint_cost_')
  rows = {}
  try:
    for mode in ('none', 'sync', 'async', 'none_again'):
      directory = os.path.join(root, mode)
      checkpointer = (None if mode.startswith('none') else checkpointing.Checkpointer(
          directory, max_to_keep=2, save_interval_steps=args.every, async_save=mode == 'async'))
      loop_s, wait_s = _loop(state, step, checkpointer, steps, args.every, args.step_seconds)
      if checkpointer is not None:
        checkpointer.close()
      rows[mode] = dict(loop_s=loop_s, step_ms=1e3 * loop_s / steps, final_wait_s=wait_s)
      shutil.rmtree(directory, ignore_errors=True)
  finally:
    if not args.dir:
      shutil.rmtree(root, ignore_errors=True)
  baseline = min(rows['none']['loop_s'], rows['none_again']['loop_s'])
  for mode in ('sync', 'async'):
    rows[mode]['held_up_per_save_s'] = (rows[mode]['loop_s'] - baseline) / args.saves
  common.emit(dict(
      benchmark='checkpoint_cost', stage=args.stage, config=args.config,
      state_mib=_tree_bytes(state) / 2**20, saves=args.saves, every=args.every, steps=steps,
      step_seconds=args.step_seconds,
      filesystem=os.path.abspath(root), machine=common.machine(), modes=rows,
      peak_rss_mib=common.peak_rss_mib()), args.out)


if __name__ == '__main__':
  main()
