"""Forward and forward+backward of the full-size multi-task network (ResNet101 OS16 + PAD-Net) in
JAX and, side by side in the same run, the same architecture in PyTorch.

    python -m benchmarks.models [--batch=2] [--size=512x512] [--repeats=5] [--dtype=float32]
        [--out=FILE]

Each framework runs in a fresh subprocess, so its peak resident memory is its own. Both run in
training mode (batch-statistics BN, dropout) on the objective mean(logits) + mean(side logits) +
sum_s mean(disp_s); forward alone runs without gradients. Timings: min / median / max over --repeats
after two warm-up runs. JAX also reports compile time, XLA's FLOP count and memory analysis.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import common


def _stats(times: list[float]) -> dict:
  times = sorted(times)
  return dict(min_ms=1e3 * times[0], median_ms=1e3 * times[len(times) // 2], max_ms=1e3 * times[-1])


def _timed(fn, repeats: int) -> dict:
  for _ in range(2):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return _stats(times)


def run_jax(batch: int, height: int, width: int, repeats: int, dtype: str) -> dict:
  import jax
  import jax.numpy as jnp
  from configs import base
  from sdeseg_jax.models import networks

  model = base.get_config().model
  model.compute_dtype = dtype
  network = networks.build('mtl', model)
  key = jax.random.key(0)
  variables = jax.jit(lambda k: network.init(k, networks.example_input('mtl', 1, 64, 64)))(key)
  images = jax.random.uniform(key, (batch, height, width, 3))

  def objective(params, batch_stats, x):
    out, _ = network.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                           method='segment', mutable=['batch_stats'], rngs={'dropout': key})
    return (jnp.mean(out['logits']) + jnp.mean(out['side_logits']) +
            sum(jnp.mean(d) for d in out['disp'].values()))

  results = {}
  for name, fn in (('forward', jax.jit(objective)),
                   ('forward_backward', jax.jit(jax.value_and_grad(objective)))):
    start = time.perf_counter()
    compiled = fn.lower(variables['params'], variables['batch_stats'], images).compile()
    compile_s = time.perf_counter() - start
    cost = common.xla_cost(compiled)
    memory = compiled.memory_analysis()
    run = lambda: jax.block_until_ready(compiled(variables['params'], variables['batch_stats'],
                                                 images))
    timing = _timed(run, repeats)
    flops = float(cost.get('flops', 0.0))
    results[name] = dict(
        timing, compile_s=compile_s, flops=flops,
        tflops_per_s=flops / (timing['median_ms'] / 1e3) / 1e12 if flops else None,
        xla_temp_mib=getattr(memory, 'temp_size_in_bytes', 0) / 2**20,
        xla_argument_mib=getattr(memory, 'argument_size_in_bytes', 0) / 2**20)
  return dict(framework='jax', version=jax.__version__, device=str(jax.devices()[0]),
              dtype=dtype, peak_rss_mib=common.peak_rss_mib(), **results)


def run_torch(batch: int, height: int, width: int, repeats: int, dtype: str) -> dict:
  import torch
  from benchmarks import torch_reference

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  model = torch_reference.MTLModel().to(device).train()
  images = torch.rand(batch, 3, height, width, device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')

  def objective():
    with autocast:
      out = model(images)
      return (out['semantics'].float().mean() + out['intermediate_semantics'].float().mean() +
              sum(out[('disp', s)].float().mean() for s in range(4)))

  def forward():
    with torch.no_grad():
      objective()
    if device == 'cuda':
      torch.cuda.synchronize()

  def forward_backward():
    model.zero_grad(set_to_none=True)
    objective().backward()
    if device == 'cuda':
      torch.cuda.synchronize()

  results = {name: _timed(fn, repeats) for name, fn in (('forward', forward),
                                                        ('forward_backward', forward_backward))}
  extra = {}
  if device == 'cuda':
    extra['cuda_peak_mib'] = torch.cuda.max_memory_allocated() / 2**20
  return dict(framework='torch', version=torch.__version__, device=device, dtype=dtype,
              threads=torch.get_num_threads(), peak_rss_mib=common.peak_rss_mib(), **extra,
              **results)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--size', default='512x512', help='WIDTHxHEIGHT')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--frameworks', default='jax,torch')
  parser.add_argument('--worker', default='', help=argparse.SUPPRESS)
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  width, height = common.parse_size(args.size)
  if args.worker:
    run = {'jax': run_jax, 'torch': run_torch}[args.worker]
    print(json.dumps(run(args.batch, height, width, args.repeats, args.dtype)))
    return
  results = {}
  for framework in args.frameworks.split(','):
    command = [sys.executable, '-m', 'benchmarks.models', f'--worker={framework}',
               f'--batch={args.batch}', f'--size={args.size}', f'--repeats={args.repeats}',
               f'--dtype={args.dtype}']
    output = subprocess.run(command, capture_output=True, text=True, check=False,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    if output.returncode:
      raise RuntimeError(f'{framework} worker failed:\n{output.stderr[-3000:]}')
    results[framework] = json.loads(output.stdout.strip().splitlines()[-1])
  report = dict(benchmark='models', network='mtl (ResNet101 OS16 + PAD-Net)', batch=args.batch,
                size=[width, height], repeats=args.repeats, machine=common.machine(), **results)
  if 'jax' in results and 'torch' in results:
    report['ratio_jax_over_torch'] = {
        name: results['jax'][name]['median_ms'] / results['torch'][name]['median_ms']
        for name in ('forward', 'forward_backward')}
  common.emit(report, args.out)


if __name__ == '__main__':
  main()
