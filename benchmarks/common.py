"""What every benchmark shares: the machine description, peak memory, and JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource


def cpu_model() -> dict:
  """The host CPU's model name and the vector extensions XLA:CPU's kernels choose by (Linux)."""
  try:
    with open('/proc/cpuinfo') as f:
      info = {key.strip(): value.strip() for key, value in
              (line.split(':', 1) for line in f.read().split('\n\n')[0].splitlines()
               if ':' in line)}
  except OSError:
    return {}
  flags = set(info.get('flags', '').split())
  return dict(model=info.get('model name', ''),
              isa=sorted(flags & {'avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile'}))


def machine() -> dict:
  return dict(platform=platform.platform(), processor=platform.processor(), cpu=cpu_model(),
              python=platform.python_version(), cpu_count=os.cpu_count(),
              xla_flags=os.environ.get('XLA_FLAGS', ''))


def peak_rss_mib() -> float:
  """The process's resident-set high-water mark so far, MiB (monotonic)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_flops(dtype: str = 'float32', repeats: int = 5) -> float:
  """The device's measured matmul rate, FLOP/s: the best of `repeats` square matmuls (2048 on CPU,
  8192 on accelerators), the yardstick of "fraction of peak" in the step benchmarks."""
  import time

  import jax
  import jax.numpy as jnp
  n = 2048 if jax.default_backend() == 'cpu' else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(a))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a))
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best


def xla_cost(compiled) -> dict:
  """XLA's cost analysis of a compiled executable as one dict ('flops', 'bytes accessed', ...;
  some backends return a list with one dict per program)."""
  cost = compiled.cost_analysis() or {}
  return cost[0] if isinstance(cost, list) else cost


def parse_size(text: str) -> tuple[int, int]:
  """'WIDTHxHEIGHT' -> (width, height)."""
  width, height = (int(v) for v in text.lower().split('x'))
  return width, height


def emit(report: dict, out: str = '') -> None:
  """Prints the report as JSON and, when `out` is set, writes it there too."""
  text = json.dumps(report, indent=2)
  print(text, flush=True)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
      f.write(text + '\n')
