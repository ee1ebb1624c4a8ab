"""Layer helpers shared by every network: convolutions and BatchNorm with PyTorch's semantics.

One place decides how a convolution runs, so weights stay in one layout (kernels [kh, kw, in, out],
torch's OIHW transposed) whatever the execution path:
- explicit symmetric padding as torch pads (Flax's 'SAME' pads stride-2 convolutions asymmetrically
  and would break weight compatibility), zero or reflection;
- 1x1 convolutions as matmuls over channels: on XLA:CPU they ran about twice as fast as the
  equivalent convolution in a ResNet101 train step (measured here), and on accelerators they are
  the same dot;
- on CPU, optionally (SDESEG_CPU_CONVOLUTION=im2col), k x k convolutions and their gradients as
  matmuls over the k*k shifted views of the input (im2col): XLA:CPU's convolution kernels run far
  below its matmul speed, its kernel-gradient ones above all, but the patches cost memory
  (profiles and figures in BENCHMARKS.md); GPUs and TPUs always keep the native convolution.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdeseg_jax.errors import ConfigError

Dtype = Any

# torchvision ResNets: kaiming normal, fan_out, ReLU gain.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# torch's default Conv2d init (kaiming uniform with a = sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def at_least_float32(dtype: Dtype) -> Dtype:
  """float32 for bfloat16 and float32 activations, float64 for float64 ones: the precision of
  statistics and of the networks' outputs (a float64 parity check keeps every op in float64)."""
  return jnp.promote_types(dtype, jnp.float32)


def torch_default_bias(fan_in: int):
  """torch's default Conv2d bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Conv(nn.Module):
  """2-D convolution, NHWC, with torch's padding, stride and dilation semantics.

  Attributes:
    features: output channels. kernel_size, stride, dilation: square, as torch.nn.Conv2d.
    padding: pixels on every side; None means dilation * (kernel_size - 1) // 2 ("same" for
      stride 1).
    padding_mode: 'zeros' or 'reflect' (torch's ReflectionPad2d / padding_mode='reflect').
    use_bias: a bias term. kernel_init: initialiser of the [k, k, in, out] kernel.
    dtype: compute dtype (parameters stay float32).
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  dilation: int = 1
  padding: int | None = None
  padding_mode: str = 'zeros'
  use_bias: bool = False
  kernel_init: Any = torch_default
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C_in] -> [B, H', W', features]."""
    k = self.kernel_size
    in_features = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (k, k, in_features, self.features), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    pad = self.dilation * (k - 1) // 2 if self.padding is None else self.padding
    if k == 1 and pad == 0:
      y = x[:, ::self.stride, ::self.stride] @ kernel[0, 0]
    else:
      if pad:
        mode = {'zeros': 'constant', 'reflect': 'reflect'}[self.padding_mode]
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
      y = conv_valid(x, kernel, self.stride, self.dilation)
    if self.use_bias:
      bias = self.param('bias', torch_default_bias(in_features * k * k), (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def conv_valid_native(x: jax.Array, kernel: jax.Array, stride: int, dilation: int) -> jax.Array:
  """Unpadded convolution by XLA's convolution op. x [B, H, W, C], kernel [k, k, C, F] ->
  [B, (H - d(k-1) - 1) // s + 1, (W - ...) // s + 1, F]."""
  return jax.lax.conv_general_dilated(x, kernel, window_strides=(stride, stride), padding='VALID',
                                      rhs_dilation=(dilation, dilation),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _patches(x: jax.Array, k: int, stride: int, dilation: int) -> jax.Array:
  """The k*k strided, dilated views of x side by side over channels: [B, H', W', k*k*C], in the
  order (kernel row, kernel column, channel) of a [k, k, C, F] kernel's first three axes."""
  b, h, w, channels = x.shape
  out_h = (h - dilation * (k - 1) - 1) // stride + 1
  out_w = (w - dilation * (k - 1) - 1) // stride + 1
  return jnp.concatenate(
      [jax.lax.slice(x, (0, i * dilation, j * dilation, 0),
                     (b, i * dilation + stride * (out_h - 1) + 1,
                      j * dilation + stride * (out_w - 1) + 1, channels), (1, stride, stride, 1))
       for i in range(k) for j in range(k)], axis=-1)


def conv_valid_im2col(x: jax.Array, kernel: jax.Array, stride: int, dilation: int) -> jax.Array:
  """The same convolution as one matmul: the patches [B, H', W', k*k*C] times the kernel as a
  [k*k*C, F] matrix."""
  k, _, channels, features = kernel.shape
  return _patches(x, k, stride, dilation) @ kernel.reshape(k * k * channels, features)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_valid_cpu(x: jax.Array, kernel: jax.Array, stride: int, dilation: int) -> jax.Array:
  """conv_valid as it runs fastest on XLA:CPU (profiles in BENCHMARKS.md): im2col matmuls forward
  and backward. XLA:CPU's own convolutions ran at 0.05-5 GFLOP/s for kernel gradients (whose
  window is the whole image) and for few output channels (the disparity heads), and were most of
  the step. Only x and the kernel are kept for the backward pass, which rebuilds the patches
  instead of keeping them (k*k times the input); it is 13% faster than plain autodiff of
  conv_valid_im2col, though XLA's temporary memory stayed ~15 GB at 512 px either way."""
  return conv_valid_im2col(x, kernel, stride, dilation)


def _conv_valid_cpu_forward(x, kernel, stride, dilation):
  return conv_valid_im2col(x, kernel, stride, dilation), (x, kernel)


def _conv_valid_cpu_backward(stride, dilation, residuals, dy):
  x, kernel = residuals
  k, _, channels, features = kernel.shape
  patches, patches_vjp = jax.vjp(lambda x: _patches(x, k, stride, dilation), x)
  matrix = kernel.reshape(k * k * channels, features)
  d_kernel = patches.reshape(-1, k * k * channels).T @ dy.reshape(-1, features)
  d_x = patches_vjp(dy @ matrix.T)[0]    # the patches' transpose: pad and add the k*k views
  return d_x, d_kernel.reshape(kernel.shape).astype(kernel.dtype)


conv_valid_cpu.defvjp(_conv_valid_cpu_forward, _conv_valid_cpu_backward)


# The CPU convolution: 'native' (XLA's convolution op) or 'im2col' (conv_valid_cpu). Read when a
# step is traced. im2col ran the full-size multi-task network's forward + backward 17% faster on a
# 2-core CPU but needed 3.4x XLA's temporary memory (15 vs 4.5 GB; a whole multi-task + DepthMix
# train step then asked for 31 GB): an opt-in for CPU hosts with memory to spare (BENCHMARKS.md).
CPU_CONVOLUTION_ENV = 'SDESEG_CPU_CONVOLUTION'


def cpu_convolution() -> str:
  value = os.environ.get(CPU_CONVOLUTION_ENV, 'native')
  if value not in ('native', 'im2col'):
    raise ConfigError(f'{CPU_CONVOLUTION_ENV}={value!r}: expected native or im2col')
  return value


def conv_valid(x: jax.Array, kernel: jax.Array, stride: int, dilation: int) -> jax.Array:
  """Unpadded convolution: XLA's convolution op, or on CPU with SDESEG_CPU_CONVOLUTION=im2col
  conv_valid_cpu (chosen per platform when the step is lowered)."""
  if cpu_convolution() == 'native':
    return conv_valid_native(x, kernel, stride, dilation)
  return jax.lax.platform_dependent(
      x, kernel, cpu=lambda x, kernel: conv_valid_cpu(x, kernel, stride, dilation),
      default=lambda x, kernel: conv_valid_native(x, kernel, stride, dilation))


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d over NHWC: normalises with the batch's biased variance and keeps the
  UNbiased one (n / (n - 1)) in the running statistics, as torch does (flax.linen.BatchNorm keeps
  the biased one, which halves the running variance of the ASPP pooling branch at batch 2).

  Statistics are float32 whatever the compute dtype (float64 for float64); under jit with a
  batch-sharded input they are global-batch (synchronised) statistics. The variance is
  E[(x - c)^2] - (E[x] - c)^2 with c the running mean: one pass over x like E[x^2] - E[x]^2,
  without its cancellation where the mean is large against the spread (the ASPP pooling branch at
  batch 2 has two values per channel; torch does not cancel there either).
  """
  use_running_average: bool = False
  momentum: float = 0.9   # Flax convention: running = momentum * running + (1 - momentum) * batch
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param('scale', self.scale_init, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      x32 = x.astype(at_least_float32(x.dtype))
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axes)
      shift = jax.lax.stop_gradient(running_mean.value)
      var = jnp.maximum(jnp.mean(jnp.square(x32 - shift), axes) - jnp.square(mean - shift), 0.0)
      if not self.is_initializing():
        n = x.size // features
        unbiased = var * (n / max(n - 1, 1))
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    shift = bias - mean * multiplier
    return (x * multiplier.astype(self.dtype) + shift.astype(self.dtype)).astype(self.dtype)


def batch_norm(train: bool, dtype: Dtype, name: str | None = None,
               scale_init=nn.initializers.ones) -> BatchNorm:
  """BatchNorm as torch's defaults: momentum 0.1 (Flax 0.9), eps 1e-5; float32 statistics."""
  return BatchNorm(use_running_average=not train, dtype=dtype, scale_init=scale_init, name=name)


def upsample_nearest2x(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], as F.interpolate(scale_factor=2, mode='nearest')."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear resize with half-pixel centres (torch align_corners=False), no antialiasing."""
  shape = (x.shape[0], height, width, x.shape[-1])
  return jax.image.resize(x, shape, 'bilinear', antialias=False).astype(x.dtype)
