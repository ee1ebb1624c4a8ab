"""sdeseg_jax: semi-supervised and domain-adaptive semantic segmentation with self-supervised
depth."""

import glob
import os

__version__ = '0.1.0'

# Devices whose presence means an accelerator JAX may use (a GPU, a TPU VM's chips).
ACCELERATOR_DEVICES = ('/dev/nvidia[0-9]*', '/dev/accel[0-9]*', '/dev/vfio/[0-9]*')


def _cpu_only_without_accelerators() -> None:
  """JAX_PLATFORMS=cpu on a machine without an accelerator, unless the user set it: libtpu (the
  tpu and test extras install it) otherwise starts a TPU runtime in every process, which prints
  warnings about the missing TPU. Runs before JAX is imported (the entry points import this
  package first); the Makefile does the same for the tests and benchmarks."""
  if 'JAX_PLATFORMS' not in os.environ and not any(glob.glob(p) for p in ACCELERATOR_DEVICES):
    os.environ['JAX_PLATFORMS'] = 'cpu'


def _quiet_native_logs() -> None:
  """TF_CPP_MIN_LOG_LEVEL=2 unless the user set it: TensorFlow and XLA's C++ otherwise open every
  command with INFO lines (oneDNN custom operations, CPU features) and absl's "All log messages
  before absl::InitializeLog() ..." warning. Only the logs: TF_ENABLE_ONEDNN_OPTS stays as it is,
  since turning oneDNN off would change the input pipeline's float results. Set before JAX and
  TensorFlow load, as both log while loading; data_pipelines does the same for its commands."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


_cpu_only_without_accelerators()
_quiet_native_logs()
