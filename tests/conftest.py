"""Shared test set-up: quiet TF, one persistent XLA compilation cache for all test processes."""

import fcntl
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402  (after the environment is set)
import pytest  # noqa: E402

from sdeseg_jax import artifacts  # noqa: E402
from sdeseg_jax import stages  # noqa: E402

_CACHE = os.path.join(os.path.dirname(os.path.dirname(__file__)), '.cache', 'xla_tests')
jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


@pytest.fixture(scope='session')
def tiny_demo(tmp_path_factory):
  """(locked config, workdir) of the whole tiny demo — data, SDE, depth labels, selection,
  multi-task + DepthMix segmentation on it, evaluation — read by the selection, segment and
  evaluate tests (which write only beside it, in linked runs of their own names). One run per
  test session: pytest-xdist's workers share it (the first to need it runs it while the others
  wait on a lock; they find every stage done)."""
  from tests import runs
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    shared = shared.parent  # the session's folder, above each worker's own
  workdir = str(shared / 'tiny_demo')
  config = runs.tiny_config()
  config.lock()
  names = stages.parse_stages(config.stages)
  with open(shared / 'tiny_demo.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    assert stages.run_stages(config, workdir) in ([], names)
  assert names == ['data', 'sde_pretrain', 'depth_labels', 'select_labels', 'segment', 'evaluate']
  assert all(os.path.exists(artifacts.done_marker(workdir, name)) for name in names)
  return config, workdir


def pytest_collection_modifyitems(items):
  """Under pytest-xdist's --dist loadgroup, the tests that read one expensive run go to one worker:
  those of the shared tiny demo together (all slow: make test-fast leaves them out), and those of
  a module-scoped run with their module (otherwise each worker that gets one of them would build
  the run again)."""
  for item in items:
    if 'tiny_demo' in item.fixturenames:
      item.add_marker(pytest.mark.xdist_group('tiny_demo'))
      item.add_marker(pytest.mark.slow)
      continue
    definitions = getattr(item, '_fixtureinfo', None)
    scoped = [name for name, defs in (definitions.name2fixturedefs.items() if definitions else ())
              if defs and defs[-1].scope == 'module']
    if scoped:
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))
