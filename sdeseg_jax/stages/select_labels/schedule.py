"""The selection schedule (config.select): which images each step adds, by method, and the
records of finished steps that let a rerun continue after the last one."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import jax
import ml_collections
import numpy as np

from data_pipelines import sources
from data_pipelines.datasets import common
from sdeseg_jax import artifacts
from sdeseg_jax import ops
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.stages.select_labels import features as features_lib
from sdeseg_jax.stages.select_labels import report
from sdeseg_jax.stages.select_labels import students
from sdeseg_jax.training import sharding


METHODS = ('ds_us', 'ds', 'us', 'random', 'entropy')
INITIAL = ('diversity', 'random')


def uses_features(select: ml_collections.ConfigDict) -> bool:
  return select.method in ('ds', 'ds_us') or (
      select.initial == 'diversity' and select.method != 'random')


def student_kind(select: ml_collections.ConfigDict) -> str | None:
  """'depth', 'segmentation' or None: the student trained before each step after the first."""
  return {'ds_us': 'depth', 'us': 'depth', 'entropy': 'segmentation'}.get(select.method)


def fingerprint(select: ml_collections.ConfigDict, step: int, ids: np.ndarray, seed: int) -> dict:
  """What determines the selection up to `step`: a finished step is reused only if it matches."""
  values = dict(method=select.method, initial=select.initial, seed=seed,
                sizes=[int(s) for s in select.sizes[:step + 1]],
                candidates=hashlib.sha256('\n'.join(ids.tolist()).encode()).hexdigest()[:16])
  if student_kind(select):
    values['student_steps'] = [int(s) for s in select.student_steps[:step]]
  if select.method == 'ds_us' and step >= 1:   # step 0 is pure diversity
    values['lambda_e'] = float(select.lambda_e)
  if uses_features(select):
    values['features'] = dict(level=int(select.feature_level),
                              pool=[int(p) for p in select.feature_pool])
  return values


def load_finished_steps(workdir: str, select, ids: np.ndarray, seed: int) -> list[dict]:
  """The finished steps' records, in order; one made under a different config is an error."""
  records = []
  for step in range(len(select.sizes)):
    path = artifacts.select_step_file(workdir, step)
    if not os.path.exists(path):
      break
    with open(path) as f:
      record = json.load(f)
    expected = fingerprint(select, step, ids, seed)
    if record.get('fingerprint') != expected:
      raise ConfigError(f'{path}: this finished selection step was made with a different config '
                        f'({record.get("fingerprint")} != {expected}); delete '
                        f'{artifacts.select_dir(workdir)} to select again with the current config')
    records.append(record)
  return records


def random_order(seed: int, count: int) -> np.ndarray:
  """The seeded order in which random choices take the candidates."""
  return np.random.default_rng([seed, count]).permutation(count)


def diversity_terms(features: np.ndarray, selected: np.ndarray, chosen: np.ndarray) -> np.ndarray:
  """[n] min distance of each chosen row to the selection at the time it was added (the selection
  grows by the chosen rows in order)."""
  nearest = np.full(len(features), np.inf, np.float32)
  for row in selected:
    nearest = np.minimum(nearest, np.linalg.norm(features - features[row], axis=1))
  terms = []
  for row in chosen:
    terms.append(float(nearest[row]))
    nearest = np.minimum(nearest, np.linalg.norm(features - features[row], axis=1))
  return np.array(terms, np.float32)


def top_scores(scores: np.ndarray, selected: np.ndarray, count: int) -> np.ndarray:
  """The `count` unselected rows of highest score (ties: lower row first)."""
  available = np.ones(len(scores), bool)
  available[selected] = False
  rows = np.flatnonzero(available)
  return rows[np.argsort(-scores[rows], kind='stable')[:count]]


def choose(method: str, count: int, selected: np.ndarray, *, order: np.ndarray,
           features: np.ndarray | None, scores: np.ndarray | None, lambda_e: float
           ) -> tuple[np.ndarray, np.ndarray | None]:
  """(`count` new rows in the order they are added, their diversity terms or None)."""
  if method == 'random':
    taken = set(selected.tolist())
    chosen = np.array([r for r in order if r not in taken][:count], np.int64)
  elif method in ('ds', 'ds_us'):
    rows, distances = ops.farthest_point_selection_with_distances(
        features, selected, count, scores if method == 'ds_us' else None,
        lambda_e if method == 'ds_us' else 0.0)
    return np.asarray(rows, np.int64), np.asarray(distances)
  else:  # us, entropy: the most uncertain images
    chosen = top_scores(scores, selected, count)
  return chosen, (None if features is None else diversity_terms(features, selected, chosen))


def initial_choice(select, count: int, order: np.ndarray, features: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
  """Step 0: (rows, diversity terms or None): one random image and its farthest points, or the
  first `count` images of the random order."""
  if select.initial == 'diversity' and select.method != 'random':
    first = order[:1]
    rows, terms = choose('ds', count - 1, first, order=order, features=features, scores=None,
                         lambda_e=0.0)
    # The random first image has no diversity term.
    return np.concatenate([first, rows]), np.concatenate([[np.nan], terms])
  return order[:count], None


def select(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Runs (or continues) the selection schedule; returns the ordered ids (as selection.json)."""
  select_config = config.select
  sizes = [int(s) for s in select_config.sizes]
  reader = sources.open_dataset(config.data.target, workdir, 'target')
  index = reader.segmentation('train')
  if sizes[-1] > len(index):
    raise ConfigError(f'config.select.sizes={tuple(sizes)}: the training split has only '
                      f'{len(index)} images')
  mesh = sharding.make_mesh()
  records = load_finished_steps(workdir, select_config, index.ids, config.seed)
  if records:
    logging.info('select_labels: steps 0..%d finished (%d images); continuing', len(records) - 1,
                 len(records[-1]['ids']))
  kind = student_kind(select_config)
  if kind == 'segmentation' and not index.is_labeled.all():
    raise common.DataError(f'config.select.method=entropy trains on labels, but '
                           f'{(~index.is_labeled).sum()} training images have none (e.g. '
                           f'{index.images[~index.is_labeled][0]})')
  features = teacher = None
  if len(records) < len(sizes):
    if uses_features(select_config):
      features = features_lib.cached_features(config, workdir, index, reader, mesh)
    teacher = students.teacher_dir(workdir, index) if kind == 'depth' else None
  order = random_order(config.seed, len(index))
  position = {i: n for n, i in enumerate(index.ids.tolist())}
  selected = np.array([position[i] for i in records[-1]['ids']], np.int64) if records else (
      np.zeros([0], np.int64))

  for step in range(len(records), len(sizes)):
    count = sizes[step] - len(selected)
    scores, student = None, None
    if step == 0:
      chosen, terms = initial_choice(select_config, count, order, features)
    else:
      if kind is not None:
        scores, student = students.student_scores(config, workdir, step, kind, index, selected,
                                                  reader, teacher=teacher, mesh=mesh)
      chosen, terms = choose(select_config.method, count, selected, order=order,
                             features=features, scores=scores, lambda_e=select_config.lambda_e)
    records.append(step_record(select_config, step, index, selected, chosen, terms, scores,
                               student, config.seed))
    report.write_json(artifacts.select_step_file(workdir, step), records[-1])
    selected = np.concatenate([selected, chosen])
    logging.info('select_labels: step %d: %d images (+%s)', step, len(selected),
                 ', '.join(index.ids[chosen][:8]) + (' ...' if len(chosen) > 8 else ''))
    if student and not select_config.keep_students and jax.process_index() == 0:
      # The step's selection is saved: its student is no longer needed.
      shutil.rmtree(artifacts.select_student_dir(workdir, step), ignore_errors=True)

  ids = records[-1]['ids']
  report.write_json(artifacts.selection_file(workdir), ids)
  report.write_report(workdir, config, records, index, reader)
  return ids


def step_record(select, step: int, index, selected, chosen, terms, scores, student,
                seed: int) -> dict:
  """The JSON of a finished step: the whole ordered selection and each new image's terms."""
  def number(value):
    return None if value is None or not np.isfinite(value) else float(value)
  chosen_terms = []
  for n, row in enumerate(chosen):
    diversity = None if terms is None else number(terms[n])
    error = None if scores is None else number(scores[row])
    entry = dict(id=str(index.ids[row]), diversity=diversity, error=error)
    if select.method == 'ds_us' and diversity is not None and error is not None:
      entry['objective'] = diversity + float(select.lambda_e) * error
    chosen_terms.append(entry)
  ids = index.ids[np.concatenate([selected, chosen]).astype(np.int64)].tolist()
  return dict(step=step, size=len(ids), ids=ids, chosen=chosen_terms, student=student,
              fingerprint=fingerprint(select, step, index.ids, seed))
