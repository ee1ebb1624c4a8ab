"""Where the time of the multi-task network's forward + backward goes, per XLA op and per layer.

    python -m benchmarks.profile_step [--size=256] [--batch=2] [--top=25] [--out=FILE]
    SDESEG_CPU_CONVOLUTION=im2col python -m benchmarks.profile_step   # the im2col convolutions

Compiles value_and_grad of the objective benchmarks/models.py uses (ResNet101 OS16 + PAD-Net, train
mode), runs it twice, traces a third run with jax.profiler and sums the executed ops' durations
(jax.profiler.ProfileData) by kind — XLA convolutions split into kernel gradients (output
[in, k, k, out]) and the others, matmuls, the rest — and by layer (from the ops' op_name metadata;
'backward' where it lies in the gradient's transpose). The sums are thread-seconds: on a CPU with N
threads they add up to at most N x the step time. The HLO and the trace stay in --keep.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile
import time

from benchmarks import common

_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w-]+)\((.*)$')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$')


def parse_hlo(text: str) -> tuple[dict, dict]:
  """({instruction: (shape, opcode, rest of line)}, {computation: [its instruction names]})."""
  instructions, computations, current = {}, {}, None
  for line in text.splitlines():
    if line and not line.startswith(' ') and _COMPUTATION.match(line):
      current = _COMPUTATION.match(line).group(1)
      computations[current] = []
      continue
    match = _INSTRUCTION.match(line)
    if match:
      name, shape, opcode, rest = match.groups()
      instructions[name] = (shape, opcode, rest)
      if current:
        computations[current].append(name)
  return instructions, computations


def op_kind(name: str, instructions: dict, computations: dict) -> str:
  """'conv kernel-gradient', 'conv', 'dot' or the opcode (fusions by what they contain)."""
  shape, opcode, rest = instructions.get(name, ('', name.split('.')[0], ''))
  inner = [(shape, opcode)]
  called = re.search(r'calls=%([\w.\-]+)', rest)
  if called:
    inner = [instructions[n][:2] for n in computations.get(called.group(1), [])]
  for inner_shape, inner_opcode in inner:
    if inner_opcode == 'convolution':
      dims = re.findall(r'\d+', inner_shape.split('{')[0])
      kernel_gradient = len(dims) == 4 and dims[1] == dims[2] and dims[1] in ('1', '3', '5', '7')
      return 'conv kernel-gradient' if kernel_gradient else 'conv'
  if any(o in ('dot', 'dot_general') for _, o in inner):
    return 'dot'
  return opcode


def layer_of(rest: str) -> str:
  """'seg_decoder/level0 (backward)' etc. from an instruction's op_name metadata."""
  op_name = re.search(r'op_name="([^"]*)"', rest)
  if not op_name:
    return '(no metadata)'
  path = op_name.group(1)
  direction = 'backward' if 'transpose(' in path else 'forward'
  match = re.search(r'/pad/((?:encoder|depth_decoder|seg_decoder)[^/]*/[^/]*|[^/]+)', path)
  layer = match.group(1) if match else path.split('/')[-1]
  layer = re.sub(r'\.(run_levels|disparities)', '', layer)
  layer = re.sub(r'blocks_level(\d)_\d', r'level\1', layer)
  layer = re.sub(r'layer(\d)_\d+', r'layer\1', layer)
  return f'{layer} ({direction})'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', type=int, default=256, help='square image side')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--top', type=int, default=25)
  parser.add_argument('--keep', default='', help='folder for the HLO and the trace (default: tmp)')
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  import jax
  import jax.numpy as jnp
  from jax.profiler import ProfileData
  from configs import base
  from sdeseg_jax.models import layers
  from sdeseg_jax.models import networks

  network = networks.build('mtl', base.get_config().model)
  key = jax.random.key(0)
  variables = jax.jit(lambda k: network.init(k, networks.example_input('mtl', 1, 64, 64)))(key)
  images = jax.random.uniform(key, (args.batch, args.size, args.size, 3))

  def objective(params, batch_stats, x):
    out, _ = network.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                           method='segment', mutable=['batch_stats'], rngs={'dropout': key})
    return (jnp.mean(out['logits']) + jnp.mean(out['side_logits']) +
            sum(jnp.mean(d) for d in out['disp'].values()))

  compiled = jax.jit(jax.value_and_grad(objective)).lower(
      variables['params'], variables['batch_stats'], images).compile()
  run = lambda: jax.block_until_ready(compiled(variables['params'], variables['batch_stats'],
                                               images))
  run()
  start = time.perf_counter()
  run()
  step_s = time.perf_counter() - start
  keep = args.keep or tempfile.mkdtemp(prefix='profile_step_')
  os.makedirs(keep, exist_ok=True)
  hlo = compiled.as_text()
  with open(os.path.join(keep, 'step.hlo.txt'), 'w') as f:
    f.write(hlo)
  jax.profiler.start_trace(keep)
  run()
  jax.profiler.stop_trace()
  trace = sorted(glob.glob(os.path.join(keep, '**', '*.xplane.pb'), recursive=True))[-1]

  instructions, computations = parse_hlo(hlo)
  by_kind, by_layer, by_op = collections.Counter(), collections.Counter(), collections.Counter()
  for plane in ProfileData.from_file(trace).planes:
    for line in plane.lines:
      if 'XLAEigen' not in line.name:   # the XLA:CPU worker threads run the ops
        continue
      for event in line.events:
        if event.name not in instructions:
          continue
        seconds = event.duration_ns / 1e9
        by_op[event.name] += seconds
        by_kind[op_kind(event.name, instructions, computations)] += seconds
        by_layer[layer_of(instructions[event.name][2])] += seconds
  print(f'step {step_s:.2f} s; ops {sum(by_op.values()):.2f} thread-s')
  for title, table in (('by kind', by_kind), ('by layer', by_layer)):
    print(f'--- {title}')
    for name, seconds in table.most_common(args.top):
      print(f'{seconds:8.3f} s  {name}')
  print('--- slowest ops')
  for name, seconds in by_op.most_common(args.top):
    shape, opcode, rest = instructions[name]
    print(f'{seconds:8.3f} s  {name} {shape} {op_kind(name, instructions, computations)} '
          f'{layer_of(rest)}')
  common.emit(dict(
      benchmark='profile_step', network='mtl', batch=args.batch, size=args.size,
      cpu_convolution=layers.cpu_convolution(), device=str(jax.devices()[0]),
      machine=common.machine(), step_s=step_s, op_thread_s=sum(by_op.values()),
      by_kind=dict(by_kind.most_common()), by_layer=dict(by_layer.most_common(args.top)),
      trace=trace), args.out)


if __name__ == '__main__':
  main()
