"""What the command-line entry points (sdeseg_jax.main, sdeseg_jax.select) share: logging, the
compilation cache, flag parsing with one-line errors, and the exit status of a preempted run."""

import logging
import os
import sys

from absl import flags
import jax

from sdeseg_jax import stages
from sdeseg_jax.training import checkpointing
from sdeseg_jax.training import loop

# Exit status after a preemption save (128 + SIGTERM, as a process killed by it): not finished,
# run the same command again to continue.
PREEMPTED_EXIT_CODE = 143


def start(config) -> None:
  """Process set-up of an entry point: INFO logging without Orbax's per-save chatter, and the
  persistent compilation cache of config.compilation_cache_dir (a tiny model's rerun: 18 s -> 4 s
  here; '' disables it)."""
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    handler.addFilter(checkpointing.QuietOrbax())
  if config.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(config.compilation_cache_dir))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def run_stages(config, workdir: str) -> None:
  """stages.run_stages, exiting with PREEMPTED_EXIT_CODE after a preemption save."""
  try:
    stages.run_stages(config, workdir)
  except loop.Preempted as e:
    logging.warning('%s', e)
    sys.exit(PREEMPTED_EXIT_CODE)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a bad config override reported in one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    sys.exit(f'FATAL invalid flag, config or override: {message}')
