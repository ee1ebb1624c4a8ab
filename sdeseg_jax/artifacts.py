"""The workdir layout: the path of every artifact a stage writes and a later stage reads.

Stages hand over only through these files, so this module is the contract between them:

    <workdir>/<stage>/done                 the stage finished (stages.run_stages)
    <workdir>/raw/<role>, data/<role>,     the rendered, prepared and sharded datasets
      tfds/<role>                            (data_pipelines.sources; role: target or source)
    <workdir>/data/summary.json            split sizes and the record of their examples (data)
    <workdir>/sde/ckpt, sde_source/ckpt    the SDE of each domain (sde_pretrain, sde_source)
    <workdir>/depth/<role>/<id>.npy        depth labels (depth_labels)
    <workdir>/select_labels/               selection steps, students, features, report
    <workdir>/selection.json               the ordered selection (select_labels)
    <workdir>/segment/{ckpt,best,config.json,best.json}   segmentation (segment)
    <workdir>/eval.json, predictions/<split>/            evaluation (evaluate)
"""

from __future__ import annotations

import os

from data_pipelines import records

# role -> the stage that trains that domain's SDE and its folder.
SDE_STAGE_OF_ROLE = {'target': 'sde_pretrain', 'source': 'sde_source'}
_SDE_FOLDER_OF_ROLE = {'target': 'sde', 'source': 'sde_source'}

# config.segment.selection value that means the select_labels stage's output.
SELECTION_FROM_STAGE = 'select_labels'
SEGMENT_WEIGHTS = ('best', 'latest')


def done_marker(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage, 'done')


def data_summary(workdir: str) -> str:
  """The data stage's summary, which also records each split's examples (data_pipelines.records,
  where the data layer that checks against it keeps the path)."""
  return records.summary_file(workdir)


def sde_dir(workdir: str, role: str = 'target') -> str:
  """The SDE run of domain `role`: ckpt/, logs/, eval.json."""
  return os.path.join(workdir, _SDE_FOLDER_OF_ROLE[role])


def sde_checkpoint(workdir: str, role: str = 'target') -> str:
  return os.path.join(sde_dir(workdir, role), 'ckpt')


def depth_dir(workdir: str, role: str) -> str:
  """Depth labels of domain `role`: <example id>.npy, float32 [H, W] disparity."""
  return os.path.join(workdir, 'depth', role)


def select_dir(workdir: str) -> str:
  return os.path.join(workdir, 'select_labels')


def select_step_file(workdir: str, step: int) -> str:
  return os.path.join(select_dir(workdir), 'steps', f'{step:02d}.json')


def select_student_dir(workdir: str, step: int) -> str:
  return os.path.join(select_dir(workdir), f'student_{step:02d}')


def selection_file(workdir: str) -> str:
  """The select_labels stage's ordered id list (its first n ids are the n-image subset)."""
  return os.path.join(workdir, 'selection.json')


def segment_dir(workdir: str) -> str:
  """ckpt/, best/ (the best evaluated weights), best.json, config.json, logs/."""
  return os.path.join(workdir, 'segment')


def segment_weights(workdir: str, which: str) -> str:
  """The segment stage's best evaluated ('best') or latest ('latest') weights."""
  if which not in SEGMENT_WEIGHTS:
    raise ValueError(f'segment weights {which!r}: expected one of {SEGMENT_WEIGHTS}')
  return os.path.join(segment_dir(workdir), 'best' if which == 'best' else 'ckpt')


def eval_file(workdir: str) -> str:
  return os.path.join(workdir, 'eval.json')


def predictions_dir(workdir: str, split: str) -> str:
  return os.path.join(workdir, 'predictions', split)
