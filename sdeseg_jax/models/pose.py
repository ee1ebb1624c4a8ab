"""The pose network: a ResNet18 encoder on two frames stacked in channels and monodepth2's
decoder."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdeseg_jax.models import layers


class PoseDecoder(nn.Module):
  """squeeze 1x1 (C -> 256) ReLU, 3x3 256 ReLU, 3x3 256 ReLU, 1x1 -> 6 * num_frames; spatial mean,
  x 0.01. All convs with bias, zero padding (monodepth2's PoseDecoder)."""
  num_frames: int = 2
  features: int = 256
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, f4: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, h, w, C] deepest encoder features -> (axisangle, translation), each [B, num_frames, 3].

    The stages use frame 0 of the output: the transform from the first to the second frame of the
    pair; for the pair (t-1, t) the caller inverts it (SPEC section 3).
    """
    conv = lambda features, kernel, name: layers.Conv(features, kernel, use_bias=True,
                                                      dtype=self.dtype, name=name)
    x = nn.relu(conv(self.features, 1, 'squeeze')(f4))
    x = nn.relu(conv(self.features, 3, 'pose0')(x))
    x = nn.relu(conv(self.features, 3, 'pose1')(x))
    x = conv(6 * self.num_frames, 1, 'pose2')(x)
    x = jnp.mean(x.astype(layers.at_least_float32(x.dtype)), axis=(1, 2))
    x = 0.01 * x.reshape(-1, self.num_frames, 6)
    return x[..., :3], x[..., 3:]
