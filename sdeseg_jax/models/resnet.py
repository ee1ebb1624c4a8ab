"""ResNet encoders in torchvision's layout, with dilation for output stride 8/16/32.

Parameter names follow torchvision's state dict (conv1, bn1, layer1_0/conv1,
layer1_0/downsample_conv, ...), so weight import is a rename plus OIHW -> HWIO. The encoder returns
the five feature levels the decoders use: f0 = relu(bn1(conv1)) (64 ch, /2), f1..f4 = layer1..layer4
(/4, /8, /16 or /8, /32 ...).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdeseg_jax.errors import ConfigError
from sdeseg_jax.models import layers

# name -> (block, blocks per stage)
ARCHITECTURES = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
}
EXPANSION = {'basic': 1, 'bottleneck': 4}
# Output stride -> replace_stride_with_dilation for layer2..layer4 (torchvision's argument).
DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


class BasicBlock(nn.Module):
  features: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda name, stride: layers.Conv(self.features, 3, stride,
                                           kernel_init=layers.kaiming_fan_out,
                                           dtype=self.dtype, name=name)
    y = nn.relu(layers.batch_norm(train, self.dtype, 'bn1')(conv('conv1', self.stride)(x)))
    y = layers.batch_norm(train, self.dtype, 'bn2')(conv('conv2', 1)(y))
    if self.downsample:
      x = layers.Conv(self.features, 1, self.stride, kernel_init=layers.kaiming_fan_out,
                      dtype=self.dtype, name='downsample_conv')(x)
      x = layers.batch_norm(train, self.dtype, 'downsample_bn')(x)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (stride and dilation on the 3x3 conv)."""
  features: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    def conv(name, features, kernel, stride=1, dilation=1):
      return layers.Conv(features, kernel, stride, dilation, kernel_init=layers.kaiming_fan_out,
                         dtype=self.dtype, name=name)
    bn = lambda name: layers.batch_norm(train, self.dtype, name)
    y = nn.relu(bn('bn1')(conv('conv1', self.features, 1)(x)))
    y = nn.relu(bn('bn2')(conv('conv2', self.features, 3, self.stride, self.dilation)(y)))
    y = bn('bn3')(conv('conv3', self.features * 4, 1)(y))
    if self.downsample:
      x = bn('downsample_bn')(conv('downsample_conv', self.features * 4, 1, self.stride)(x))
    return nn.relu(y + x)


class ResNet(nn.Module):
  """ResNet feature encoder.

  Attributes:
    depth: 18, 34, 50 or 101. output_stride: 32, 16 or 8 (dilation replaces the last strides).
    width: channels of the first stage (64 in torchvision; smaller for tiny test networks).
    stage_sizes: blocks per stage, overriding the depth's (tiny networks).
    normalize_input: apply (x - 0.45) / 0.225 first (monodepth2 style; inputs in [0, 1]).
    dtype: compute dtype.
    remat: rematerialise each residual block (nn.remat): its activations are recomputed in the
      backward pass instead of stored. Same parameter names and results; less memory.
  """
  depth: int = 101
  output_stride: int = 16
  width: int = 64
  stage_sizes: Sequence[int] | None = None
  normalize_input: bool = True
  dtype: layers.Dtype = jnp.float32
  remat: bool = False

  @property
  def channels(self) -> tuple[int, ...]:
    """Channels of f0..f4."""
    block, _ = ARCHITECTURES[self.depth]
    return (self.width,) + tuple(self.width * 2**i * EXPANSION[block] for i in range(4))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    """[B, H, W, C] images (C = 3 * frames) -> [f0, f1, f2, f3, f4]."""
    if self.depth not in ARCHITECTURES:
      raise ConfigError(f'ResNet depth {self.depth}: expected one of {sorted(ARCHITECTURES)}')
    if self.output_stride not in DILATE:
      raise ConfigError(f'output_stride {self.output_stride}: expected one of {sorted(DILATE)}')
    block_name, default_sizes = ARCHITECTURES[self.depth]
    block_cls = {'basic': BasicBlock, 'bottleneck': Bottleneck}[block_name]
    if self.remat:
      # `train` (argument 2, counting self) is a Python bool that selects the BatchNorm mode.
      block_cls = nn.remat(block_cls, static_argnums=(2,))
    stage_sizes = tuple(self.stage_sizes or default_sizes)
    if block_name == 'basic' and self.output_stride != 32:
      raise ConfigError(f'ResNet{self.depth} (basic blocks) supports output stride 32 only, as '
                        'torchvision')
    if self.normalize_input:
      x = (x - 0.45) / 0.225
    x = layers.Conv(self.width, 7, 2, padding=3, kernel_init=layers.kaiming_fan_out,
                    dtype=self.dtype, name='conv1')(x)
    x = nn.relu(layers.batch_norm(train, self.dtype, 'bn1')(x))
    features = [x]
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    in_features, dilation = self.width, 1
    for stage, (blocks, dilate) in enumerate(
        zip(stage_sizes, (False,) + DILATE[self.output_stride])):
      features_out = self.width * 2**stage
      stride = 1 if stage == 0 else 2
      previous_dilation = dilation
      if dilate:
        dilation, stride = dilation * stride, 1
      for b in range(blocks):
        x = block_cls(
            features_out, stride=stride if b == 0 else 1,
            # torchvision: the first block of a dilated stage keeps the previous dilation.
            dilation=previous_dilation if b == 0 else dilation,
            downsample=b == 0 and (stride != 1
                                   or in_features != features_out * EXPANSION[block_name]),
            dtype=self.dtype, name=f'layer{stage + 1}_{b}')(x, train)
        in_features = features_out * EXPANSION[block_name]
      features.append(x)
    return features
