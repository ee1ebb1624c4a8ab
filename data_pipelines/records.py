"""What the `data` stage records of each dataset role's splits, and the check of every split a
stage lists against it: a file that disappears from a prepared tree must not shrink a split
silently (a validation mIoU on 3 of 4 images, depth labels for fewer images than selected).

The data stage (sdeseg_jax.stages.data) writes, per role, beside the split sizes of its summary
(<workdir>/data/summary.json), the examples of every split it could read:

    "examples": {"segmentation/val": {"<example id>": "<image path relative to the tree>", ...}}

`sources.open_dataset` gives a role's reader its `SplitRecord`, and `Reader.segmentation` /
`Reader.sequences` pass every index they list through `SplitRecord.check`. An example recorded but
no longer listed (its image, or a neighbouring frame of a triplet, is gone) is a DataError naming
the file and the split; so is one listed but not recorded (a file added since, or a GTA5 / Synthia
training image that slid into val, the last `val_count` images, when a val image was deleted). A
user who changed the tree on purpose reruns the data stage, which records the tree as it is now,
or sets `config.data.<role>.allow_missing=True`: the split then holds the recorded examples still
there, with a warning listing the others.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from data_pipelines.datasets import common

SUMMARY_KEY = 'examples'  # the record's key in a role's summary
_LISTED = 20  # paths a warning lists before it counts the rest


def summary_file(workdir: str) -> str:
  """The data stage's summary, which holds the record (sdeseg_jax.artifacts.data_summary)."""
  return os.path.join(workdir, 'data', 'summary.json')


def split_examples(index: common.ExampleIndex, reader: common.Reader,
                   kind: str) -> dict[str, str]:
  """The record of a split: example id -> its image's path relative to the tree of `kind`
  (relative, so that a workdir moved with its trees keeps its record)."""
  base = common.kind_root(reader.root, reader.sequence_root, kind)
  return {i: os.path.relpath(p, base) for i, p in zip(index.ids.tolist(), index.images.tolist())}


def load(workdir: str, role: str, *, allow_missing: bool) -> SplitRecord | None:
  """The record of `role` in the workdir's data summary; None (with a warning) where there is none:
  a summary written before summaries held records, or no data stage run in this workdir. Such
  workdirs keep working unchecked rather than failing after an upgrade; rerunning the data stage
  records them."""
  path = summary_file(workdir)
  summary = common.read_json(path) if os.path.exists(path) else None
  examples = (summary or {}).get(role, {}).get(SUMMARY_KEY)
  if examples is None:
    why = ('no data stage has run in this workdir' if summary is None
           else 'the summary predates records of the examples')
    logging.warning('%s: no record of the %s examples (%s); their splits are read as found, so a '
                    'file that disappears shrinks a split silently. Rerun the data stage to record '
                    'them.', path, role, why)
    return None
  return SplitRecord(role=role, source=path, examples=examples, allow_missing=allow_missing)


@dataclasses.dataclass(frozen=True)
class SplitRecord:
  """The examples the data stage recorded for one role ('kind/split' -> {id: relative path}) and
  whether a split may hold fewer of them (config.data.<role>.allow_missing)."""
  role: str
  source: str  # the summary file, for messages
  examples: dict
  allow_missing: bool

  def has(self, kind: str, split: str) -> bool:
    """Whether the split could be read when the data stage recorded the tree."""
    return f'{kind}/{split}' in self.examples

  def check(self, kind: str, split: str, index: common.ExampleIndex,
            reader: common.Reader) -> common.ExampleIndex:
    """The listed `index` of split `kind/split` when it holds the recorded examples; else a
    DataError naming a file at fault, or with allow_missing the recorded examples still listed
    (and a warning naming the others)."""
    where = f'{self.role} split {kind}/{split}'
    recorded = self.examples.get(f'{kind}/{split}')
    if recorded is None:  # the split could not be read when the data stage ran
      raise common.DataError(f'{reader.root}: {where} is not in {self.source}, the data stage\'s '
                             f'record of the tree; {self._remedy()}')
    listed = set(index.ids.tolist())
    base = common.kind_root(reader.root, reader.sequence_root, kind)
    # A file that is gone names the fault best (a triplet also goes when only a neighbour does).
    gone = sorted((os.path.join(base, path) for i, path in recorded.items() if i not in listed),
                  key=os.path.exists)
    unrecorded = np.array([i not in recorded for i in index.ids.tolist()], bool)
    added = index.images[unrecorded].tolist()
    if not gone and not added:
      return index
    if not self.allow_missing:
      raise common.DataError(self._difference(where, len(recorded), gone, added))
    self._warn(where, len(recorded), len(index) - len(added), gone, added)
    return index.subset(np.flatnonzero(~unrecorded))

  def _warn(self, where: str, count: int, kept: int, gone: list[str], added: list[str]) -> None:
    """The warning of a split read with allow_missing: what is gone and what it left out."""
    absent = [p for p in gone if not os.path.exists(p)]  # `gone` lists these first
    parts = [f'files gone: {_listing(absent)}'] if absent else []
    if len(gone) > len(absent):
      parts.append('left out as a file they need is gone (e.g. a neighbouring frame) or as they '
                   f'moved to another split: {_listing(gone[len(absent):])}')
    if added:
      parts.append(f'left out, not recorded: {_listing(added)}')
    logging.warning('config.data.%s.allow_missing: %s holds %d of the %d examples the data stage '
                    'recorded in %s; %s', self.role, where, kept, count, self.source,
                    '; '.join(parts))

  def _difference(self, where: str, count: int, gone: list[str], added: list[str]) -> str:
    if gone:
      path = gone[0]
      note = (' (still here, but a file its example needs, e.g. a neighbouring frame, is not, '
              'or it moved to another split)' if os.path.exists(path) else '')
      return (f'{path}{note}: gone from {where}, recorded by the data stage with {count} '
              f'examples in {self.source} ({len(gone)} gone, {len(added)} not recorded); '
              f'{self._remedy()}')
    return (f'{added[0]}: in {where} but not among the {count} examples the data stage recorded '
            f'in {self.source} ({len(added)} such: files added, or moved between splits, since); '
            f'{self._remedy()}')

  def _remedy(self) -> str:
    return ('restore the files, or rerun the data stage to record the tree as it is now, or set '
            f'config.data.{self.role}.allow_missing=True to read the splits without them')


def _listing(paths: list[str]) -> str:
  more = f' and {len(paths) - _LISTED} more' if len(paths) > _LISTED else ''
  return ', '.join(paths[:_LISTED]) + more
