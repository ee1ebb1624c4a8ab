"""Load reports: what a converted variable tree lacks, adds or shapes differently from the expected
one.

A weight import is only trusted when the converted tree matches the tree the Flax module creates
(`expected`, e.g. from `jax.eval_shape(model.init, ...)`) key for key and shape for shape, and every
source tensor was either used or deliberately ignored. `check_variables` builds the report and
raises `WeightImportError` naming every offending key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np


class WeightImportError(ValueError):
  """A converted tree does not match the expected one (the message names every offending key),
  or the source is not the kind of checkpoint asked for (a message; no report)."""

  def __init__(self, report: 'LoadReport | str'):
    super().__init__(report if isinstance(report, str) else report.describe())
    self.report = None if isinstance(report, str) else report


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """Nested dicts -> {'params/layer1_0/conv1/kernel': leaf}."""
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}/{key}' if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(flatten(value, name))
    else:
      flat[name] = value
  return flat


@dataclasses.dataclass
class LoadReport:
  """Outcome of one import.

  Attributes:
    name: what was imported (for messages).
    loaded: number of converted arrays that matched. num_weights: their total size (params only).
    missing: expected keys the source did not provide.
    unexpected: converted keys the module does not have, and source keys no rule maps
      (named as in the source, e.g. 'encoder.layer1.0.foo.weight').
    mismatched: 'key: got (..), expected (..)' for every shape difference.
    ignored: source keys dropped on purpose (fc.*, num_batches_tracked, non-tensor entries, ...).
  """
  name: str
  loaded: int = 0
  num_weights: int = 0
  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)
  mismatched: list[str] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched)

  def describe(self, max_ignored: int = 8) -> str:
    lines = [f'{self.name}: {"OK" if self.ok else "FAILED"}, {self.loaded} arrays loaded '
             f'({self.num_weights:,} trainable weights)']
    for title, keys in (('missing', self.missing), ('unexpected', self.unexpected),
                        ('shape mismatch', self.mismatched)):
      if keys:
        lines.append(f'  {title} ({len(keys)}):')
        lines.extend(f'    {k}' for k in keys)
    if self.ignored:
      # BN step counters are dropped in every import: count them, name the rest.
      counters = [k for k in self.ignored if k.endswith('num_batches_tracked')]
      named = [k for k in self.ignored if not k.endswith('num_batches_tracked')]
      shown = named[:max_ignored] + ([f'... ({len(named) - max_ignored} more)']
                                     if len(named) > max_ignored else [])
      if counters:
        shown.append(f'{len(counters)} x num_batches_tracked')
      lines.append(f'  ignored ({len(self.ignored)}): {", ".join(shown)}')
    return '\n'.join(lines)

  def raise_if_failed(self) -> None:
    if not self.ok:
      raise WeightImportError(self)


def compare_variables(converted: Mapping[str, Any], expected: Mapping[str, Any],
                      name: str = 'import', unmapped: Sequence[str] = (),
                      ignored: Sequence[str] = ()) -> LoadReport:
  """Compares two variable trees ({'params': ..., 'batch_stats': ...}) by key and shape.

  `expected` leaves only need a `.shape` (arrays or jax.ShapeDtypeStruct). `unmapped` / `ignored`
  are source keys the conversion could not place / dropped on purpose; they enter the report.
  """
  got, want = flatten(converted), flatten(expected)
  report = LoadReport(name=name, unexpected=list(unmapped), ignored=list(ignored))
  for key in want:
    if key not in got:
      report.missing.append(key)
  for key, value in got.items():
    if key not in want:
      report.unexpected.append(key)
    elif tuple(np.shape(value)) != tuple(want[key].shape):
      report.mismatched.append(
          f'{key}: got {tuple(np.shape(value))}, expected {tuple(want[key].shape)}')
    else:
      report.loaded += 1
      if key.startswith('params/'):
        report.num_weights += int(np.size(value))
  return report


def check_variables(converted: Mapping[str, Any], expected: Mapping[str, Any], name: str = 'import',
                    unmapped=(), ignored=()) -> LoadReport:
  """compare_variables, raising WeightImportError (naming the keys) on any difference."""
  report = compare_variables(converted, expected, name, unmapped, ignored)
  report.raise_if_failed()
  return report
