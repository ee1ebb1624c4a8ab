"""All Orbax calls of the project: per-stage checkpoint managers, restore-or-init, partial restore
from another stage's checkpoint by name mapping, and preemption (SIGTERM) handling.

Checkpoints hold plain nested dicts of arrays (TrainState.to_dict()), so they do not depend on the
module or optimiser classes that produced them.

A CheckpointManager directory holds one folder per step, as Orbax 0.12 writes it:

  <step>/commit_success.txt       written last, when Orbax commits the step
  <step>/_CHECKPOINT_METADATA     step metadata (item handler, commit time), JSON
  <step>/default/_METADATA        the tree: keys, shapes, types (JSON)
  <step>/default/manifest.ocdbt   the OCDBT database of the arrays, with their data in
  <step>/default/d/<hash>
  <step>/default/_sharding, array_metadatas/process_<i>   read when present (a restore does without)
  <step>/default/ocdbt.process_<i>/   each process's database, merged into the one above at commit

Torn checkpoints (a truncated or missing file after a crash, a full disk or a partial copy): the
latest-step restores of both `Checkpointer` and `read_arrays` fall back to the newest intact step,
with a warning naming each broken folder and what is wrong with it. Intact means the commit files
above are present and parse, and a full restore succeeds (a truncated array file passes any
existence check; only reading it finds it). A resumed `Checkpointer` renames the broken folders
newer than its step to `<step>.broken` (Orbax lists only plain step numbers, so it ignores them):
the evidence stays, and the loop can save those steps again. A step asked for explicitly does not
fall back: its error names it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import threading
from typing import Any, Mapping, Sequence

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from data_pipelines import files
from sdeseg_jax.training import distributed

# The files Orbax writes to commit a step (see the module docstring), relative to the step folder.
_COMMIT_MARKER = 'commit_success.txt'
_METADATA_FILES = ('_CHECKPOINT_METADATA', os.path.join('default', '_METADATA'))


class QuietOrbax(logging.Filter):
  """Drops Orbax's INFO lines (several per save and restore); its warnings and errors pass."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


class CheckpointError(RuntimeError):
  """A checkpoint that is missing, unreadable or does not fit: the message names it."""


class Checkpointer:
  """One stage's checkpoints in `directory` (async saves, keep the last `max_to_keep`)."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, save_interval_steps: int = 1000,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.save_interval_steps = save_interval_steps
    self._manager = _manager(self.directory, ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def due(self, step: int) -> bool:
    """Whether `step` is a regular save step (a multiple of save_interval_steps)."""
    return step % self.save_interval_steps == 0

  def save(self, step: int, state, *, force: bool = False) -> bool:
    """Saves `state` (a TrainState) at `step` when due (every save_interval_steps) or forced. A
    full disk is a DiskFullError (here or, for an asynchronous save, at the next save or wait);
    Orbax writes into a temporary folder it renames when complete, so the checkpoints before stay
    intact."""
    with files.named_if_disk_full(self.directory):
      return self._manager.save(step, args=ocp.args.StandardSave(state.to_dict()), force=force)

  def restore(self, state, step: int | None = None):
    """`state` with its arrays from checkpoint `step`, placed like `state`'s.

    Without `step`: the newest intact checkpoint; broken newer ones are logged and renamed to
    `<step>.broken` so that later saves of those steps succeed. With `step`: that one, or a
    CheckpointError naming it.
    """
    return self._restore(state, step)[1]

  def restore_or_init(self, state):
    """(state, resumed): the newest intact checkpoint if there is one, else `state` unchanged."""
    if self.latest_step() is None:
      return state, False
    step, state = self._restore(state)
    logging.info('Resuming from %s', _step_path(self.directory, step))
    return state, True

  def _restore(self, state, step: int | None = None):
    """(step restored, state): see restore."""
    steps = _steps_to_try(self.directory, self._manager.all_steps(), step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state.to_dict())
    step, values, broken = _read_newest_intact(
        self.directory, steps, lambda s: self._restore_step(s, abstract))
    if broken:
      self._set_aside([path for path, _ in broken])
      logging.warning('%s: restored step %d, the newest intact checkpoint', self.directory, step)
    return step, state.from_dict(values)

  def _restore_step(self, step: int, abstract):
    """The arrays of checkpoint `step` shaped like `abstract`; CheckpointError when the checkpoint
    is readable but does not fit (another config), which no older checkpoint would mend."""
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:
      # Only on failure: a metadata comparison that disagreed with Orbax must not block a restore.
      misfit = _misfit(self._item_metadata(step), abstract)
      if misfit:
        raise CheckpointError(f'{_step_path(self.directory, step)}: does not fit this state '
                              f'({misfit}); was it written with another config?') from e
      raise

  def _item_metadata(self, step: int):
    try:
      return self._manager.item_metadata(step)
    except Exception:  # unreadable metadata: the checkpoint is damaged, not misfit
      return None

  def _set_aside(self, paths: Sequence[str]) -> None:
    """Renames broken step folders to `<step>.broken` (kept as evidence; Orbax ignores them) so
    that the loop can save those steps again; process 0 renames, the others wait for it."""
    if distributed.is_primary():
      for path in paths:
        aside = _free_name(path + '.broken')
        os.rename(path, aside)
        logging.warning('Moved the broken checkpoint %s aside to %s', path, aside)
    distributed.barrier('checkpoint_set_aside')
    self._manager.reload()  # it caches the step list

  def wait(self) -> None:
    with files.named_if_disk_full(self.directory):
      self._manager.wait_until_finished()

  def close(self) -> None:
    with files.named_if_disk_full(self.directory):
      self._manager.close()

  def reached_preemption(self, step: int) -> bool:
    """The platform's preemption notice (TPU maintenance events), agreed by all processes."""
    return self._manager.reached_preemption(step)


def write_tree(directory: str, tree: Any, *, overwrite: bool = False) -> str:
  """Saves a plain nested dict of arrays as a standalone checkpoint (e.g. converted weights).

  Orbax writes a new folder under a temporary name it renames when complete. Its overwrite deletes
  the old folder first, so with `overwrite` the new tree is written beside the old one and swapped
  in after: a full disk (a DiskFullError) or a crash while writing leaves the old tree in place.
  """
  path = os.path.abspath(directory)
  with files.named_if_disk_full(path):
    if not (overwrite and os.path.exists(path)):
      _save_tree(path, tree)
      return path
    new, old = path + '.new', path + '.old'
    for leftover in (new, old):  # of a run that stopped mid-swap
      shutil.rmtree(leftover, ignore_errors=True)
    _save_tree(new, tree)
    os.rename(path, old)
    os.rename(new, path)
    shutil.rmtree(old)
  return path


def _save_tree(path: str, tree: Any) -> None:
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, tree)
  checkpointer.wait_until_finished()


def _host_target(metadata) -> Any:
  """A restore target of NumPy arrays shaped like a checkpoint's arrays.

  Without a target Orbax restores each array with the sharding it was saved with, which fails
  ('Topology mismatch') when the checkpoint comes from another device or process count; NumPy
  arrays have no sharding, so any run can read any checkpoint this way.
  """
  return jax.tree.map(lambda m: np.zeros(m.shape, m.dtype) if hasattr(m, 'shape') else m,
                      metadata)


def read_arrays(directory: str, step: int | None = None) -> dict:
  """The plain dict of NumPy arrays of a checkpoint: a `Checkpointer` directory (its newest intact
  step by default, see the module docstring; broken folders are left as they are for the stage that
  writes them) or a standalone tree written by `write_tree` (sdeseg_jax.weights.convert). Readable
  whatever the device and process count that wrote it."""
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise CheckpointError(f'{directory}: no such checkpoint directory')
  manager = _manager(directory)
  try:
    steps = manager.all_steps()
    if steps or step is not None:
      read_step, values, broken = _read_newest_intact(
          directory, _steps_to_try(directory, steps, step), lambda s: _host_arrays(manager, s))
      if broken:
        logging.warning('%s: read step %d, the newest intact checkpoint', directory, read_step)
      return values
    if os.path.exists(os.path.join(directory, '_METADATA')):
      return _read_standalone(directory)
    raise CheckpointError(f'{directory}: holds no checkpoint')
  finally:
    manager.close()


def _manager(directory: str, options: ocp.CheckpointManagerOptions | None = None):
  # The handler named up front: item_metadata() is None until the manager knows it.
  return ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler(),
                               options=options)


def _host_arrays(manager: ocp.CheckpointManager, step: int) -> dict:
  """Checkpoint `step` of `manager` as NumPy arrays (see _host_target)."""
  target = _host_target(manager.item_metadata(step))
  return manager.restore(step, args=ocp.args.StandardRestore(target))


def _read_standalone(directory: str) -> dict:
  """The arrays of a tree written by `write_tree`."""
  checkpointer = ocp.StandardCheckpointer()
  try:
    metadata = checkpointer.metadata(directory)  # a StepMetadata holding the tree's
    return checkpointer.restore(
        directory, _host_target(getattr(metadata, 'item_metadata', metadata)))
  except Exception as e:  # Orbax raises many types for a damaged checkpoint
    raise CheckpointError(f'{directory}: cannot read this checkpoint ({_describe(e)})') from e


# --------------------------------------------------------------------------------------------------
# Torn checkpoints: which step folders are intact (see the module docstring).

def _step_path(directory: str, step: int) -> str:
  return os.path.join(directory, str(step))


def _steps_to_try(directory: str, steps: Sequence[int], step: int | None) -> list[int]:
  """All steps, newest first, or just `step` when one is asked for (an error if there is none)."""
  if step is None:
    if not steps:
      raise CheckpointError(f'{directory}: no checkpoint to restore')
    return sorted(steps, reverse=True)
  if step not in steps:
    raise CheckpointError(f'{_step_path(directory, step)}: no such checkpoint; '
                          f'{directory} holds steps {sorted(steps)}')
  return [step]


def _read_newest_intact(directory: str, steps: Sequence[int], read):
  """(step, read(step), broken) for the first of `steps` (newest first) whose checkpoint is intact:
  its commit files present and `read(step)`, a full restore, succeeding. `broken` lists the
  (folder, what is wrong) pairs of the steps tried before it, each logged as a warning. A
  CheckpointError from `read` (e.g. a checkpoint that does not fit) propagates: it is no damage.
  """
  broken = []
  for step in steps:
    path = _step_path(directory, step)
    problem = _commit_files_problem(path)
    if problem is None:
      try:
        return step, read(step), broken
      except CheckpointError:
        raise
      except Exception as e:  # Orbax and TensorStore raise many types for a damaged file
        problem = _describe(e)
    logging.warning('Broken checkpoint %s: %s', path, problem)
    broken.append((path, problem))
  listing = '; '.join(f'{path} ({problem})' for path, problem in broken)
  raise CheckpointError(
      f'{directory}: no intact checkpoint among steps {list(steps)}: {listing}. Delete '
      f'{"this folder" if len(broken) == 1 else "these folders"} and rerun the stage that writes '
      f'{directory}: it resumes from its newest intact checkpoint, or starts over if none is left.')


def _commit_files_problem(path: str) -> str | None:
  """What is wrong with the files Orbax writes to commit the step folder `path`, or None: a cheap
  first check, since a restore does not read all of them (it succeeds without default/_METADATA,
  which read_arrays needs)."""
  marker = os.path.join(path, _COMMIT_MARKER)
  if not os.path.isfile(marker):
    return f'{marker} is missing: Orbax did not finish writing this checkpoint'
  for name in _METADATA_FILES:
    file = os.path.join(path, name)
    try:
      with open(file) as f:
        json.load(f)
    except FileNotFoundError:
      return f'{file} is missing'
    except (OSError, ValueError) as e:
      return f'{file} is unreadable ({type(e).__name__}: {e})'
  return None


def _describe(e: Exception) -> str:
  """An exception in a line: TensorStore's messages name the file at fault, then append long JSON
  specs of the store (`[tensorstore_spec=...`, `[tensorstore_spec[1]=...`) that say nothing more."""
  text = re.split(r' \[tensorstore_spec\b', str(e))[0]
  return f'{type(e).__name__}: {text[:500]}'


def _misfit(metadata, target) -> str | None:
  """How the arrays of a checkpoint (Orbax tree metadata) differ from a restore target's, or None
  when they agree or the metadata is unreadable (None)."""
  if metadata is None:
    return None
  have, want = _shapes(metadata), _shapes(target)
  differences = ([f'{k} not in the checkpoint' for k in sorted(want.keys() - have.keys())] +
                 [f'{k} only in the checkpoint' for k in sorted(have.keys() - want.keys())] +
                 [f'{k} has shape {have[k]}, not {want[k]}'
                  for k in sorted(want.keys() & have.keys()) if have[k] != want[k]])
  if not differences:
    return None
  more = f' and {len(differences) - 5} more' if len(differences) > 5 else ''
  return ', '.join(differences[:5]) + more


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0] if hasattr(leaf, 'shape')}


def _free_name(path: str) -> str:
  """`path`, or `path.<n>` with the smallest n >= 2 that does not exist yet."""
  candidate, n = path, 1
  while os.path.exists(candidate):
    n += 1
    candidate = f'{path}.{n}'
  return candidate


def _flat(tree: Mapping) -> dict[str, Any]:
  return {k: v for k, v in flax.traverse_util.flatten_dict(dict(tree), sep='/').items()}


def merge_by_mapping(target: Mapping, source: Mapping,
                     mapping: Mapping[str, str] | Sequence[tuple[str, str]],
                     what: str = 'checkpoint') -> tuple[dict, dict[str, list[str]]]:
  """Copies source subtrees into target by prefix mapping {source prefix: target prefix} (or a
  list of such pairs, when one source initialises several targets).

  E.g. {'depth_decoder': 'pad/seg_decoder'} initialises the segmentation decoder from the SDE depth
  decoder. Returns (merged target, report) with report keys 'loaded', 'missing' (target keys under a
  mapped prefix the source lacks) and 'unused' (source keys under a mapped prefix that fit nothing).
  A shape mismatch is an error naming both keys.
  """
  pairs = list(mapping.items()) if isinstance(mapping, Mapping) else list(mapping)
  flat_target, flat_source = _flat(target), _flat(source)
  merged = dict(flat_target)
  loaded, missing, used = [], [], set()
  for source_prefix, target_prefix in pairs:
    target_keys = [k for k in flat_target
                   if k == target_prefix or k.startswith(target_prefix + '/')]
    if not target_keys:
      raise CheckpointError(f'{what}: mapping {source_prefix!r} -> {target_prefix!r}: the target '
                            f'has no parameters under {target_prefix!r}')
    for key in target_keys:
      source_key = source_prefix + key[len(target_prefix):]
      if source_key not in flat_source:
        missing.append(key)
        continue
      value = flat_source[source_key]
      if np.shape(value) != np.shape(flat_target[key]):
        raise CheckpointError(f'{what}: {source_key} has shape {np.shape(value)} but {key} needs '
                              f'{np.shape(flat_target[key])}')
      merged[key] = np.asarray(value).astype(np.asarray(flat_target[key]).dtype)
      loaded.append(key)
      used.add(source_key)
  unused = [k for k in flat_source
            if any(k == p or k.startswith(p + '/') for p, _ in pairs) and k not in used]
  report = dict(loaded=loaded, missing=missing, unused=unused)
  logging.info('%s: loaded %d arrays; %d missing %s; %d unused %s', what, len(loaded),
               len(missing), missing[:10], len(unused), unused[:10])
  return flax.traverse_util.unflatten_dict(merged, sep='/'), report


class PreemptionGuard:
  """Turns SIGTERM into a flag the loop checks between steps (save, then exit cleanly)."""

  def __init__(self):
    self._event = threading.Event()
    self._previous = None

  def __enter__(self) -> 'PreemptionGuard':
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint at the end of this step, then exiting')
    self._event.set()

  @property
  def requested(self) -> bool:
    return self._event.is_set()
