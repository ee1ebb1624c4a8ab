"""PAD-Net multi-task decoder: a depth and a segmentation decoder that exchange distilled
features."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdeseg_jax.models import decoder
from sdeseg_jax.models import layers


class Distillation(nn.Module):
  """SA(x) = conv3x3(x) * sigmoid(gate_conv3x3(x)); no bias, zero padding; the gate starts at zero,
  so at initialisation each branch receives half of the other's features."""
  features: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    values = layers.Conv(self.features, 3, dtype=self.dtype, name='conv')(x)
    gate = layers.Conv(self.features, 3, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                       name='gate')(x)
    return values * nn.sigmoid(gate)


class PADNet(nn.Module):
  """Two dec-family decoders; levels 4..2 separately, distillation at level 2, then levels 1, 0.

  Attributes:
    num_classes: segmentation classes. channels / aspp_rates / batch_norm: the decoder design
    (both decoders share it). distill_level: the level whose outputs are exchanged (2).
    side_output: the side head on the segmentation features before distillation (reference: on).
    distillation: the exchange of distilled features at `distill_level` (reference: on); off, the
      two decoders share only the encoder.
    projected_head: the final head as the transfer network's, a 1x1 projection without bias before
      the classifier (decoder.SegmentationHead); reference: off, the classifier alone.
  """
  num_classes: int
  channels: Sequence[int] = (64, 128, 128, 256, 256)
  aspp_rates: Sequence[int] = (6, 12, 18)
  batch_norm: bool = False
  distill_level: int = 2
  side_output: bool = True
  distillation: bool = True
  projected_head: bool = False
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool = False) -> dict:
    """Encoder features f0..f4 -> dict(
         logits [B, H, W, classes] float32 (level-0 resolution = the input's),
         side_logits [B, H/4, W/4, classes] float32 (with `side_output`) from the pre-distillation
           segmentation features of the distillation level, at their own resolution (the
           reference upsamples them in the loss),
         disp {s: [B, H/2^s, W/2^s, 1]} (levels above the distillation level from before it, the
           others after), seg_levels {i: features} of the segmentation decoder.)
    """
    design = dict(channels=tuple(self.channels), aspp_rates=tuple(self.aspp_rates),
                  batch_norm=self.batch_norm, dtype=self.dtype)
    depth_decoder = decoder.Decoder(**design, name='depth_decoder')
    seg_decoder = decoder.Decoder(**design, disparity_levels=(), name='seg_decoder')
    first = tuple(range(4, self.distill_level - 1, -1))
    second = tuple(range(self.distill_level - 1, -1, -1))

    depth_x, depth_levels = depth_decoder.run_levels(features[4], features, first, train)
    seg_x, seg_levels = seg_decoder.run_levels(features[4], features, first, train)
    side = {}
    if self.side_output:
      side['side_logits'] = layers.Conv(self.num_classes, 1, use_bias=True, dtype=self.dtype,
                                        name='side_classifier')(seg_x).astype(jnp.float32)
    if self.distillation:
      width = self.channels[self.distill_level]
      seg_x, depth_x = (
          seg_x + Distillation(width, self.dtype, name='distill_depth_to_seg')(depth_x),
          depth_x + Distillation(width, self.dtype, name='distill_seg_to_depth')(seg_x))
    _, late_depth = depth_decoder.run_levels(depth_x, features, second, train)
    seg_x, late_seg = seg_decoder.run_levels(seg_x, features, second, train)
    if self.projected_head:
      logits = decoder.SegmentationHead(self.num_classes, dtype=self.dtype, name='seg_head')(seg_x)
    else:
      logits = layers.Conv(self.num_classes, 1, use_bias=True, dtype=self.dtype,
                           name='classifier')(seg_x).astype(jnp.float32)
    disp = {**depth_decoder.disparities(depth_levels), **depth_decoder.disparities(late_depth)}
    return dict(logits=logits, **side, disp=disp, seg_levels={**seg_levels, **late_seg})
