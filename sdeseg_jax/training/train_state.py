"""The training state: one pytree holding everything a stage needs to continue exactly."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """step, params, BN statistics, optimiser state, optional mean-teacher params, PRNG key, and
  optional constants of the loss (e.g. the frozen encoder of the feature distance).

  `tx` is static (not saved): it is rebuilt from the config. Randomness of step s is
  `step_key(state.rng, s)`, so a resumed run draws the same numbers as an uninterrupted one.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array
  constants: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, params, batch_stats, tx: optax.GradientTransformation, rng: jax.Array,
             ema: bool = False, constants=None) -> 'TrainState':
    """rng: raw key data (jax.random.key_data), which checkpoints store as plain uint32."""
    return cls(step=jnp.zeros([], jnp.int32), params=params, batch_stats=batch_stats,
               opt_state=tx.init(params),
               ema_params=jax.tree.map(jnp.copy, params) if ema else None,
               rng=rng, constants=constants, tx=tx)

  @property
  def key(self) -> jax.Array:
    """The PRNG key of the current step."""
    return step_key(jax.random.wrap_key_data(self.rng), self.step)

  def apply_gradients(self, grads, batch_stats=None) -> 'TrainState':
    """One optimiser step (the mean teacher, if any, follows in follow_mean_teacher)."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state,
                        batch_stats=self.batch_stats if batch_stats is None else batch_stats)

  def to_dict(self) -> dict:
    """The plain-dict form that checkpoints hold (no module or optimiser classes)."""
    return flax.serialization.to_state_dict(self)

  def from_dict(self, values: dict) -> 'TrainState':
    """This state with its arrays replaced by a checkpoint's plain dict."""
    return flax.serialization.from_state_dict(self, values)


def follow_mean_teacher(state: TrainState, decay: float) -> TrainState:
  """The mean teacher after an optimiser step (apply_gradients), as the reference orders them:
  ema = a * ema + (1 - a) * params with a = min(1 - 1/(t + 1), decay), t counting optimiser
  updates from 1 (the first update uses a = 0.5)."""
  opt_state = state.opt_state
  if isinstance(opt_state, optax.MultiStepsState):
    # Gradient accumulation: the teacher follows real updates only (the parameters do not move
    # between them), counted in updates, as without accumulation.
    followed = ema_update(state.ema_params, state.params, opt_state.gradient_step, decay)
    ema_params = jax.tree.map(lambda f, e: jnp.where(opt_state.mini_step == 0, f, e), followed,
                              state.ema_params)
  else:
    ema_params = ema_update(state.ema_params, state.params, state.step, decay)
  return state.replace(ema_params=ema_params)


def ema_update(ema_params, params, step: jax.Array, decay: float):
  """ema = a * ema + (1 - a) * params with a = min(1 - 1/(step + 1), decay)."""
  alpha = jnp.minimum(1.0 - 1.0 / (step.astype(jnp.float32) + 1.0), decay)
  return jax.tree.map(lambda e, p: alpha * e + (1.0 - alpha) * p, ema_params, params)


def step_key(rng: jax.Array, step: jax.Array) -> jax.Array:
  """The PRNG key of a step: a pure function of the run's key and the step."""
  return jax.random.fold_in(rng, step)
