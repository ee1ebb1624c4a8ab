"""Gathers the eval.json of every run of a sweep into one table: mean +- std over seeds.

    python launch/collect.py --root=sweeps/ssl_cityscapes [--pivot=labels] [--per_class]
        [--out=PREFIX]

--root is a sweep folder (holding the sweep.json that launch/sweep.py writes) or a folder above
several. Runs are grouped by their sweep overrides except the seed (`seed`, `config.seed`); each
group's mIoU (and the extra protocols of eval.json['subsets'], and per-class IoU) is reported
in percent as mean +- sample standard deviation (ddof = 1; blank with one seed), with the seeds
counted.
Runs without eval.json yet are listed as missing and left out. Writes PREFIX.md and PREFIX.csv
(default <root>/results) and prints the Markdown.

--pivot=KEY lays the Markdown out as the paper's tables: one column per value of KEY (e.g. the label
counts), mIoU cells.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys

from absl import app
from absl import flags
import numpy as np

_ROOT = flags.DEFINE_string('root', None, 'A sweep folder, or a folder above sweep folders.')
_OUT = flags.DEFINE_string('out', None, 'Output prefix for .md and .csv (default <root>/results).')
_PIVOT = flags.DEFINE_string('pivot', None, 'A sweep key whose values become Markdown columns.')
_PER_CLASS = flags.DEFINE_bool('per_class', False, 'Per-class IoU columns in the Markdown too '
                               '(the CSV always has them).')


class CollectError(ValueError):
  """Nothing to collect, or results that do not fit together: the message names the file."""


def find_manifests(root: str) -> list[str]:
  found = []
  for directory, _, files in os.walk(root):
    if 'sweep.json' in files:
      found.append(os.path.join(directory, 'sweep.json'))
  return sorted(found)


def load_results(root: str) -> tuple[list[dict], list[str]]:
  """([{key: value, ..., '_seed': s, 'eval': eval.json}], [missing run workdirs])."""
  manifests = find_manifests(root)
  if not manifests:
    raise CollectError(f'{root}: no sweep.json below it (written by launch/sweep.py)')
  rows, missing = [], []
  for manifest in manifests:
    with open(manifest) as f:
      sweep = json.load(f)
    seed_keys = set(sweep.get('seed_keys', ('seed', 'config.seed')))
    folder = os.path.dirname(manifest)
    for run in sweep['runs']:
      # The run's folder beside the manifest: the sweep may have been moved or copied back.
      path = os.path.join(folder, run['name'], 'eval.json')
      if not os.path.exists(path):
        missing.append(os.path.join(folder, run['name']))
        continue
      with open(path) as f:
        try:
          evaluation = json.load(f)
        except json.JSONDecodeError as e:
          raise CollectError(f'{path}: not JSON ({e})') from e
      if 'miou' not in evaluation:
        raise CollectError(f'{path}: no "miou" (expected the evaluate stage\'s eval.json)')
      keys = {k: v for k, v in run['overrides'].items() if k not in seed_keys}
      seed = next((run['overrides'][k] for k in seed_keys if k in run['overrides']), None)
      rows.append(dict(keys=keys, seed=seed, eval=evaluation, path=path))
  return rows, missing


def _stats(values: list[float]) -> tuple[float, float]:
  values = np.asarray(values, np.float64) * 100.0
  return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else np.nan)


def summarise(rows: list[dict]) -> tuple[list[str], list[str], list[dict]]:
  """(group keys, metric names, groups) with each group {keys, seeds, metrics: {name: (mean, std)}},
  groups in the order of their first run. Metrics: miou, subset/<name>, iou/<class>."""
  groups: dict[tuple, dict] = {}
  key_names: list[str] = []
  for row in rows:
    for k in row['keys']:
      if k not in key_names:
        key_names.append(k)
    identity = tuple(sorted((k, json.dumps(v)) for k, v in row['keys'].items()))
    group = groups.setdefault(identity, dict(keys=row['keys'], seeds=[], values={}))
    if row['seed'] in group['seeds'] and row['seed'] is not None:
      raise CollectError(f'{row["path"]}: seed {row["seed"]} of {row["keys"]} appears twice')
    group['seeds'].append(row['seed'])
    values = {'miou': row['eval']['miou']}
    values.update({f'subset/{k}': v for k, v in row['eval'].get('subsets', {}).items()})
    values.update({f'iou/{k}': v for k, v in row['eval'].get('iou', {}).items()})
    for name, value in values.items():
      group['values'].setdefault(name, []).append(value)
  metric_names: list[str] = []
  for group in groups.values():
    for name in group['values']:
      if name not in metric_names:
        metric_names.append(name)
    group['metrics'] = {name: _stats(v) for name, v in group['values'].items()}
  return key_names, metric_names, list(groups.values())


def _cell(stat: tuple[float, float] | None) -> str:
  if stat is None:
    return ''
  mean, std = stat
  return f'{mean:.2f}' if np.isnan(std) else f'{mean:.2f} ± {std:.2f}'


def _label(name: str) -> str:
  if name == 'miou':
    return 'mIoU'
  kind, _, rest = name.partition('/')
  return f'mIoU ({rest})' if kind == 'subset' else rest


def markdown(key_names, metric_names, groups, *, pivot: str | None = None,
             per_class: bool = False) -> str:
  if pivot:
    if pivot not in key_names:
      raise CollectError(f'--pivot={pivot}: not a sweep key (keys: {", ".join(key_names)})')
    rows_keys = [k for k in key_names if k != pivot]
    columns = []
    for g in groups:
      if g['keys'].get(pivot) not in columns:
        columns.append(g['keys'].get(pivot))
    table: dict[tuple, dict] = {}
    for g in groups:
      row = tuple(json.dumps(g['keys'].get(k)) for k in rows_keys)
      table.setdefault(row, dict(keys=g['keys'], cells={}))['cells'][
          json.dumps(g['keys'].get(pivot))] = g
    header = rows_keys + [f'{pivot}={c}' for c in columns]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for entry in table.values():
      cells = [str(entry['keys'].get(k, '')) for k in rows_keys]
      for c in columns:
        g = entry['cells'].get(json.dumps(c))
        cells.append('' if g is None else f'{_cell(g["metrics"]["miou"])} (n={len(g["seeds"])})')
      lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'
  shown = [m for m in metric_names if per_class or not m.startswith('iou/')]
  header = key_names + ['seeds'] + [_label(m) for m in shown]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for g in groups:
    cells = [str(g['keys'].get(k, '')) for k in key_names] + [str(len(g['seeds']))]
    cells += [_cell(g['metrics'].get(m)) for m in shown]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def csv_text(key_names, metric_names, groups) -> str:
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(key_names + ['seeds'] + [f'{m}_{s}' for m in metric_names for s in ('mean',
                                                                                     'std')])
  for g in groups:
    row = [g['keys'].get(k, '') for k in key_names] + [len(g['seeds'])]
    for m in metric_names:
      mean, std = g['metrics'].get(m, (np.nan, np.nan))
      row += [f'{mean:.4f}' if not np.isnan(mean) else '',
              f'{std:.4f}' if not np.isnan(std) else '']
    writer.writerow(row)
  return out.getvalue()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if not _ROOT.value:
    raise app.UsageError('--root=SWEEP_FOLDER is required')
  try:
    rows, missing = load_results(_ROOT.value)
    if not rows:
      raise CollectError(f'{_ROOT.value}: no run has an eval.json yet ({len(missing)} missing)')
    key_names, metric_names, groups = summarise(rows)
    text = markdown(key_names, metric_names, groups, pivot=_PIVOT.value,
                    per_class=_PER_CLASS.value)
  except CollectError as e:
    sys.exit(f'collect: {e}')
  prefix = _OUT.value or os.path.join(_ROOT.value, 'results')
  with open(prefix + '.md', 'w') as f:
    f.write(text)
  with open(prefix + '.csv', 'w', newline='') as f:
    f.write(csv_text(key_names, metric_names, groups))
  print(text, end='')
  print(f'\n{len(rows)} runs in {len(groups)} groups; written {prefix}.md and {prefix}.csv')
  if missing:
    print(f'{len(missing)} runs without eval.json: ' + ', '.join(missing[:10]) +
          (' ...' if len(missing) > 10 else ''))


if __name__ == '__main__':
  app.run(main)
