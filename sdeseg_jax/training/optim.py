"""Optimisers from config: parameter groups by regex, each with its learning-rate schedule or
frozen.

config (an `optim` ConfigDict, see configs/base.py optim_config):
  name: 'adam' | 'sgd'; momentum (sgd); weight_decay (added to the gradient, as torch's optimisers);
  clip_norm: global gradient-norm clip over the trainable parameters (0: none);
  schedule: kind 'constant' | 'step' (x factor at each boundary) | 'poly' (power, to 0 at
    total_steps);
  groups: {name: {pattern, lr, frozen}}: every parameter path ('encoder/layer1_0/conv1/kernel') must
    match exactly one group's regex (re.search); an uncovered or doubly covered parameter is an
    error.
  accumulate_steps (optional, default 1): gradient accumulation, k > 1 averages the gradients of k
    consecutive train steps (micro-batches) and updates every k-th step (optax.MultiSteps), so the
    update equals one step on a k times larger batch (BatchNorm statistics stay per micro-batch).
    Train steps count micro-batches; the learning-rate schedule counts updates.
"""

from __future__ import annotations

import re
from typing import Any

import flax
import jax
import ml_collections
import optax

from sdeseg_jax.errors import ConfigError

FROZEN = '__frozen__'


def parameter_paths(params) -> dict[str, Any]:
  """{'encoder/conv1/kernel': leaf, ...}."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  return dict(flat)


def group_labels(params, groups: ml_collections.ConfigDict) -> Any:
  """A pytree like `params` holding each parameter's group name (FROZEN for frozen groups)."""
  compiled = {name: re.compile(group.pattern) for name, group in groups.items()}
  labels, uncovered = {}, []
  for path in parameter_paths(params):
    matches = [name for name, pattern in compiled.items() if pattern.search(path)]
    if not matches:
      uncovered.append(path)
      continue
    if len(matches) > 1:
      raise ConfigError(f'parameter {path} matches several optimiser groups {matches}; make the '
                        'patterns of config.optim.groups disjoint')
    labels[path] = FROZEN if groups[matches[0]].frozen else matches[0]
  if uncovered:
    raise ConfigError(f'{len(uncovered)} parameters match no optimiser group '
                      f'(config.optim.groups), e.g. {uncovered[:5]}')
  return flax.traverse_util.unflatten_dict(labels, sep='/')


def schedule(base_lr: float, config: ml_collections.ConfigDict) -> optax.Schedule:
  kind = config.kind
  if kind == 'constant':
    return optax.constant_schedule(base_lr)
  if kind == 'step':
    return optax.piecewise_constant_schedule(
        base_lr, {int(b): config.factor for b in config.boundaries})
  if kind == 'poly':
    return optax.polynomial_schedule(base_lr, 0.0, config.power, config.total_steps)
  raise ConfigError(f'config.optim.schedule.kind {kind!r}: expected constant, step or poly')


def _optimizer(config: ml_collections.ConfigDict, learning_rate) -> optax.GradientTransformation:
  if config.name == 'adam':
    # torch.optim.Adam's defaults.
    return optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8)
  if config.name == 'sgd':
    return optax.sgd(learning_rate, momentum=config.momentum or None)
  raise ConfigError(f'config.optim.name {config.name!r}: expected adam or sgd')


def accumulate_steps(config: ml_collections.ConfigDict) -> int:
  k = config.get('accumulate_steps', 1)
  if not isinstance(k, int) or k < 1:
    raise ConfigError(f'config.optim.accumulate_steps={k!r}: expected an integer >= 1')
  return k


def build(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
  """The optimiser for `params`: frozen groups get zero updates (and no clip-norm share)."""
  labels = group_labels(params, config.groups)
  trainable = jax.tree.map(lambda label: label != FROZEN, labels)
  transforms = {FROZEN: optax.set_to_zero()}
  for name, group in config.groups.items():
    if not group.frozen:
      transforms[name] = optax.chain(
          (optax.add_decayed_weights(config.weight_decay) if config.weight_decay
           else optax.identity()),
          _optimizer(config, schedule(group.lr, config.schedule)))
  used = set(jax.tree.leaves(labels))
  transforms = {name: tx for name, tx in transforms.items() if name in used}
  tx = optax.chain(
      optax.masked(optax.set_to_zero(), jax.tree.map(lambda t: not t, trainable)),
      optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity(),
      optax.multi_transform(transforms, labels))
  k = accumulate_steps(config)
  # Around the whole chain: clipping and weight decay see the averaged gradient, as one big batch.
  return optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation() if k > 1 else tx


def learning_rates(config: ml_collections.ConfigDict, step: int) -> dict[str, float]:
  """Each trainable group's learning rate at train step `step` (for logging)."""
  step //= accumulate_steps(config)  # the schedule counts optimiser updates
  return {f'lr/{name}': float(schedule(group.lr, config.schedule)(step))
          for name, group in config.groups.items() if not group.frozen}
