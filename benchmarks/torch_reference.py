"""PyTorch formulations of the reference networks (SPEC section 3), independent of the Flax code.

They serve two purposes: the parity tests convert their state dicts with our importers and compare
outputs with the Flax modules, and benchmarks time them beside the Flax networks. So they are the
real full-size architectures, written from the SPEC and the reference's behaviour, and their
state-dict keys are the ones the released checkpoints use:
- ResNets: torchvision's names (conv1, bn1, layer1.0.conv1, layer1.0.downsample.0, fc);
  `ResnetEncoder` wraps one as `.encoder` (monodepth2's encoder.pth:
  `encoder.layer1.0.conv1.weight`).
- `DepthDecoder`: monodepth2's module list `decoder.<idx>` (blocks of level i = n..0 in the order
  upconv(i,0), skip_proj(i) (parameter-free when i > 0), upconv(i,1); then one disparity conv per
  scale): `decoder.2.block.0.conv.weight`, `decoder.14.conv.weight`; the ASPP block as the
  reference's model_parts.ASPP (`decoder.0.convs.<k>.<j>`, `decoder.0.project.<j>`).
- `PoseDecoder`: monodepth2's `net.<i>` (squeeze, pose 0, pose 1, pose 2).
- `PAD`: the reference's `depth_dec`, `seg_dec`, `sa_depth`, `sa_seg` (`conv`, `attention`),
  `seg_intermediate_head.0`, `seg_final_head.0`.
- `TransferSegmentationHead`: the reference's JointSegDepthDecoder head (`project.seg9.0`,
  `head.2`); `JointSegDepthDecoder` adds the decoder as `unet_dec`.

Tensors are NCHW, images in [0, 1]. Only torch is needed (torchvision does not import beside
torch 2.13 here, so nothing of it is used).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Output stride -> torchvision's replace_stride_with_dilation for layer2..layer4.
REPLACE_STRIDE_WITH_DILATION = {
    32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
RESNET_LAYERS = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
                 50: ('bottleneck', (3, 4, 6, 3)), 101: ('bottleneck', (3, 4, 23, 3))}
# Decoder designs of SPEC section 3: channels of levels 0..4, ASPP rates, BN in ConvBlocks.
DECODER_DESIGNS = {
    'dec6': dict(num_ch_dec=(64, 128, 128, 256, 256), aspp_rates=(6, 12, 18), batch_norm=False),
    'dec11': dict(num_ch_dec=(16, 32, 64, 128, 256), aspp_rates=(3, 6, 9), batch_norm=False),
    'dec9': dict(num_ch_dec=(64, 64, 128, 128, 256), aspp_rates=(6, 12, 18), batch_norm=True),
}


def count_parameters(module: nn.Module) -> int:
  """Trainable weights (BN scale and bias included, running statistics not)."""
  return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# ResNet (torchvision layout)


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None,
               dilation: int = 1):
    super().__init__()
    if dilation > 1:
      raise NotImplementedError('BasicBlock has no dilation (as torchvision)')
    self.conv1 = _conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = _conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  """torchvision's ResNet v1.5 bottleneck: stride and dilation on the 3x3 convolution."""
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None,
               dilation: int = 1):
    super().__init__()
    self.conv1 = _conv1x1(inplanes, planes)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3x3(planes, planes, stride, dilation)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = _conv1x1(planes, planes * self.expansion)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class ResNet(nn.Module):
  """torchvision's ResNet: conv1 (3 * num_input_images channels), bn1, maxpool, layer1..4,
  avgpool, fc (left out with num_classes=None, as the reference's encoders after loading)."""

  def __init__(self, depth: int, replace_stride_with_dilation: Sequence[bool] = (False,) * 3,
               num_input_images: int = 1, num_classes: int | None = 1000):
    super().__init__()
    kind, layers = RESNET_LAYERS[depth]
    block = {'basic': BasicBlock, 'bottleneck': Bottleneck}[kind]
    self.inplanes, self.dilation = 64, 1
    self.conv1 = nn.Conv2d(3 * num_input_images, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], 2, replace_stride_with_dilation[0])
    self.layer3 = self._make_layer(block, 256, layers[2], 2, replace_stride_with_dilation[1])
    self.layer4 = self._make_layer(block, 512, layers[3], 2, replace_stride_with_dilation[2])
    if num_classes is not None:
      self.avgpool = nn.AdaptiveAvgPool2d(1)
      self.fc = nn.Linear(512 * block.expansion, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

  def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False):
    previous_dilation = self.dilation
    if dilate:
      self.dilation *= stride
      stride = 1
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                 nn.BatchNorm2d(planes * block.expansion))
    # The first block of a dilated stage keeps the previous dilation (torchvision).
    modules = [block(self.inplanes, planes, stride, downsample, previous_dilation)]
    self.inplanes = planes * block.expansion
    modules += [block(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
    return nn.Sequential(*modules)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


class ResnetEncoder(nn.Module):
  """monodepth2's ResnetEncoder: (x - 0.45) / 0.225, then the five features
  f0 = relu(bn1(conv1)), f1 = layer1(maxpool(f0)), f2..f4 = layer2..layer4."""

  def __init__(self, depth: int, output_stride: int = 32, num_input_images: int = 1):
    super().__init__()
    self.encoder = ResNet(depth, REPLACE_STRIDE_WITH_DILATION[output_stride], num_input_images,
                          num_classes=None)
    expansion = 1 if RESNET_LAYERS[depth][0] == 'basic' else 4
    self.num_ch_enc = [64] + [c * expansion for c in (64, 128, 256, 512)]

  def forward(self, x) -> list[torch.Tensor]:
    e = self.encoder
    x = (x - 0.45) / 0.225
    f0 = e.relu(e.bn1(e.conv1(x)))
    f1 = e.layer1(e.maxpool(f0))
    f2 = e.layer2(f1)
    f3 = e.layer3(f2)
    f4 = e.layer4(f3)
    return [f0, f1, f2, f3, f4]


# ---------------------------------------------------------------------------------------------
# Decoder (monodepth2 with an ASPP input block)


class ASPP(nn.Module):
  """The reference's ASPP (torchvision DeepLabV3 parts): convs = [1x1 branch, one 3x3 atrous
  branch per rate, image pooling]; each conv without bias + BN + ReLU; project = 1x1 + BN + ReLU +
  Dropout(0.5)."""

  def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256):
    super().__init__()

    def conv_bn_relu(conv):
      return [conv, nn.BatchNorm2d(out_channels), nn.ReLU()]

    branches = [nn.Sequential(*conv_bn_relu(nn.Conv2d(in_channels, out_channels, 1, bias=False)))]
    for rate in atrous_rates:
      branches.append(nn.Sequential(*conv_bn_relu(nn.Conv2d(
          in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False))))
    branches.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(
        nn.Conv2d(in_channels, out_channels, 1, bias=False))))
    self.convs = nn.ModuleList(branches)
    self.project = nn.Sequential(
        *conv_bn_relu(nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False)),
        nn.Dropout(0.5))

  def forward(self, x):
    outputs = [branch(x) for branch in self.convs[:-1]]
    pooled = self.convs[-1](x)
    outputs.append(F.interpolate(pooled, size=x.shape[-2:], mode='bilinear', align_corners=False))
    return self.project(torch.cat(outputs, 1))


class Conv3x3(nn.Module):
  """Reflection pad 1 + 3x3 conv with bias."""

  def __init__(self, in_channels: int, out_channels: int):
    super().__init__()
    self.pad = nn.ReflectionPad2d(1)
    self.conv = nn.Conv2d(in_channels, out_channels, 3)

  def forward(self, x):
    return self.conv(self.pad(x))


class ConvBlock(nn.Module):
  """Conv3x3, BN (dec9) or nothing, ELU."""

  def __init__(self, in_channels: int, out_channels: int, bn: bool = False):
    super().__init__()
    self.block = nn.Sequential(Conv3x3(in_channels, out_channels),
                               nn.BatchNorm2d(out_channels) if bn else nn.Identity(), nn.ELU())

  def forward(self, x):
    return self.block(x)


class DepthDecoder(nn.Module):
  """monodepth2's decoder with ASPP at the deepest level; `scales` = levels with disparity heads
  (() for a segmentation decoder). forward can run a subset of levels starting from a given x
  (PAD-Net)."""

  def __init__(self, num_ch_enc: Sequence[int],
               num_ch_dec: Sequence[int] = (64, 128, 128, 256, 256),
               aspp_rates: Sequence[int] = (6, 12, 18), batch_norm: bool = False,
               scales: Sequence[int] = (0, 1, 2, 3)):
    super().__init__()
    self.num_ch_enc, self.num_ch_dec = list(num_ch_enc), list(num_ch_dec)
    self.n_upconv = len(num_ch_dec) - 1
    self.scales = tuple(scales)
    convs = OrderedDict()
    for i in range(self.n_upconv, -1, -1):
      cin = self.num_ch_enc[-1] if i == self.n_upconv else self.num_ch_dec[i + 1]
      if i == self.n_upconv:
        convs[('upconv', i, 0)] = ASPP(cin, aspp_rates, self.num_ch_dec[i])
      else:
        convs[('upconv', i, 0)] = ConvBlock(cin, self.num_ch_dec[i], batch_norm)
      cin = self.num_ch_dec[i]
      if i > 0:
        cin += self.num_ch_enc[i - 1]
        # Parameter-free, but it holds an index of the module list, as in the reference.
        convs[('skip_proj', i)] = nn.Identity()
      convs[('upconv', i, 1)] = ConvBlock(cin, self.num_ch_dec[i], batch_norm)
    for s in self.scales:
      convs[('dispconv', s)] = Conv3x3(self.num_ch_dec[s], 1)
    self.convs = convs  # a plain dict: the parameters are registered once, in `decoder`.
    self.decoder = nn.ModuleList(list(convs.values()))

  def forward(self, features: Sequence[torch.Tensor], x: torch.Tensor | None = None,
              exec_layer: Sequence[int] | None = None) -> dict:
    """features f0..f4 -> {('upconv', i): level output, ('disp', s): disparity}."""
    x = features[-1] if x is None else x
    levels = range(self.n_upconv, -1, -1) if exec_layer is None else exec_layer
    outputs = {}
    for i in levels:
      x = self.convs[('upconv', i, 0)](x)
      if i == 0 or x.shape[-1] < features[i - 1].shape[-1]:
        x = F.interpolate(x, scale_factor=2, mode='nearest')
      if i > 0:
        x = torch.cat([x, self.convs[('skip_proj', i)](features[i - 1])], 1)
      x = self.convs[('upconv', i, 1)](x)
      outputs[('upconv', i)] = x
      if i in self.scales:
        outputs[('disp', i)] = torch.sigmoid(self.convs[('dispconv', i)](x))
    return outputs


def depth_decoder(name: str, num_ch_enc: Sequence[int], scales: Sequence[int] = (0, 1, 2, 3)):
  """A named decoder design of SPEC section 3 ('dec6', 'dec9', 'dec11')."""
  return DepthDecoder(num_ch_enc, scales=scales, **DECODER_DESIGNS[name])


# ---------------------------------------------------------------------------------------------
# Segmentation heads


class TransferSegmentationHead(nn.Module):
  """The reference's JointSegDepthDecoder head for layers=[9], no intermediate conv: level-0
  features -> 1x1 conv 64 -> 64 without bias -> 1x1 conv -> classes."""

  def __init__(self, in_channels: int, num_classes: int, features: int = 64):
    super().__init__()
    self.project = nn.ModuleDict({'seg9': nn.Sequential(nn.Conv2d(in_channels, features, 1,
                                                                  bias=False))})
    self.head = nn.Sequential(nn.Identity(), nn.Identity(), nn.Conv2d(features, num_classes, 1))

  def forward(self, x):
    return self.head(self.project['seg9'](x))


class JointSegDepthDecoder(TransferSegmentationHead):
  """Segmentation decoder for transfer learning: a decoder without disparity heads (`unet_dec`,
  initialised from the SDE depth decoder) + the transfer head (SPEC: 22,066,771 parameters for
  dec6).
  """

  def __init__(self, num_ch_enc: Sequence[int], num_classes: int, design: str = 'dec6'):
    dec = depth_decoder(design, num_ch_enc, scales=())
    super().__init__(dec.num_ch_dec[0], num_classes)
    self.unet_dec = dec

  def forward(self, features):
    return super().forward(self.unet_dec(features)[('upconv', 0)])


# ---------------------------------------------------------------------------------------------
# PAD-Net


class SelfAttention(nn.Module):
  """conv3x3(x) * sigmoid(attention3x3(x)); no bias, zero padding; attention zero-initialised."""

  def __init__(self, in_channels: int, out_channels: int):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    self.attention = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    nn.init.zeros_(self.attention.weight)

  def forward(self, x):
    return self.conv(x) * torch.sigmoid(self.attention(x))


class PAD(nn.Module):
  """PAD-Net multi-task decoder (SPEC section 3). Unlike the reference, the segmentation decoder
  holds no disparity heads (the reference keeps 5,188 unused parameters of them)."""

  def __init__(self, num_ch_enc: Sequence[int], num_classes: int, design: str = 'dec6',
               distill_level: int = 2):
    super().__init__()
    self.depth_dec = depth_decoder(design, num_ch_enc)
    self.seg_dec = depth_decoder(design, num_ch_enc, scales=())
    self.distill_level = distill_level
    ch = self.depth_dec.num_ch_dec[distill_level]
    self.sa_depth = SelfAttention(ch, ch)  # depth features -> segmentation branch
    self.sa_seg = SelfAttention(ch, ch)  # segmentation features -> depth branch
    self.seg_intermediate_head = nn.Sequential(nn.Conv2d(ch, num_classes, 1))
    self.seg_final_head = nn.Sequential(nn.Conv2d(self.depth_dec.num_ch_dec[0], num_classes, 1))

  def forward(self, features) -> dict:
    """-> {'semantics', 'intermediate_semantics' (at the distillation level's resolution),
    ('disp', s), ('upconv', i) of the depth decoder}."""
    n = self.depth_dec.n_upconv
    first = list(range(n, self.distill_level - 1, -1))
    second = list(range(self.distill_level - 1, -1, -1))
    key = ('upconv', self.distill_level)
    depth = self.depth_dec(features, exec_layer=first)
    seg = self.seg_dec(features, exec_layer=first)
    intermediate = self.seg_intermediate_head(seg[key])
    seg_in = seg[key] + self.sa_depth(depth[key])
    depth_in = depth[key] + self.sa_seg(seg[key])
    depth.update(self.depth_dec(features, x=depth_in, exec_layer=second))
    seg = self.seg_dec(features, x=seg_in, exec_layer=second)
    return {**depth, 'semantics': self.seg_final_head(seg[('upconv', 0)]),
            'intermediate_semantics': intermediate}


# ---------------------------------------------------------------------------------------------
# Pose


class PoseDecoder(nn.Module):
  """monodepth2's PoseDecoder with num_input_features=1, num_frames_to_predict_for=2."""

  def __init__(self, in_channels: int = 512, num_frames: int = 2, scale: float = 0.01):
    super().__init__()
    self.num_frames, self.scale = num_frames, scale
    self.convs = OrderedDict()
    self.convs['squeeze'] = nn.Conv2d(in_channels, 256, 1)
    self.convs[('pose', 0)] = nn.Conv2d(256, 256, 3, 1, 1)
    self.convs[('pose', 1)] = nn.Conv2d(256, 256, 3, 1, 1)
    self.convs[('pose', 2)] = nn.Conv2d(256, 6 * num_frames, 1)
    self.net = nn.ModuleList(list(self.convs.values()))

  def forward(self, f4):
    """[B, C, h, w] -> (axisangle, translation), each [B, num_frames, 1, 3]."""
    x = torch.relu(self.convs['squeeze'](f4))
    x = torch.relu(self.convs[('pose', 0)](x))
    x = torch.relu(self.convs[('pose', 1)](x))
    x = self.convs[('pose', 2)](x).mean(3).mean(2)
    x = self.scale * x.view(-1, self.num_frames, 1, 6)
    return x[..., :3], x[..., 3:]


# ---------------------------------------------------------------------------------------------
# Composites for benchmarks


class MTLModel(nn.Module):
  """Segmentation with multi-task SDE: ResNet101 output stride 16 + PAD-Net."""

  def __init__(self, num_classes: int = 19, depth: int = 101, output_stride: int = 16,
               design: str = 'dec6'):
    super().__init__()
    self.encoder = ResnetEncoder(depth, output_stride)
    self.mtl_decoder = PAD(self.encoder.num_ch_enc, num_classes, design)

  def forward(self, image):
    return self.mtl_decoder(self.encoder(image))


class SDEModel(nn.Module):
  """Self-supervised depth: depth encoder + decoder, and the pose network on frame pairs."""

  def __init__(self, depth: int = 101, output_stride: int = 16, design: str = 'dec6'):
    super().__init__()
    self.encoder = ResnetEncoder(depth, output_stride)
    self.depth = depth_decoder(design, self.encoder.num_ch_enc)
    self.pose_encoder = ResnetEncoder(18, 32, num_input_images=2)
    self.pose = PoseDecoder(self.pose_encoder.num_ch_enc[-1])

  def forward(self, image, pair):
    """image [B, 3, H, W]; pair [B, 6, H, W] (two frames in temporal order)."""
    outputs = self.depth(self.encoder(image))
    axisangle, translation = self.pose(self.pose_encoder(pair)[-1])
    return {**outputs, 'axisangle': axisangle, 'translation': translation}
