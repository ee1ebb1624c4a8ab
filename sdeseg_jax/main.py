"""Entry point: python -m sdeseg_jax.main --config=configs/<experiment>.py[:variant] --workdir=DIR

Runs the stages of config.stages in order (see sdeseg_jax.stages); `--config.key=value` overrides a
config value and a key the config does not have is an error naming it.

Multi-process runs (TPU pods, GPU clusters): every process runs this same command. jax.distributed
is initialised when the environment is a cluster (SLURM, Open MPI, Cloud TPU VM, GKE TPU slice,
JAX_COORDINATOR_ADDRESS) or when --coordinator_address/--num_processes/--process_id are given;
--distributed=on|off forces it (sdeseg_jax.training.distributed). Only process 0 logs at INFO.
"""

import logging

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from sdeseg_jax import cli
from sdeseg_jax import stages
from sdeseg_jax.training import distributed

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
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    'heartbeat_timeout', distributed.HEARTBEAT_TIMEOUT_S,
    'Seconds without heartbeats after which a process counts as lost: the others then exit '
    '(status 134) naming it, instead of waiting in a collective.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  cli.start(config)
  with cli.exit_status():
    # Before anything touches a device: initialising a backend first makes initialize() fail.
    distributed.initialize(_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
                           num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
                           heartbeat_timeout=_HEARTBEAT_TIMEOUT.value)
    if not distributed.is_primary():
      # Process 0 speaks for the run; the others report only warnings and errors (CLU's
      # LoggingWriter, which they keep, logs at INFO and so goes quiet too).
      logging.getLogger().setLevel(logging.WARNING)
      absl_logging.set_verbosity(absl_logging.WARNING)
    logging.info('Experiment %s in %s, stages: %s', config.experiment, _WORKDIR.value,
                 config.stages)
    stages.run_stages(config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
