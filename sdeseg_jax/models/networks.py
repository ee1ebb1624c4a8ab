"""The composite networks the stages use, built from config (configs/base.py `model`).

kind            | modules                                         | used by
----------------|-------------------------------------------------|------------------------------
`sde`           | encoder+depth_decoder+pose_encoder+pose_decoder | SDE pretraining, depth labels
`transfer`      | encoder+seg_decoder+seg_head                    | SSL / SSDA without multi-task
`mtl`           | encoder+pad+pose_encoder+pose_decoder           | multi-task (PAD-Net) training
`depth_student` | encoder+depth_decoder (dec9, BN)                | data selection

Every network maps images [B, H, W, 3] in [0, 1] to a dict of named outputs. Pose takes a pair of
frames in temporal order, stacked in channels.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sdeseg_jax.errors import ConfigError
from sdeseg_jax.models import decoder
from sdeseg_jax.models import padnet
from sdeseg_jax.models import pose
from sdeseg_jax.models import resnet

# float64 is for precision checks (benchmarks/reference_parity.py runs its SDE step in float64 to
# tell float32 rounding from a different formula); it needs jax_enable_x64.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float64': jnp.float64}
# compute_dtype 'auto' (the default): bfloat16 where matrix units run it natively (TPU MXUs, GPU
# tensor cores; BENCHMARKS.md's TPU plans fit the reference's batch with it), float32 on the CPU,
# where the parity with the reference and the bitwise resume of the tests are defined.
PLATFORM_DTYPES = {'cpu': 'float32', 'gpu': 'bfloat16', 'tpu': 'bfloat16'}


def compute_dtype(config: ml_collections.ConfigDict, platform: str | None = None):
  """The activation dtype of a model config: its compute_dtype, 'auto' resolved for `platform`
  (default: the platform JAX runs on)."""
  name = config.compute_dtype
  if name == 'auto':
    name = PLATFORM_DTYPES.get(platform or jax.default_backend(), 'float32')
  if name not in DTYPES:
    raise ConfigError(f'compute_dtype {name!r}: expected one of {sorted(DTYPES)} or auto')
  if name == 'float64' and not jax.config.jax_enable_x64:
    # Without x64, JAX would quietly compute in float32.
    raise ConfigError('compute_dtype float64 needs 64-bit JAX (jax_enable_x64)')
  return DTYPES[name]


def encoder_from_config(config: ml_collections.ConfigDict, dtype,
                        name: str | None = None) -> resnet.ResNet:
  """A ResNet from an encoder config (depth, output_stride, width, stage_sizes); conv1 takes as
  many channels as the input has (6 for the pose network's frame pairs)."""
  return resnet.ResNet(depth=config.depth, output_stride=config.output_stride, width=config.width,
                       stage_sizes=tuple(config.stage_sizes) or None, dtype=dtype, name=name,
                       # .get: configs saved before the key existed (a run's config.json)
                       remat=config.get('remat', False))


def decoder_design(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """channels / aspp_rates / batch_norm of a named decoder, channels scaled by
  config.width_scale."""
  if config.name not in decoder.DECODERS:
    raise ConfigError(f'decoder {config.name!r}: expected one of {sorted(decoder.DECODERS)}')
  design = dict(decoder.DECODERS[config.name])
  design['channels'] = tuple(max(1, round(c * config.width_scale)) for c in design['channels'])
  return design


class PoseNet(nn.Module):
  """ResNet18 on two frames stacked in channels + pose decoder."""
  encoder_config: Any
  dtype: Any = jnp.float32

  def setup(self):
    self.pose_encoder = encoder_from_config(self.encoder_config, self.dtype)
    # 256 features for the standard width 64, scaled with the encoder for tiny networks.
    self.pose_decoder = pose.PoseDecoder(features=4 * self.encoder_config.width, dtype=self.dtype)

  def __call__(self, first: jax.Array, second: jax.Array, train: bool = False):
    """Frames [B, H, W, 3] in temporal order -> (axisangle, translation) [B, 3] of the motion from
    the first frame's camera to the second's (the caller inverts it for (t-1, t))."""
    features = self.pose_encoder(jnp.concatenate([first, second], axis=-1), train)
    axisangle, translation = self.pose_decoder(features[-1])
    return axisangle[:, 0], translation[:, 0]


def with_poses(out: dict, pose_net: PoseNet, frames: jax.Array, train: bool) -> dict:
  """Adds the poses of the pairs (t-1, t) and (t, t+1) of a frame triplet to a network's outputs."""
  return dict(out, pose_prev=pose_net(frames[:, 0], frames[:, 1], train),
              pose_next=pose_net(frames[:, 1], frames[:, 2], train))


class SDENetwork(nn.Module):
  """Self-supervised depth: encoder + dec-family depth decoder + pose network."""
  config: Any

  def setup(self):
    dtype = compute_dtype(self.config)
    self.encoder = encoder_from_config(self.config.encoder, dtype)
    self.depth_decoder = decoder.Decoder(**decoder_design(self.config.decoder), dtype=dtype)
    self.pose = PoseNet(self.config.pose_encoder, dtype)

  def depth(self, image: jax.Array, train: bool = False) -> dict:
    """[B, H, W, 3] -> dict(disp {s: [B, H/2^s, W/2^s, 1]}, levels {i: decoder level i output},
    features [f0..f4] of the encoder)."""
    features = self.encoder(image, train)
    out = self.depth_decoder(features, train)
    return dict(out, features=features)

  def __call__(self, frames: jax.Array, train: bool = False) -> dict:
    """[B, 3, H, W, 3] frames (t-1, t, t+1) -> depth outputs of frame t, plus
    pose_prev = (axisangle, translation) of the pair (t-1, t), pose_next of the pair (t, t+1)."""
    return with_poses(self.depth(frames[:, 1], train), self.pose, frames, train)


class TransferSegmenter(nn.Module):
  """Segmentation by transfer from SDE: encoder + a decoder without disparity heads + 1x1 head."""
  config: Any

  @nn.compact
  def __call__(self, image: jax.Array, train: bool = False) -> dict:
    """[B, H, W, 3] -> dict(logits [B, H, W, classes] float32, levels, features)."""
    dtype = compute_dtype(self.config)
    features = encoder_from_config(self.config.encoder, dtype, name='encoder')(image, train)
    out = decoder.Decoder(**decoder_design(self.config.decoder), disparity_levels=(), dtype=dtype,
                          name='seg_decoder')(features, train)
    logits = decoder.SegmentationHead(self.config.num_classes, dtype=dtype,
                                      name='seg_head')(out['levels'][0])
    return dict(logits=logits, levels=out['levels'], features=features)


class MultiTaskNetwork(nn.Module):
  """Multi-task SDE + segmentation: encoder + PAD-Net + pose network."""
  config: Any

  def setup(self):
    dtype = compute_dtype(self.config)
    self.encoder = encoder_from_config(self.config.encoder, dtype)
    # Run configs written before a switch existed (predict reads them) lack it: PADNet's own
    # default, the reference's behaviour, is what they trained with.
    switches = {key: self.config[key] for key in ('side_output', 'distillation', 'projected_head')
                if key in self.config}
    self.pad = padnet.PADNet(self.config.num_classes, **decoder_design(self.config.decoder),
                             **switches, dtype=dtype)
    self.pose = PoseNet(self.config.pose_encoder, dtype)

  def segment(self, image: jax.Array, train: bool = False) -> dict:
    """[B, H, W, 3] -> dict(logits[, side_logits], disp, seg_levels, features)."""
    features = self.encoder(image, train)
    return dict(self.pad(features, train), features=features)

  def __call__(self, frames: jax.Array, train: bool = False) -> dict:
    """[B, 3, H, W, 3] (t-1, t, t+1) -> segment(frame t) plus pose_prev and pose_next."""
    return with_poses(self.segment(frames[:, 1], train), self.pose, frames, train)


class DepthStudent(nn.Module):
  """The data-selection depth student: encoder (ResNet50 OS16) + dec9 (BN in every ConvBlock)."""
  config: Any

  @nn.compact
  def __call__(self, image: jax.Array, train: bool = False) -> dict:
    """[B, H, W, 3] -> dict(disp {s: [B, H/2^s, W/2^s, 1]}, levels)."""
    dtype = compute_dtype(self.config)
    features = encoder_from_config(self.config.encoder, dtype, name='encoder')(image, train)
    return decoder.Decoder(**decoder_design(self.config.decoder), dtype=dtype,
                           name='depth_decoder')(features, train)


NETWORKS = {'sde': SDENetwork, 'transfer': TransferSegmenter, 'mtl': MultiTaskNetwork,
            'depth_student': DepthStudent}


def build(kind: str, config: ml_collections.ConfigDict) -> nn.Module:
  """The network `kind` configured by a model config (configs/base.py model_config)."""
  if kind not in NETWORKS:
    raise ConfigError(f'network {kind!r}: expected one of {sorted(NETWORKS)}')
  compute_dtype(config)  # a bad name fails here, not inside module set-up
  return NETWORKS[kind](config)


def forward(network: nn.Module, kind: str, params, batch_stats, x: jax.Array, *, train: bool, key,
            frames: bool) -> tuple[dict, Any]:
  """(outputs, batch_stats) of a segmentation network (`kind` transfer or mtl): frames
  [B, 3, H, W, 3] run the whole multi-task network (poses included); images [B, H, W, 3] run
  segmentation only. In train mode BatchNorm updates its statistics and dropout draws from `key`."""
  variables = {'params': params, 'batch_stats': batch_stats}
  method = None if frames or kind == 'transfer' else 'segment'
  if not train:
    return network.apply(variables, x, train=False, method=method), batch_stats
  out, updates = network.apply(variables, x, train=True, method=method, mutable=['batch_stats'],
                               rngs={'dropout': key})
  return out, updates['batch_stats']


def example_input(kind: str, batch: int, height: int, width: int) -> jax.Array:
  """A zero input of the right shape for `kind` (frame triplets for sde and mtl)."""
  if kind in ('sde', 'mtl'):
    return jnp.zeros((batch, 3, height, width, 3), jnp.float32)
  return jnp.zeros((batch, height, width, 3), jnp.float32)


def init_variables(kind: str, config: ml_collections.ConfigDict, key: jax.Array, height: int = 64,
                   width: int = 64) -> dict:
  """{'params': ..., 'batch_stats': ...} of a freshly initialised network (float32)."""
  return build(kind, config).init(key, example_input(kind, 1, height, width))


def count_parameters(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))
