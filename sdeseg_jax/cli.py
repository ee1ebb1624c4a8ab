"""What the command-line entry points (sdeseg_jax.main, sdeseg_jax.select) share: logging, the
compilation cache, flag parsing with one-line errors, and the exit status of a preempted run or of
bad input."""

import contextlib
import logging
import os
import re
import sys
from typing import NoReturn

from absl import flags
import jax

from data_pipelines.datasets import DataError
from data_pipelines.files import DiskFullError
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.training import checkpointing
from sdeseg_jax.training import loop
from sdeseg_jax.weights.report import WeightImportError

# Errors of bad input: a config that cannot work, a data set, checkpoint or weight file that does
# not hold what it must; and a disk too full for what a stage writes.
USER_ERRORS = (ConfigError, DataError, checkpointing.CheckpointError, WeightImportError,
               DiskFullError)
# Exit status after a preemption save (128 + SIGTERM, as a process killed by it): not finished,
# run the same command again to continue.
PREEMPTED_EXIT_CODE = 143
# The config file flag of the entry points that parse_flags serves (ml_collections' config_flags).
CONFIG_FLAG = 'config'


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


def _fatal(message: str) -> NoReturn:
  """Ends the process with status 1 and `message` on one line, as a bad command line does."""
  sys.exit(f'FATAL invalid flag, config or override: {message}')


def _flag_arguments(argv: list[str], name: str) -> list[str]:
  """What `argv` gives flag `name`, in each of absl's forms: --name=V, --name V (or one dash)."""
  values = []
  for i, arg in enumerate(argv[1:], 1):
    if arg == '--':  # absl's end of flags
      break
    option, equals, value = arg.partition('=')
    if option in (f'-{name}', f'--{name}'):
      if equals:
        values.append(value)
      elif i + 1 < len(argv):
        values.append(argv[i + 1])
  return values


def _check_config_file(argv: list[str]) -> None:
  """Exits with one line when --config names a file that is not there: ml_collections
  defers that error to the config's first use, which prints two chained tracebacks."""
  for argument in _flag_arguments(argv, CONFIG_FLAG):
    path = argument.partition(':')[0]  # without the variant
    if not os.path.isfile(path):
      relative = '' if os.path.isabs(path) else f' (relative to {os.getcwd()})'
      _fatal(f'--{CONFIG_FLAG}={path}: no such config file{relative}')


def _override_paths(argv: list[str]) -> list[list[str]]:
  """The key path of each config override in `argv`: --config.sde.num_steps=3 -> ['config',
  'sde', 'num_steps']."""
  paths = []
  for arg in argv[1:]:
    match = re.match(rf'-{{1,2}}(?:no)?{CONFIG_FLAG}\.([^=]+)', arg)
    if match:
      paths.append([CONFIG_FLAG, *match.group(1).split('.')])
  return paths


def _missing_key(keys: list[KeyError], argv: list[str]) -> str | None:
  """An override of a key the config does not have, said readably: "no key 'num_step' in
  config.sde (did you mean "num_steps"?)". ml_collections raises KeyError("'num_step'\\nDid you
  mean ...") from KeyError('num_step'). None when the innermost key is in no override's path
  (another kind of KeyError)."""
  key = keys[-1].args[0]
  # A leaf first: in --config.sde.num_steps=3 --config.segment.sde=1, 'sde' is segment's.
  paths = sorted(_override_paths(argv), key=lambda path: path[-1] != key)
  for path in paths:
    if key in path[1:]:
      message = f"no key '{key}' in {'.'.join(path[:path.index(key, 1)])}"
      for error in keys:
        suggestion = re.search(r'Did you mean "([^"]+)"', str(error.args[0]))
        if suggestion:
          return f'{message} (did you mean "{suggestion.group(1)}"?)'
      return message
  return None


def _one_line(error: BaseException, argv: list[str]) -> str:
  """What `error` says is wrong, on one line: a misspelt override key as _missing_key says it,
  else the innermost error's message (not a wrapper's), after the flag at fault where absl names
  it."""
  chain = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  keys = [item for item in chain if isinstance(item, KeyError) and item.args]
  message = _missing_key(keys, argv) if keys else None
  if message is None:
    message = str(keys[0].args[0]) if keys else str(chain[-1])
  outer = str(chain[0])
  if isinstance(chain[0], flags.Error) and outer.startswith('flag --') and len(chain) > 1:
    message = f'{outer.split(": ", 1)[0]}: {message}'  # which flag
  return ' '.join(message.split())


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a bad flag, config file or config override reported in one line
  instead of a traceback (status 1)."""
  _check_config_file(argv)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError) as e:
    _fatal(_one_line(e, argv))
