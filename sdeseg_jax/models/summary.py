"""Per-module parameter table of the networks a config builds (no compute: jax.eval_shape).

    python -m sdeseg_jax.models.summary --config=configs/base.py [--kind=mtl] [--depth=2]

Trainable parameters (BN scale and bias included) and BN statistics are counted apart.
"""

from __future__ import annotations

import collections

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from sdeseg_jax.models import networks

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
_KIND = flags.DEFINE_string('kind', 'all', f'Network: all or one of {sorted(networks.NETWORKS)}.')
_DEPTH = flags.DEFINE_integer('depth', 2, 'Module nesting depth of the table.')

# Which model config of the experiment builds which network.
MODEL_OF_KIND = {'sde': 'model', 'transfer': 'model', 'mtl': 'model',
                 'depth_student': 'student_model'}


def module_table(variables: dict, depth: int) -> list[tuple[str, int, int]]:
  """(module path truncated to `depth`, parameters, BN statistics) rows, in first-seen order."""
  rows = collections.OrderedDict()
  for collection, column in (('params', 0), ('batch_stats', 1)):
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables.get(collection, {})):
      name = '/'.join(str(p.key) for p in path[:-1][:depth])
      rows.setdefault(name, [0, 0])[column] += int(leaf.size)
  return [(name, p, s) for name, (p, s) in rows.items()]


def format_table(kind: str, rows: list[tuple[str, int, int]]) -> str:
  width = max([len(r[0]) for r in rows] + [6])
  lines = [f'{kind}', f'  {"module":{width}s} {"params":>12s} {"BN stats":>10s}']
  lines += [f'  {name:{width}s} {p:12,d} {s:10,d}' for name, p, s in rows]
  lines.append(f'  {"total":{width}s} {sum(r[1] for r in rows):12,d} '
               f'{sum(r[2] for r in rows):10,d}')
  return '\n'.join(lines)


def summarise(config, kind: str, depth: int) -> str:
  model = config[MODEL_OF_KIND[kind]]
  variables = jax.eval_shape(lambda: networks.init_variables(kind, model, jax.random.key(0)))
  return format_table(kind, module_table(variables, depth))


def main(argv):
  del argv
  kinds = sorted(networks.NETWORKS) if _KIND.value == 'all' else [_KIND.value]
  for kind in kinds:
    if kind not in networks.NETWORKS:
      raise app.UsageError(f'--kind={kind}: expected all or one of {sorted(networks.NETWORKS)}')
    print(summarise(_CONFIG.value, kind, _DEPTH.value), flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
