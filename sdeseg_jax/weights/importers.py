"""PyTorch state dicts -> Flax variable trees ({'params': ..., 'batch_stats': ...}).

Sources:
- torchvision ImageNet ResNets (`conv1.weight`, `layer1.0.downsample.1.running_mean`, `fc.*`);
  optionally with a 6-channel conv1 for the pose network (monodepth2: the 3-channel kernel
  concatenated num_input_images times along the input channels and divided by that number).
- the reference's released SDE checkpoints (a folder with encoder.pth, depth.pth, pose_encoder.pth,
  pose.pth; monodepth2 naming), into the SDE composite's components `encoder` (ResNet101 OS16),
  `depth_decoder` (dec6), `pose_encoder` (ResNet18, 6 channels) and `pose_decoder`.
- the other reference modules (PAD-Net, transfer segmentation head) for parity tests.

Key mapping (torch module -> Flax module; `weight` of a conv -> `kernel` OIHW -> HWIO, `bias` as is;
BN `weight`/`bias` -> params `scale`/`bias`, `running_mean`/`running_var` -> batch_stats
`mean`/`var`, `num_batches_tracked` dropped):
  ResNet      conv1, bn1 -> conv1, bn1;  layerS.B.{convK,bnK} -> layerS_B/{convK,bnK};
              layerS.B.downsample.{0,1} -> layerS_B/{downsample_conv,downsample_bn}; fc.* dropped
  Decoder     decoder.<idx> in monodepth2's module-list order (see `decoder_module_table`):
              upconv (i, j): .block.0.conv -> blocks_level{i}_{j}/conv, .block.1 -> .../bn;
              ASPP (level 4, 0): .convs.K.{0,1} -> branchK_{conv,bn}, .convs.<last>.{1,2} ->
              pool_{conv,bn}, .project.{0,1} -> project_{conv,bn};
              dispconv s: .conv -> heads_disp{s}/conv
  Pose        net.{0,1,2,3} -> squeeze, pose0, pose1, pose2
  PAD         depth_dec -> depth_decoder, seg_dec -> seg_decoder (its disparity heads dropped),
              sa_depth.{conv,attention} -> distill_depth_to_seg/{conv,gate},
              sa_seg.{conv,attention} -> distill_seg_to_depth/{conv,gate},
              seg_intermediate_head.0 -> side_classifier, seg_final_head.0 -> classifier
  Seg head    project.seg9.0 -> project, head.2 -> classifier (unet_dec -> the decoder)

Nothing here imports torch at module level: only `load_state_dict` (reading .pth files) needs it.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sdeseg_jax.models import decoder as decoder_lib
from sdeseg_jax.models import padnet as padnet_lib
from sdeseg_jax.models import pose as pose_lib
from sdeseg_jax.models import resnet as resnet_lib
from sdeseg_jax.weights import report as report_lib

Variables = dict[str, dict[str, Any]]
# A rename maps a torch module path (the key without its last component) to
# (Flax module path, kind), IGNORE (dropped on purpose) or None (no rule: unexpected).
IGNORE = 'ignore'
Rename = Callable[[str], 'tuple[tuple[str, ...], str] | str | None']

SDE_FILES = {'encoder': 'encoder.pth', 'depth_decoder': 'depth.pth',
             'pose_encoder': 'pose_encoder.pth', 'pose_decoder': 'pose.pth'}
# The same components inside the reference's whole-model checkpoints (Trainer.save_resume's
# best_model.pkl, or its released best_model_without_opt.pkl): 'models.<name>.' key prefixes.
SDE_MODEL_PREFIXES = {'encoder': 'models.encoder.', 'depth_decoder': 'models.depth.',
                      'pose_encoder': 'models.pose_encoder.', 'pose_decoder': 'models.pose.'}


# ---------------------------------------------------------------------------------------------
# Reading


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
  """A .pth state dict as {key: numpy array} (non-tensor entries such as monodepth2's 'height' kept
  as they are; the converters ignore them). Reads with weights_only=True."""
  import torch  # optional dependency: only reading PyTorch files needs it
  state = torch.load(os.fspath(path), map_location='cpu', weights_only=True)
  return {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
          for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# Generic conversion


def _conv_kernel(w: np.ndarray) -> np.ndarray:
  """OIHW -> HWIO."""
  return np.transpose(w, (2, 3, 1, 0))


_LEAVES = {  # kind -> torch leaf -> (collection or None to drop, Flax leaf, transform)
    'conv': {'weight': ('params', 'kernel', _conv_kernel), 'bias': ('params', 'bias', None)},
    'bn': {'weight': ('params', 'scale', None), 'bias': ('params', 'bias', None),
           'running_mean': ('batch_stats', 'mean', None),
           'running_var': ('batch_stats', 'var', None),
           'num_batches_tracked': (None, None, None)},
}


def convert_state_dict(state_dict: Mapping[str, Any], rename: Rename
                       ) -> tuple[Variables, list[str], list[str]]:
  """Applies `rename` to every key -> (variables, unmapped source keys, ignored source keys).

  Non-array entries (monodepth2's 'height', 'width', 'use_stereo') are ignored. Two source keys
  landing on one Flax leaf is an error.
  """
  variables: Variables = {'params': {}, 'batch_stats': {}}
  unmapped, ignored, origin = [], [], {}
  for key, value in state_dict.items():
    if not isinstance(value, np.ndarray):
      ignored.append(key)
      continue
    module, _, leaf = key.rpartition('.')
    target = rename(module)
    if target == IGNORE:
      ignored.append(key)
      continue
    if target is None or leaf not in _LEAVES[target[1]]:
      unmapped.append(key)
      continue
    path, kind = target
    collection, name, transform = _LEAVES[kind][leaf]
    if collection is None:
      ignored.append(key)
      continue
    full = (collection,) + tuple(path) + (name,)
    if full in origin:
      raise ValueError(f'{key} and {origin[full]} both map to {"/".join(full)}')
    origin[full] = key
    array = np.array(value, np.float32)  # a copy: never alias the source's (torch's) memory
    node = variables
    for part in full[:-1]:
      node = node.setdefault(part, {})
    node[full[-1]] = transform(array) if transform else array
  return variables, unmapped, ignored


def _prefixed(prefix: str, rename: Rename, path: tuple[str, ...] = ()) -> Rename:
  """A rename for modules under `prefix.` whose Flax module sits under `path`."""
  def fn(module: str):
    if prefix and not module.startswith(prefix + '.'):
      return None
    target = rename(module[len(prefix) + 1:] if prefix else module)
    if target is None or target == IGNORE:
      return target
    return (path + target[0], target[1])
  return fn


def _first_of(*renames: Rename) -> Rename:
  def fn(module: str):
    for r in renames:
      target = r(module)
      if target is not None:
        return target
    return None
  return fn


# ---------------------------------------------------------------------------------------------
# Module renames


def resnet_rename(module: str):
  """torchvision ResNet module path -> our ResNet's (fc dropped)."""
  if module == 'conv1':
    return ('conv1',), 'conv'
  if module == 'bn1':
    return ('bn1',), 'bn'
  if module == 'fc':
    return IGNORE
  m = re.fullmatch(r'layer(\d)\.(\d+)\.(conv\d|bn\d)', module)
  if m:
    return (f'layer{m[1]}_{m[2]}', m[3]), 'conv' if m[3].startswith('conv') else 'bn'
  m = re.fullmatch(r'layer(\d)\.(\d+)\.downsample\.([01])', module)
  if m:
    return (f'layer{m[1]}_{m[2]}', ('downsample_conv', 'downsample_bn')[int(m[3])]), \
        ('conv', 'bn')[int(m[3])]
  return None


def decoder_module_table(n_upconv: int = 4,
                         scales: Sequence[int] = (0, 1, 2, 3)) -> dict[int, tuple]:
  """monodepth2's `decoder` module-list index -> ('upconv', level, j) | ('skip_proj', level) |
  ('dispconv', scale): levels n..0 each add upconv (i, 0), skip_proj (i) when i > 0 (an Identity
  without parameters, but it takes an index), upconv (i, 1); then one dispconv per scale, in the
  order of `scales`."""
  table, idx = {}, 0
  for i in range(n_upconv, -1, -1):
    table[idx] = ('upconv', i, 0)
    idx += 1
    if i > 0:
      table[idx] = ('skip_proj', i)
      idx += 1
    table[idx] = ('upconv', i, 1)
    idx += 1
  for s in scales:
    table[idx] = ('dispconv', s)
    idx += 1
  return table


def decoder_rename(n_upconv: int = 4, scales: Sequence[int] = (0, 1, 2, 3),
                   disparity_heads: bool = True, aspp_branches: int = 5) -> Rename:
  """DepthDecoder (`decoder.<idx>...`) -> our Decoder (`blocks_level{i}_{j}`, `heads_disp{s}`).

  aspp_branches: length of the ASPP's `convs` list (1x1 + rates + pooling; the last is pooling).
  disparity_heads=False drops the dispconv weights (the reference's PAD segmentation decoder keeps
  unused ones).
  """
  table = decoder_module_table(n_upconv, scales)

  def fn(module: str):
    m = re.fullmatch(r'decoder\.(\d+)\.(.+)', module)
    if not m or int(m[1]) not in table:
      return None
    entry, rest = table[int(m[1])], m[2]
    if entry[0] == 'dispconv':
      if rest != 'conv':
        return None
      return IGNORE if not disparity_heads else ((f'heads_disp{entry[1]}', 'conv'), 'conv')
    if entry[0] != 'upconv':
      return None
    block = f'blocks_level{entry[1]}_{entry[2]}'
    if entry[1:] == (n_upconv, 0):  # ASPP
      m = re.fullmatch(r'convs\.(\d+)\.(\d)', rest)
      if m:
        k, j = int(m[1]), int(m[2])
        if k == aspp_branches - 1:  # image pooling: AdaptiveAvgPool2d, conv, BN, ReLU
          name = {1: 'conv', 2: 'bn'}.get(j)
          return None if name is None else ((block, f'pool_{name}'), name)
        if k < aspp_branches - 1 and j in (0, 1):
          name = ('conv', 'bn')[j]
          return (block, f'branch{k}_{name}'), name
        return None
      m = re.fullmatch(r'project\.([01])', rest)
      if m:
        name = ('conv', 'bn')[int(m[1])]
        return (block, f'project_{name}'), name
      return None
    if rest == 'block.0.conv':
      return (block, 'conv'), 'conv'
    if rest == 'block.1':
      return (block, 'bn'), 'bn'
    return None
  return fn


def _aspp_branches(state_dict: Mapping[str, Any], prefix: str = '') -> int:
  """Number of ASPP branches (the pooling branch is the last) found in a decoder state dict."""
  pattern = re.compile(re.escape(prefix) + r'decoder\.0\.convs\.(\d+)\.')
  found = {int(m[1]) for k in state_dict if (m := pattern.match(k))}
  return max(found) + 1 if found else 5


def pose_decoder_rename(module: str):
  """monodepth2 PoseDecoder (`net.<i>`) -> our PoseDecoder."""
  m = re.fullmatch(r'net\.([0-3])', module)
  if not m:
    return None
  return (('squeeze', 'pose0', 'pose1', 'pose2')[int(m[1])],), 'conv'


def _fixed(mapping: Mapping[str, str]) -> Rename:
  return lambda module: ((mapping[module],), 'conv') if module in mapping else None


# ---------------------------------------------------------------------------------------------
# Converters (no shape check; the import_* functions below check against the Flax modules)


def convert_resnet(state_dict: Mapping[str, Any], prefix: str = '', num_input_images: int = 1
                   ) -> tuple[Variables, list[str], list[str]]:
  """torchvision ResNet state dict (keys under `prefix.`, e.g. 'encoder') -> our ResNet.

  num_input_images > 1 with a 3-channel conv1 builds the multi-frame conv1 as monodepth2:
  the kernel repeated along input channels and divided by num_input_images.
  """
  variables, unmapped, ignored = convert_state_dict(state_dict, _prefixed(prefix, resnet_rename))
  kernel = variables['params'].get('conv1', {}).get('kernel')
  if num_input_images > 1 and kernel is not None and kernel.shape[2] == 3:
    variables['params']['conv1']['kernel'] = (
        np.concatenate([kernel] * num_input_images, axis=2) / num_input_images)
  return variables, unmapped, ignored


def convert_decoder(state_dict: Mapping[str, Any], prefix: str = '',
                    scales: Sequence[int] = (0, 1, 2, 3), disparity_heads: bool = True,
                    n_upconv: int = 4) -> tuple[Variables, list[str], list[str]]:
  """monodepth2/reference DepthDecoder state dict -> our Decoder."""
  rename = decoder_rename(n_upconv, scales, disparity_heads, _aspp_branches(
      state_dict, prefix + '.' if prefix else ''))
  return convert_state_dict(state_dict, _prefixed(prefix, rename))


def convert_pose_decoder(state_dict: Mapping[str, Any], prefix: str = ''
                         ) -> tuple[Variables, list[str], list[str]]:
  """monodepth2 PoseDecoder state dict -> our PoseDecoder."""
  return convert_state_dict(state_dict, _prefixed(prefix, pose_decoder_rename))


def convert_padnet(state_dict: Mapping[str, Any], scales: Sequence[int] = (0, 1, 2, 3),
                   prefix: str = '') -> tuple[Variables, list[str], list[str]]:
  """The reference's PAD (`mtl_decoder` of its model) -> our PADNet. The segmentation decoder's
  disparity heads, which the reference keeps but never uses, are dropped."""
  pre = prefix + '.' if prefix else ''
  depth = decoder_rename(4, scales, True, _aspp_branches(state_dict, pre + 'depth_dec.'))
  seg = decoder_rename(4, scales, False, _aspp_branches(state_dict, pre + 'seg_dec.'))
  heads = _fixed({'sa_depth.conv': 'distill_depth_to_seg',
                  'sa_depth.attention': 'distill_depth_to_seg',
                  'sa_seg.conv': 'distill_seg_to_depth', 'sa_seg.attention': 'distill_seg_to_depth',
                  'seg_intermediate_head.0': 'side_classifier', 'seg_final_head.0': 'classifier'})

  def distill(module: str):
    target = heads(module)
    if target is None or not module.startswith('sa_'):
      return target
    return (target[0] + (('gate',) if module.endswith('attention') else ('conv',)), 'conv')

  rename = _first_of(_prefixed('depth_dec', depth, ('depth_decoder',)),
                     _prefixed('seg_dec', seg, ('seg_decoder',)), distill)
  return convert_state_dict(state_dict, _prefixed(prefix, rename))


def convert_segmentation_head(state_dict: Mapping[str, Any], prefix: str = ''
                              ) -> tuple[Variables, list[str], list[str]]:
  """The reference's transfer head (`project.seg9.0`, `head.2`) -> our SegmentationHead. Keys of a
  whole JointSegDepthDecoder are accepted; its `unet_dec.*` are ignored here (convert them with
  convert_decoder(prefix='unet_dec', disparity_heads=False))."""
  head = _fixed({'project.seg9.0': 'project', 'head.2': 'classifier'})
  rename = _first_of(lambda m: IGNORE if m.startswith('unet_dec.') else None, head)
  return convert_state_dict(state_dict, _prefixed(prefix, rename))


def convert_joint_seg_depth_decoder(state_dict: Mapping[str, Any]
                                    ) -> dict[str, tuple[Variables, list[str], list[str]]]:
  """The reference's JointSegDepthDecoder (transfer segmentation decoder) -> {'decoder': our
  Decoder without disparity heads, 'head': our SegmentationHead}, each as convert_state_dict
  returns."""
  decoder_part = {k: v for k, v in state_dict.items() if k.startswith('unet_dec.')}
  head_part = {k: v for k, v in state_dict.items() if not k.startswith('unet_dec.')}
  return {'decoder': convert_decoder(decoder_part, 'unet_dec', disparity_heads=False),
          'head': convert_segmentation_head(head_part)}


# ---------------------------------------------------------------------------------------------
# Expected trees from the Flax modules


def expected_variables(module, *args) -> Variables:
  """Shapes of module.init(key, *args, train=False), computed abstractly (no FLOPs)."""
  return jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, train=False), *args)


def _image(channels: int) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((1, 64, 64, channels), jnp.float32)


def expected_resnet(depth: int, output_stride: int = 32, num_input_images: int = 1) -> Variables:
  return expected_variables(resnet_lib.ResNet(depth, output_stride), _image(3 * num_input_images))


def _features(enc_channels: Sequence[int]) -> list[jax.ShapeDtypeStruct]:
  """Encoder features f0..f4 of a 64x64 image at output stride 16 (parameter shapes do not
  depend on the output stride)."""
  return [jax.ShapeDtypeStruct((1, s, s, c), jnp.float32)
          for s, c in zip((32, 16, 8, 4, 4), enc_channels)]


def encoder_channels(depth: int) -> tuple[int, ...]:
  return resnet_lib.ResNet(depth).channels


def expected_decoder(design: str = 'dec6', enc_channels: Sequence[int] = (64, 256, 512, 1024, 2048),
                     disparity_levels: Sequence[int] = (0, 1, 2, 3)) -> Variables:
  module = decoder_lib.Decoder(**decoder_lib.DECODERS[design],
                               disparity_levels=tuple(disparity_levels))
  return expected_variables(module, _features(enc_channels))


def expected_padnet(num_classes: int, design: str = 'dec6',
                    enc_channels: Sequence[int] = (64, 256, 512, 1024, 2048)) -> Variables:
  module = padnet_lib.PADNet(num_classes, **decoder_lib.DECODERS[design])
  return expected_variables(module, _features(enc_channels))


def expected_pose_decoder(in_channels: int = 512) -> Variables:
  module = pose_lib.PoseDecoder()
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                        jax.ShapeDtypeStruct((1, 2, 2, in_channels), jnp.float32))


def expected_segmentation_head(num_classes: int, in_channels: int = 64) -> Variables:
  module = decoder_lib.SegmentationHead(num_classes)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                        jax.ShapeDtypeStruct((1, 4, 4, in_channels), jnp.float32))


def _checked(converted: tuple[Variables, list[str], list[str]], expected: Variables,
             name: str) -> tuple[Variables, report_lib.LoadReport]:
  variables, unmapped, ignored = converted
  report = report_lib.check_variables(variables, expected, name, unmapped, ignored)
  return _drop_empty(variables, expected), report


def _drop_empty(variables: Variables, expected: Mapping[str, Any]) -> Variables:
  """Keeps the collections the module has (a pose decoder has no batch_stats)."""
  return {k: v for k, v in variables.items() if v or k in expected}


# ---------------------------------------------------------------------------------------------
# Imports (convert + check against the Flax module)


def _as_state_dict(src) -> Mapping[str, Any]:
  return src if isinstance(src, Mapping) else load_state_dict(src)


def import_torchvision_resnet(src, depth: int, output_stride: int = 32, num_input_images: int = 1
                              ) -> tuple[Variables, report_lib.LoadReport]:
  """A torchvision ImageNet ResNet (.pth path or state dict) -> our ResNet's variables and the load
  report; raises WeightImportError on any missing / unexpected / mis-shaped key."""
  state_dict = _as_state_dict(src)
  return _checked(convert_resnet(state_dict, num_input_images=num_input_images),
                  expected_resnet(depth, output_stride, num_input_images),
                  f'torchvision resnet{depth} ({num_input_images * 3} input channels)')


def reference_sde_state_dicts(src: str | os.PathLike) -> dict[str, tuple[str, dict]]:
  """{component: (where it was read, its state dict)} of a reference SDE: a folder of
  encoder.pth, depth.pth, pose_encoder.pth and pose.pth, or one whole-model checkpoint file
  ({'model_state': ...} or a bare state dict, keys 'models.<name>.*')."""
  src = os.fspath(src)
  if os.path.isdir(src):
    files = {name: os.path.join(src, f) for name, f in SDE_FILES.items()}
    absent = [f for f in files.values() if not os.path.exists(f)]
    if absent:
      raise FileNotFoundError(f'reference SDE checkpoint files not found: {absent}')
    return {name: (os.path.basename(f), load_state_dict(f)) for name, f in files.items()}
  import torch  # optional dependency: only reading PyTorch files needs it
  checkpoint = torch.load(src, map_location='cpu', weights_only=True)
  state = checkpoint.get('model_state', checkpoint)
  name_of = os.path.basename(src)
  components = {}
  for name, prefix in SDE_MODEL_PREFIXES.items():
    part = {k[len(prefix):]: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
            for k, v in state.items() if k.startswith(prefix)}
    if not part:
      raise report_lib.WeightImportError(
          f'{src}: no {prefix}* keys; a reference SDE checkpoint holds models.encoder, '
          f'models.depth, models.pose_encoder and models.pose (found prefixes: '
          f'{sorted({".".join(k.split(".")[:2]) for k in state})[:8]})')
    components[name] = (f'{name_of}:{prefix}*', part)
  return components


def import_reference_sde(src: str | os.PathLike, depth: int = 101, output_stride: int = 16,
                         design: str = 'dec6', pose_depth: int = 18,
                         scales: Sequence[int] = (0, 1, 2, 3)
                         ) -> tuple[dict[str, Variables], dict[str, report_lib.LoadReport]]:
  """The reference's SDE checkpoint (a folder of its four files, or a whole-model .pkl:
  reference_sde_state_dicts) -> {'encoder', 'depth_decoder', 'pose_encoder', 'pose_decoder':
  {'params': ..., 'batch_stats': ...}} and one load report per component.

  Defaults: the target-domain SDE (ResNet101 OS16 + dec6); the SSDA source-domain SDE is
  output_stride=32, design='dec11'. Raises WeightImportError on any mismatch.
  """
  state_dicts = reference_sde_state_dicts(src)
  enc_channels = encoder_channels(depth)
  pose_channels = encoder_channels(pose_depth)
  jobs = {
      'encoder': lambda sd: (convert_resnet(sd, 'encoder'), expected_resnet(depth, output_stride)),
      'depth_decoder': lambda sd: (convert_decoder(sd, scales=scales),
                                   expected_decoder(design, enc_channels, scales)),
      'pose_encoder': lambda sd: (convert_resnet(sd, 'encoder', num_input_images=2),
                                  expected_resnet(pose_depth, 32, 2)),
      'pose_decoder': lambda sd: (convert_pose_decoder(sd),
                                  expected_pose_decoder(pose_channels[-1])),
  }
  components, reports = {}, {}
  for name, job in jobs.items():
    source, state_dict = state_dicts[name]
    converted, expected = job(state_dict)
    components[name], reports[name] = _checked(converted, expected, f'{name} <- {source}')
  return components, reports


def merge_components(components: Mapping[str, Variables],
                     layout: Mapping[str, Sequence[str]] | None = None) -> Variables:
  """{'encoder': {'params': p, 'batch_stats': s}, ...} -> {'params': {'encoder': p, ...},
  'batch_stats': {'encoder': s, ...}} (components without batch_stats are left out there).

  layout: component -> module path in the composite where it is not top-level, e.g.
  {'pose_encoder': ('pose', 'pose_encoder'), 'pose_decoder': ('pose', 'pose_decoder')}.
  """
  layout = layout or {}
  merged: Variables = {'params': {}, 'batch_stats': {}}
  for name, variables in components.items():
    path = tuple(layout.get(name, (name,)))
    for collection, tree in variables.items():
      if not tree:
        continue
      node = merged.setdefault(collection, {})
      for part in path[:-1]:
        node = node.setdefault(part, {})
      if path[-1] in node:
        raise ValueError(f'two components at {"/".join(path)}')
      node[path[-1]] = tree
  return merged
