"""What the command-line entry points (sdeseg_jax.main, sdeseg_jax.select) share: logging, the
compilation cache, flag parsing with one-line errors, and the exit status of a preempted run or of
bad input."""

import contextlib
import logging
import os
import sys

from absl import flags
import jax

from data_pipelines.datasets import DataError
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.training import checkpointing
from sdeseg_jax.training import loop
from sdeseg_jax.weights.report import WeightImportError

# Errors of bad input: a config that cannot work, a data set, checkpoint or weight file that does
# not hold what it must.
USER_ERRORS = (ConfigError, DataError, checkpointing.CheckpointError, WeightImportError)
# Exit status after a preemption save (128 + SIGTERM, as a process killed by it): not finished,
# run the same command again to continue.
PREEMPTED_EXIT_CODE = 143


class ProgressLines(logging.Filter):
  """CLU's ReportProgress logs the run's progress as 'Setting work unit notes: 1.5 steps/s, 40.0%
  (4/10), ETA: 0m' (a cluster work unit's status line); here it reads 'progress: ...'."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.msg == 'Setting work unit notes: %s':
      record.msg = 'progress: %s'
    return True


def start(config) -> None:
  """Process set-up of an entry point: INFO logging without Orbax's per-save chatter and with
  progress lines that say so, and the persistent compilation cache of
  config.compilation_cache_dir (a tiny model's rerun: 18 s -> 4 s here; '' disables it)."""
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    handler.addFilter(checkpointing.QuietOrbax())
  logging.getLogger('absl').addFilter(ProgressLines())  # CLU logs through absl's logger
  if config.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(config.compilation_cache_dir))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


@contextlib.contextmanager
def exit_status():
  """Ends the process as a command line tool should when the work inside stops early: after a
  preemption save with PREEMPTED_EXIT_CODE, and on bad input (USER_ERRORS, whose messages name the
  key, file or value at fault) with status 1 and that message in one line, not a traceback."""
  try:
    yield
  except loop.Preempted as e:
    logging.warning('%s', e)
    sys.exit(PREEMPTED_EXIT_CODE)
  except USER_ERRORS as e:
    sys.exit(f'FATAL {type(e).__name__}: {e}')


def _one_line(error: BaseException) -> str:
  """What `error` says is wrong, on one line. ml_collections wraps a misspelt key as
  AttributeError(KeyError("'key'\\nDid you mean ...")): the first KeyError's text is the message."""
  chain = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  keys = [item for item in chain if isinstance(item, KeyError) and item.args]
  message = str(keys[0].args[0]) if keys else str(chain[-1])  # the innermost, not a wrapper
  outer = str(chain[0])
  if isinstance(chain[0], flags.Error) and outer.startswith('flag --') and len(chain) > 1:
    message = f'{outer.split(": ", 1)[0]}: {message}'  # which flag
  return ' '.join(message.split())


def _check_config_file(argv: list[str]) -> None:
  """Exits with one line when --config names a file that is not there (ml_collections would print
  two chained tracebacks)."""
  for arg in argv[1:]:
    if arg.startswith('--config='):
      path = arg[len('--config='):].partition(':')[0]
      if not os.path.isfile(path):
        sys.exit(f'FATAL invalid flag, config or override: --config={path}: no such config file '
                 f'(relative to {os.getcwd()})')


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a bad flag, config file or config override reported in one line
  instead of a traceback (status 1)."""
  _check_config_file(argv)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError) as e:
    sys.exit(f'FATAL invalid flag, config or override: {_one_line(e)}')
