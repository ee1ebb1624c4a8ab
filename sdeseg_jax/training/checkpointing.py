"""All Orbax calls of the project: per-stage checkpoint managers, restore-or-init, partial restore
from another stage's checkpoint by name mapping, and preemption (SIGTERM) handling.

Checkpoints hold plain nested dicts of arrays (TrainState.to_dict()), so they do not depend on the
module or optimiser classes that produced them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Mapping, Sequence

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp


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
    self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def due(self, step: int) -> bool:
    """Whether `step` is a regular save step (a multiple of save_interval_steps)."""
    return step % self.save_interval_steps == 0

  def save(self, step: int, state, *, force: bool = False) -> bool:
    """Saves `state` (a TrainState) at `step` when due (every save_interval_steps) or forced."""
    return self._manager.save(step, args=ocp.args.StandardSave(state.to_dict()), force=force)

  def restore(self, state, step: int | None = None):
    """`state` with its arrays from checkpoint `step` (default: latest), placed like `state`'s."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'{self.directory}: no checkpoint to restore')
    target = state.to_dict()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      values = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # Orbax raises many types for a damaged or mismatched checkpoint
      raise CheckpointError(
          f'{os.path.join(self.directory, str(step))}: cannot restore this checkpoint '
          f'({type(e).__name__}: {str(e)[:500]}). If it is damaged, delete that folder to resume '
          'from the previous one.') from e
    return state.from_dict(values)

  def restore_or_init(self, state):
    """(state, resumed): the latest checkpoint if there is one, else `state` unchanged."""
    if self.latest_step() is None:
      return state, False
    logging.info('Resuming from %s/%d', self.directory, self.latest_step())
    return self.restore(state), True

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def reached_preemption(self, step: int) -> bool:
    """The platform's preemption notice (TPU maintenance events), agreed by all processes."""
    return self._manager.reached_preemption(step)


def write_tree(directory: str, tree: Any, *, overwrite: bool = False) -> str:
  """Saves a plain nested dict of arrays as a standalone checkpoint (e.g. converted weights)."""
  path = os.path.abspath(directory)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, tree, force=overwrite)
  checkpointer.wait_until_finished()
  return path


def _host_target(metadata) -> Any:
  """A restore target of NumPy arrays shaped like a checkpoint's arrays.

  Without a target Orbax restores each array with the sharding it was saved with, which fails
  ('Topology mismatch') when the checkpoint comes from another device or process count; NumPy
  arrays have no sharding, so any run can read any checkpoint this way.
  """
  return jax.tree.map(lambda m: np.zeros(m.shape, m.dtype) if hasattr(m, 'shape') else m,
                      metadata)


def read_arrays(directory: str, step: int | None = None) -> dict:
  """The plain dict of NumPy arrays of a checkpoint: a `Checkpointer` directory (latest step by
  default) or a standalone tree written by `write_tree` (sdeseg_jax.weights.convert). Readable
  whatever the device and process count that wrote it."""
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise CheckpointError(f'{directory}: no such checkpoint directory')
  # The handler named up front: item_metadata() is None until the manager knows it.
  manager = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
  try:
    step = manager.latest_step() if step is None else step
    if step is not None:
      target = _host_target(manager.item_metadata(step))
      return manager.restore(step, args=ocp.args.StandardRestore(target))
    if os.path.exists(os.path.join(directory, '_METADATA')):
      checkpointer = ocp.StandardCheckpointer()
      metadata = checkpointer.metadata(directory)  # a StepMetadata holding the tree's
      return checkpointer.restore(
          directory, _host_target(getattr(metadata, 'item_metadata', metadata)))
    raise CheckpointError(f'{directory}: holds no checkpoint')
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(f'{directory}: cannot read this checkpoint '
                          f'({type(e).__name__}: {str(e)[:500]})') from e
  finally:
    manager.close()


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
