"""The generic training loop every stage uses.

It pulls step-indexed local batches, forms global batches, runs the jitted step, and only syncs with
the host at logging, checkpoint and evaluation steps. Around that: CLU metric writers (TensorBoard
+ log lines, process 0 only), ReportProgress (steps/s, ETA), a progress line on an interactive
terminal, image summaries, a NaN/inf guard naming the step and metric, periodic evaluation, and
preemption: on SIGTERM it saves and raises `Preempted`, and a rerun continues from that step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from typing import Any, Callable, Iterable

from clu import metric_writers
from clu import periodic_actions
import jax
import numpy as np

from sdeseg_jax.training import checkpointing
from sdeseg_jax.training import sharding


class Preempted(Exception):
  """Training stopped on a preemption signal after saving a checkpoint at `step`."""

  def __init__(self, step: int, directory: str):
    super().__init__(f'preempted at step {step}; checkpoint saved in {directory}; run the same '
                     'command again to continue')
    self.step = step


class NonFiniteError(FloatingPointError):
  """A training metric became NaN or infinite."""


@dataclasses.dataclass
class LoopHooks:
  """Optional work at intervals (0 = never). Each callable receives (state, step).

  evaluate: returns scalar metrics, written under 'eval/' (also after the last step); the latest
  result stays in `last_evaluation`. images(state, batch, step): returns {name: [N, H, W, C]},
  called with the state and batch of step `step` before that step runs.
  """
  evaluate: Callable[[Any, int], dict] | None = None
  evaluate_every: int = 0
  images: Callable[[Any, dict, int], dict] | None = None
  images_every: int = 0
  last_evaluation: dict | None = None


def create_writer(logdir: str) -> metric_writers.MetricWriter:
  """TensorBoard + logging on process 0; other processes write nothing."""
  return metric_writers.create_default_writer(logdir, just_logging=jax.process_index() > 0)


class _ProgressLine:
  """'step 120/1000  3.2 steps/s  ETA 4m35s' redrawn in place on a terminal, at most twice a
  second."""

  def __init__(self, total: int, start: int):
    self.enabled = sys.stderr.isatty() and jax.process_index() == 0
    self.total, self.start, self.t0, self.last = total, start, time.time(), 0.0

  def update(self, step: int) -> None:
    now = time.time()
    if not self.enabled or (now - self.last < 0.5 and step < self.total):
      return
    self.last = now
    rate = (step - self.start) / max(now - self.t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else math.inf
    eta_text = f'{int(eta // 60)}m{int(eta % 60):02d}s' if math.isfinite(eta) else '?'
    sys.stderr.write(f'\rstep {step}/{self.total}  {rate:.2f} steps/s  ETA {eta_text}   ')
    if step >= self.total:
      sys.stderr.write('\n')
    sys.stderr.flush()


def check_finite(metrics: dict[str, float], step: int) -> None:
  bad = {k: v for k, v in metrics.items() if not np.all(np.isfinite(v))}
  if bad:
    raise NonFiniteError(f'step {step}: non-finite training metrics {bad}; the last checkpoint is '
                         'untouched. Lower the learning rate or check the inputs of this step.')


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
  """Host values of the metrics accumulated since the last log (one device-to-host transfer)."""
  stacked = jax.device_get(jax.tree.map(lambda *xs: sum(xs) / len(xs), *pending))
  return {k: float(v) for k, v in stacked.items()}


def train(state, train_step: Callable, batches: Iterable[dict], *, mesh, num_steps: int,
          checkpointer: checkpointing.Checkpointer, writer: metric_writers.MetricWriter,
          log_every: int = 50, hooks: LoopHooks | None = None,
          extra_scalars: Callable[[int], dict] | None = None):
  """Runs train_step from state.step to num_steps; returns the final state (saved).

  Args:
    state: TrainState placed on the mesh (replicated), possibly restored at step k.
    train_step: jitted (state, global batch) -> (state, scalar metrics).
    batches: local batches of steps state.step, state.step + 1, ... (a step-indexed pipeline
      started at state.step).
    extra_scalars: step -> host scalars to log (e.g. learning rates).
  Raises:
    Preempted after saving, on SIGTERM or a platform preemption notice.
    NonFiniteError naming the step and metric when a logged metric is NaN or infinite.
  """
  hooks = hooks or LoopHooks()
  start = int(jax.device_get(state.step))
  if start >= num_steps:
    logging.info('Training already at step %d of %d', start, num_steps)
    if checkpointer.latest_step() is None:
      # num_steps=0: the initialisation (e.g. released weights) is the stage's trained result.
      checkpointer.save(start, state, force=True)
      checkpointer.wait()
    return state
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  progress = _ProgressLine(num_steps, start)
  iterator = iter(batches)
  pending = []
  with checkpointing.PreemptionGuard() as guard:
    for step in range(start, num_steps):
      local = next(iterator)
      batch = sharding.global_batch(local, mesh)
      done = step + 1
      images = None
      if hooks.images is not None and hooks.images_every and done % hooks.images_every == 0:
        # Before the step, which donates the state: the summaries show this step's inputs.
        images = hooks.images(state, batch, done)
      state, metrics = train_step(state, batch)
      pending.append(metrics)
      report(done)
      progress.update(done)
      if done % log_every == 0 or done == num_steps:
        values = _mean_metrics(pending)
        pending = []
        check_finite(values, done)
        if extra_scalars is not None:
          values.update(extra_scalars(done))
        writer.write_scalars(done, values)
      if images is not None:
        # Batch-sharded summaries span processes: gather them (every process takes part).
        writer.write_images(done, jax.tree.map(sharding.to_host, images))
      if hooks.evaluate is not None and (
          (hooks.evaluate_every and done % hooks.evaluate_every == 0) or done == num_steps):
        hooks.last_evaluation = hooks.evaluate(state, done)
        writer.write_scalars(done, {f'eval/{k}': v for k, v in hooks.last_evaluation.items()})
      preempted = guard.requested or checkpointer.reached_preemption(done)
      if preempted or done == num_steps or checkpointer.due(done):
        if pending:  # never save a state whose metrics have not been checked
          check_finite(_mean_metrics(pending), done)
        checkpointer.save(done, state, force=preempted or done == num_steps)
      if preempted:
        checkpointer.wait()
        writer.flush()
        raise Preempted(done, checkpointer.directory)
  checkpointer.wait()
  writer.flush()
  return state
