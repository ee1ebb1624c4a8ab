"""Helpers for tests that run stages: the tiny demo config, extra workdirs beside one tiny run, and
exact resumption."""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np

from configs import demo
from sdeseg_jax import stages
from sdeseg_jax.training import checkpointing

# The persistent compilation cache all tests share (also set for this process in conftest.py).
CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.cache',
                     'xla_tests')
# The stages of the demo that write the segment stage's inputs other than the depth labels (the
# SDE it starts from, the selection of its labeled images).
MADE_EARLIER = ('sde_pretrain', 'select_labels')


def tiny_config():
  """configs/demo.py:tiny with the tests' compilation cache."""
  config = demo.get_config('tiny')
  config.compilation_cache_dir = CACHE
  return config


def linked_run(workdir: str, name: str, links=('data', 'depth', 'raw')) -> str:
  """<workdir>/<name>, reading the run's prepared data, depth labels and raw trees (symlinks)."""
  run_dir = os.path.join(workdir, name)
  os.makedirs(run_dir, exist_ok=True)
  for link in links:
    if not os.path.exists(os.path.join(run_dir, link)):
      os.symlink(os.path.join(workdir, link), os.path.join(run_dir, link))
  return run_dir


def assert_resumes_exactly(config, workdir: str, stage: str, interrupted_after: int) -> str:
  """Runs `stage` uninterrupted; a copy of that run with every checkpoint after step
  `interrupted_after` removed (as if it had stopped there) is rerun, and the final train states
  must be equal. config must checkpoint at interrupted_after and keep every checkpoint. Returns
  the straight run."""
  straight = linked_run(workdir, f'{stage}_straight')
  assert stages.run_stages(config, straight) == [stage]
  resumed = os.path.join(workdir, f'{stage}_resumed')
  shutil.copytree(straight, resumed, symlinks=True)  # the links to the shared inputs stay links
  ckpt = os.path.join(resumed, stage, 'ckpt')
  later = [s for s in os.listdir(ckpt) if s.isdigit() and int(s) > interrupted_after]
  assert later and str(interrupted_after) in os.listdir(ckpt)
  for step in later:
    shutil.rmtree(os.path.join(ckpt, step))
  os.remove(os.path.join(resumed, stage, 'done'))
  assert stages.run_stages(config, resumed) == [stage]
  a = checkpointing.read_arrays(os.path.join(straight, stage, 'ckpt'))
  b = checkpointing.read_arrays(ckpt)
  assert int(a['step']) == int(b['step']) > interrupted_after
  for key in ('params', 'ema_params', 'batch_stats', 'opt_state'):
    for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key])):
      np.testing.assert_array_equal(x, y, err_msg=key)
  return straight
