"""Entry point: python -m sdeseg_jax.main --config=configs/<experiment>.py[:variant] --workdir=DIR

Runs the stages of config.stages in order (see sdeseg_jax.stages); `--config.key=value` overrides a
config value and a key the config does not have is an error naming it.

Multi-process runs (TPU pods, GPU clusters): every process runs this same command. jax.distributed
is initialised when the environment is a cluster (SLURM, Open MPI, Cloud TPU VM, GKE TPU slice,
JAX_COORDINATOR_ADDRESS) or when --coordinator_address/--num_processes/--process_id are given;
--distributed=on|off forces it (sdeseg_jax.training.distributed). Only process 0 logs at INFO.
"""

import logging
import os
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
import jax
from ml_collections import config_flags

from sdeseg_jax import stages
from sdeseg_jax.training import checkpointing
from sdeseg_jax.training import distributed
from sdeseg_jax.training import loop

# Exit status after a preemption save (128 + SIGTERM, as a process killed by it): not finished.
PREEMPTED_EXIT_CODE = 143

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, artifacts and logs.')
flags.mark_flags_as_required(['config', 'workdir'])
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', distributed.MODES,
    'jax.distributed.initialize: auto (when a cluster environment or the flags below say so), '
    'on (always; JAX detects what the flags do not give) or off.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'HOST:PORT of process 0 (default: from the cluster environment).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes (default: from the cluster environment).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process, 0..num_processes-1 (default: from the cluster environment).')


def configure_compilation_cache(directory: str) -> None:
  """Persists compiled XLA programs across processes (a tiny model's rerun: 18 s -> 4 s here)."""
  if directory:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(directory))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    handler.addFilter(checkpointing.QuietOrbax())
  config = _CONFIG.value
  configure_compilation_cache(config.compilation_cache_dir)
  # Before anything touches a device: initialising a backend first makes initialize() fail.
  distributed.initialize(_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
                         num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  if not distributed.is_primary():
    # Process 0 speaks for the run; the others report only warnings and errors (CLU's
    # LoggingWriter, which they keep, logs at INFO and so goes quiet too).
    logging.getLogger().setLevel(logging.WARNING)
    absl_logging.set_verbosity(absl_logging.WARNING)
  logging.info('Experiment %s in %s, stages: %s', config.experiment, _WORKDIR.value, config.stages)
  try:
    stages.run_stages(config, _WORKDIR.value)
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


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
