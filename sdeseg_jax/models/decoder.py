"""The depth decoder family of monodepth2 with an ASPP input block ("dec6", "dec9", "dec11").

One `Decoder` configured by channel lists covers every variant of SPEC section 3:
for level i = 4..0: x = block(i, 0)(x); nearest x2 upsampling when x is smaller than the skip f[i-1]
(or i == 0); concatenation with f[i-1] for i > 0; x = block(i, 1)(x). Block (4, 0) is ASPP; the
others are ConvBlocks (reflection-padded 3x3 conv with bias, optional BN, ELU). Disparity heads
(reflection-padded 3x3 conv -> 1 channel, sigmoid) read the outputs of levels 0..3.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdeseg_jax.models import layers

# Named decoders of the reference: decoder channels (level 0..4), ASPP rates, BN in ConvBlocks.
DECODERS = {
    'dec6': dict(channels=(64, 128, 128, 256, 256), aspp_rates=(6, 12, 18), batch_norm=False),
    'dec11': dict(channels=(16, 32, 64, 128, 256), aspp_rates=(3, 6, 9), batch_norm=False),
    'dec9': dict(channels=(64, 64, 128, 128, 256), aspp_rates=(6, 12, 18), batch_norm=True),
}


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling as torchvision's DeepLabV3 head body.

  1x1 conv, one 3x3 atrous conv per rate, and image pooling; each without bias + BN + ReLU;
  concatenated -> 1x1 conv + BN + ReLU + dropout.
  """
  features: int = 256
  rates: Sequence[int] = (6, 12, 18)
  dropout: float = 0.5
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """[B, H, W, C] -> [B, H, W, features]."""
    def conv_bn_relu(y, kernel, dilation, name):
      y = layers.Conv(self.features, kernel, dilation=dilation, dtype=self.dtype,
                      name=f'{name}_conv')(y)
      return nn.relu(layers.batch_norm(train, self.dtype, f'{name}_bn')(y))

    branches = [conv_bn_relu(x, 1, 1, 'branch0')]
    for i, rate in enumerate(self.rates):
      branches.append(conv_bn_relu(x, 3, rate, f'branch{i + 1}'))
    pooled = conv_bn_relu(jnp.mean(x, axis=(1, 2), keepdims=True), 1, 1, 'pool')
    # Bilinear upsampling of a 1x1 map is a broadcast.
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.features,)))
    y = conv_bn_relu(jnp.concatenate(branches, axis=-1), 1, 1, 'project')
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class ConvBlock(nn.Module):
  """Reflection-padded 3x3 conv with bias, optional BN, ELU."""
  features: int
  batch_norm: bool = False
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = layers.Conv(self.features, 3, padding_mode='reflect', use_bias=True, dtype=self.dtype,
                    name='conv')(x)
    if self.batch_norm:
      x = layers.batch_norm(train, self.dtype, 'bn')(x)
    return nn.elu(x)


class DisparityHead(nn.Module):
  """Reflection-padded 3x3 conv -> 1 channel, sigmoid: disparity in (0, 1), float32 (float64
  for float64)."""
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = layers.Conv(1, 3, padding_mode='reflect', use_bias=True, dtype=self.dtype, name='conv')(x)
    return nn.sigmoid(x.astype(layers.at_least_float32(x.dtype)))


def _skip_level(i: int, x: jax.Array, skips: Sequence[jax.Array]) -> jax.Array:
  """Upsampling and skip concatenation between block (i, 0) and block (i, 1)."""
  if i == 0 or x.shape[1] < skips[i - 1].shape[1]:
    x = layers.upsample_nearest2x(x)
  if i > 0:
    x = jnp.concatenate([x, skips[i - 1].astype(x.dtype)], axis=-1)
  return x


class Decoder(nn.Module):
  """A dec-family decoder; can run a subset of its levels (PAD-Net splits it at level 2).

  Attributes:
    channels: decoder channels of levels 0..4 (ASPP output = channels[4]).
    aspp_rates: atrous rates of the ASPP block. batch_norm: BN in the ConvBlocks (dec9).
    disparity_levels: levels with a disparity head (0..3 for SDE; () for a segmentation decoder).
  """
  channels: Sequence[int] = (64, 128, 128, 256, 256)
  aspp_rates: Sequence[int] = (6, 12, 18)
  batch_norm: bool = False
  disparity_levels: Sequence[int] = (0, 1, 2, 3)
  dtype: layers.Dtype = jnp.float32

  def setup(self):
    blocks = {'level4_0': ASPP(self.channels[4], tuple(self.aspp_rates), dtype=self.dtype)}
    for i in range(5):
      if i < 4:
        blocks[f'level{i}_0'] = ConvBlock(self.channels[i], self.batch_norm, self.dtype)
      blocks[f'level{i}_1'] = ConvBlock(self.channels[i], self.batch_norm, self.dtype)
    self.blocks = blocks
    self.heads = {f'disp{s}': DisparityHead(self.dtype) for s in self.disparity_levels}

  def run_levels(self, x: jax.Array, skips: Sequence[jax.Array], levels: Sequence[int],
                 train: bool) -> tuple[jax.Array, dict[int, jax.Array]]:
    """Runs levels in order (e.g. (4, 3, 2) then (1, 0)); returns x and each level's output."""
    outputs = {}
    for i in levels:
      x = self.blocks[f'level{i}_0'](x, train)
      x = self.blocks[f'level{i}_1'](_skip_level(i, x, skips), train)
      outputs[i] = x
    return x, outputs

  def disparities(self, outputs: dict[int, jax.Array]) -> dict[int, jax.Array]:
    """Disparity heads on the level outputs that have one: {level: [B, h, w, 1]}."""
    return {s: self.heads[f'disp{s}'](outputs[s]) for s in self.disparity_levels if s in outputs}

  def __call__(self, features: Sequence[jax.Array], train: bool = False) -> dict:
    """Encoder features f0..f4 ->
    {'levels': {i: [B, h_i, w_i, C_i]}, 'disp': {s: [B, h_s, w_s, 1]}}.

    Level i's output is at 1/2^i of the input resolution (level 4 at the encoder's output stride).
    """
    _, outputs = self.run_levels(features[4], features, (4, 3, 2, 1, 0), train)
    return dict(levels=outputs, disp=self.disparities(outputs))


class SegmentationHead(nn.Module):
  """Transfer-learning head on the level-0 output: 1x1 conv 64 -> 64 without bias, 1x1 conv ->
  classes (the reference's JointSegDepthDecoder with one projected layer and no intermediate
  head)."""
  num_classes: int
  features: int = 64
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H, W, num_classes] float32 logits."""
    x = layers.Conv(self.features, 1, dtype=self.dtype, name='project')(x)
    x = layers.Conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, name='classifier')(x)
    return x.astype(jnp.float32)
