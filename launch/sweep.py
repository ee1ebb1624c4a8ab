"""Expands a config file's sweep into runs, one workdir each, and runs or schedules them.

    python launch/sweep.py --config=configs/ssl_cityscapes.py[:SWEEP] [--dry_run]
        [--mode=local|slurm|tpu] [--workdir_root=sweeps] [-- --config.key=value ...]

The sweep convention: a config file that has a grid defines

    def get_sweep(arg: str = '') -> Iterable[dict]

yielding one override dict per run. A key `config.<path>` sets that config value (passed as
`--config.<path>=<value>`); any other key is an item of the config file's variant, so
{'labels': 100, 'method': 'baseline', 'seed': 0} runs `configs/ssl_cityscapes.py:labels=100,
method=baseline,seed=0`. `arg` is what follows ':' in --config here (the sweep's name, e.g. a
table of the paper); a config without get_sweep has no grid and is an error here.

Each run gets <workdir_root>/<config name>[_<sweep>]/<run name>, the run name made of its overrides
(labels-100_method-baseline_seed-0). The sweep's folder holds `sweep.json` (the runs, their
overrides and commands), which launch/collect.py reads to group results by everything but the seed.

Modes:
  local  runs them here one after another, skipping runs whose stages are all done; a failing run
         is reported and the others still run (exit status 1 if any failed).
  slurm  writes <sweep folder>/sweep.sbatch, a job array (one task per run, each task one process
         per GPU through launch/slurm_gpu.sh), and prints the sbatch command that submits it.
  tpu    writes <sweep folder>/tpu_commands.sh, one launch/tpu_pod.sh command per run (a pod runs
         one at a time; give several --tpu_name to spread them round-robin over pods).
Arguments after `--` are passed to every run (e.g. paths of converted ImageNet weights).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Any

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)  # config files import `configs.base`

MODES = ('local', 'slurm', 'tpu')
# Keys holding a run's seed: collect.py averages over them.
SEED_KEYS = ('seed', 'config.seed')

_CONFIG = flags.DEFINE_string('config', None, 'Config file[:sweep argument], e.g. '
                              'configs/ssl_cityscapes.py or configs/ssl_cityscapes.py:table7.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the runs and their commands; write nothing.')
_MODE = flags.DEFINE_enum('mode', 'local', MODES, 'Run here, write a SLURM job array, or write '
                          'TPU pod commands.')
_ROOT = flags.DEFINE_string('workdir_root', 'sweeps', 'Folder under which each run gets its '
                            'workdir (slurm/tpu: a path every node or worker sees).')
_GPUS = flags.DEFINE_integer('gpus_per_node', 8, 'slurm: GPUs (= processes) per node.')
_NODES = flags.DEFINE_integer('nodes', 1, 'slurm: nodes per run.')
_PARTITION = flags.DEFINE_string('partition', '', 'slurm: partition ("": the default).')
_TIME = flags.DEFINE_string('time', '', 'slurm: time limit per run, e.g. 2-00:00:00.')
_MAX_PARALLEL = flags.DEFINE_integer('max_parallel', 0, 'slurm: runs at once (0: no limit).')
_TPU_NAMES = flags.DEFINE_list('tpu_name', ['sdeseg'], 'tpu: TPU VM name(s), runs round-robin.')
_TPU_ZONE = flags.DEFINE_string('tpu_zone', 'us-central2-b', 'tpu: zone of the TPU VMs.')
_TPU_TYPE = flags.DEFINE_string('tpu_type', 'v4-32', 'tpu: accelerator type (created if missing).')


class SweepError(ValueError):
  """A sweep that cannot be expanded: the message names the config file and the key."""


def load_module(path: str):
  """The config file as a module (its imports of configs.* resolve against the repository)."""
  if not os.path.isfile(path):
    raise SweepError(f'{path}: no such config file')
  name = 'sweep_config_' + re.sub(r'\W', '_', os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def format_value(value: Any) -> str:
  """A value as a config override or variant item understands it (tuples as '(1, 2)')."""
  if isinstance(value, bool):
    return 'True' if value else 'False'
  if isinstance(value, list):
    value = tuple(value)
  return str(value)


def run_name(overrides: dict) -> str:
  """labels-100_method-baseline_seed-0: safe in paths, SLURM scripts and TensorBoard log dirs."""
  parts = []
  for key, value in overrides.items():
    key = key[len('config.'):] if key.startswith('config.') else key
    parts.append(f'{key}-{format_value(value)}')
  return re.sub(r'[^A-Za-z0-9._+-]+', '_', '_'.join(parts)).strip('_') or 'default'


def _check_key(config, key: str, where: str) -> None:
  node = config
  for i, part in enumerate(key.split('.')):
    if not hasattr(node, 'keys') or part not in node:
      raise SweepError(f'{where}: override {"config." + key!r}: the config has no '
                       f'{".".join(key.split(".")[:i + 1])!r}')
    node = node[part]


def expand(config_arg: str, *, workdir_root: str, extra: list[str] = ()) -> dict:
  """The sweep of `config_arg` ('path[:sweep]'): {config, sweep, folder, runs: [{name, overrides,
  variant, workdir, args}]}, each run's config built once to check its overrides."""
  path, _, sweep_arg = config_arg.partition(':')
  module = load_module(path)
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'{path} defines no get_sweep(arg) -> iterable of override dicts, so it has '
                     'no sweep (see launch/sweep.py)')
  try:
    grid = list(module.get_sweep(sweep_arg))
  except (ValueError, KeyError) as e:
    message = str(e) if path in str(e) else f'{path}: get_sweep({sweep_arg!r}): {e}'
    raise SweepError(message) from e
  if not grid:
    raise SweepError(f'{path}: get_sweep({sweep_arg!r}) yielded no runs')
  stem = os.path.splitext(os.path.basename(path))[0]
  folder = os.path.join(workdir_root, stem + (f'_{sweep_arg}' if sweep_arg else ''))
  runs, names = [], {}
  for overrides in grid:
    if not isinstance(overrides, dict):
      raise SweepError(f'{path}: get_sweep yielded {overrides!r}, not a dict of overrides')
    variant = ','.join(f'{k}={format_value(v)}' for k, v in overrides.items()
                       if not k.startswith('config.'))
    where = f'{path}:{variant}' if variant else path
    try:
      config = module.get_config(variant) if variant else module.get_config()
    except ValueError as e:
      raise SweepError(f'{where}: {e}') from e
    settings = [f'--config.{k[len("config."):]}={format_value(v)}'
                for k, v in overrides.items() if k.startswith('config.')]
    for key in overrides:
      if key.startswith('config.'):
        _check_key(config, key[len('config.'):], path)
    name = run_name(overrides)
    if name in names:
      raise SweepError(f'{path}: runs {names[name]} and {overrides} get the same name {name!r}')
    names[name] = overrides
    workdir = os.path.join(folder, name)
    stages = config.stages
    for arg in [*settings, *extra]:
      if arg.startswith('--config.stages='):
        stages = arg.split('=', 1)[1]
    runs.append(dict(name=name, overrides=overrides, workdir=workdir, stages=stages,
                     args=[f'--config={where}', f'--workdir={workdir}', *settings, *extra]))
  return dict(config=path, sweep=sweep_arg, folder=folder, seed_keys=list(SEED_KEYS), runs=runs)


def finished(run: dict) -> bool:
  """Whether every stage of the run has its done marker (sdeseg_jax.stages.done_marker)."""
  names = [s.strip() for s in run['stages'].split(',') if s.strip()]
  return bool(names) and all(os.path.exists(os.path.join(run['workdir'], s, 'done'))
                             for s in names)


def write_manifest(sweep: dict) -> str:
  os.makedirs(sweep['folder'], exist_ok=True)
  path = os.path.join(sweep['folder'], 'sweep.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(sweep, f, indent=1)
  os.replace(path + '.tmp', path)
  return path


def run_local(sweep: dict) -> int:
  failed, skipped = [], 0
  for i, run in enumerate(sweep['runs']):
    if finished(run):
      print(f'[{i + 1}/{len(sweep["runs"])}] {run["name"]}: finished, skipped', flush=True)
      skipped += 1
      continue
    print(f'[{i + 1}/{len(sweep["runs"])}] {run["name"]}', flush=True)
    # From this folder (relative config and workdir paths mean what they meant here), with the
    # repository importable whether or not it is installed.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        REPO, os.environ.get('PYTHONPATH')])))
    code = subprocess.call([sys.executable, '-m', 'sdeseg_jax.main', *run['args']], env=env)
    if code:
      print(f'{run["name"]}: exited with status {code} (workdir {run["workdir"]})', flush=True)
      failed.append(run['name'])
  print(f'{len(sweep["runs"]) - len(failed) - skipped} ran, {skipped} skipped, {len(failed)} '
        f'failed{": " + ", ".join(failed) if failed else ""}', flush=True)
  return 1 if failed else 0


def slurm_script(sweep: dict) -> str:
  """A job array: task i runs run i through launch/slurm_gpu.sh inside its allocation."""
  n = len(sweep['runs'])
  array = f'0-{n - 1}' + (f'%{_MAX_PARALLEL.value}' if _MAX_PARALLEL.value else '')
  log = os.path.join(os.path.abspath(sweep['folder']), 'slurm-%A_%a.out')
  lines = ['#!/usr/bin/env bash',
           f'# {n} runs of {sweep["config"]}' + (f':{sweep["sweep"]}' if sweep['sweep'] else '') +
           ', written by launch/sweep.py; submit with: sbatch THIS_FILE',
           f'#SBATCH --job-name=sweep_{os.path.basename(sweep["folder"])}',
           f'#SBATCH --array={array}',
           f'#SBATCH --nodes={_NODES.value}',
           f'#SBATCH --ntasks-per-node={_GPUS.value}',
           f'#SBATCH --gpus-per-node={_GPUS.value}',
           f'#SBATCH --output={log}']
  if _PARTITION.value:
    lines.append(f'#SBATCH --partition={_PARTITION.value}')
  if _TIME.value:
    lines.append(f'#SBATCH --time={_TIME.value}')
  lines += ['set -euo pipefail', f'cd {quote(REPO)}',
            'case "${SLURM_ARRAY_TASK_ID:?run this file with sbatch}" in']
  for i, run in enumerate(sweep['runs']):
    config, workdir, *rest = run['args']
    arguments = ' '.join(quote(a) for a in [
        config.split('=', 1)[1], workdir.split('=', 1)[1], *rest])
    lines.append(f'  {i}) args=({arguments}) ;;')
  lines += ['  *) echo "no run $SLURM_ARRAY_TASK_ID in this sweep" >&2; exit 2 ;;', 'esac',
            'exec launch/slurm_gpu.sh --in_allocation "${args[@]}"', '']
  return '\n'.join(lines)


def tpu_commands(sweep: dict) -> str:
  lines = ['#!/usr/bin/env bash',
           f'# {len(sweep["runs"])} runs of {sweep["config"]}, written by launch/sweep.py. A TPU '
           'VM runs one at a time: run the lines of one --name one after another.',
           f'cd {quote(REPO)}']
  names = _TPU_NAMES.value
  for i, run in enumerate(sweep['runs']):
    config, workdir, *rest = run['args']
    command = ['launch/tpu_pod.sh', f'--name={names[i % len(names)]}',
               f'--zone={_TPU_ZONE.value}', f'--accelerator={_TPU_TYPE.value}',
               config.split('=', 1)[1], workdir.split('=', 1)[1], *rest]
    lines.append(' '.join(quote(c) for c in command))
  return '\n'.join(lines) + '\n'


def quote(word: str) -> str:
  """shlex.quote, but commas quoted too: shellcheck reads a bare comma in an array as a mistake."""
  if re.fullmatch(r'[\w@%+=:./-]+', word):
    return word
  return "'" + word.replace("'", "'\"'\"'") + "'"


def describe(sweep: dict) -> str:
  lines = [f'{len(sweep["runs"])} runs of {sweep["config"]}' +
           (f':{sweep["sweep"]}' if sweep['sweep'] else '') + f' in {sweep["folder"]}']
  for run in sweep['runs']:
    state = ' (finished)' if finished(run) else ''
    lines.append(f'{run["name"]}{state}: python -m sdeseg_jax.main ' +
                 ' '.join(quote(a) for a in run['args']))
  return '\n'.join(lines)


def main(argv: list[str]) -> int:
  extra = argv[1:]
  if extra and not all(a.startswith('--config.') for a in extra):
    raise app.UsageError(f'arguments after -- must be --config.key=value overrides, got {extra}')
  if not _CONFIG.value:
    raise app.UsageError('--config=CONFIG_FILE[:SWEEP] is required')
  try:
    sweep = expand(_CONFIG.value, workdir_root=_ROOT.value, extra=extra)
  except SweepError as e:
    sys.exit(f'sweep: {e}')
  if _DRY_RUN.value:
    print(describe(sweep))
    return 0
  manifest = write_manifest(sweep)
  if _MODE.value == 'local':
    return run_local(sweep)
  if _MODE.value == 'slurm':
    path = os.path.join(sweep['folder'], 'sweep.sbatch')
    text = slurm_script(sweep)
  else:
    path = os.path.join(sweep['folder'], 'tpu_commands.sh')
    text = tpu_commands(sweep)
  with open(path, 'w') as f:
    f.write(text)
  os.chmod(path, 0o755)
  print(f'{len(sweep["runs"])} runs; manifest {manifest}')
  print(f'sbatch {shlex.quote(path)}' if _MODE.value == 'slurm' else f'bash {shlex.quote(path)}')
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
