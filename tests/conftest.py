"""Shared test set-up: quiet TF, one persistent XLA compilation cache for all test processes."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402  (after the environment is set)
import pytest  # noqa: E402

from sdeseg_jax import stages  # noqa: E402

_CACHE = os.path.join(os.path.dirname(os.path.dirname(__file__)), '.cache', 'xla_tests')
jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


@pytest.fixture(scope='session')
def tiny_demo(tmp_path_factory):
  """(locked config, workdir) of the whole tiny demo — data, SDE, depth labels, selection,
  multi-task + DepthMix segmentation on it, evaluation — run once per test process and read by
  the selection and segment tests (which write only beside it, in linked runs)."""
  from tests import runs
  workdir = str(tmp_path_factory.mktemp('tiny_demo'))
  config = runs.tiny_config()
  config.lock()
  assert stages.run_stages(config, workdir) == ['data', 'sde_pretrain', 'depth_labels',
                                                'select_labels', 'segment', 'evaluate']
  return config, workdir
