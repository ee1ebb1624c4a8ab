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


# XLA:CPU options the project runs with (BENCHMARKS.md, "CPU settings"): jaxlib 0.10.2 hands
# convolutions and dot products to YNNPACK by default, and for these networks XLA's own kernels
# are faster (the transfer train step 2.9x, 512x512 on 2 cores). The same operations, computed by
# other kernels: results differ in float32 rounding only.
CPU_XLA_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot',)


def merged_xla_flags(user: str, defaults=CPU_XLA_FLAGS) -> str:
  """`user`'s XLA_FLAGS with each of `defaults` appended unless `user` sets that flag already
  (under any value): the user's settings always win."""
  named = {flag.split('=', 1)[0] for flag in user.split()}
  extra = [flag for flag in defaults if flag.split('=', 1)[0] not in named]
  return ' '.join([user.strip(), *extra]).strip()


def _cpu_xla_flags() -> None:
  """CPU_XLA_FLAGS merged into XLA_FLAGS when JAX runs on the CPU only (JAX_PLATFORMS=cpu, set by
  the user or above). Not on GPU or TPU machines: there the CPU only feeds the accelerator, and
  other XLA builds (libtpu) reject flags they do not know. XLA reads XLA_FLAGS when JAX starts its
  backend, so this holds for every process that imports sdeseg_jax before its first computation
  (the entry points, the tests and the benchmarks do)."""
  if os.environ.get('JAX_PLATFORMS', '').strip().lower() == 'cpu':
    os.environ['XLA_FLAGS'] = merged_xla_flags(os.environ.get('XLA_FLAGS', ''))


_cpu_only_without_accelerators()
_quiet_native_logs()
_cpu_xla_flags()
