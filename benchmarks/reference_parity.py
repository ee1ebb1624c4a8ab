"""Parity of our training steps with the reference's own training code (issue 34).

    python -m benchmarks.reference_parity --reference DIR [--parts=sde,segment,mtl,ssda,select] \\
        [--size=64x64] [--batch=2] [--seed=0] [--merge] \\
        [--out=benchmarks/results/reference_parity_cpu.json]

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
- mtl: the same with the multi-task network (PAD-Net and the pose network, the SDE loss on the
  labeled batch; configs/ssl_cityscapes.py:method=ours_no_selection against the reference's
  experiment-262 PAD set-up). DepthMix reads the depth labels: this branch's train step allows no
  SDE loss in its unlabeled step (its SSDA runs turn the online depth off).
- ssda: Cross- and Target-Domain DepthMix with Matching Geometry Sampling on the transfer network
  (configs/ssda_gta.py:method=cdm_tdm_mg), at 256x192 (the criterion leaves out the top 80 and
  bottom 100 rows). The reference's MatchingGeometryDataset picks each target crop's source crop
  from our candidates; then its train step runs with the source batch and domain mixing. Compared
  besides the above: the chosen candidates, the source and cross-domain losses, the cross-domain
  mask, images, labels and per-pixel weights. Both sides' margin signs are ours.
- select: the selection's phi (the SDE's pooled level-3 features), the distances farthest point
  selection maximises (with lambda_E E), the depth student's error E and the images chosen: the
  reference's label_selection.acquire_scores and iterative_farthest_point (its depth teacher from
  the SDE files) against our ops with configs/select_cityscapes.py's settings.

The auto-mask's tie-breaking noise is ours on both sides: the reference's torch.randn is replaced,
for the one call per scale it makes, by the draws our step takes from its key; likewise its
nn.Dropout modules (the ASPP's p=0.5) apply the masks our step draws. The reference also
runs in float64 (its model and inputs in float64, torch's default dtype float64 for the tensors it
builds, its mixed-precision casts of depth and poses undone; in the sde part its trees are read
back without float32 rounding): its float32 result's distance from that is the floor of what
float32 can agree on. The report (JSON) gives every quantity's error and its status: within
--tolerance (1e-4), or float32 rounding, or explained (a known difference, EXPLAINED says why),
or OVER.

In the sde part our step runs in float64 too (64-bit JAX, model.compute_dtype=float64, the same
weights and batch as float64, our float32 step's dropout masks replayed, the same auto-mask noise;
the equations of the step that still compute below float64, which should be only that noise's
float32 draw, are listed in the JSON's notes). Each row then adds ours in float64 against the
reference in float64 and our own floor (ours in float32 against ours in float64), and float32
rounding means: ours in float64 within FLOAT64_AGREEMENT (1e-8) of the reference in float64, the
same function on both sides, so that only float32 rounding separates the float32 results. In the
other parts (ours in float32 only) it means ours no farther from the float64 reference than twice
the reference's floor. Per-pixel decisions over the tolerance count as float32 rounding when
every differing one is a near tie (classify_choices). The notes also count the encoder's output
ReLUs that float32 decided otherwise than float64, on each side.

--merge keeps the rows of the parts not run from the existing --out file (which must have run
with the same reference commit, size, batch, seed and tolerance), so that one part can be rerun.
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
                      'loss', 'utils.optimizers', 'utils.schedulers', 'label_selection',
                      'loader.matching_geometry_loader')


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


@contextlib.contextmanager
def replayed_flax_dropout(masks: list):
  """Every flax Dropout applied inside the block (jit tracing included) keeps the units of the
  next of `masks` (recorded_dropout's, in call order) instead of its own draw: our float64 step
  drops what our float32 step dropped (a float64 draw takes other random bits)."""
  import flax.linen as nn
  queue = list(masks)

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, nn.Dropout) or module.deterministic or module.rate == 0:
      return next_fun(*args, **kwargs)
    x, keep = args[0], jnp.asarray(queue.pop(0))
    assert keep.shape == x.shape, (keep.shape, x.shape)
    return jnp.where(keep, x / (1.0 - module.rate), jnp.zeros_like(x))

  with nn.intercept_methods(interceptor):
    yield
  assert not queue, f'{len(queue)} recorded dropout masks were not used'


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


@contextlib.contextmanager
def default_dtype(dtype: str):
  """torch's default dtype is `dtype` inside the block: the reference's float64 control makes the
  tensors it builds itself in float64 too (monodepth's pose matrices start as torch.zeros(B, 4, 4);
  in float32, they put the poses' float32 rounding into every photometric loss: 4e-8)."""
  import torch
  original = torch.get_default_dtype()
  torch.set_default_dtype(getattr(torch, dtype))
  try:
    yield
  finally:
    torch.set_default_dtype(original)


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


def recording(obj, method: str, record: list, snapshot=lambda *args, **kwargs: None):
  """Wraps obj.method so that each call appends a namespace of its args, kwargs, result and
  snapshot(*args, **kwargs) (taken before the call: what it reads from mutable arguments)."""
  original = getattr(obj, method)

  def wrapped(*args, **kwargs):
    before = snapshot(*args, **kwargs)
    result = original(*args, **kwargs)
    record.append(types.SimpleNamespace(args=args, kwargs=kwargs, result=result, snapshot=before))
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


# Quantities that are decisions (per pixel, or the chosen images): their error is the fraction of
# elements that differ.
DISCRETE = ('automask/scale0', 'choice', 'mix/mask', 'mix/pseudo_labels', 'chosen', 'cross/mask',
            'cross/labels', 'matching_geometry/chosen')


def _group_error(ours: dict, reference: dict) -> float:
  """A parameter group's error: its largest difference over its largest reference value (a tensor
  whose values are all near zero, like a zero-initialised bias after one Adam step of +-lr, is not
  wrong by a flipped sign of a vanishing gradient)."""
  difference = max(float(np.max(np.abs(ours[k] - reference[k]))) for k in reference)
  scale = max(float(np.max(np.abs(reference[k]))) for k in reference)
  return difference / scale if scale > 0 else difference


# Differences over the tolerance that are understood, by (part, quantity): why, and the row that
# shows it.
EXPLAINED = {
    ('mtl', 'batch_stats/pose'):
        "the reference's forward of the mixed images also runs its pose network (its unlabeled "
        'inputs keep frames t-1 and t+1) and so moves the pose BatchNorm running statistics; '
        'ours skips that forward, whose poses nothing uses. Nothing reads those statistics: '
        'training normalises by batch statistics, and no later stage takes the pose network '
        "from segment. Before that forward they agree: row 'batch_stats before the mixed "
        "forward/pose'.",
}


# Ours in float64 against the reference in float64, at most this relative error: the same formula
# (float64 rounding through a ResNet101 step is ~1e-13; a different formula, even one float32
# constant or cast, shows at 1e-8 or above).
FLOAT64_AGREEMENT = 1e-8


class Report:
  """One row per compared quantity (per parameter group for trees). `error` is ours against the
  reference in float32; the reference's own float32 rounding (its float32 run against its float64
  run) is the floor beside it. Where a part also runs ours in float64 (sde), each row adds ours in
  float64 against the reference in float64 and our own floor (ours in float32 against ours in
  float64). A quantity is `within` the tolerance, or `float32 rounding`, or `explained`
  (EXPLAINED), or OVER. With ours in float64, `float32 rounding` means ours in float64 within
  FLOAT64_AGREEMENT of the reference in float64: both sides compute the same function, so what
  separates their float32 results is the two float32 roundings, the floors beside it (a condition
  on them would add nothing: ours in float32 is then our own floor, to 1e-8, from the float64
  result). Without ours in float64: ours no farther from the float64 reference than twice the
  reference's floor."""

  def __init__(self, tolerance: float):
    self.tolerance, self.rows, self.notes = tolerance, [], {}

  def _status(self, part: str, quantity: str, error: float, floor: float, ours_to_64: float,
              ours64_to_64: float | None, ours_floor: float | None) -> str:
    if error <= self.tolerance:
      return 'within'
    del ours_floor  # reported, not a condition (the class docstring says why)
    if ours64_to_64 is None:
      rounding = ours_to_64 <= 2 * floor
    else:
      rounding = ours64_to_64 <= FLOAT64_AGREEMENT
    if rounding:
      return 'float32 rounding'
    if (part, quantity) in EXPLAINED:
      return 'explained'
    return 'OVER'

  def _row(self, part: str, quantity: str, errors: tuple, **extra) -> None:
    """errors: (ours vs the reference, the reference's floor, ours vs the float64 reference) and,
    where ours also ran in float64, (ours in float64 vs the float64 reference, our floor)."""
    error, floor, ours_to_64, ours64_to_64, ours_floor = (tuple(errors) + (None, None))[:5]
    status = self._status(part, quantity, error, floor, ours_to_64, ours64_to_64, ours_floor)
    if status == 'explained':
      extra['explanation'] = EXPLAINED[part, quantity]
    if ours64_to_64 is not None:
      extra = dict(ours_float64_vs_reference_float64=ours64_to_64,
                   ours_float32_vs_float64=ours_floor, **extra)
    self.rows.append(dict(part=part, quantity=quantity, max_relative_error=error,
                          reference_float32_vs_float64=floor, ours_vs_reference_float64=ours_to_64,
                          status=status, **extra))
    note = ' '.join(f'{k}={v}' for k, v in extra.items() if k in ('metric', 'worst_tensor'))
    f64 = '' if ours64_to_64 is None else f'  64v64 {ours64_to_64:9.2e}  ours {ours_floor:9.2e}'
    print(f'{part:6s} {quantity:32s} {error:9.2e}  floor {floor:9.2e}  vs64 {ours_to_64:9.2e}'
          f'{f64}  {status}  {note}', flush=True)

  def compare(self, part: str, ours: dict, reference: dict, reference64: dict,
              ours64: dict | None = None) -> None:
    """Rows for every quantity of `ours` (our float32 step) against the reference's float32 and
    float64 runs, and against our float64 run `ours64` where given."""
    for quantity, value in ours.items():
      value64 = None if ours64 is None else ours64[quantity]
      if isinstance(value, dict):
        self._compare_trees(part, quantity, value, reference[quantity], reference64[quantity],
                            value64)
        continue
      if quantity in DISCRETE:
        fraction = lambda a, b: float(np.mean(np.asarray(a) != np.asarray(b)))
        errors = (fraction(value, reference[quantity]),
                  fraction(reference[quantity], reference64[quantity]),
                  fraction(value, reference64[quantity]))
        if value64 is not None:
          errors += (fraction(value64, reference64[quantity]), fraction(value, value64))
        self._row(part, quantity, errors, metric='fraction of elements that differ')
        continue
      errors = (relative_error(value, reference[quantity]),
                relative_error(reference[quantity], reference64[quantity]),
                relative_error(value, reference64[quantity]))
      if value64 is not None:
        errors += (relative_error(value64, reference64[quantity]),
                   relative_error(value, value64))
      extra = {}
      if np.size(value) == 1:
        extra = dict(ours=float(np.asarray(value)), reference=float(reference[quantity]))
      self._row(part, quantity, errors, **extra)

  def _compare_trees(self, part: str, prefix: str, ours: dict, reference: dict,
                     reference64: dict, ours64: dict | None = None) -> None:
    from sdeseg_jax.weights import report as report_lib
    trees = (ours, reference, reference64) + (() if ours64 is None else (ours64,))
    flat = [{k: np.asarray(v) for k, v in report_lib.flatten(tree).items()} for tree in trees]
    if set(flat[0]) != set(flat[1]):
      only_ours, only_reference = set(flat[0]) - set(flat[1]), set(flat[1]) - set(flat[0])
      raise ValueError(f'{prefix}: trees differ: only ours {sorted(only_ours)[:5]}, only the '
                       f'reference {sorted(only_reference)[:5]}')
    for group in sorted({path.split('/')[0] for path in flat[0]}):
      ours_g, ref_g, ref64_g, *ours64_g = ({k: v for k, v in f.items() if k.split('/')[0] == group}
                                           for f in flat)
      per_tensor = {k: relative_error(ours_g[k], ref_g[k]) for k in ours_g}
      worst = max(per_tensor, key=per_tensor.get)
      errors = (_group_error(ours_g, ref_g), _group_error(ref_g, ref64_g),
                _group_error(ours_g, ref64_g))
      extra = {}
      if ours64_g:
        (ours64_g,) = ours64_g
        errors += (_group_error(ours64_g, ref64_g), _group_error(ours_g, ours64_g))
        per_tensor64 = {k: relative_error(ours64_g[k], ref64_g[k]) for k in ours64_g}
        worst64 = max(per_tensor64, key=per_tensor64.get)
        extra = dict(worst_tensor_float64=worst64,
                     worst_tensor_float64_relative_error=per_tensor64[worst64])
      self._row(part, f'{prefix}/{group}', errors, tensors=len(ours_g), worst_tensor=worst,
                worst_tensor_relative_error=per_tensor[worst], **extra)


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


def sde_setup(reference, *, batch: int, height: int, width: int, seed: int,
              workdir: str) -> types.SimpleNamespace:
  """The sde part's starting point: the reference's config (cfg) and files in `workdir` (its SDE,
  the ImageNet ResNets `imagenet`), our config, network and initial state from them, and the
  batch (frames, augmented, intrinsics)."""
  from configs import sde_cityscapes
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
  return types.SimpleNamespace(cfg=cfg, imagenet=imagenet, config=config, network=network,
                               state=state, frames=frames, augmented=augmented,
                               intrinsics=intrinsics)


def sde_part(reference, report: Report, *, batch: int, height: int, width: int, seed: int,
             workdir: str) -> None:
  setup = sde_setup(reference, batch=batch, height=height, width=width, seed=seed,
                    workdir=workdir)
  cfg, imagenet, config, network, state = (setup.cfg, setup.imagenet, setup.config,
                                           setup.network, setup.state)
  sde, frames, augmented, intrinsics = config.sde, setup.frames, setup.augmented, setup.intrinsics
  ours_batch = dict(frames=frames, frames_aug=augmented, intrinsics=intrinsics)
  ours, dropout_masks, noise_key = our_sde_step(network, config.model, sde, state, ours_batch)
  scales = sorted(int(k.rsplit('scale', 1)[1]) for k in ours if k.startswith('disparity/'))
  noise = automask_noise(noise_key, batch, height, width, len(scales))
  ours64, float32_ops = our_sde_step_float64(config.model, sde, state, ours_batch, dropout_masks)
  step = functools.partial(reference_sde_step, reference, cfg, imagenet, frames, augmented,
                           intrinsics, noise, dropout_masks, scales, workdir)
  runs = {dtype: step(dtype) for dtype in ('float32', 'float64')}
  report.compare('sde', ours, runs['float32'], runs['float64'], ours64)
  classify_choices(report, 'sde', ours['choice'], runs['float32'], runs['float64'])
  report.notes['sde'] = dict(
      ours_float64_ops_not_float64=float32_ops,
      encoder_output_relu_decisions=dict(
          ours=relu_decisions(ours['encoder_features'], ours64['encoder_features']),
          reference=relu_decisions(runs['float32']['encoder_features'],
                                   runs['float64']['encoder_features'])))


def relu_decisions(float32, float64) -> dict:
  """The encoder's output ReLUs that float32 decided otherwise than float64: how many, and their
  outputs (the positive one is a pre-activation within float32 rounding of 0). One such decision
  moves the feature distance's gradient by that element's whole share (README, 'Parity with the
  reference')."""
  float32, float64 = np.asarray(float32), np.asarray(float64)
  flipped = (float32 > 0) != (float64 > 0)
  return dict(count=int(flipped.sum()), float32=[float(v) for v in float32[flipped][:10]],
              float64=[float(v) for v in float64[flipped][:10]])


def our_sde_step(network, model, sde, state, batch: dict, masks: list | None = None
                 ) -> tuple[dict, list, jax.Array]:
  """Our sde_pretrain step from `state` on `batch` (numpy frames, frames_aug, intrinsics): the
  quantities sde_part compares, the dropout masks it applied (recorded, or with `masks` replayed
  from an earlier run) and the key of the auto-mask's noise. The terms come from the same forward
  pass and noise as the step's (its key derivation)."""
  from sdeseg_jax import ops
  from sdeseg_jax.stages import sde_pretrain
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  dropout_key, noise_key = jax.random.split(state.key)
  replay = masks is not None
  with replayed_flax_dropout(masks) if replay else recorded_dropout() as recorded:
    outputs, _ = network.apply({'params': state.params, 'batch_stats': state.batch_stats},
                               batch['frames_aug'], train=True, mutable=['batch_stats'],
                               rngs={'dropout': dropout_key})
  masks = masks if replay else recorded
  _, aux = ops.sde_loss(outputs['disp'], batch['frames'], batch['intrinsics'],
                        outputs['pose_prev'], outputs['pose_next'], noise_key,
                        min_depth=sde.min_depth, max_depth=sde.max_depth,
                        smoothness_weight=sde.smoothness)
  step = jax.jit(sde_pretrain.make_train_step(network, model, sde))
  # The float32 step draws from its key the masks the forward above recorded; a replaying run
  # replays them in its step too.
  with replayed_flax_dropout(masks) if replay else contextlib.nullcontext():
    new_state, metrics = step(state, batch)
  scales = sorted(outputs['disp'])
  ours = {}
  for s in scales:
    ours.update({f'disparity/scale{s}': outputs['disp'][s], f'loss/scale{s}': aux['scale_loss'][s],
                 f'photometric/scale{s}': aux['photometric'][s],
                 f'smoothness/scale{s}': aux['smoothness'][s]})
  ours.update({'automask/scale0': aux['automask'][..., 0],
               'automask_fraction': metrics['automask_fraction'],
               'encoder_features': outputs['features'][-1],
               'feature_distance': metrics['loss/feature_distance'],
               'loss/sde': metrics['loss/sde'], 'loss/total': metrics['loss/total'],
               'gradients': adam_gradients(new_state.opt_state),
               'params': jax.device_get(new_state.params),
               'batch_stats': jax.device_get(new_state.batch_stats)})
  ours['choice'] = np.stack([np.asarray(aux['choice'][s]) for s in scales])  # [S, B, H, W]
  return jax.tree.map(np.asarray, ours), masks, noise_key


def float64_tree(tree):
  """Every floating-point leaf of `tree` in float64 (exact: float32 values are float64 values);
  call under jax.enable_x64."""
  return jax.tree.map(
      lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)
      else x, tree)


def our_sde_step_float64(model, sde, state, batch: dict, masks: list) -> tuple[dict, dict]:
  """our_sde_step in float64: the same network with compute_dtype float64, the float32 state and
  batch cast to float64 (the same values), 64-bit JAX, our float32 step's dropout masks replayed
  and the same auto-mask noise (ops.sde_loss draws it in float32 for any dtype). Returns its
  quantities and float32_values of the step: what in it did not run in float64."""
  from sdeseg_jax.models import networks
  from sdeseg_jax.stages import sde_pretrain
  with jax.enable_x64(True):
    model = copy.deepcopy(model)
    model.compute_dtype = 'float64'
    network = networks.build('sde', model)
    state, batch = float64_tree(state), float64_tree({k: jnp.asarray(v) for k, v in batch.items()})
    with replayed_flax_dropout(masks):
      jaxpr = jax.make_jaxpr(sde_pretrain.make_train_step(network, model, sde))(state, batch)
    ours, _, _ = our_sde_step(network, model, sde, state, batch, masks)
  return ours, float32_values(jaxpr)


def float32_values(jaxpr) -> dict:
  """{'primitive at file:line (function)': count} of the equations of `jaxpr` (and of every
  jaxpr inside it) whose outputs include a floating-point value narrower than float64."""
  from jax._src import source_info_util
  found = {}

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if any(jnp.issubdtype(v.aval.dtype, jnp.floating) and jnp.finfo(v.aval.dtype).bits < 64
             for v in eqn.outvars if hasattr(v.aval, 'dtype')):
        where = f'{eqn.primitive.name} at {source_info_util.summarize(eqn.source_info)}'
        found[where] = found.get(where, 0) + 1
      for param in eqn.params.values():
        for sub in param if isinstance(param, (list, tuple)) else (param,):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            visit(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            visit(sub)

  visit(jaxpr.jaxpr)
  return found


# The rows of the photometric minimum's per-pixel decisions (classify_choices).
DECISION_ROWS = ('choice', 'automask/scale0')


def classify_choices(report: Report, part: str, ours: np.ndarray, reference: dict,
                     reference64: dict) -> None:
  """Rows DECISION_ROWS over the tolerance become 'float32 rounding' when every pixel whose
  choice differs ([S, B, H, W] `ours` against reference['choice']) is a near tie: its two
  candidates differ (in the float64 reference) by at most twice the largest float32 error of the
  reference's candidates (reference vs reference64 'candidates', [S, B, 4, H, W]), which is the
  size of SSIM's per-pixel float32 error (its E[x^2] - E[x]^2 variances cancel) on either side."""
  flips = np.argwhere(ours != reference['choice'])
  if not len(flips):
    return
  candidates, exact = reference['candidates'], reference64['candidates']
  error = float(np.max(np.abs(candidates - exact)))
  margins = [abs(float(exact[s, b, ours[s, b, y, x], y, x] - exact[s, b, reference['choice'][
      s, b, y, x], y, x])) for s, b, y, x in flips]
  if max(margins) > 2 * error:
    return
  for row in report.rows:
    if row['part'] == part and row['quantity'] in DECISION_ROWS and row['status'] == 'OVER':
      row['status'] = 'float32 rounding'
      row['near_ties'] = dict(pixels=len(flips), largest_margin=max(margins),
                              reference_float32_candidate_error=error)
      print(f"{part:6s} {row['quantity']:32s} float32 rounding: {len(flips)} near ties (margin "
            f'<= {max(margins):.2e}, the candidates\' float32 error {error:.2e})', flush=True)


@contextlib.contextmanager
def photometric_minimum(taken: list):
  """Records the reference's per-pixel minimum over its [B, 4, H, W] photometric candidates
  (torch.min(x, dim=1) in compute_losses): (candidate index [B, H, W], candidates) per call, one
  call per scale."""
  import torch
  original = torch.min

  def minimum(x, *args, **kwargs):
    result = original(x, *args, **kwargs)
    dim = kwargs.get('dim', args[0] if args else None)
    if torch.is_tensor(x) and x.dim() == 4 and x.shape[1] == 4 and dim == 1:
      taken.append((result[1].numpy().copy(), x.detach().numpy().copy()))
    return result

  torch.min = minimum
  try:
    yield
  finally:
    torch.min = original


def reference_sde_step(reference, cfg: dict, imagenet: dict, frames, augmented, intrinsics,
                       noise: list, dropout_masks: list, scales: list, workdir: str,
                       dtype: str) -> dict:
  """The reference's Trainer.train_step on the batch, its model in `dtype`: the quantities that
  sde_part compares, the trees in our layout (and its photometric candidates)."""
  import torch
  cfg = copy.deepcopy(cfg)  # its set-up pops entries
  to = getattr(torch, dtype)
  # Its model from the files, loaded by its own code: the encoder and the feature-distance
  # encoder from ImageNet, the depth decoder and the pose network from the SDE files.
  with imagenet_weights(imagenet):
    model = reference.models.get_model(cfg['model'], 19).to(to)
  inputs = reference_frame_inputs(frames, augmented, intrinsics, scales, dtype)
  if dtype == 'float64':
    keep_float64(model)
  unused_masks = replay_dropout([model], dropout_masks)
  trainer = bare_trainer(reference, cfg, model, [inputs])
  calculator = trainer.monodepth_loss_calculator_train
  for module in (*calculator.backproject_depth.values(), *calculator.project_3d.values()):
    module.to(to)
  record = []
  recording(calculator, 'compute_losses', record)
  taken = []
  with replayed_randn([torch.from_numpy(n).to(to) for n in noise]), \
      photometric_minimum(taken), default_dtype(dtype):
    trainer.train_step(0)
  assert not unused_masks, f'{len(unused_masks)} of our dropout masks were not used'
  outputs, losses = record[0].args[1], record[0].result
  result = {'choice': np.stack([index for index, _ in taken]),
            'candidates': np.stack([values for _, values in taken]).astype(np.float64)}
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
  result['encoder_features'] = _nhwc(outputs['encoder_features'])
  result['loss/sde'] = float(losses['loss'])
  result['loss/total'] = float(losses['loss']) + cfg['training']['feat_dist_lambda'] * distance
  float64 = dtype == 'float64'
  gradients = sde_tree(model, tempfile.mkdtemp(prefix=f'gradients_{dtype}_', dir=workdir),
                       gradients=True, float64=float64)
  after = sde_tree(model, tempfile.mkdtemp(prefix=f'after_{dtype}_', dir=workdir),
                   float64=float64)
  result.update(gradients=gradients['params'], params=after['params'],
                batch_stats=after['batch_stats'])
  return result


def reference_frame_inputs(frames, augmented, intrinsics, scales: list,
                           dtype: str = 'float32') -> dict:
  """The reference loader's SDE inputs of a batch of frame triplets [B, 3, H, W, 3] (torch
  tensors in `dtype`): the intrinsics, the network's colour-augmented frames and the photometric
  targets, frame t at every scale (ours, resized as our step resizes them). In float64 the inverse
  intrinsics and the resized targets are computed in float64 too, as our float64 step computes
  them."""
  import torch
  from sdeseg_jax import ops
  height, width = frames.shape[2:4]
  frames, augmented = frames.astype(dtype), augmented.astype(dtype)
  k = _homogeneous(intrinsics).astype(dtype)
  inputs = {('K', 0): torch.from_numpy(k), ('inv_K', 0): torch.from_numpy(np.linalg.inv(k))}
  for index, frame_id in enumerate((-1, 0, 1)):
    inputs['color_aug', frame_id, 0] = _nchw(augmented[:, index])
    inputs['color', frame_id, 0] = _nchw(frames[:, index])
  with jax.enable_x64(dtype == 'float64'):
    for s in scales[1:]:
      inputs['color', 0, s] = _nchw(ops.photometric.downsample_antialiased(
          jnp.asarray(frames[:, 1]), height // 2 ** s, width // 2 ** s))
  return inputs


class _Float64Outputs(dict):
  """A model's outputs that stay float64 when assigned to (the reference's train step casts
  depth and poses to float32 for mixed precision; the float64 control must not). Its cast of an
  output (`outputs[k] = v.to(torch.float32)`) keeps the float64 output itself: casting the
  float32 copy back would keep its rounding."""

  def __setitem__(self, key, value):
    import torch
    held = self.get(key)
    if (torch.is_tensor(value) and torch.is_tensor(held) and held.dtype == torch.float64 and
        value.dtype != torch.float64 and torch.equal(value, held.to(value.dtype))):
      return
    if torch.is_tensor(value) and value.is_floating_point():
      value = value.double()
    super().__setitem__(key, value)


def keep_float64(model) -> None:
  forward = model.forward
  model.forward = lambda *args, **kwargs: _Float64Outputs(forward(*args, **kwargs))


def module_state(module, gradients: bool = False, residual: bool = False) -> dict:
  """A torch module's state dict, float32 and detached; with `gradients` its parameters' entries
  are their gradients instead (zero where a parameter got none). With `residual`, each floating
  entry is what float32 rounded off instead (v - float32(v), in float32): the two float32 halves
  keep a float64 value to ~2^-48 relative through float32 files (sde_tree)."""
  import torch
  state = module.state_dict()
  if gradients:
    state.update({k: p.grad if p.grad is not None else torch.zeros_like(p)
                  for k, p in module.named_parameters()})
  rounded = lambda v: (v - v.float().double()).float() if residual else v.float()
  return {k: rounded(v.detach().double()) if v.is_floating_point() else v
          for k, v in state.items()}


def numpy_state(model, name: str, gradients: bool = False) -> dict:
  """module_state of the reference model's module `name`, as numpy arrays."""
  return {k: v.numpy() for k, v in module_state(model.models[name], gradients).items()}


def sde_tree(model, folder: str, gradients: bool = False, float64: bool = False) -> dict:
  """The reference model's SDE (or, with `gradients`, its parameters' gradients) written as
  released files and read back by our importer: a tree of our layout. The importer reads float32;
  with `float64` the float32 values and their float32 residuals (module_state) go through it
  apart, and their sums (in float64; the layouts only move, transpose and halve values, which
  keeps both exact) give the float64 values."""
  import torch
  from sdeseg_jax.weights import importers
  from sdeseg_jax.weights import layouts

  def imported(residual):
    sub = os.path.join(folder, 'residual' if residual else 'float32')
    os.makedirs(sub)
    for name, filename in SDE_FILES.items():
      torch.save(module_state(model.models[name], gradients, residual),
                 os.path.join(sub, filename))
    with contextlib.redirect_stdout(sys.stderr):
      components, _ = importers.import_reference_sde(sub)
    return layouts.sde_variables(importers.merge_components(components))

  tree = imported(residual=False)
  if not float64:
    return tree
  return jax.tree.map(lambda a, b: np.asarray(a, np.float64) + np.asarray(b, np.float64),
                      tree, imported(residual=True))


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


def ssl_reference_config(reference, network: str, batch: int, height: int, width: int) -> dict:
  """The branch's own segmentation config (configs/ssda.yml) set as its experiments set SSL with
  Target-Domain DepthMix: ResNet101 OS16 from the SDE; SGD 1e-2, 1e-3 for the encoder (1e-6 for
  the pose network), weight decay 5e-4, clip 10 (experiments.setup_optimizer); DepthMix with the
  ground truth of labeled mixing rows (mix_use_gt), margin 0.03. No source data; colour jitter
  and blur off (their draws are kornia's and numpy's, not ours).

  network 'transfer': the SDE's dec6 decoder with the 64-channel head on level 0
  (experiments.set_segmentation_args). 'mtl': PAD-Net from the SDE with the pose network and the
  SDE loss (weight 1) on the labeled batch (experiment 262's segmentation_args). DepthMix reads
  the depth labels in both: this branch's train_step asserts that the unlabeled step adds no SDE
  loss, so the online depth of its master branch's SSL runs is off ("Changed for SSDA").
  """
  experiments = reference.experiments
  cfg = reference_config(reference, 'ssda.yml')
  cfg, _ = experiments.decoder_variant(cfg, 6, [height, width])
  multitask = network == 'mtl'
  if multitask:
    cfg['model'].update(segmentation_name='mtl_pad', backbone_pretraining=PARITY_SDE,
                        depth_pretraining=PARITY_SDE, pose_pretraining=PARITY_SDE,
                        disable_pose=False, disable_monodepth=False)
    cfg['model']['segmentation_args'] = dict(weights=PARITY_SDE, output_stride=1,
                                             distillation_layer=7, side_output=True, final_layer=9)
    cfg['training'].update(segmentation_lambda=1, monodepth_lambda=1)
  else:
    cfg = experiments.set_segmentation_args(cfg, seg_init=PARITY_SDE, layers=[9],
                                            head_inter=False, output_stride=1)
    cfg['model'].update(backbone_pretraining=PARITY_SDE, depth_pretraining='none')
  cfg['monodepth_options'].update(height=height, width=width, crop_h=height, crop_w=width)
  cfg = experiments.setup_optimizer(cfg, 'sgd', lr=1e-2, blr=1e-3, plr=1e-6 if multitask else None,
                                    slr=None, gclip=10)
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
  each with its frame triplets and intrinsics (multi-task), labels with ignored pixels, min-max
  normalised disparity labels (DepthMix without online depth)."""
  from sdeseg_jax.ops import segmentation
  rng = np.random.default_rng(seed + 50)
  frames = [street_frames(batch, height, width, seed + k) for k in (1, 2)]
  labels = rng.integers(0, num_classes, (2, batch, height, width)).astype(np.int32)
  labels[:, :, :height // 8] = segmentation.IGNORE_LABEL  # a band of unlabeled pixels
  disparity = rng.uniform(size=(batch, height // 8, width // 8))
  disparity = np.asarray(jax.image.resize(disparity, (batch, height, width), 'linear'))
  low, high = disparity.min((1, 2), keepdims=True), disparity.max((1, 2), keepdims=True)
  depth = ((disparity - low) / (high - low)).astype(np.float32)[..., None]
  labeled = np.arange(batch) == 0
  mix_label = np.where(labeled[:, None, None], labels[1], segmentation.IGNORE_LABEL)
  intrinsics = pixel_intrinsics(batch, height, width)
  return {'labeled': dict(image=frames[0][:, 1], frames=frames[0], intrinsics=intrinsics,
                          label=labels[0]),
          'mix': dict(image=frames[1][:, 1], frames=frames[1], intrinsics=intrinsics,
                      label=mix_label.astype(np.int32), labeled=labeled, depth=depth)}


def segmentation_tree(model, gradients: bool = False) -> dict:
  """The reference's segmentation model (or its gradients) as a tree of our layout: the transfer
  network (encoder, segmentation) or the multi-task one (encoder, mtl_decoder, and the pose
  network where the model has one)."""
  from sdeseg_jax.weights import importers

  def state(name):
    return numpy_state(model, name, gradients)

  parts = {'encoder': importers.convert_resnet(state('encoder'), 'encoder')[0]}
  if 'mtl_decoder' in model.models:
    parts['pad'] = importers.convert_padnet(state('mtl_decoder'))[0]
  else:
    decoder = importers.convert_joint_seg_depth_decoder(state('segmentation'))
    parts['seg_decoder'], parts['seg_head'] = decoder['decoder'][0], decoder['head'][0]
  tree = {c: {name: part[c] for name, part in parts.items() if part.get(c)}
          for c in ('params', 'batch_stats')}
  if 'pose' in model.models:
    pose = {'pose_encoder': importers.convert_resnet(state('pose_encoder'), 'encoder')[0],
            'pose_decoder': importers.convert_pose_decoder(state('pose'))[0]}
    for c in tree:
      tree[c]['pose'] = {name: part[c] for name, part in pose.items() if part.get(c)}
  return tree


SSL_METHODS = {'transfer': 'depthmix', 'mtl': 'ours_no_selection'}  # configs/ssl_cityscapes.py


def reference_initial_model(reference, cfg: dict, decoder: str, num_classes: int, workdir: str,
                            seed: int) -> tuple[dict, dict]:
  """The reference SDE files written to `workdir`, and the reference's segmentation model built
  from them with its own random heads (both sides start from these): (its `decoder` module's
  state dict, the whole model as a tree of our layout)."""
  import torch
  reference.models_utils.MachineConfig.DOWNLOAD_MODEL_DIR = workdir
  height, width = (cfg['monodepth_options'][k] for k in ('height', 'width'))
  write_reference_sde(reference, sde_reference_config(reference, cfg['training']['batch_size'],
                                                      height, width),
                      os.path.join(workdir, PARITY_SDE), seed)
  torch.manual_seed(seed)
  model = reference.models.get_model(copy.deepcopy(cfg['model']), num_classes)
  initial_decoder = {k: v.clone() for k, v in model.models[decoder].state_dict().items()}
  return initial_decoder, segmentation_tree(model)


def our_segment_state(config, initial: dict, batch: int, workdir: str, seed: int):
  """(network, train state) of our segment stage for `config`: the converted SDE files through
  config.segment.sde_checkpoint, the reference's new parts (`initial`) over our random ones, no
  colour jitter or blur, batches of `batch`."""
  from sdeseg_jax.models import networks
  from sdeseg_jax.stages import segment
  config.seed = seed
  seg = config.segment
  seg.sde_checkpoint = convert('reference_sde', os.path.join(workdir, PARITY_SDE),
                               os.path.join(workdir, 'sde_ckpt'))
  seg.strong_augment.update(jitter_prob=0.0, blur_prob=0.0)
  seg.batch_size = seg.mix_batch_size = batch
  network = networks.build(seg.network, config.model)
  state = segment.create_state(config, workdir, network)
  params, stats = new_parts_from(initial, state.params, state.batch_stats)
  return network, state.replace(params=params, batch_stats=stats,
                                ema_params=jax.tree.map(jnp.copy, params),
                                opt_state=state.tx.init(params))


def ssl_part(network_kind: str, reference, report: Report, *, batch: int, height: int,
             width: int, seed: int, workdir: str) -> None:
  """Target-Domain DepthMix on the transfer (`network_kind` 'transfer') or multi-task ('mtl')
  network: the reference's Trainer.train_step (labeled CE, + the SDE loss under multi-task; then
  its train_step_segmentation_unlabeled: the mean teacher in train mode, under multi-task the
  student's online forward with its SDE loss and disparity, the DepthMix mask, the mixed images and
  teacher distributions, the quality-weighted CE; clipping, SGD, the teacher update) against our
  segment step (configs/ssl_cityscapes.py, method=depthmix or ours_no_selection)."""
  from configs import ssl_cityscapes
  from sdeseg_jax.stages import segment
  num_classes = 19
  cfg = ssl_reference_config(reference, network_kind, batch, height, width)
  decoder = 'mtl_decoder' if network_kind == 'mtl' else 'segmentation'
  initial_decoder, initial = reference_initial_model(reference, cfg, decoder, num_classes,
                                                      workdir, seed)
  config = ssl_cityscapes.get_config(f'method={SSL_METHODS[network_kind]}')
  config.segment.depthmix_online_depth = False  # as the reference's branch runs
  network, state = our_segment_state(config, initial, batch, workdir, seed)
  batch_arrays = segment_batch(batch, height, width, num_classes, seed)
  ours, masks = our_segment_step(network, config, state, batch_arrays, num_classes)
  noise = None
  if network_kind == 'mtl':  # the labeled batch's SDE loss
    noise = automask_noise(segment.step_keys(state.key)['labeled_sde'], batch, height, width,
                           len(cfg['monodepth_options']['scales']))

  def reference_step(dtype):
    return reference_segment_step(reference, cfg, decoder, initial_decoder, batch_arrays, masks,
                                  noise, num_classes, dtype)

  part = 'segment' if network_kind == 'transfer' else network_kind  # its name in PARTS
  report.compare(part, ours, reference_step('float32'), reference_step('float64'))


def new_parts_from(initial: dict, params: dict, batch_stats: dict) -> tuple[dict, dict]:
  """Our params and batch_stats with the modules that are not from the SDE (the transfer head,
  PAD-Net's distillation and classifiers) taken from the reference's tree `initial`."""
  def merged(ours, reference):
    out = dict(ours)
    if 'seg_head' in reference:
      out['seg_head'] = reference['seg_head']
    if 'pad' in reference:
      out['pad'] = dict(ours['pad'], **{k: v for k, v in reference['pad'].items()
                                         if k not in ('depth_decoder', 'seg_decoder')})
    return jax.tree.map(jnp.asarray, out)
  return merged(params, initial['params']), merged(batch_stats, initial['batch_stats'])


def automask_noise(key, batch: int, height: int, width: int, num_scales: int) -> list:
  """The auto-mask tie-breaking noise that ops.sde_loss draws from `key`: one [B, 2, H, W] per
  scale (the reference adds it to its channels-first identity losses)."""
  return [np.moveaxis(np.asarray(jax.random.normal(k, (batch, height, width, 2))), -1, 1).copy()
          for k in jax.random.split(key, num_scales)]


def our_segment_step(network, config, state, batch_arrays: dict, num_classes: int
                     ) -> tuple[dict, list]:
  """Our segment step's compared quantities, and the dropout masks it drew (in call order)."""
  from sdeseg_jax.stages import segment
  seg = config.segment
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
  ours = {'loss/supervised': metrics['loss/supervised']}
  if seg.network == 'mtl':
    ours['loss/sde_labeled'] = metrics['loss/sde_labeled']
    ours['batch_stats before the mixed forward'] = {
        'pose': jax.device_get(new_state.batch_stats['pose'])}
  # The reference's mean teacher has no pose network (ours keeps an unused copy).
  teacher = {k: v for k, v in jax.device_get(new_state.ema_params).items() if k != 'pose'}
  ours.update({'loss/unlabeled (quality-weighted)':
                   metrics['pseudo_label_quality'] * metrics['loss/unlabeled'],
               'pseudo_label_quality': metrics['pseudo_label_quality'],
               'mix/mask': mixes['mix']['mask'][..., 0], 'mix/images': mixes['mix']['images'],
               'mix/pseudo_labels': mixes['mix']['pseudo'],
               'gradients': jax.device_get(clipped), 'params': jax.device_get(new_state.params),
               'teacher': teacher, 'batch_stats': jax.device_get(new_state.batch_stats)})
  if seg.source.enabled:
    _, g = segment.match_geometry(ours_batch['source'], ours_batch['mix']['depth'],
                                  tuple(seg.source.geometry_rows))
    cross = mixes['cross']
    ours.update({'matching_geometry/chosen': jnp.argmin(g, axis=1),
                 'loss/source': metrics['loss/source'],
                 'loss/cross_domain': metrics['loss/cross_domain'],
                 'cross/mask': cross['mask'][..., 0], 'cross/images': cross['images'],
                 'cross/labels': cross['labels'], 'cross/weights': cross['weights']})
  return ours, masks


def reference_segmentation_trainer(reference, cfg: dict, decoder: str, initial_decoder: dict,
                                   num_classes: int, to) -> tuple:
  """(model, trainer): the reference's model from the SDE files with its `decoder` module
  (segmentation or mtl_decoder) set to `initial_decoder`, and a bare Trainer around it with the
  mean teacher (made from the float32 weights), both cast to the torch dtype `to`."""
  model = reference.models.get_model(copy.deepcopy(cfg['model']), num_classes)
  model.models[decoder].load_state_dict(initial_decoder)
  trainer = bare_trainer(reference, cfg, model, [None])
  trainer.n_classes = num_classes
  trainer.ema_model = trainer.create_ema_model(model)
  model.to(to)
  trainer.ema_model.to(to)
  trainer.unlabeled_loader = types.SimpleNamespace(ignore_index=REFERENCE_IGNORE)
  return model, trainer


def reference_labels(labels: np.ndarray):
  """Our label maps as the reference's loaders give them: int64 tensors, ignored pixels 250."""
  import torch
  from sdeseg_jax.ops import segmentation
  return torch.from_numpy(np.where(labels == segmentation.IGNORE_LABEL, REFERENCE_IGNORE,
                                   labels).astype(np.int64))


def _labels_of(reference_labels: np.ndarray) -> np.ndarray:
  """The reference's label maps with our ignore id."""
  from sdeseg_jax.ops import segmentation
  return np.where(reference_labels == REFERENCE_IGNORE, segmentation.IGNORE_LABEL,
                  reference_labels)


def reference_one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[..., H, W] -> [..., C, H, W] float32: the reference's one-hot ground truth of labeled
  mixing rows (all zero at ignored pixels)."""
  from sdeseg_jax.ops import segmentation
  valid = labels != segmentation.IGNORE_LABEL
  onehot = np.eye(num_classes, dtype=np.float32)[np.where(valid, labels, 0)] * valid[..., None]
  return np.ascontiguousarray(np.moveaxis(onehot, -1, -3))


def recorded_target_mixing(trainer, unlabeled: dict) -> dict:
  """Wraps the trainer's DepthMix mask and pseudo-label loss; the returned dict then receives the
  mask, the quality-weighted loss, the pseudo-labels, the quality and the mixed images (the
  reference writes them into `unlabeled`, its mixing batch)."""
  import torch
  record = {}
  original_mask, original_loss = trainer.generate_mix_mask, trainer.calc_pseudo_label_loss
  trainer.generate_mix_mask = lambda *args: record.setdefault('mask', original_mask(*args))

  def pseudo_label_loss(teacher_softmax, student_logits):
    loss, pseudo = original_loss(teacher_softmax=teacher_softmax, student_logits=student_logits)
    max_probs = torch.max(teacher_softmax, dim=1)[0]
    record.update(unlabeled=loss, pseudo=pseudo, quality=float(
        (max_probs >= 0.968).float().mean()), images=unlabeled['color_aug', 0, 0])
    return loss, pseudo

  trainer.calc_pseudo_label_loss = pseudo_label_loss
  return record


def target_mixing_result(record: dict) -> dict:
  """The Target-Domain mixing quantities of recorded_target_mixing's record, in our layout."""
  mask = record['mask'].float().numpy()
  return {'loss/unlabeled (quality-weighted)': float(record['unlabeled']),
          'pseudo_label_quality': record['quality'],
          'mix/mask': mask.reshape(mask.shape[0], *mask.shape[-2:]),  # [B(, 1), H, W]
          'mix/images': _nhwc(record['images']),
          'mix/pseudo_labels': _labels_of(record['pseudo'].numpy())}


def reference_trees(model, trainer) -> dict:
  """After the step: the gradients (after clipping), parameters and BatchNorm statistics of the
  reference's model and its teacher's parameters, in our layout."""
  after = segmentation_tree(model)
  return dict(gradients=segmentation_tree(model, gradients=True)['params'],
              params=after['params'], batch_stats=after['batch_stats'],
              teacher=segmentation_tree(trainer.ema_model)['params'])


def reference_segment_step(reference, cfg: dict, decoder: str, initial_decoder: dict,
                           arrays: dict, masks: list, noise: list | None, num_classes: int,
                           dtype: str) -> dict:
  """The reference's Trainer.train_step (step 1) on segment_batch's arrays, its model in `dtype`
  from the SDE files with its `decoder` module (segmentation or mtl_decoder) set to
  `initial_decoder`; `noise`: the auto-mask draws (multi-task). The quantities that ssl_part
  compares, the trees in our layout."""
  import torch
  cfg = copy.deepcopy(cfg)
  to = getattr(torch, dtype)
  multitask = decoder == 'mtl_decoder'
  model, trainer = reference_segmentation_trainer(reference, cfg, decoder, initial_decoder,
                                                  num_classes, to)
  if dtype == 'float64':
    keep_float64(model)
  calculator = trainer.monodepth_loss_calculator_train
  for module in (*calculator.backproject_depth.values(), *calculator.project_3d.values()):
    module.to(to)

  def inputs(part):
    out = {('color_aug', 0, 0): _nchw(part['image'])}
    if multitask:
      out.update(reference_frame_inputs(part['frames'], part['frames'], part['intrinsics'],
                                        list(range(4))))
    return {k: v.to(to) for k, v in out.items()}

  labeled, mix = arrays['labeled'], arrays['mix']
  trainer.train_data_loader = iter([dict(inputs(labeled), lbl=reference_labels(labeled['label']))])
  unlabeled = dict(inputs(mix), pseudo_depth=torch.from_numpy(mix['depth'][..., 0]).to(to),
                   is_labeled=torch.from_numpy(mix['labeled']),
                   onehot_lbl=torch.from_numpy(reference_one_hot(mix['label'], num_classes)).to(to),
                   lbl=reference_labels(mix['label']),
                   filename=[f'image{i}' for i in range(len(mix['labeled']))])
  trainer.unlabeled_data_loader = iter([unlabeled])
  unused = replay_dropout([model, trainer.ema_model], masks)
  record = recorded_target_mixing(trainer, unlabeled)
  supervised, sde_losses = [], []
  # Under multi-task, the pose network's statistics after the labeled forward: the reference's
  # mixed-image forward runs the pose network as well (see EXPLAINED).
  pose_stats = ((lambda *args, **kwargs: {'pose': segmentation_tree(model)['batch_stats']['pose']})
                if multitask else (lambda *args, **kwargs: None))
  recording(trainer, 'train_step_segmentation', supervised, snapshot=pose_stats)
  recording(calculator, 'compute_losses', sde_losses)
  with replayed_randn([torch.from_numpy(n).to(to) for n in noise or []]), default_dtype(dtype):
    trainer.train_step(1)
  assert not unused, f'{len(unused)} of our dropout masks were not used'
  result = {'loss/supervised': float(supervised[0].result)}
  if multitask:
    result['loss/sde_labeled'] = float(sde_losses[0].result['loss'])
    result['batch_stats before the mixed forward'] = supervised[0].snapshot
  return dict(result, **target_mixing_result(record), **reference_trees(model, trainer))


# ---------------------------------------------------------------------------------------------
# (c) SSDA: Cross- and Target-Domain DepthMix with Matching Geometry Sampling


SSDA_SIZE = (256, 192)  # W, H: Matching Geometry leaves out the top 80 and bottom 100 rows
CANDIDATES = 5          # source candidates per target crop (the reference's n_candidates)


def ssda_reference_config(reference, batch: int, height: int, width: int) -> dict:
  """The SSL transfer set-up (ssl_reference_config) with the source domain: its supervised source
  crops, Cross-Domain DepthMix (inter_domain_mix, the margin's sign flipped per pair) beside
  Target-Domain DepthMix, and Matching Geometry Sampling (ssda.yml's matching_geometry: 5
  candidates, log(1 + d), the crop rows left out)."""
  cfg = ssl_reference_config(reference, 'transfer', batch, height, width)
  cfg['training']['unlabeled_segmentation']['inter_domain_mix'] = True
  cfg['matching_geometry']['enabled'] = True
  return cfg


def ssda_batch(batch: int, height: int, width: int, num_classes: int, seed: int) -> dict:
  """segment_batch with the source candidates: CANDIDATES per target crop (rows b*k .. b*k+k-1),
  labels with ignored pixels, the source SDE's raw disparity in (0, 1)."""
  from sdeseg_jax.ops import segmentation
  arrays = segment_batch(batch, height, width, num_classes, seed)
  rows = batch * CANDIDATES
  rng = np.random.default_rng(seed + 60)
  labels = rng.integers(0, num_classes, (rows, height, width)).astype(np.int32)
  labels[:, -height // 8:] = segmentation.IGNORE_LABEL
  coarse = rng.uniform(0.02, 0.6, (rows, height // 16, width // 16))
  depth = np.asarray(jax.image.resize(coarse, (rows, height, width), 'linear'), np.float32)
  arrays['source'] = dict(image=street_frames(rows, height, width, seed + 3)[:, 1], label=labels,
                          depth=depth[..., None])
  return arrays


def ssda_part(reference, report: Report, *, batch: int, height: int, width: int, seed: int,
              workdir: str) -> None:
  """CDM + TDM + Matching Geometry on the transfer network: the reference's
  MatchingGeometryDataset picking each target crop's source crop, then its Trainer.train_step
  (labeled CE, source CE, train_step_domain_mixing, train_step_segmentation_unlabeled; clipping,
  SGD, the teacher update) against our segment step (configs/ssda_gta.py, method=cdm_tdm_mg),
  at SSDA_SIZE. The candidates and the margins' signs are ours on both sides (the reference draws
  them with random.choice and random.random)."""
  from configs import ssda_gta
  from sdeseg_jax.ops import mixing
  from sdeseg_jax.stages import segment
  del height, width
  width, height = SSDA_SIZE
  num_classes = 19
  cfg = ssda_reference_config(reference, batch, height, width)
  initial_decoder, initial = reference_initial_model(reference, cfg, 'segmentation', num_classes,
                                                      workdir, seed)
  config = ssda_gta.get_config('method=cdm_tdm_mg')
  seg = config.segment
  seg.source.batch_size, seg.source.candidates = batch, CANDIDATES
  network, state = our_segment_state(config, initial, batch, workdir, seed)
  arrays = ssda_batch(batch, height, width, num_classes, seed)
  ours, masks = our_segment_step(network, config, state, arrays, num_classes)
  margin_key = jax.random.split(segment.step_keys(state.key)['cross_mixing'], 3)[0]
  flipped = np.asarray(mixing.signed_margin(margin_key, seg.depthmix_margin, (batch,))) < 0

  def reference_step(dtype):
    return reference_ssda_step(reference, cfg, initial_decoder, arrays, masks, flipped,
                               num_classes, dtype)

  report.compare('ssda', ours, reference_step('float32'), reference_step('float64'))


@contextlib.contextmanager
def cuda_on_cpu():
  """Tensor.cuda() is the identity (the reference's domain mixing moves its weights there)."""
  import torch
  original = torch.Tensor.cuda
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  try:
    yield
  finally:
    torch.Tensor.cuda = original


@contextlib.contextmanager
def replayed_python_random(choices: list, uniforms: list):
  """random.choice returns `choices` in order, random.random `uniforms` (the stdlib draws the
  reference's matching-geometry loader and domain mixing take)."""
  import random
  originals = random.choice, random.random
  choice_queue, uniform_queue = list(choices), list(uniforms)
  random.choice = lambda sequence: sequence[choice_queue.pop(0)]
  random.random = lambda: uniform_queue.pop(0)
  try:
    yield
  finally:
    random.choice, random.random = originals
  assert not choice_queue and not uniform_queue, 'prepared draws were not used'


def reference_ssda_step(reference, cfg: dict, initial_decoder: dict, arrays: dict, masks: list,
                        flipped: np.ndarray, num_classes: int, dtype: str) -> dict:
  """The reference's Matching Geometry choice and Trainer.train_step on ssda_batch's arrays in
  `dtype`; `flipped`: which pairs' margins our step flipped. Our step ran its forwards in the
  order labeled, source, teacher, Cross-Domain mix, Target-Domain mix; the reference runs the
  teacher again before the Target-Domain mix. Both of its teacher passes get our teacher's
  dropout masks (we run the teacher once, for both mixes)."""
  import torch
  cfg = copy.deepcopy(cfg)
  to = getattr(torch, dtype)
  model, trainer = reference_segmentation_trainer(reference, cfg, 'segmentation', initial_decoder,
                                                  num_classes, to)
  labeled, mix, source = arrays['labeled'], arrays['mix'], arrays['source']
  trainer.train_data_loader = iter([{('color_aug', 0, 0): _nchw(labeled['image']).to(to),
                                     'lbl': reference_labels(labeled['label'])}])
  onehot = reference_one_hot(mix['label'], num_classes)
  # Its loaders' rows: the target crops and the source candidates.
  targets = [{('color_aug', 0, 0): _nchw(mix['image'][i:i + 1])[0].to(to),
              'pseudo_depth': torch.from_numpy(mix['depth'][i, ..., 0]).to(to),
              'is_labeled': torch.tensor(bool(mix['labeled'][i])),
              'onehot_lbl': torch.from_numpy(onehot[i]).to(to),
              'lbl': reference_labels(mix['label'][i]), 'filename': f'image{i}'}
             for i in range(len(mix['image']))]
  candidates = [{('color_aug', 0, 0): _nchw(source['image'][j:j + 1])[0].to(to),
                 'pseudo_depth': torch.from_numpy(source['depth'][j, ..., 0]).to(to),
                 'lbl': reference_labels(source['label'][j]), 'candidate': j}
                for j in range(len(source['image']))]
  geometry = reference.loader_matching_geometry_loader.MatchingGeometryDataset(
      candidates, targets, cfg['matching_geometry'])
  # Its candidates for target crop b: ours, rows b*k .. b*k+k-1; its margin flips: ours.
  order = list(range(len(candidates)))
  with replayed_python_random(order, [0.75 if f else 0.25 for f in flipped]):
    pairs = [geometry[b] for b in range(len(targets))]
    chosen = np.array([p[0]['candidate'] for p in pairs])
    unlabeled = _collate([p[1] for p in pairs])

    trainer.mg_loader = True
    trainer.mg_data_loader = iter([(_collate([p[0] for p in pairs]), unlabeled)])
    trainer.use_source_data = True
    per_forward = len(masks) // 5
    assert per_forward * 5 == len(masks), len(masks)
    labeled_m, source_m, teacher_m, cross_m, target_mix_m = (
        masks[i * per_forward:(i + 1) * per_forward] for i in range(5))
    unused = replay_dropout([model, trainer.ema_model], labeled_m + source_m + teacher_m +
                            cross_m + teacher_m + target_mix_m)
    record = recorded_target_mixing(trainer, unlabeled)
    supervised, cross_entropies, mixes = [], [], []
    recording(trainer, 'train_step_segmentation', supervised)
    recording(reference.train, 'cross_entropy2d', cross_entropies)
    # Its Cross-Domain masks: strong_parameters['Mix'] is reassigned between the calls.
    recording(reference.train, 'strongTransformOneMix', mixes,
              snapshot=lambda parameters, **kwargs: parameters['Mix'].clone())
    with cuda_on_cpu(), default_dtype(dtype):
      trainer.train_step(1)
  assert not unused, f'{len(unused)} of our dropout masks were not used'
  cross = cross_entropies[0]  # domain mixing runs first
  cross_images = torch.cat([mixes[i].result[0] for i in range(2)])  # its two (image, label) mixes
  cross_mask = torch.cat([mixes[i].snapshot.float().reshape(1, *cross_images.shape[2:])
                          for i in range(2)])
  return {'matching_geometry/chosen': chosen - np.arange(len(targets)) * CANDIDATES,
          'loss/supervised': float(supervised[0].result),
          'loss/source': float(supervised[1].result), 'loss/cross_domain': float(cross.result),
          'cross/mask': cross_mask.numpy(), 'cross/images': _nhwc(cross_images),
          'cross/labels': _labels_of(cross.kwargs['target'].numpy()),
          'cross/weights': cross.kwargs['pixel_weights'].numpy(),
          **target_mixing_result(record), **reference_trees(model, trainer)}


def _collate(rows: list[dict]) -> dict:
  """A batch of loader rows, as torch's default collation gives it."""
  import torch
  return {k: (torch.stack([r[k] for r in rows]) if torch.is_tensor(rows[0][k])
              else [r[k] for r in rows]) for k in rows[0]}


# ---------------------------------------------------------------------------------------------
# (d) Selection


# The reference's own selection ("Ours (Diversity and Uncertainty Sampling)", experiment 211 of its
# master branch, whose label_selection.py the ssda branch keeps unchanged): phi from the SDE's
# level-3 decoder block ('u3'), average-pooled to 4 x 8 and standardised, L2 distances, plus 1000
# times the depth student's error E ('abs_log').
SELECTION_SETTINGS = dict(depth_lambda=1, entropy_lambda=0, depth_error_types='abs_log',
                          bias_weight=1000, depth_ifp_weight=1,
                          ifp_args={'p': 2, 'pool': 'avg', 'h': 4, 'm': 'u3', 'norm': True})
SELECTION_IMAGES = 6    # images scored
SELECTION_INITIAL = [0]  # already selected
SELECTION_NEW = 3       # images added by farthest point selection


def student_reference_config(reference, height: int, width: int) -> dict:
  """The reference's depth student for selection (experiment 211): ResNet50 OS16 + dec9 and the
  transfer head on level 8 (acquire_scores also takes its entropy), random weights; the SDE files
  are its depth teacher (config data.depth_teacher)."""
  experiments = reference.experiments
  cfg = reference_config(reference, 'ssda.yml')
  cfg['model']['backbone_name'] = 'resnet50'
  cfg, _ = experiments.decoder_variant(cfg, 9, [height, width])
  cfg = experiments.set_segmentation_args(cfg, seg_init='none', layers=[8], head_inter=True,
                                          output_stride=2, head_dropout=0.0)
  cfg['model'].update(backbone_pretraining='none', depth_pretraining='none',
                      pose_pretraining='none', disable_pose=True, disable_monodepth=False)
  cfg['monodepth_options'].update(height=height, width=width, crop_h=height, crop_w=width)
  cfg['data']['depth_teacher'] = PARITY_SDE
  cfg['label_selection'] = copy.deepcopy(SELECTION_SETTINGS)
  cfg['training'].update(batch_size=1, resume=None)
  cfg['source_data'] = {}
  return reference.train.prepare_config_logic(cfg)


def selection_part(reference, report: Report, *, batch: int, height: int, width: int, seed: int,
                   workdir: str) -> None:
  """phi, the distances farthest point selection uses, the depth student's E and the images it
  adds: the reference's label_selection.acquire_scores (its depth teacher built by its own
  build_depth_trainer_model from the SDE files, the student given; only its Trainer is replaced,
  by one whose loader holds our images) and iterative_farthest_point, against our ops as the
  select_labels stage calls them (configs/select_cityscapes.py). Images are H x 2H, as Cityscapes'
  (the features pool to 4 x 8)."""
  del batch  # one image at a time, as both score
  import torch
  from configs import select_cityscapes
  from sdeseg_jax import ops
  from sdeseg_jax.models import networks
  from sdeseg_jax.stages.select_labels import students
  from sdeseg_jax.weights import layouts
  width = 2 * height
  reference.models_utils.MachineConfig.DOWNLOAD_MODEL_DIR = workdir
  write_reference_sde(reference, sde_reference_config(reference, 2, height, width),
                      os.path.join(workdir, PARITY_SDE), seed)
  cfg = student_reference_config(reference, height, width)
  images = street_frames(SELECTION_IMAGES, height, width, seed + 7)[:, 1]
  rng = np.random.default_rng(seed + 8)
  coarse = rng.uniform(size=(SELECTION_IMAGES, height // 8, width // 8))
  disparity = np.asarray(jax.image.resize(coarse, (SELECTION_IMAGES, height, width), 'linear'))
  low, high = disparity.min((1, 2), keepdims=True), disparity.max((1, 2), keepdims=True)
  teacher_disparity = ((disparity - low) / (high - low)).astype(np.float32)

  # The student: the reference's random model, BN statistics of street frames; ours converted.
  torch.manual_seed(seed)
  student = reference.models.get_model(copy.deepcopy(cfg['model']), 19)
  damp_residual_branches(student)
  calibrate_batch_norm(student, student, [{('color_aug', 0, 0): _nchw(frames[:, 1])}
                                          for frames in calibration_frames(height, width, seed)])
  student_state = copy.deepcopy(student.state_dict())

  # Ours.
  config = select_cityscapes.get_config()
  select = config.select
  sde = layouts.read_sde(convert('reference_sde', os.path.join(workdir, PARITY_SDE),
                                 os.path.join(workdir, 'sde_ckpt')))
  sde_network = networks.build('sde', config.model)
  levels = sde_network.apply(sde, jnp.asarray(images), method='depth')['levels']
  pooled = ops.adaptive_avg_pool(levels[int(select.feature_level)], tuple(select.feature_pool))
  phi = ops.standardize_features(pooled)
  student_network = students.student_network(config, 'depth')
  student_variables = student_tree(student)
  disparity = student_network.apply(student_variables, jnp.asarray(images))['disp'][0]
  errors = ops.selection_error(disparity, ops.normalize_disparity(
      jnp.asarray(teacher_disparity)[..., None]))
  unselected = np.setdiff1d(np.arange(SELECTION_IMAGES), SELECTION_INITIAL)
  scores = np.where(np.isin(np.arange(SELECTION_IMAGES), unselected), np.asarray(errors), 0.0)
  distances = np.sqrt(np.maximum(0, np.sum((np.asarray(phi)[:, None] - np.asarray(phi)[None]) ** 2,
                                           -1)))
  distances = distances + select.lambda_e * scores[None, :]
  np.fill_diagonal(distances, 0)
  chosen = ops.farthest_point_selection(phi, np.asarray(SELECTION_INITIAL), SELECTION_NEW,
                                        scores=scores, weight=select.lambda_e)
  ours = {'phi (pooled)': pooled, 'E': np.asarray(errors)[unselected],
          'distances (with lambda_E E)': distances, 'chosen': np.asarray(chosen)}

  def reference_step(dtype):
    return reference_selection(reference, cfg, student_state, images, teacher_disparity,
                               unselected, dtype)

  report.compare('select', ours, reference_step('float32'), reference_step('float64'))


def student_tree(model) -> dict:
  """The reference's depth student (encoder and depth decoder) as our depth student's variables."""
  from sdeseg_jax.weights import importers
  parts = {'encoder': importers.convert_resnet(numpy_state(model, 'encoder'), 'encoder')[0],
           'depth_decoder': importers.convert_decoder(numpy_state(model, 'depth'))[0]}
  return {c: {name: jax.tree.map(jnp.asarray, part[c]) for name, part in parts.items()}
          for c in ('params', 'batch_stats')}


def reference_selection(reference, cfg: dict, student_state: dict, images: np.ndarray,
                        teacher_disparity: np.ndarray, unselected: np.ndarray, dtype: str) -> dict:
  """The reference's acquire_scores and iterative_farthest_point on `images` in `dtype`."""
  import torch
  selection = reference.label_selection
  to = getattr(torch, dtype)
  cfg = copy.deepcopy(cfg)
  student = reference.models.get_model(copy.deepcopy(cfg['model']), 19)
  student.load_state_dict(student_state)
  student.to(to)
  # Its loader's rows, batch size 1: pseudo_depth [1, 1, H, W] as the master branch's loader
  # (where label selection runs) gives it.
  loader = [{('color_aug', 0, 0): _nchw(images[i:i + 1]).to(to),
             'pseudo_depth': torch.from_numpy(teacher_disparity[i][None, None]).to(to),
             'idx': torch.tensor([i])} for i in range(len(images))]
  trainer = types.SimpleNamespace(model=student, device='cpu', cfg=cfg, train_data_loader=loader)
  pooled = []
  originals = (selection.build_trainer, selection.build_depth_trainer_model,
               selection._calc_feature_distance)

  def calc_feature_distance(features, *args, **kwargs):
    pooled.extend(features)
    return originals[2](features, *args, **kwargs)

  selection.build_trainer = lambda *args, **kwargs: trainer
  selection.build_depth_trainer_model = lambda c: originals[1](c).to(to)
  selection._calc_feature_distance = calc_feature_distance
  try:
    with contextlib.redirect_stdout(sys.stderr):
      scores, distances = selection.acquire_scores(
          cfg, samples_to_score=[int(i) for i in unselected],
          all_samples=list(range(len(images))), model_file=None,
          depth_ifp_w=cfg['label_selection']['depth_ifp_weight'])
      chosen, _ = selection.iterative_farthest_point(list(SELECTION_INITIAL), distances,
                                                     SELECTION_NEW)
  finally:
    (selection.build_trainer, selection.build_depth_trainer_model,
     selection._calc_feature_distance) = originals
  errors = {int(s['idx']): float(s['depth_error'][0]) for s in scores}
  return {'phi (pooled)': _nhwc(torch.cat(pooled)),
          'E': np.array([errors[int(i)] for i in unselected]),
          'distances (with lambda_E E)': distances['distances'].numpy(),
          'chosen': np.array(chosen)}


PARTS = {'sde': sde_part, 'segment': functools.partial(ssl_part, 'transfer'),
         'mtl': functools.partial(ssl_part, 'mtl'), 'ssda': ssda_part, 'select': selection_part}


# What a merged result (--merge) must share with the file it merges into.
SETTINGS = ('reference_commit', 'size', 'batch', 'seed', 'tolerance')


def merged_result(path: str, result: dict, parts: list[str]) -> dict:
  """`result` (the parts just run) with the rows and notes of every other part from the result
  at `path`, which ran with the same SETTINGS; the parts keep their order there, new ones
  last."""
  import json
  if not os.path.exists(path):
    return result
  with open(path) as f:
    old = json.load(f)
  differing = [k for k in SETTINGS if old.get(k) != result[k]]
  if differing:
    raise SystemExit(f'--merge: {path} ran with other {", ".join(differing)} '
                     f'({", ".join(f"{k}={old.get(k)!r}" for k in differing)})')
  order = list(dict.fromkeys([r['part'] for r in old['rows']] + parts))
  rows = {p: [r for r in old['rows'] if r['part'] == p] for p in order if p not in parts}
  rows.update({p: [r for r in result['rows'] if r['part'] == p] for p in parts})
  notes = {p: n for p, n in old.get('notes', {}).items() if p not in parts}
  notes.update(result['notes'])
  kept = [p for p in order if p not in parts and rows[p]]
  return dict(result, rows=[r for p in order for r in rows[p]], notes=notes,
              merged=dict(kept_from=path, kept_parts=kept, run_parts=parts))


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
  parser.add_argument('--merge', action='store_true',
                      help='keep the rows of the parts not run from the existing --out (run '
                           'with the same reference commit, size, batch, seed and tolerance)')
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
                notes=report.notes, machine=common.machine())
  if args.merge:
    result = merged_result(args.out, result, parts)
  result['over'] = [f'{r["part"]}:{r["quantity"]}' for r in result['rows']
                    if r['status'] == 'OVER']
  common.emit(result, args.out)
  counts = {status: sum(r['status'] == status for r in result['rows'])
            for status in ('within', 'float32 rounding', 'explained', 'OVER')}
  print(f'{len(result["rows"])} quantities: ' + ', '.join(f'{n} {k}' for k, n in counts.items()) +
        f' (tolerance {args.tolerance}); wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
