"""The PyTorch side of the train-step benchmark: each step benchmarks/train_step.py times in JAX,
built from the independent torch networks (benchmarks/torch_reference.py), timed alike.

    python -m benchmarks.torch_steps --workload=sde [--batch=2] [--size=512x512] [--repeats=3]
        [--threads=0] [--out=FILE]
    python -m benchmarks.torch_steps --workload=segment:mtl+depthmix --batch=2
        # also segment:transfer, segment:transfer+pseudo, segment:transfer+depthmix, ssda, student,
        # inference:transfer, inference:mtl (evaluation mode, no gradients)

A workload mirrors the JAX step of the same name (train_step.py --stage=NAME): the same networks
(full size, from the same config defaults), the same forward passes (which of them without
gradients), losses, optimiser update and mean-teacher EMA, on random inputs of the same batch layout
(tensors NCHW, frames [B, 3, 3, H, W]). Numerical details of the random augmentation differ (the
draws are torch's), the amount of work does not. Runs on CUDA when available, else on the CPU.
Timing: min / median / max over --repeats after --warmup steps (one, as the JAX side after
compilation), with torch.cuda.synchronize around each step on CUDA.

`WORKLOADS` (name -> builder) and `run(workload, batch, width, height, repeats)` serve scripts that
call this module in a subprocess (each framework's peak memory its own).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import importlib
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import common
from benchmarks import torch_reference as ref

IGNORE_LABEL = 255   # sdeseg_jax.ops.segmentation.IGNORE_LABEL (not imported: it pulls in JAX)
NUM_CLASSES = 19     # what train_step.py builds the segment steps with
IDENTITY_NOISE_STD = 1e-5
SSIM_C1, SSIM_C2, SSIM_WEIGHT = 0.01 ** 2, 0.03 ** 2, 0.85
STUDENT_MASKED_BOTTOM = 0.1
BERHU_THRESHOLD = 0.2
BLUR_SIGMA_RANGE = (0.15, 1.15)




def _config(name: str):
  """configs/<name>.py's default config (configs import only ml_collections, no JAX)."""
  return importlib.import_module(f'configs.{name}').get_config()


# ---------------------------------------------------------------------------------------------
# Geometry and the self-supervised depth loss (sdeseg_jax.ops.geometry / photometric), NCHW


def disp_to_depth(disp: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
  """Sigmoid disparity -> depth in [min_depth, max_depth], any shape."""
  min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
  return 1.0 / (min_disp + (max_disp - min_disp) * disp)


def rotation_from_axisangle(axisangle: torch.Tensor) -> torch.Tensor:
  """[B, 3] axis-angle -> [B, 3, 3] rotation (Rodrigues; angle = |v|, axis = v / (angle + 1e-7))."""
  angle = torch.linalg.vector_norm(axisangle, dim=-1, keepdim=True)
  x, y, z = (axisangle / (angle + 1e-7)).unbind(-1)
  ca, sa = torch.cos(angle[:, 0]), torch.sin(angle[:, 0])
  c = 1.0 - ca
  xs, ys, zs = x * sa, y * sa, z * sa
  xc, yc, zc = x * c, y * c, z * c
  xyc, yzc, zxc = x * yc, y * zc, z * xc
  return torch.stack([
      torch.stack([x * xc + ca, xyc - zs, zxc + ys], -1),
      torch.stack([xyc + zs, y * yc + ca, yzc - xs], -1),
      torch.stack([zxc - ys, yzc + xs, z * zc + ca], -1)], -2)


def transformation_from_parameters(axisangle: torch.Tensor, translation: torch.Tensor,
                                   invert: bool = False) -> torch.Tensor:
  """[B, 3], [B, 3] -> [B, 4, 4]: [[R, t], [0, 1]], or its inverse [[R^T, -R^T t], [0, 1]]."""
  rotation = rotation_from_axisangle(axisangle)
  if invert:
    rotation = rotation.transpose(1, 2)
    translation = -(rotation @ translation[:, :, None])[:, :, 0]
  top = torch.cat([rotation, translation[:, :, None]], 2)
  # Built on the device (a tensor from a Python list would be a synchronising host copy on CUDA).
  bottom = torch.zeros_like(top[:, :1])
  bottom[:, :, 3] = 1.0
  return torch.cat([top, bottom], 1)


def inverse_3x3(m: torch.Tensor) -> torch.Tensor:
  """[B, 3, 3] -> inverse by cofactors: elementwise as the JAX op, and free of the device
  synchronisation that torch.linalg's solvers may need on CUDA."""
  a, b, c, d, e, f, g, h, i = m.reshape(-1, 9).unbind(1)
  cofactors = torch.stack([e * i - f * h, c * h - b * i, b * f - c * e,
                           f * g - d * i, a * i - c * g, c * d - a * f,
                           d * h - e * g, b * g - a * h, a * e - b * d], 1).reshape(-1, 3, 3)
  det = a * cofactors[:, 0, 0] + b * cofactors[:, 1, 0] + c * cofactors[:, 2, 0]
  return cofactors / det[:, None, None]


@functools.lru_cache(maxsize=8)
def _homogeneous_pixels(height: int, width: int, device: torch.device) -> torch.Tensor:
  """[3, H*W] (u, v, 1) of every pixel, u = column, v = row."""
  v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device),
                        torch.arange(width, dtype=torch.float32, device=device), indexing='ij')
  return torch.stack([u.reshape(-1), v.reshape(-1), torch.ones_like(u).reshape(-1)], 0)


def warp(source: torch.Tensor, depth: torch.Tensor, transform: torch.Tensor,
         intrinsics: torch.Tensor) -> torch.Tensor:
  """The target view synthesised from `source` (SPEC section 4): back-project every pixel with
  depth, transform, project, sample bilinearly (align corners, border clamp).
  source [B, C, H, W], depth [B, 1, H, W], transform [B, 4, 4], intrinsics [B, 3, 3]
  -> [B, C, H, W].
  """
  b, _, h, w = depth.shape
  rays = inverse_3x3(intrinsics) @ _homogeneous_pixels(h, w, depth.device)             # [B,3,HW]
  points = depth.reshape(b, 1, -1) * rays
  projection = intrinsics @ transform[:, :3, :]                                       # [B,3,4]
  cam = projection[:, :, :3] @ points + projection[:, :, 3:]
  uv = cam[:, :2] / (cam[:, 2:3] + 1e-7)
  grid = torch.stack([uv[:, 0] / (w - 1) * 2 - 1, uv[:, 1] / (h - 1) * 2 - 1], -1)
  return F.grid_sample(source, grid.reshape(b, h, w, 2), mode='bilinear', padding_mode='border',
                       align_corners=True)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
  """clip((1 - SSIM) / 2, 0, 1) with 3x3 means after 1-pixel reflection padding; [B, C, H, W]."""
  x, y = F.pad(x, (1, 1, 1, 1), mode='reflect'), F.pad(y, (1, 1, 1, 1), mode='reflect')
  mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
  sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x * mu_x
  sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y * mu_y
  sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
  numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
  denominator = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
  return torch.clamp((1 - numerator / denominator) / 2, 0, 1)


def reprojection_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
  """0.85 mean_c SSIM + 0.15 mean_c |pred - target|: [B, C, H, W] -> [B, 1, H, W]."""
  l1 = torch.abs(pred - target).mean(1, keepdim=True)
  return SSIM_WEIGHT * ssim(pred, target).mean(1, keepdim=True) + (1 - SSIM_WEIGHT) * l1


def smoothness_loss(disp: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
  """Edge-aware smoothness of the mean-normalised disparity [B, 1, h, w] against the image
  [B, 3, h, w] -> scalar."""
  disp = disp / (disp.mean((2, 3), keepdim=True) + 1e-7)
  disp_dx = torch.abs(disp[:, :, :, :-1] - disp[:, :, :, 1:])
  disp_dy = torch.abs(disp[:, :, :-1] - disp[:, :, 1:])
  image_dx = torch.abs(image[:, :, :, :-1] - image[:, :, :, 1:]).mean(1, keepdim=True)
  image_dy = torch.abs(image[:, :, :-1] - image[:, :, 1:]).mean(1, keepdim=True)
  return (disp_dx * torch.exp(-image_dx)).mean() + (disp_dy * torch.exp(-image_dy)).mean()


def sde_loss(disparities: dict, frames: torch.Tensor, intrinsics: torch.Tensor, pose_prev,
             pose_next, sde) -> torch.Tensor:
  """monodepth2's loss as sdeseg_jax.ops.sde_loss: per scale, the disparity upsampled to full
  resolution, both source frames warped, the per-pixel minimum over [identity(t-1) + noise,
  identity(t+1) + noise, reproj(t-1), reproj(t+1)] averaged, plus the edge-aware smoothness of the
  native-scale disparity (weight sde.smoothness / 2^s); mean over the scales.

  Args:
    disparities: {s: [B, 1, H/2^s, W/2^s]}. frames: [B, 3, 3, H, W] (t-1, t, t+1).
    intrinsics: [B, 3, 3]. pose_prev, pose_next: (axisangle [B, 3], translation [B, 3]).
    sde: config.sde (min_depth, max_depth, smoothness).
  """
  prev, target, nxt = frames[:, 0], frames[:, 1], frames[:, 2]
  height, width = target.shape[-2:]
  to_prev = transformation_from_parameters(*pose_prev, invert=True)
  to_next = transformation_from_parameters(*pose_next)
  identity = torch.cat([reprojection_loss(prev, target), reprojection_loss(nxt, target)], 1)
  total = 0.0
  for s in sorted(disparities):
    disp = disparities[s]
    depth = disp_to_depth(F.interpolate(disp, (height, width), mode='bilinear',
                                        align_corners=False), sde.min_depth, sde.max_depth)
    reprojection = torch.cat([
        reprojection_loss(warp(prev, depth, to_prev, intrinsics), target),
        reprojection_loss(warp(nxt, depth, to_next, intrinsics), target)], 1)
    noisy_identity = identity + IDENTITY_NOISE_STD * torch.randn_like(identity)
    photometric = torch.cat([noisy_identity, reprojection], 1).min(1)[0].mean()
    # The target at the disparity's scale (the JAX step resizes it with antialiasing too).
    image_s = target if disp.shape[-2:] == target.shape[-2:] else F.interpolate(
        target, disp.shape[-2:], mode='bilinear', align_corners=False, antialias=True)
    total = total + photometric + sde.smoothness / 2 ** s * smoothness_loss(disp, image_s)
  return total / len(disparities)


def feature_distance(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
  """Plain L2 norm of the difference over all elements (pretraining stage C)."""
  return torch.linalg.vector_norm(features - reference)


# ---------------------------------------------------------------------------------------------
# Segmentation losses, mixing and pseudo-labels (sdeseg_jax.ops.segmentation / mixing), NCHW


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                  reduction: str = 'valid_mean') -> torch.Tensor:
  """Per-pixel CE (ignored pixels 0), optionally weighted (no gradient to the weights), reduced over
  the valid pixels or over all of them. logits [B, C, H, W], labels / weights [B, H, W]."""
  nll = F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL, reduction='none')
  if weights is not None:
    nll = nll * weights.detach()
  if reduction == 'all_mean':
    return nll.mean()
  if reduction != 'valid_mean':
    raise ValueError(f'reduction {reduction!r}: expected valid_mean or all_mean')
  return nll.sum() / (labels != IGNORE_LABEL).sum().clamp_min(1)


def segmentation_loss(out: dict, labels: torch.Tensor) -> torch.Tensor:
  """CE of the logits; with PAD's side output, the mean of both (side logits upsampled bilinearly,
  align_corners=True)."""
  loss = cross_entropy(out['logits'], labels)
  if 'side_logits' in out:
    side = F.interpolate(out['side_logits'], labels.shape[-2:], mode='bilinear', align_corners=True)
    loss = (loss + cross_entropy(side, labels)) / 2
  return loss


def normalize_disparity(disp: torch.Tensor) -> torch.Tensor:
  """Per-image min-max normalisation [B, 1, H, W] -> [0, 1] (constant image -> 0)."""
  low = disp.amin((1, 2, 3), keepdim=True)
  extent = disp.amax((1, 2, 3), keepdim=True) - low
  return torch.where(extent > 0, (disp - low) / torch.where(extent > 0, extent, 1.0), 0.0)


def depthmix_mask(disp_i: torch.Tensor, disp_j: torch.Tensor, margin) -> torch.Tensor:
  """[d_i >= d_j - margin] as float [B, 1, H, W]; margin scalar or [B]."""
  if isinstance(margin, torch.Tensor):
    margin = margin[:, None, None, None]
  return (disp_i >= disp_j - margin).float()


def pair_with_next(x: torch.Tensor) -> torch.Tensor:
  """Row b of the result is row (b + 1) mod B: each image's mixing partner."""
  return torch.roll(x, -1, 0)


def mix(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
  return mask * a + (1.0 - mask) * b


def pseudo_labels(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
  """[B, C, H, W] (mixed) teacher distribution -> (argmax [B, H, W], ignore where the max is 0;
  max probability [B, H, W])."""
  max_prob, labels = probs.max(1)
  return torch.where(max_prob == 0, IGNORE_LABEL, labels), max_prob


def one_hot_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
  """[B, H, W] -> [B, C, H, W] one-hot float, all zero at ignored pixels (255 matches no class;
  a comparison rather than F.one_hot, whose range check may synchronise on CUDA)."""
  classes = torch.arange(num_classes, device=labels.device)[None, :, None, None]
  return (labels[:, None] == classes).float()


def geometric_difference(disp_a: torch.Tensor, disp_b: torch.Tensor, top: int, bottom: int
                         ) -> torch.Tensor:
  """Matching Geometry's G = mean |log1p(a) - log1p(b)| with the top / bottom rows zeroed (still in
  the denominator). [..., 1, H, W] -> [...]."""
  diff = torch.abs(torch.log1p(disp_a) - torch.log1p(disp_b))
  rows = torch.arange(diff.shape[-2], device=diff.device)[:, None]
  kept = (rows >= top) & (rows < diff.shape[-2] - bottom)
  return torch.where(kept, diff, 0.0).mean((-3, -2, -1))


def berhu_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               threshold: float = BERHU_THRESHOLD) -> torch.Tensor:
  """Reverse Huber with c = threshold * max |masked error| of the batch, a constant."""
  absdiff = torch.abs(target - pred) * mask
  c = (threshold * absdiff.max()).detach()
  safe_c = torch.where(c > 0, c, 1.0)
  quadratic = (absdiff * absdiff + c * c) / (2.0 * safe_c)
  return torch.where(absdiff <= c, absdiff, quadratic).mean()


# ---------------------------------------------------------------------------------------------
# Strong augmentation of mixed images (sdeseg_jax.ops.augment), NCHW in [0, 1]


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
  """[B, 3, H, W] RGB -> HSV, all in [0, 1]."""
  r, g, b = rgb.unbind(1)
  value = rgb.amax(1)
  chroma = value - rgb.amin(1)
  saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, 1.0), 0.0)
  safe = torch.where(chroma > 0, chroma, 1.0)
  hue = torch.where(r == value, (g - b) / safe,
                    torch.where(g == value, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  hue = torch.where(chroma > 0, torch.remainder(hue / 6.0, 1.0), 0.0)
  return torch.stack([hue, saturation, value], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
  """[B, 3, H, W] HSV -> RGB (channel n = V - V S clip(min(k, 4 - k), 0, 1), k = (n + 6H) mod 6)."""
  hue, saturation, value = hsv.unbind(1)
  channels = []
  for n in (5.0, 3.0, 1.0):
    k = torch.remainder(n + 6.0 * hue, 6.0)
    channels.append(value - value * saturation * torch.clamp(torch.minimum(k, 4.0 - k), 0, 1))
  return torch.stack(channels, 1)


def gaussian_kernel_size(size: int) -> int:
  """ceil(0.1 size) rounded down to odd (the reference's blur kernel for an image side)."""
  c = math.ceil(0.1 * size)
  return int(math.floor(c - 0.5 + c % 2))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
  """Separable Gaussian blur, reflect borders, kernel gaussian_kernel_size per axis."""
  channels, height, width = images.shape[1:]
  for axis, size in ((2, height), (3, width)):
    k = gaussian_kernel_size(size)
    x = torch.arange(k, dtype=images.dtype, device=images.device) - k // 2
    taps = torch.exp(-x * x / (2.0 * sigma * sigma))
    taps = taps / taps.sum()
    shape, pad = ((k, 1), (0, 0, k // 2, k // 2)) if axis == 2 else ((1, k), (k // 2, k // 2, 0, 0))
    images = F.conv2d(F.pad(images, pad, mode='reflect'),
                      taps.reshape(1, 1, *shape).expand(channels, 1, *shape), groups=channels)
  return images


def strong_augment(images: torch.Tensor, coins: torch.Generator, augment, force: bool = False
                   ) -> torch.Tensor:
  """Colour jitter (probability jitter_prob: brightness + U[-s, s], contrast and HSV saturation
  x U[1-s, 1+s], hue + U[-s, s], per image, one random order per batch), then Gaussian blur
  (probability blur_prob, one sigma per batch). `coins` (a CPU generator) draws the per-batch
  choices without a device synchronisation; force=True applies both (to warm up their kernels).
  augment: config.segment.strong_augment. [B, 3, H, W] -> same."""
  batch, s = images.shape[0], augment.strength
  if force or torch.rand((), generator=coins) < augment.jitter_prob:
    uniform = torch.rand(4, batch, 1, 1, device=images.device)
    delta, contrast, saturation, hue = (uniform * 2 - 1) * s
    adjustments = (
        lambda x: torch.clamp(x + delta[:, None], 0, 1),
        lambda x: torch.clamp(x * (1 + contrast[:, None]), 0, 1),
        lambda x: (lambda h: hsv_to_rgb(torch.cat([
            h[:, :1], torch.clamp(h[:, 1:2] * (1 + saturation[:, None]), 0, 1), h[:, 2:]], 1))
        )(rgb_to_hsv(x)),
        lambda x: (lambda h: hsv_to_rgb(torch.cat([
            torch.remainder(h[:, :1] + hue[:, None], 1.0), h[:, 1:]], 1)))(rgb_to_hsv(x)))
    for i in torch.randperm(4, generator=coins).tolist():
      images = adjustments[i](images)
    images = torch.clamp(images, 0, 1)
  if force or torch.rand((), generator=coins) < augment.blur_prob:
    low, high = BLUR_SIGMA_RANGE
    images = gaussian_blur(images, low + (high - low) * float(torch.rand((), generator=coins)))
  return images


# ---------------------------------------------------------------------------------------------
# Networks: the composites of sdeseg_jax.models.networks from the torch reference modules


def _check_full_size(model) -> None:
  """The torch reference builds the standard widths only (no tiny test designs)."""
  for encoder in (model.encoder, model.pose_encoder):
    if encoder.width != 64 or tuple(encoder.stage_sizes):
      raise ValueError('torch_steps builds standard-width ResNets only (configs at full size)')
  if model.decoder.width_scale != 1.0:
    raise ValueError('torch_steps builds decoders at width_scale 1 only')


class PoseNet(nn.Module):
  """ResNet on two frames stacked in channels + monodepth2's pose decoder."""

  def __init__(self, encoder_config):
    super().__init__()
    self.pose_encoder = ref.ResnetEncoder(encoder_config.depth, encoder_config.output_stride,
                                          num_input_images=2)
    self.pose_decoder = ref.PoseDecoder(self.pose_encoder.num_ch_enc[-1])

  def forward(self, first: torch.Tensor, second: torch.Tensor):
    """[B, 3, H, W] x2 in temporal order -> (axisangle [B, 3], translation [B, 3]) of the motion
    from the first frame to the second."""
    axisangle, translation = self.pose_decoder(self.pose_encoder(torch.cat([first, second], 1))[-1])
    return axisangle[:, 0, 0], translation[:, 0, 0]


def _with_poses(out: dict, pose: PoseNet, frames: torch.Tensor) -> dict:
  """+ pose_prev (pair t-1, t) and pose_next (pair t, t+1): two pose passes, as the JAX network."""
  return dict(out, pose_prev=pose(frames[:, 0], frames[:, 1]),
              pose_next=pose(frames[:, 1], frames[:, 2]))


class SDENet(nn.Module):
  """Encoder + depth decoder (disparities 0..3) + pose network (networks.SDENetwork)."""

  def __init__(self, model):
    super().__init__()
    self.encoder = ref.ResnetEncoder(model.encoder.depth, model.encoder.output_stride)
    self.depth_decoder = ref.depth_decoder(model.decoder.name, self.encoder.num_ch_enc)
    self.pose = PoseNet(model.pose_encoder)

  def forward(self, frames: torch.Tensor) -> dict:
    """[B, 3, 3, H, W] -> dict(disp {s: [B, 1, H/2^s, W/2^s]}, features, pose_prev, pose_next)."""
    features = self.encoder(frames[:, 1])
    out = self.depth_decoder(features)
    disp = {s: out[('disp', s)] for s in self.depth_decoder.scales}
    return _with_poses(dict(disp=disp, features=features), self.pose, frames)


class TransferNet(nn.Module):
  """Encoder + segmentation decoder without disparity heads + 1x1 head
  (networks.TransferSegmenter)."""

  def __init__(self, model, num_classes: int):
    super().__init__()
    self.encoder = ref.ResnetEncoder(model.encoder.depth, model.encoder.output_stride)
    self.seg_decoder = ref.JointSegDepthDecoder(self.encoder.num_ch_enc, num_classes,
                                                model.decoder.name)

  def segment(self, image: torch.Tensor) -> dict:
    return dict(logits=self.seg_decoder(self.encoder(image)))

  def groups(self) -> dict[str, list[nn.Parameter]]:
    """Parameters by segment optimiser group (configs/base.py segment optim)."""
    return dict(encoder=list(self.encoder.parameters()),
                decoder=list(self.seg_decoder.parameters()))


class MultiTaskNet(nn.Module):
  """MTLModel (encoder + PAD-Net) + pose network (networks.MultiTaskNetwork)."""

  def __init__(self, model, num_classes: int):
    super().__init__()
    self.mtl = ref.MTLModel(num_classes, model.encoder.depth, model.encoder.output_stride,
                            model.decoder.name)
    self.pose = PoseNet(model.pose_encoder)

  def segment(self, image: torch.Tensor) -> dict:
    """[B, 3, H, W] -> dict(logits, side_logits [B, C, H/4, W/4], disp {s})."""
    out = self.mtl(image)
    return dict(logits=out['semantics'], side_logits=out['intermediate_semantics'],
                disp={s: out[('disp', s)] for s in self.mtl.mtl_decoder.depth_dec.scales})

  def forward(self, frames: torch.Tensor) -> dict:
    """[B, 3, 3, H, W] -> segment(frame t) + pose_prev, pose_next."""
    return _with_poses(self.segment(frames[:, 1]), self.pose, frames)

  def groups(self) -> dict[str, list[nn.Parameter]]:
    return dict(encoder=list(self.mtl.encoder.parameters()),
                decoder=list(self.mtl.mtl_decoder.parameters()), pose=list(self.pose.parameters()))


class DepthStudent(nn.Module):
  """Encoder + dec9 decoder (BN in every ConvBlock; disparities 0..3) (networks.DepthStudent)."""

  def __init__(self, model):
    super().__init__()
    self.encoder = ref.ResnetEncoder(model.encoder.depth, model.encoder.output_stride)
    self.depth_decoder = ref.depth_decoder(model.decoder.name, self.encoder.num_ch_enc)

  def forward(self, image: torch.Tensor) -> dict:
    out = self.depth_decoder(self.encoder(image))
    return {s: out[('disp', s)] for s in self.depth_decoder.scales}


def build_optimizer(optim, groups: dict[str, list[nn.Parameter]]) -> torch.optim.Optimizer:
  """torch's counterpart of training.optim.build: one parameter group per config group with its
  learning rate (schedules left out: a scalar per group and step), weight decay added to the
  gradient (as optax.add_decayed_weights before the optimiser). Config groups without parameters
  (pose for the transfer network) are left out, as optim.build does."""
  unknown = set(groups) - set(optim.groups)
  if unknown:
    raise ValueError(f'parameter groups {sorted(unknown)} are not in the config '
                     f'{sorted(optim.groups)}')
  if any(optim.groups[name].frozen for name in groups):
    raise ValueError('frozen optimiser groups are not modelled here')
  param_groups = [dict(params=params, lr=optim.groups[name].lr) for name, params in groups.items()]
  if optim.name == 'sgd':
    return torch.optim.SGD(param_groups, lr=param_groups[0]['lr'], momentum=optim.momentum,
                           weight_decay=optim.weight_decay)
  if optim.name == 'adam':
    return torch.optim.Adam(param_groups, lr=param_groups[0]['lr'], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=optim.weight_decay)
  raise ValueError(f'optimiser {optim.name!r}: expected sgd or adam')


def ema_update(teacher: nn.Module, student: nn.Module, step: int) -> None:
  """Mean teacher after the optimiser step: parameters only (not BN statistics),
  ema = a ema + (1 - a) params, a = min(1 - 1/(step + 1), 0.99), step counted from 1."""
  alpha = min(1.0 - 1.0 / (step + 1), 0.99)
  with torch.no_grad():
    torch._foreach_lerp_(list(teacher.parameters()), list(student.parameters()), 1.0 - alpha)


# ---------------------------------------------------------------------------------------------
# Workloads


@dataclasses.dataclass
class Workload:
  """One benchmark step, ready to run: step() -> detached loss. modules: the networks it holds
  ('student': the trained one; 'teacher': the EMA copy; 'network': an inference network)."""
  step: Callable[[], torch.Tensor]
  modules: dict[str, nn.Module]
  passes: str
  config: str
  trains: bool = True


def _intrinsics(rows: int, width: int, height: int) -> torch.Tensor:
  """[rows, 3, 3] pixel intrinsics of train_step.py's random batches."""
  k = torch.tensor([[0.58 * width, 0, 0.5 * width], [0, 1.16 * height, 0.5 * height], [0, 0, 1]])
  return k.expand(rows, 3, 3).clone()


def _to(batch: dict, device: torch.device) -> dict:
  return {k: v.to(device) for k, v in batch.items()}


def _sde_workload(batch: int, width: int, height: int, device: torch.device) -> Workload:
  """sde_pretrain.make_train_step under configs/sde_cityscapes.py (phase C): depth + two pose
  passes on the augmented frames, monodepth2 loss on the plain frames, feature distance to a frozen
  encoder copy (evaluation mode, no gradients), Adam."""
  config = _config('sde_cityscapes')
  _check_full_size(config.model)
  sde = config.sde
  net = SDENet(config.model).to(device).train()
  frozen = None
  if sde.feature_distance:
    frozen = copy.deepcopy(net.encoder).eval().requires_grad_(False)
  optimizer = build_optimizer(sde.optim, dict(
      encoder=list(net.encoder.parameters()), depth_decoder=list(net.depth_decoder.parameters()),
      pose=list(net.pose.parameters())))
  gen = torch.Generator().manual_seed(0)
  frames = torch.rand(batch, 3, 3, height, width, generator=gen)
  # frames_aug is frames in train_step.py too (the colour jitter happens in the input pipeline).
  data = _to(dict(frames=frames, frames_aug=frames.clone(),
                  intrinsics=_intrinsics(batch, width, height)), device)
  params = list(net.parameters())

  def step():
    optimizer.zero_grad(set_to_none=True)
    out = net(data['frames_aug'])
    loss = sde_loss(out['disp'], data['frames'], data['intrinsics'], out['pose_prev'],
                    out['pose_next'], sde)
    if frozen is not None:
      with torch.no_grad():
        reference = frozen(data['frames_aug'][:, 1])[-1]
      loss = loss + sde.feature_distance * feature_distance(out['features'][-1], reference)
    loss.backward()
    # The JAX step logs the global gradient norm: one more pass over the gradients.
    torch.linalg.vector_norm(torch.stack(torch._foreach_norm(
        [p.grad for p in params if p.grad is not None])))
    optimizer.step()
    return loss.detach()

  passes = ('grad: encoder+dec6 depth decoder (frame t), pose net x2 (pairs t-1,t and t,t+1); '
            'no_grad: frozen encoder (eval, feature distance); loss: 4-scale reprojection + '
            'automask + smoothness; Adam')
  return Workload(step, dict(student=net), passes, 'configs/sde_cityscapes.py')


def _segment_workload(config, config_name: str, batch: int, width: int, height: int,
                      device: torch.device) -> Workload:
  """segment.make_train_step for config.segment (network, mix, source), as train_step.py's
  segment_setup sets it up: random init, mixing batch of `batch` rows, one source crop per target
  crop (of `candidates` with Matching Geometry Sampling)."""
  seg = config.segment
  seg.update(init='none', mix_batch_size=batch)
  seg.source.batch_size = batch
  _check_full_size(config.model)
  if seg.mix not in ('none', 'pseudo', 'depthmix'):
    raise ValueError(f'segment.mix={seg.mix!r}: torch_steps models none, pseudo and depthmix')
  cross = seg.source
  adapt = cross.enabled
  if adapt and cross.mix not in ('none', 'depthmix'):
    raise ValueError(f'segment.source.mix={cross.mix!r}: torch_steps models none and depthmix')
  multitask = seg.network == 'mtl'
  uses_teacher = seg.mix != 'none' or (adapt and cross.mix != 'none')
  net = (MultiTaskNet if multitask else TransferNet)(config.model, NUM_CLASSES).to(device).train()
  teacher = None
  if uses_teacher:
    # Teacher in train mode (batch-statistics BN, dropout) as the reference (teacher_train_mode).
    teacher = copy.deepcopy(net).train(seg.teacher_train_mode).requires_grad_(False)
  optimizer = build_optimizer(seg.optim, net.groups())
  params = list(net.parameters())

  gen = torch.Generator().manual_seed(0)
  coins = torch.Generator().manual_seed(1)

  def examples(labeled: bool, rows: int = batch, frames: bool = True) -> dict:
    triplets = torch.rand(rows, 3, 3, height, width, generator=gen)
    out = dict(image=triplets[:, 1].clone(), intrinsics=_intrinsics(rows, width, height),
               label=torch.randint(0, NUM_CLASSES, (rows, height, width), generator=gen),
               labeled=torch.full((rows,), labeled),
               depth=torch.rand(rows, 1, height, width, generator=gen))
    if frames:
      out['frames'] = triplets
    return _to(out, device)

  batches = dict(labeled=examples(True), mix=examples(False))
  if adapt:
    batches['source'] = examples(True, batch * (cross.candidates if cross.matching_geometry else 1),
                                 frames=False)
  augment = lambda images, force=False: strong_augment(images, coins, seg.strong_augment, force)
  augment(batches['mix']['image'], force=True)  # both branches' kernels loaded before timing

  def teacher_distribution(mix_batch: dict) -> torch.Tensor:
    """Softmax of the teacher on the unmixed, unaugmented mixing batch; ground truth one-hot on
    labeled rows. -> [B, C, H, W]."""
    with torch.no_grad():
      probs = torch.softmax(teacher.segment(mix_batch['image'])['logits'], 1)
      truth = one_hot_targets(mix_batch['label'], NUM_CLASSES)
      return torch.where(mix_batch['labeled'][:, None, None, None], truth, probs)

  def mix_inputs(probs: torch.Tensor, mix_batch: dict) -> dict:
    """Target-Domain mixing (segment.make_mixing): under multi-task a student pass on the mixing
    frames gives the SDE term and the detached disparity of DepthMix."""
    sde_term, disparity = torch.zeros((), device=device), mix_batch['depth']
    if multitask:
      out = net(mix_batch['frames'])
      sde_term = sde_loss(out['disp'], mix_batch['frames'], mix_batch['intrinsics'],
                          out['pose_prev'], out['pose_next'], config.sde)
      disparity = out['disp'][0].detach()
    with torch.no_grad():
      if seg.mix == 'depthmix':
        depth = normalize_disparity(disparity)
        mask = depthmix_mask(depth, pair_with_next(depth), seg.depthmix_margin)
      else:  # plain pseudo-labels: nothing is mixed
        mask = torch.ones_like(mix_batch['depth'])
      images = mix(mask, mix_batch['image'], pair_with_next(mix_batch['image']))
      pseudo, max_prob = pseudo_labels(mix(mask, probs, pair_with_next(probs)))
      quality = (max_prob >= seg.quality_threshold).float().mean()
      return dict(images=augment(images), pseudo=pseudo, quality=quality, sde_term=sde_term)

  def match_geometry(candidates: dict, target_disparity: torch.Tensor) -> dict:
    """Per target crop the source candidate of least G (segment.match_geometry)."""
    rows = target_disparity.shape[0]
    grouped = {k: v.reshape(rows, -1, *v.shape[1:]) for k, v in candidates.items()}
    g = geometric_difference(target_disparity[:, None], grouped['depth'], *cross.geometry_rows)
    best = torch.argmin(g, 1)
    index = torch.arange(rows, device=device)
    return {k: v[index, best] for k, v in grouped.items()}

  def cross_inputs(source: dict, probs: torch.Tensor, mix_batch: dict) -> dict:
    """Cross-Domain DepthMix of source crop b onto target crop b
    (segment.make_cross_domain_mixing)."""
    with torch.no_grad():
      target_labels, max_prob = pseudo_labels(probs)
      max_prob = torch.where(mix_batch['labeled'][:, None, None], 1.0, max_prob)
      quality = (max_prob >= seg.quality_threshold).float().mean()
      target_depth = normalize_disparity(mix_batch['depth'])
      source_depth = (source['depth'] if cross.disparity == 'reference'
                      else normalize_disparity(source['depth']))
      margin = seg.depthmix_margin
      if cross.margin_flip:
        flip = torch.rand(target_depth.shape[0], device=device) < 0.5  # one sign per pair
        margin = torch.where(flip, -margin, margin)
      mask = depthmix_mask(source_depth, target_depth, margin)
      images = mix(mask, source['image'], mix_batch['image'])
      labels = torch.where(mask[:, 0] > 0.5, source['label'], target_labels)
      weights = mask[:, 0] + (1.0 - mask[:, 0]) * quality
      return dict(images=augment(images), labels=labels, weights=weights)

  count = [0]

  def step():
    optimizer.zero_grad(set_to_none=True)
    labeled = batches['labeled']
    if multitask:
      out = net(labeled['frames'])
      loss = segmentation_loss(out, labeled['label'])
      loss = loss + seg.sde_weight * sde_loss(out['disp'], labeled['frames'],
                                              labeled['intrinsics'], out['pose_prev'],
                                              out['pose_next'], config.sde)
    else:
      loss = segmentation_loss(net.segment(labeled['image']), labeled['label'])
    if uses_teacher:
      probs = teacher_distribution(batches['mix'])
    if seg.mix != 'none':
      mixed = mix_inputs(probs, batches['mix'])
      unlabeled = cross_entropy(net.segment(mixed['images'])['logits'], mixed['pseudo'],
                                reduction=seg.unlabeled_loss)
      loss = loss + seg.sde_weight * mixed['sde_term'] + mixed['quality'] * unlabeled
    if adapt:
      source = batches['source']
      if cross.matching_geometry:
        source = match_geometry(source, batches['mix']['depth'])
      loss = loss + segmentation_loss(net.segment(source['image']), source['label'])
      if cross.mix != 'none':
        mixed = cross_inputs(source, probs, batches['mix'])
        loss = loss + cross_entropy(net.segment(mixed['images'])['logits'], mixed['labels'],
                                    weights=mixed['weights'], reduction=seg.unlabeled_loss)
    loss.backward()
    if seg.optim.clip_norm:
      torch.nn.utils.clip_grad_norm_(params, seg.optim.clip_norm, foreach=True)
    optimizer.step()
    count[0] += 1
    if teacher is not None:
      ema_update(teacher, net, count[0])
    return loss.detach()

  name = 'mtl (encoder+PAD)' if multitask else 'transfer (encoder+dec6+head)'
  grad = [f'{name}{" + pose x2" if multitask else ""} on labeled'
          f'{" frames + SDE loss" if multitask else ""}']
  no_grad = []
  if uses_teacher:
    no_grad.append(f'EMA teacher {name} on mix images')
  if seg.mix != 'none':
    if multitask:
      grad.append(f'{name} + pose x2 on mix frames + SDE loss (detached disparity -> DepthMix)')
    grad.append(f'{name} on {seg.mix} mixed, strongly augmented images (q-weighted CE)')
  if adapt:
    grad.append(f'{name} on source' + (f' (best of {cross.candidates} by G)'
                                       if cross.matching_geometry else ''))
    if cross.mix != 'none':
      grad.append(f'{name} on Cross-Domain DepthMix images (weighted CE)')
  passes = (f'grad: {"; ".join(grad)}' + (f'; no_grad: {"; ".join(no_grad)}' if no_grad else '')
            + f'; SGD momentum {seg.optim.momentum} wd {seg.optim.weight_decay}'
            + (f' clip {seg.optim.clip_norm}' if seg.optim.clip_norm else '')
            + ('; EMA update' if teacher is not None else ''))
  modules = dict(student=net) if teacher is None else dict(student=net, teacher=teacher)
  return Workload(step, modules, passes, config_name)


# The four rows of the reference's runtime table (benchmarks/train_step.py SEGMENT_ROWS).
SEGMENT_ROWS = {
    'transfer': dict(network='transfer', mix='none'),
    'transfer+pseudo': dict(network='transfer', mix='pseudo'),
    'transfer+depthmix': dict(network='transfer', mix='depthmix'),
    'mtl+depthmix': dict(network='mtl', mix='depthmix'),
}


def _segment_row(row: str):
  def build(batch: int, width: int, height: int, device: torch.device) -> Workload:
    config = _config('ssl_cityscapes')
    config.segment.update(SEGMENT_ROWS[row])
    return _segment_workload(config, 'configs/ssl_cityscapes.py', batch, width, height, device)
  return build


def _ssda_workload(batch: int, width: int, height: int, device: torch.device) -> Workload:
  """The full SSDA step of configs/ssda_gta.py's default method."""
  return _segment_workload(_config('ssda_gta'), 'configs/ssda_gta.py', batch, width, height,
                           device)


def _student_workload(batch: int, width: int, height: int, device: torch.device) -> Workload:
  """select_labels.make_depth_student_step: ResNet50 OS16 + dec9, berHu of the level-0 disparity
  against the range-normalised teacher disparity (bottom 10% rows masked), Adam."""
  config = _config('select_cityscapes')
  _check_full_size(config.student_model)
  net = DepthStudent(config.student_model).to(device).train()
  optimizer = build_optimizer(config.select.student.optim, dict(all=list(net.parameters())))
  gen = torch.Generator().manual_seed(0)
  low = 0.01 + 0.04 * torch.rand(batch, generator=gen)
  data = _to(dict(image=torch.rand(batch, 3, height, width, generator=gen),
                  depth=0.05 + 0.95 * torch.rand(batch, 1, height, width, generator=gen),
                  disp_low=low, disp_high=low + 1.0), device)
  kept = torch.arange(height, device=device)[:, None] < int((1.0 - STUDENT_MASKED_BOTTOM) * height)
  mask = kept.float().expand(batch, 1, height, width)

  def step():
    optimizer.zero_grad(set_to_none=True)
    disp = net(data['image'])[0]
    low, high = data['disp_low'][:, None, None, None], data['disp_high'][:, None, None, None]
    extent = high - low
    teacher = torch.where(extent > 0, (data['depth'] - low) / torch.where(extent > 0, extent, 1.0),
                          0.0)
    loss = berhu_loss(disp, teacher, mask)
    loss.backward()
    optimizer.step()
    return loss.detach()

  passes = 'grad: ResNet50 OS16 + dec9 (BN) depth student; loss: berHu on disparity 0; Adam'
  return Workload(step, dict(student=net), passes, 'configs/select_cityscapes.py')


def _inference_workload(kind: str):
  def build(batch: int, width: int, height: int, device: torch.device) -> Workload:
    """train_step.py inference_setup: the segmentation network in evaluation mode (running BN
    statistics), no gradients; 'loss' = mean of the logits."""
    config = _config('ssl_cityscapes')
    _check_full_size(config.model)
    net = (MultiTaskNet if kind == 'mtl' else TransferNet)(config.model, NUM_CLASSES)
    net = net.to(device).eval()
    image = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    image = image.to(device)

    def step():
      with torch.no_grad():
        return net.segment(image)['logits'].mean()

    name = 'mtl (encoder+PAD)' if kind == 'mtl' else 'transfer (encoder+dec6+head)'
    passes = f'no_grad, eval: {name} on images'
    return Workload(step, dict(network=net), passes, 'configs/ssl_cityscapes.py', trains=False)
  return build


WORKLOADS = {
    'sde': _sde_workload,
    **{f'segment:{row}': _segment_row(row) for row in SEGMENT_ROWS},
    'ssda': _ssda_workload,
    'student': _student_workload,
    'inference:transfer': _inference_workload('transfer'),
    'inference:mtl': _inference_workload('mtl'),
}


def default_device() -> torch.device:
  return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def build(workload: str, batch: int, width: int, height: int,
          device: torch.device | None = None) -> Workload:
  """A workload's networks, optimiser and random inputs on `device` (default: CUDA if present)."""
  if workload not in WORKLOADS:
    raise ValueError(f'workload {workload!r}: expected one of {sorted(WORKLOADS)}')
  torch.manual_seed(0)
  return WORKLOADS[workload](batch, width, height, device or default_device())


def run(workload: str, batch: int = 2, width: int = 512, height: int = 512, repeats: int = 3,
        warmup: int = 1, device: torch.device | None = None) -> dict:
  """Builds the workload, runs `warmup` steps, then times `repeats` steps -> the report dict."""
  device = device or default_device()
  cuda = device.type == 'cuda'
  if cuda:
    # Autotuned convolution algorithms for the fixed shapes: XLA autotunes when it compiles.
    torch.backends.cudnn.benchmark = True
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  work = build(workload, batch, width, height, device)
  for _ in range(warmup):
    loss = work.step()
  sync()
  times = []
  for _ in range(repeats):
    sync()
    start = time.perf_counter()
    loss = work.step()
    sync()
    times.append(time.perf_counter() - start)
  times.sort()
  median = times[len(times) // 2]
  trained = work.modules.get('student', work.modules.get('network'))
  report = dict(
      benchmark='torch_step', workload=workload, config=work.config, batch=batch,
      size=[width, height], framework='torch', version=torch.__version__,
      device=torch.cuda.get_device_name(device) if cuda else 'cpu', dtype='float32',
      threads=torch.get_num_threads(), machine=common.machine(), warmup=warmup, repeats=repeats,
      parameters=sum(p.numel() for p in trained.parameters()),
      step_ms_min=1e3 * times[0], step_ms_median=1e3 * median, step_ms_max=1e3 * times[-1],
      images_per_s=batch / median, peak_rss_mib=common.peak_rss_mib())
  if cuda:
    report.update(cuda_peak_mib=torch.cuda.max_memory_allocated(device) / 2**20,
                  tf32=dict(matmul=torch.backends.cuda.matmul.allow_tf32,
                            cudnn=torch.backends.cudnn.allow_tf32),
                  cudnn_benchmark=torch.backends.cudnn.benchmark)
  report.update(loss=float(loss), passes=work.passes)
  return report


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workload', default='sde', choices=sorted(WORKLOADS))
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--size', default='512x512', help='WIDTHxHEIGHT')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--threads', type=int, default=0, help='0: torch default')
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  if args.threads > 0:
    torch.set_num_threads(args.threads)
  width, height = common.parse_size(args.size)
  common.emit(run(args.workload, args.batch, width, height, args.repeats, args.warmup), args.out)


if __name__ == '__main__':
  main()
