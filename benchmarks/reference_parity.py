"""Parity of our training steps with the reference's own training code (issue 34).

    python -m benchmarks.reference_parity --reference DIR [--parts=sde] [--size=64x64] \\
        [--batch=2] [--seed=0] [--out=benchmarks/results/reference_parity_cpu.json]

DIR is a checkout of lhoyer/improving_segmentation_with_selfsupervised_depth, branch ssda. Its
modules (train.py's Trainer, loss/, models/, experiments.py) are imported from DIR at run time and
never copied into this project. The `parity` extra installs what they import beside our CPU torch
(pip install -e '.[parity]'); torchvision's compiled detection ops belong to another torch build,
so its op registrations are stubbed: the reference uses only its Python ResNets.

From the same weights and the same batch, each part runs one training step on both sides and
compares every quantity by its relative error, max|ours - reference| / max|reference|:
- sde: the reference's own SDE files (encoder.pth, depth.pth, pose_encoder.pth, pose.pth, written
  by torch from its own get_model) and a torchvision-format ImageNet ResNet101 (its `imnet`
  feature-distance encoder) start both sides: ours through `weights.convert` and
  config.sde.init, exactly as a user's released files would. Trainer.train_step of the reference
  (its phase-C set-up: configs/sde_dec11.yml with experiments.decoder_variant(dec6), Adam 1e-5,
  feature distance 1e-2) runs against our sde_pretrain step (configs/sde_cityscapes.py:C). Compared:
  the disparities and every per-scale loss, photometric and smoothness term, the auto-mask, the
  feature distance, the total, the gradients of each parameter group, and after the Adam step
  every parameter group and the BatchNorm statistics.
- segment: the transfer network with Target-Domain DepthMix. Both sides start from the same SDE
  files (ours through config.segment.sde_checkpoint) and the reference's random head. The
  reference's Trainer.train_step (configs/ssda.yml set up as its experiments set it) runs against
  our segment step (configs/ssl_cityscapes.py:method=depthmix). Compared: the supervised and
  quality-weighted unlabeled losses, the pseudo-label quality, the DepthMix mask, the mixed images
  and pseudo-labels, the clipped gradients, and after the SGD step the parameters, the mean
  teacher and the BatchNorm statistics. Colour jitter and blur are off on both sides.

The auto-mask's tie-breaking noise is ours on both sides: the reference's torch.randn is replaced,
for the one call per scale it makes, by the draws our step takes from its key; likewise its
nn.Dropout modules (the ASPP's p=0.5) apply the masks our step draws. The reference also
runs in float64: its float32 result's distance from that is the floor of what float32 can agree
on. The report (JSON) gives every quantity's error and its status: within --tolerance (1e-4), or
float32 rounding (ours no farther from the float64 reference than twice that floor), or OVER.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib
import os
import sys
import tempfile
import types

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common

TOLERANCE = 1e-4
# Our top-level packages whose names the reference also uses; hidden while it imports.
_SHARED_NAMES = ('configs',)
_REFERENCE_MODULES = ('train', 'experiments', 'models', 'models.utils', 'models.monodepth_layers',
                      'loss', 'utils.optimizers', 'utils.schedulers')


# ---------------------------------------------------------------------------------------------
# The reference's code


def import_reference(directory: str) -> types.SimpleNamespace:
  """The reference's own modules, imported from the checkout at `directory`."""
  directory = os.path.abspath(directory)
  missing = [p for p in ('train.py', 'loss/monodepth_loss.py', 'configs/sde_dec11.yml')
             if not os.path.exists(os.path.join(directory, p))]
  if missing:
    raise SystemExit(f'--reference {directory}: not a checkout of '
                     f'improving_segmentation_with_selfsupervised_depth (branch ssda); '
                     f'missing {", ".join(missing)}')
  sys.modules.setdefault('torchvision._meta_registrations',
                         types.ModuleType('torchvision._meta_registrations'))
  ours = {name: module for name, module in sys.modules.items()
          if name.split('.')[0] in _SHARED_NAMES}
  for name in ours:
    del sys.modules[name]
  for name in _SHARED_NAMES:  # a folder without __init__.py there: ours would win the search
    package = sys.modules[name] = types.ModuleType(name)
    package.__path__ = [os.path.join(directory, name)]
  sys.path.insert(0, directory)
  try:
    modules = {name: importlib.import_module(name) for name in _REFERENCE_MODULES}
  finally:
    sys.path.remove(directory)
    for name in [n for n in sys.modules if n.split('.')[0] in _SHARED_NAMES]:
      del sys.modules[name]
    sys.modules.update(ours)
  reference = types.SimpleNamespace(directory=directory, **{
      name.replace('.', '_'): module for name, module in modules.items()})
  reference.commit = _git_commit(directory)
  return reference


def _git_commit(directory: str) -> str:
  head = os.path.join(directory, '.git', 'HEAD')
  try:
    with open(head) as f:
      ref = f.read().strip()
    if ref.startswith('ref: '):
      with open(os.path.join(directory, '.git', ref[5:])) as f:
        return f.read().strip()
    return ref
  except OSError:
    return 'unknown (not a git checkout)'


def reference_config(reference, name: str) -> dict:
  import yaml
  with open(os.path.join(reference.directory, 'configs', name)) as f:
    return yaml.safe_load(f)


@contextlib.contextmanager
def imagenet_weights(files: dict[int, str]):
  """torchvision's ImageNet ResNets are the files {depth: path} (in torchvision's own format)
  instead of downloads: for its `pretrained=True` builders and for the model_urls + load_url
  route of the reference's multi-image (pose) encoder, which torchvision no longer has."""
  import torch
  import torch.utils.model_zoo as model_zoo
  import torchvision.models as tv_models
  names = {depth: f'resnet{depth}' for depth in files}
  originals = {name: getattr(tv_models, name) for name in names.values()}
  original_load_url = model_zoo.load_url

  def from_file(builder, path):
    def build(pretrained=False, **kwargs):
      model = builder(weights=None, **kwargs)
      if pretrained:
        model.load_state_dict(torch.load(path))
      return model
    return build

  for depth, name in names.items():
    setattr(tv_models, name, from_file(originals[name], files[depth]))
  tv_models.resnet.model_urls = {names[depth]: path for depth, path in files.items()}
  model_zoo.load_url = lambda url, *args, **kwargs: torch.load(url)
  try:
    yield
  finally:
    for name, builder in originals.items():
      setattr(tv_models, name, builder)
    del tv_models.resnet.model_urls
    model_zoo.load_url = original_load_url


@contextlib.contextmanager
def recorded_dropout():
  """Yields a list that collects, in call order, the keep masks (boolean, NHWC) of every flax
  Dropout applied inside the block (under jit: return them from the jitted function)."""
  import flax.linen as nn
  masks = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Dropout) and not context.module.deterministic:
      # Dropped where the output is 0 but the input is not (where the input is 0, the mask
      # changes neither the output nor, after a ReLU, the gradient).
      masks.append(~((out == 0) & (args[0] != 0)))
    return out

  with nn.intercept_methods(interceptor):
    yield masks


def replay_dropout(models: list, masks: list) -> list:
  """Every nn.Dropout of the torch `models` applies the next of `masks` (recorded_dropout's, in
  forward order, one queue for all) instead of its own random draw: both sides drop the same
  units. Returns the queue of masks not yet used."""
  import torch
  queue = list(masks)

  class Replayed(torch.nn.Module):
    def __init__(self, p):
      super().__init__()
      self.p = p

    def forward(self, x):
      if not self.training or self.p == 0:
        return x
      mask = torch.from_numpy(np.moveaxis(np.asarray(queue.pop(0)), -1, 1).copy()).to(x.dtype)
      assert mask.shape == x.shape, (mask.shape, x.shape)
      return x * mask / (1 - self.p)

  dropouts = [(parent, name, child) for model in models for parent in model.modules()
              for name, child in parent.named_children() if isinstance(child, torch.nn.Dropout)]
  for parent, name, child in dropouts:
    setattr(parent, name, Replayed(child.p))
  return queue


@contextlib.contextmanager
def replayed_randn(draws: list):
  """torch.randn returns `draws` (torch tensors) in order, one per call, with the shape asked."""
  import torch
  original = torch.randn
  queue = list(draws)

  def randn(*shape, **kwargs):
    del kwargs
    shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape
    draw = queue.pop(0)
    assert tuple(draw.shape) == shape, (draw.shape, shape)
    return draw.clone()

  torch.randn = randn
  try:
    yield
  finally:
    torch.randn = original
  assert not queue, f'{len(queue)} prepared draws were not used'


def bare_trainer(reference, cfg: dict, model, batches: list[dict]):
  """The reference's Trainer around `model`, without its data set-up: the optimiser, scheduler,
  grad scaler and loss functions of Trainer.__init__, built by the same functions; `batches`
  become its training loader."""
  train = reference.train
  trainer = train.Trainer.__new__(train.Trainer)
  trainer.cfg, trainer.device, trainer.step = cfg, 'cpu', 0
  trainer.setup_segmentation_unlabeled()
  trainer.use_source_data = trainer.use_matching_geom = False
  trainer.mg_loader = trainer.source_data_loader = trainer.unlabeled_data_loader = None
  trainer.train_data_loader = iter(batches)
  trainer.model, trainer.ema_model = model, None
  optimizer_cls = reference.utils_optimizers.get_optimizer(cfg)
  options = {k: v for k, v in cfg['training']['optimizer'].items()
             if k not in ('name', 'backbone_lr', 'pose_lr', 'depth_lr', 'segmentation_lr')}
  trainer.optimizer = optimizer_cls(train.get_train_params(model, cfg), **options)
  trainer.scheduler = reference.utils_schedulers.get_scheduler(
      trainer.optimizer, cfg['training']['lr_schedule'])
  trainer.scaler = train.GradScaler(enabled=cfg['training']['amp'])
  trainer.loss_fn = reference.loss.get_segmentation_loss_function(cfg)
  trainer.monodepth_loss_calculator_train = reference.loss.get_monodepth_loss(cfg, is_train=True)
  return trainer


def recording(obj, method: str, record: list):
  """Wraps obj.method so that each call appends (args, result) to `record`."""
  original = getattr(obj, method)

  def wrapped(*args, **kwargs):
    result = original(*args, **kwargs)
    record.append((args, result))
    return result

  setattr(obj, method, wrapped)


# ---------------------------------------------------------------------------------------------
# Comparison


def relative_error(ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  if ours.shape != reference.shape:
    raise ValueError(f'shapes differ: ours {ours.shape}, reference {reference.shape}')
  scale = float(np.max(np.abs(reference))) if reference.size else 0.0
  difference = float(np.max(np.abs(ours - reference))) if reference.size else 0.0
  return difference / scale if scale > 0 else difference


# Quantities that are decisions per pixel: their error is the fraction of pixels that differ.
DISCRETE = ('automask/scale0', 'mix/mask', 'mix/pseudo_labels')


def _group_error(ours: dict, reference: dict) -> float:
  """A parameter group's error: its largest difference over its largest reference value (a tensor
  whose values are all near zero, like a zero-initialised bias after one Adam step of +-lr, is not
  wrong by a flipped sign of a vanishing gradient)."""
  difference = max(float(np.max(np.abs(ours[k] - reference[k]))) for k in reference)
  scale = max(float(np.max(np.abs(reference[k]))) for k in reference)
  return difference / scale if scale > 0 else difference


class Report:
  """One row per compared quantity (per parameter group for trees). `error` is ours against the
  reference in float32; the reference's own float32 rounding (its float32 run against its float64
  run) is the floor beside it. A quantity is `within` the tolerance, or `float32 rounding` when
  ours is no farther from the float64 reference than twice the reference's own float32 result
  is, or OVER."""

  def __init__(self, tolerance: float):
    self.tolerance, self.rows = tolerance, []

  def _row(self, part: str, quantity: str, errors: tuple[float, float, float], **extra) -> None:
    error, floor, ours_to_64 = errors
    if error <= self.tolerance:
      status = 'within'
    elif ours_to_64 <= 2 * floor:
      status = 'float32 rounding'
    else:
      status = 'OVER'
    self.rows.append(dict(part=part, quantity=quantity, max_relative_error=error,
                          reference_float32_vs_float64=floor, ours_vs_reference_float64=ours_to_64,
                          status=status, **extra))
    note = ' '.join(f'{k}={v}' for k, v in extra.items() if k in ('metric', 'worst_tensor'))
    print(f'{part:6s} {quantity:32s} {error:9.2e}  floor {floor:9.2e}  vs64 {ours_to_64:9.2e}  '
          f'{status}  {note}', flush=True)

  def compare(self, part: str, ours: dict, reference: dict, reference64: dict) -> None:
    for quantity, value in ours.items():
      if isinstance(value, dict):
        self._compare_trees(part, quantity, value, reference[quantity], reference64[quantity])
        continue
      if quantity in DISCRETE:
        fraction = lambda a, b: float(np.mean(np.asarray(a) != np.asarray(b)))
        errors = (fraction(value, reference[quantity]),
                  fraction(reference[quantity], reference64[quantity]),
                  fraction(value, reference64[quantity]))
        self._row(part, quantity, errors, metric='fraction of pixels that differ')
        continue
      errors = (relative_error(value, reference[quantity]),
                relative_error(reference[quantity], reference64[quantity]),
                relative_error(value, reference64[quantity]))
      extra = {}
      if np.size(value) == 1:
        extra = dict(ours=float(np.asarray(value)), reference=float(reference[quantity]))
      self._row(part, quantity, errors, **extra)

  def _compare_trees(self, part: str, prefix: str, ours: dict, reference: dict,
                     reference64: dict) -> None:
    from sdeseg_jax.weights import report as report_lib
    flat = [{k: np.asarray(v) for k, v in report_lib.flatten(tree).items()}
            for tree in (ours, reference, reference64)]
    if set(flat[0]) != set(flat[1]):
      only_ours, only_reference = set(flat[0]) - set(flat[1]), set(flat[1]) - set(flat[0])
      raise ValueError(f'{prefix}: trees differ: only ours {sorted(only_ours)[:5]}, only the '
                       f'reference {sorted(only_reference)[:5]}')
    for group in sorted({path.split('/')[0] for path in flat[0]}):
      ours_g, ref_g, ref64_g = ({k: v for k, v in f.items() if k.split('/')[0] == group}
                                for f in flat)
      per_tensor = {k: relative_error(ours_g[k], ref_g[k]) for k in ours_g}
      worst = max(per_tensor, key=per_tensor.get)
      errors = (_group_error(ours_g, ref_g), _group_error(ref_g, ref64_g),
                _group_error(ours_g, ref64_g))
      self._row(part, f'{prefix}/{group}', errors, tensors=len(ours_g), worst_tensor=worst,
                worst_tensor_relative_error=per_tensor[worst])


# ---------------------------------------------------------------------------------------------
# Shared inputs


def street_frames(batch: int, height: int, width: int, seed: int) -> np.ndarray:
  """[B, 3, H, W, 3] frame triplets in [0, 1]: smooth random scenes, each frame the next one's
  shifted view (so that warping matters), with fine texture."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0.1, 0.9, (batch, height // 8 + 2, width // 8 + 4, 3))
  big = np.asarray(jax.image.resize(coarse, (batch, height + 16, width + 32, 3), 'cubic'))
  frames = np.stack([big[:, 8:8 + height, 16 + dx:16 + dx + width] for dx in (-3, 0, 3)], 1)
  frames = frames + rng.normal(0, 0.02, frames.shape)
  return np.clip(frames, 0, 1).astype(np.float32)


def pixel_intrinsics(batch: int, height: int, width: int) -> np.ndarray:
  """[B, 3, 3]: Cityscapes' normalised intrinsics (fx 0.58, fy 1.16 of the width / height) at
  (H, W), as our loaders and the reference's give them."""
  k = np.array([[0.58 * width, 0, 0.5 * width], [0, 1.16 * height, 0.5 * height], [0, 0, 1]],
               np.float32)
  return np.repeat(k[None], batch, 0)


def _nchw(x):
  """[..., C] numpy / jax -> a torch tensor [B, C, ...]."""
  import torch
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def _nhwc(t) -> np.ndarray:
  return np.moveaxis(t.detach().numpy(), 1, -1)


def _homogeneous(k: np.ndarray) -> np.ndarray:
  out = np.repeat(np.eye(4, dtype=np.float32)[None], k.shape[0], 0)
  out[:, :3, :3] = k
  return out


def damp_residual_branches(module, factor: float = 0.2) -> None:
  """Scales the last BatchNorm of every ResNet block by `factor`, as training leaves them: a
  random-init ResNet101 sums 33 unit-variance branches, so its layer4 features (and the feature
  distance) would be hundreds of times larger than a trained network's."""
  import torch
  from torchvision.models import resnet
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, resnet.Bottleneck):
        m.bn3.weight.mul_(factor)
      elif isinstance(m, resnet.BasicBlock):
        m.bn2.weight.mul_(factor)


def calibrate_batch_norm(module, forward, batches) -> None:
  """BatchNorm running statistics that are the averages over `batches` (forward(batch) runs the
  module), as trained weights' statistics describe their data: random-init statistics would make
  eval-mode activations explode through a ResNet101."""
  import torch
  norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for m in norms:
    m.reset_running_stats()
    m.momentum = None  # cumulative average
  module.train()
  with torch.no_grad():
    for batch in batches:
      forward(batch)
  for m in norms:
    m.momentum = 0.1


def calibration_frames(height: int, width: int, seed: int) -> list[np.ndarray]:
  return [street_frames(4, height, width, seed + 100 + i) for i in range(3)]


def convert(source: str, src: str, out: str, **options) -> str:
  """Our converter's command (sdeseg_jax.weights.convert), as a user runs it."""
  from sdeseg_jax.weights import convert as convert_cli
  with contextlib.redirect_stdout(sys.stderr):
    if convert_cli.run(source, src, out, **options):
      raise RuntimeError(f'weights.convert --from {source} --src {src} failed')
  return out


# ---------------------------------------------------------------------------------------------
# (a) SDE


# A released SDE's folder name (the reference loads an SDE whose name contains 'mono').
PARITY_SDE = 'mono_parity_sde'
SDE_FILES = {'encoder': 'encoder.pth', 'depth': 'depth.pth', 'pose_encoder': 'pose_encoder.pth',
             'pose': 'pose.pth'}


def sde_reference_config(reference, batch: int, height: int, width: int) -> dict:
  """The reference's phase C (its cityscapes_monodepth_highres_dec6_crop set-up) on the ssda
  branch's SDE config: ResNet101 OS16 + dec6, Adam 1e-5 for everything, feature distance 1e-2 to
  the ImageNet encoder; at our size, in float32, the pose net on the same (uncropped) frames."""
  cfg = reference_config(reference, 'sde_dec11.yml')
  cfg, _ = reference.experiments.decoder_variant(cfg, 6, [height, width])
  cfg['model'].update(backbone_pretraining='imnet', depth_pretraining=PARITY_SDE,
                      pose_pretraining=PARITY_SDE, enable_imnet_encoder=True,
                      provide_uncropped_for_pose=False)
  cfg['monodepth_options'].update(height=height, width=width, crop_h=height, crop_w=width)
  cfg['training'].update(batch_size=batch, amp=False, feat_dist_lambda=1e-2,
                         optimizer={'name': 'adam', 'lr': 1e-5})
  cfg['source_data'] = {}
  cfg['data']['generated_depth_dir'] = None
  return reference.train.prepare_config_logic(cfg)


def write_reference_sde(reference, cfg: dict, directory: str, seed: int) -> None:
  """A random SDE in the reference's released format: its own model's state dicts, saved by torch
  as encoder.pth, depth.pth, pose_encoder.pth and pose.pth."""
  import torch
  torch.manual_seed(seed)
  model_cfg = copy.deepcopy(cfg['model'])
  model_cfg.update(backbone_pretraining='none', depth_pretraining='none', pose_pretraining='none',
                   enable_imnet_encoder=False)
  model = reference.models.get_model(model_cfg, 19)
  damp_residual_branches(model)
  height, width = cfg['monodepth_options']['height'], cfg['monodepth_options']['width']
  calibrate_batch_norm(model, model, [
      {('color_aug', f, 0): _nchw(frames[:, i]) for i, f in enumerate((-1, 0, 1))}
      for frames in calibration_frames(height, width, seed)])
  os.makedirs(directory, exist_ok=True)
  for name, filename in SDE_FILES.items():
    torch.save(model.models[name].state_dict(), os.path.join(directory, filename))


def write_torchvision_resnet(depth: int, path: str, height: int, width: int, seed: int) -> None:
  """A random ResNet in torchvision's own format (as resnet101-63fe2227.pth is)."""
  import torch
  import torchvision
  torch.manual_seed(seed)
  model = getattr(torchvision.models, f'resnet{depth}')(weights=None)
  damp_residual_branches(model)
  calibrate_batch_norm(model, model, [_nchw(frames[:, 1])
                                      for frames in calibration_frames(height, width, seed)])
  torch.save(model.state_dict(), path)


def sde_part(reference, report: Report, *, batch: int, height: int, width: int, seed: int,
             workdir: str) -> None:
  from configs import sde_cityscapes
  from sdeseg_jax import ops
  from sdeseg_jax.models import networks
  from sdeseg_jax.stages import sde_pretrain

  # The reference reads pretrained SDEs from DOWNLOAD_MODEL_DIR/<name>/ (no download when there).
  reference.models_utils.MachineConfig.DOWNLOAD_MODEL_DIR = workdir
  cfg = sde_reference_config(reference, batch, height, width)
  write_reference_sde(reference, cfg, os.path.join(workdir, PARITY_SDE), seed)
  imagenet = {depth: os.path.join(workdir, f'resnet{depth}-imagenet.pth') for depth in (18, 101)}
  for depth, path in imagenet.items():
    write_torchvision_resnet(depth, path, height, width, seed + depth)

  # Ours: the user's path, converted files through config.sde.init.
  config = sde_cityscapes.get_config('C')
  config.seed = seed
  sde = config.sde
  sde.batch_size, sde.crop = batch, (width, height)
  sde.init.sde = convert('reference_sde', os.path.join(workdir, PARITY_SDE),
                         os.path.join(workdir, 'sde_ckpt'))
  sde.init.encoder = convert('torchvision', imagenet[101], os.path.join(workdir, 'imnet_ckpt'),
                             depth=101, output_stride=16)
  network = networks.build('sde', config.model)
  state = sde_pretrain.create_state(config, config.model, network)
  frames = street_frames(batch, height, width, seed)
  augmented = np.clip(frames * 1.1 - 0.03, 0, 1).astype(np.float32)
  intrinsics = pixel_intrinsics(batch, height, width)
  ours_batch = dict(frames=jnp.asarray(frames), frames_aug=jnp.asarray(augmented),
                    intrinsics=jnp.asarray(intrinsics))
  # The terms, from the same forward pass and noise the step takes (its key derivation).
  dropout_key, noise_key = jax.random.split(state.key)
  with recorded_dropout() as dropout_masks:
    outputs, _ = network.apply({'params': state.params, 'batch_stats': state.batch_stats},
                               ours_batch['frames_aug'], train=True, mutable=['batch_stats'],
                               rngs={'dropout': dropout_key})
  _, aux = ops.sde_loss(outputs['disp'], ours_batch['frames'], ours_batch['intrinsics'],
                        outputs['pose_prev'], outputs['pose_next'], noise_key,
                        min_depth=sde.min_depth, max_depth=sde.max_depth,
                        smoothness_weight=sde.smoothness)
  scales = sorted(outputs['disp'])
  noise = [np.asarray(jax.random.normal(k, (batch, height, width, 2)))
           for k in jax.random.split(noise_key, len(scales))]
  new_state, metrics = jax.jit(sde_pretrain.make_train_step(network, config.model, sde))(
      state, ours_batch)
  ours = {}
  for s in scales:
    ours.update({f'disparity/scale{s}': outputs['disp'][s], f'loss/scale{s}': aux['scale_loss'][s],
                 f'photometric/scale{s}': aux['photometric'][s],
                 f'smoothness/scale{s}': aux['smoothness'][s]})
  ours.update({'automask/scale0': aux['automask'][..., 0],
               'automask_fraction': metrics['automask_fraction'],
               'feature_distance': metrics['loss/feature_distance'],
               'loss/sde': metrics['loss/sde'], 'loss/total': metrics['loss/total'],
               'gradients': adam_gradients(new_state.opt_state),
               'params': jax.device_get(new_state.params),
               'batch_stats': jax.device_get(new_state.batch_stats)})

  step = functools.partial(reference_sde_step, reference, cfg, imagenet, frames, augmented,
                           intrinsics, noise, dropout_masks, scales, workdir)
  report.compare('sde', ours, step('float32'), step('float64'))


def reference_sde_step(reference, cfg: dict, imagenet: dict, frames, augmented, intrinsics,
                       noise: list, dropout_masks: list, scales: list, workdir: str,
                       dtype: str) -> dict:
  """The reference's Trainer.train_step on the batch, its model in `dtype`: the quantities that
  sde_part compares, the trees in our layout."""
  import torch
  from sdeseg_jax import ops
  cfg = copy.deepcopy(cfg)  # its set-up pops entries
  to = getattr(torch, dtype)
  height, width = frames.shape[2:4]
  # Its model from the files, loaded by its own code: the encoder and the feature-distance
  # encoder from ImageNet, the depth decoder and the pose network from the SDE files.
  with imagenet_weights(imagenet):
    model = reference.models.get_model(cfg['model'], 19).to(to)
  k = _homogeneous(intrinsics)
  inputs = {('K', 0): torch.from_numpy(k), ('inv_K', 0): torch.from_numpy(np.linalg.inv(k))}
  for index, frame_id in enumerate((-1, 0, 1)):
    inputs['color_aug', frame_id, 0] = _nchw(augmented[:, index])
    inputs['color', frame_id, 0] = _nchw(frames[:, index])
  for s in scales[1:]:  # the loader's per-scale targets: ours, resized as our step resizes them
    inputs['color', 0, s] = _nchw(ops.photometric.downsample_antialiased(
        jnp.asarray(frames[:, 1]), height // 2 ** s, width // 2 ** s))
  inputs = {key: value.to(to) for key, value in inputs.items()}
  if dtype == 'float64':
    keep_float64(model)
  unused_masks = replay_dropout([model], dropout_masks)
  trainer = bare_trainer(reference, cfg, model, [inputs])
  calculator = trainer.monodepth_loss_calculator_train
  for module in (*calculator.backproject_depth.values(), *calculator.project_3d.values()):
    module.to(to)
  record = []
  recording(calculator, 'compute_losses', record)
  # Its noise is added to the [B, 2, H, W] identity losses: ours, channels first.
  with replayed_randn([torch.from_numpy(np.moveaxis(n, -1, 1).copy()).to(to) for n in noise]):
    trainer.train_step(0)
  assert not unused_masks, f'{len(unused_masks)} of our dropout masks were not used'
  (_, outputs), losses = record[0]
  result = {}
  smoothness_weight = cfg['training']['monodepth_loss']['disparity_smoothness']
  for s in scales:
    disp = outputs['disp', s]
    norm = disp / (disp.mean(2, True).mean(3, True) + 1e-7)
    smooth = float(reference.models_monodepth_layers.get_smooth_loss(norm, inputs['color', 0, s]))
    scale_loss = float(losses[f'loss/{s}'])
    photometric = scale_loss - smoothness_weight * smooth / 2 ** s
    result.update({f'disparity/scale{s}': _nhwc(disp), f'loss/scale{s}': scale_loss,
                   f'photometric/scale{s}': photometric, f'smoothness/scale{s}': smooth})
  # identity_selection is 1 where a reprojection won: the complement of our auto-mask.
  result['automask/scale0'] = 1.0 - outputs['identity_selection/0'].detach().numpy()
  result['automask_fraction'] = np.mean([1 - float(outputs[f'identity_selection/{s}'].mean())
                                         for s in scales])
  distance = float(torch.dist(outputs['encoder_features'], outputs['imnet_features']))
  result['feature_distance'] = distance
  result['loss/sde'] = float(losses['loss'])
  result['loss/total'] = float(losses['loss']) + cfg['training']['feat_dist_lambda'] * distance
  gradients = sde_tree(model, os.path.join(workdir, f'gradients_{dtype}'), gradients=True)
  after = sde_tree(model, os.path.join(workdir, f'after_{dtype}'))
  result.update(gradients=gradients['params'], params=after['params'],
                batch_stats=after['batch_stats'])
  return result


class _Float64Outputs(dict):
  """A model's outputs that stay float64 when assigned to (the reference's train step casts
  depth and poses to float32 for mixed precision; the float64 control must not)."""

  def __setitem__(self, key, value):
    import torch
    if torch.is_tensor(value) and value.is_floating_point():
      value = value.double()
    super().__setitem__(key, value)


def keep_float64(model) -> None:
  forward = model.forward
  model.forward = lambda *args, **kwargs: _Float64Outputs(forward(*args, **kwargs))


def sde_tree(model, folder: str, gradients: bool = False) -> dict:
  """The reference model's SDE (or, with `gradients`, its parameters' gradients) written as
  released files and read back by our importer: a tree of our layout."""
  import torch
  from sdeseg_jax.weights import importers
  from sdeseg_jax.weights import layouts
  os.makedirs(folder)
  for name, filename in SDE_FILES.items():
    module = model.models[name]
    state = module.state_dict()
    if gradients:
      state.update({k: p.grad if p.grad is not None else torch.zeros_like(p)
                    for k, p in module.named_parameters()})
    state = {k: v.detach().float() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, os.path.join(folder, filename))
  with contextlib.redirect_stdout(sys.stderr):
    components, _ = importers.import_reference_sde(folder)
  return layouts.sde_variables(importers.merge_components(components))


def adam_gradients(opt_state, b1: float = 0.9) -> dict:
  """The gradients (after clipping) that our optimiser's first Adam update used, nested by
  parameter path: its first moments after one step are (1 - b1) * g."""
  import optax
  gradients = {}
  for _, mu in optax.tree_utils.tree_get_all_with_path(opt_state, 'mu'):
    leaves, _ = jax.tree_util.tree_flatten_with_path(
        mu, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    for path, leaf in leaves:
      if not isinstance(leaf, optax.MaskedNode):
        node = gradients
        keys = [k.key for k in path]
        for key in keys[:-1]:
          node = node.setdefault(key, {})
        node[keys[-1]] = np.asarray(leaf) / (1 - b1)
  return gradients


# ---------------------------------------------------------------------------------------------
# (b) Segment: transfer network + DepthMix


REFERENCE_IGNORE = 250  # the reference's ignore index (ours: ops.segmentation.IGNORE_LABEL)


def transfer_reference_config(reference, batch: int, height: int, width: int) -> dict:
  """The branch's own segmentation config (configs/ssda.yml) set as its experiments set the SSL
  transfer network with Target-Domain DepthMix: ResNet101 OS16 from the SDE, the SDE's dec6
  decoder with the 64-channel head on level 0 (experiments.set_segmentation_args), SGD 1e-2 / 1e-3
  for the encoder, weight decay 5e-4, clip 10 (experiments.setup_optimizer), DepthMix on depth
  labels with the ground truth of labeled mixing rows (mix_use_gt), margin 0.03. No source data;
  colour jitter and blur off (their draws are kornia's and numpy's, not ours)."""
  cfg = reference_config(reference, 'ssda.yml')
  cfg, _ = reference.experiments.decoder_variant(cfg, 6, [height, width])
  cfg = reference.experiments.set_segmentation_args(cfg, seg_init=PARITY_SDE, layers=[9],
                                                    head_inter=False, output_stride=1)
  cfg['model'].update(backbone_pretraining=PARITY_SDE, depth_pretraining='none')
  cfg['monodepth_options'].update(height=height, width=width, crop_h=height, crop_w=width)
  cfg = reference.experiments.setup_optimizer(cfg, 'sgd', lr=1e-2, blr=1e-3, plr=None, slr=None,
                                              gclip=10)
  cfg['training'].update(batch_size=batch, amp=False, lr_schedule=None, unlabeled_segmentation=dict(
      intra_domain_mix=True, inter_domain_mix=False, mix_mask='depthcomp', only_unlabeled=False,
      mix_use_gt=True, depthcomp_margin=0.03, color_jitter=False, blur=False,
      depthmix_online_depth=False))
  cfg.pop('source_data')
  cfg['source_data'] = {}
  cfg['matching_geometry']['enabled'] = False
  return reference.train.prepare_config_logic(cfg)


def segment_batch(batch: int, height: int, width: int, num_classes: int, seed: int) -> dict:
  """Our segment step's batch: a labeled batch and a mixing batch (row 0 labeled, row 1 not),
  labels with ignored pixels, min-max normalised disparity labels."""
  from sdeseg_jax.ops import segmentation
  rng = np.random.default_rng(seed + 50)
  images = [street_frames(batch, height, width, seed + k)[:, 1] for k in (1, 2)]
  labels = rng.integers(0, num_classes, (2, batch, height, width)).astype(np.int32)
  labels[:, :, :height // 8] = segmentation.IGNORE_LABEL  # a band of unlabeled pixels
  disparity = rng.uniform(size=(batch, height // 8, width // 8))
  disparity = np.asarray(jax.image.resize(disparity, (batch, height, width), 'linear'))
  low, high = disparity.min((1, 2), keepdims=True), disparity.max((1, 2), keepdims=True)
  depth = ((disparity - low) / (high - low)).astype(np.float32)[..., None]
  labeled = np.arange(batch) == 0
  mix_label = np.where(labeled[:, None, None], labels[1], segmentation.IGNORE_LABEL)
  return {'labeled': dict(image=images[0], label=labels[0]),
          'mix': dict(image=images[1], label=mix_label.astype(np.int32), labeled=labeled,
                      depth=depth)}


def transfer_tree(model, gradients: bool = False) -> dict:
  """The reference's transfer model (or its gradients) as a tree of our layout."""
  import torch
  from sdeseg_jax.weights import importers

  def state(module):
    state = module.state_dict()
    if gradients:
      state.update({k: p.grad if p.grad is not None else torch.zeros_like(p)
                    for k, p in module.named_parameters()})
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}

  parts = {'encoder': importers.convert_resnet(state(model.models['encoder']), 'encoder')[0]}
  decoder = importers.convert_joint_seg_depth_decoder(state(model.models['segmentation']))
  parts['seg_decoder'], parts['seg_head'] = decoder['decoder'][0], decoder['head'][0]
  return {c: {name: part[c] for name, part in parts.items() if part.get(c)}
          for c in ('params', 'batch_stats')}


def segment_part(reference, report: Report, *, batch: int, height: int, width: int, seed: int,
                 workdir: str) -> None:
  """Transfer network + DepthMix: the reference's Trainer.train_step (labeled CE, then its
  train_step_segmentation_unlabeled: the mean teacher in train mode, the DepthMix mask, the mixed
  images and teacher distributions, the quality-weighted CE; clipping, SGD, the teacher update)
  against our segment step (configs/ssl_cityscapes.py, method=depthmix)."""
  import torch
  from configs import ssl_cityscapes
  from sdeseg_jax.models import networks
  from sdeseg_jax.ops import segmentation
  from sdeseg_jax.stages import segment
  num_classes = 19
  reference.models_utils.MachineConfig.DOWNLOAD_MODEL_DIR = workdir
  cfg = transfer_reference_config(reference, batch, height, width)
  write_reference_sde(reference, sde_reference_config(reference, batch, height, width),
                      os.path.join(workdir, PARITY_SDE), seed)

  # The reference's model: the SDE's encoder and decoder, its own random head (both sides start
  # from this one).
  torch.manual_seed(seed)
  model = reference.models.get_model(cfg['model'], num_classes)
  initial_segmentation = {k: v.clone()
                          for k, v in model.models['segmentation'].state_dict().items()}
  head = transfer_tree(model)['params']['seg_head']

  # Ours: the converted SDE through config.segment, the reference's head over our random one.
  config = ssl_cityscapes.get_config('method=depthmix')
  config.seed = seed
  seg = config.segment
  seg.sde_checkpoint = convert('reference_sde', os.path.join(workdir, PARITY_SDE),
                               os.path.join(workdir, 'sde_ckpt'))
  seg.strong_augment.update(jitter_prob=0.0, blur_prob=0.0)
  seg.batch_size = seg.mix_batch_size = batch
  network = networks.build('transfer', config.model)
  state = segment.create_state(config, workdir, network)
  params = dict(state.params, seg_head=jax.tree.map(jnp.asarray, head))
  state = state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params),
                        opt_state=state.tx.init(params))
  batch_arrays = segment_batch(batch, height, width, num_classes, seed)
  ours_batch = jax.tree.map(jnp.asarray, batch_arrays)
  loss_fn = segment.make_loss(network, config, num_classes)

  @jax.jit
  def loss_and_gradients(state, batch):
    with recorded_dropout() as masks:
      (loss, (metrics, _, mixes)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params, state, batch)
    return loss, metrics, mixes, grads, masks

  _, metrics, mixes, grads, masks = loss_and_gradients(state, ours_batch)
  norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads)))
  clipped = jax.tree.map(lambda g: g * jnp.minimum(1.0, seg.optim.clip_norm / norm), grads)
  new_state, _ = jax.jit(segment.make_train_step(network, config, num_classes))(state, ours_batch)
  ours = {'loss/supervised': metrics['loss/supervised'],
          'loss/unlabeled (quality-weighted)':
              metrics['pseudo_label_quality'] * metrics['loss/unlabeled'],
          'pseudo_label_quality': metrics['pseudo_label_quality'],
          'mix/mask': mixes['mix']['mask'][..., 0], 'mix/images': mixes['mix']['images'],
          'mix/pseudo_labels': mixes['mix']['pseudo'],
          'gradients': jax.device_get(clipped), 'params': jax.device_get(new_state.params),
          'teacher': jax.device_get(new_state.ema_params),
          'batch_stats': jax.device_get(new_state.batch_stats)}

  def reference_step(dtype):
    return reference_transfer_step(reference, cfg, initial_segmentation, batch_arrays, masks,
                                   num_classes, dtype, segmentation.IGNORE_LABEL)

  report.compare('segment', ours, reference_step('float32'), reference_step('float64'))


def reference_transfer_step(reference, cfg: dict, initial_segmentation: dict, arrays: dict,
                            masks: list, num_classes: int, dtype: str, ignore: int) -> dict:
  """The reference's Trainer.train_step (step 1) on segment_batch's arrays, its model in `dtype`
  from the SDE files and the segmentation head `initial_segmentation`: the quantities that
  segment_part compares, the trees in our layout."""
  import torch
  cfg = copy.deepcopy(cfg)
  to = getattr(torch, dtype)
  model = reference.models.get_model(cfg['model'], num_classes)
  model.models['segmentation'].load_state_dict(initial_segmentation)
  trainer = bare_trainer(reference, cfg, model, [None])
  trainer.n_classes = num_classes
  trainer.ema_model = trainer.create_ema_model(model)  # from the float32 weights, then both cast
  model.to(to)
  trainer.ema_model.to(to)
  trainer.unlabeled_loader = types.SimpleNamespace(ignore_index=REFERENCE_IGNORE)

  def labels(x):
    return torch.from_numpy(np.where(x == ignore, REFERENCE_IGNORE, x).astype(np.int64))

  labeled, mix = arrays['labeled'], arrays['mix']
  trainer.train_data_loader = iter([{('color_aug', 0, 0): _nchw(labeled['image']).to(to),
                                     'lbl': labels(labeled['label'])}])
  # Its one-hot ground truth of labeled mixing rows: all zero at ignored pixels.
  valid = mix['label'] != ignore
  onehot = np.eye(num_classes, dtype=np.float32)[np.where(valid, mix['label'], 0)]
  onehot = np.ascontiguousarray(np.moveaxis(onehot * valid[..., None], -1, 1))
  unlabeled = {('color_aug', 0, 0): _nchw(mix['image']).to(to),
               'pseudo_depth': torch.from_numpy(mix['depth'][..., 0]).to(to),
               'is_labeled': torch.from_numpy(mix['labeled']),
               'onehot_lbl': torch.from_numpy(onehot).to(to), 'lbl': labels(mix['label']),
               'filename': [f'image{i}' for i in range(len(mix['labeled']))]}
  trainer.unlabeled_data_loader = iter([unlabeled])
  unused = replay_dropout([model, trainer.ema_model], masks)
  record = {}
  original_mask = trainer.generate_mix_mask
  trainer.generate_mix_mask = lambda *a: record.setdefault('mask', original_mask(*a))
  original_loss = trainer.calc_pseudo_label_loss

  def pseudo_label_loss(teacher_softmax, student_logits):
    loss, pseudo = original_loss(teacher_softmax=teacher_softmax, student_logits=student_logits)
    max_probs = torch.max(teacher_softmax, dim=1)[0]
    record.update(unlabeled=loss, pseudo=pseudo, quality=float(
        (max_probs >= 0.968).float().mean()), images=unlabeled['color_aug', 0, 0])
    return loss, pseudo

  trainer.calc_pseudo_label_loss = pseudo_label_loss
  supervised = []
  recording(trainer, 'train_step_segmentation', supervised)
  trainer.train_step(1)
  assert not unused, f'{len(unused)} of our dropout masks were not used'
  pseudo = record['pseudo'].numpy()
  result = {'loss/supervised': float(supervised[0][1]),
            'loss/unlabeled (quality-weighted)': float(record['unlabeled']),
            'pseudo_label_quality': record['quality'],
            'mix/mask': record['mask'].float().numpy(), 'mix/images': _nhwc(record['images']),
            'mix/pseudo_labels': np.where(pseudo == REFERENCE_IGNORE, ignore, pseudo)}
  result['gradients'] = transfer_tree(model, gradients=True)['params']
  after = transfer_tree(model)
  result.update(params=after['params'], batch_stats=after['batch_stats'],
                teacher=transfer_tree(trainer.ema_model)['params'])
  return result


PARTS = {'sde': sde_part, 'segment': segment_part}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reference', required=True,
                      help='checkout of improving_segmentation_with_selfsupervised_depth (ssda)')
  parser.add_argument('--parts', default=','.join(PARTS),
                      help=f'comma-separated, of {", ".join(PARTS)}')
  parser.add_argument('--size', default='64x64', help='WxH of the batch')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--tolerance', type=float, default=TOLERANCE)
  parser.add_argument('--out', default='benchmarks/results/reference_parity_cpu.json')
  args = parser.parse_args(argv)
  parts = [p for p in args.parts.split(',') if p]
  unknown = [p for p in parts if p not in PARTS]
  if unknown:
    parser.error(f'--parts: unknown {", ".join(unknown)} (known: {", ".join(PARTS)})')
  width, height = common.parse_size(args.size)
  jax.config.update('jax_default_matmul_precision', 'highest')
  reference = import_reference(args.reference)
  report = Report(args.tolerance)
  for name in parts:
    with tempfile.TemporaryDirectory() as workdir:
      PARTS[name](reference, report, batch=args.batch, height=height, width=width,
                  seed=args.seed, workdir=workdir)
  result = dict(benchmark='reference_parity', reference=args.reference,
                reference_commit=reference.commit, size=[width, height], batch=args.batch,
                seed=args.seed, tolerance=args.tolerance, dtype='float32', rows=report.rows,
                over=[f'{r["part"]}:{r["quantity"]}' for r in report.rows if r['status'] == 'OVER'],
                machine=common.machine())
  common.emit(result, args.out)
  counts = {status: sum(r['status'] == status for r in report.rows)
            for status in ('within', 'float32 rounding', 'OVER')}
  print(f'{len(report.rows)} quantities: ' + ', '.join(f'{n} {k}' for k, n in counts.items()) +
        f' (tolerance {args.tolerance}); wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
