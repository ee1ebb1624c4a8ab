"""Converts PyTorch checkpoints into an Orbax checkpoint of Flax variables.

  python -m sdeseg_jax.weights.convert --from torchvision --src resnet101-63fe2227.pth \\
      --depth 101 --output_stride 16 --out /ckpt/imnet_r101
  python -m sdeseg_jax.weights.convert --from torchvision --src resnet18-f37072fd.pth \\
      --depth 18 --num_input_images 2 --out /ckpt/imnet_r18_pose
  python -m sdeseg_jax.weights.convert --from reference_sde \\
      --src mono_cityscapes_1024x512_r101dil_aspp_dec6_lr5_fd2_crop512x512bs4 --out /ckpt/sde
  python -m sdeseg_jax.weights.convert --from reference_sde \\
      --src gta_rev2_fc046/best_model_without_opt.pkl --output_stride 32 --decoder dec11 \\
      --out /ckpt/sde_gta     # the SSDA source SDE: a whole-model checkpoint

The checkpoint holds one plain nested dict of numpy arrays:
- torchvision: {'params': <ResNet>, 'batch_stats': <ResNet>};
- reference_sde: {'params': {'encoder', 'depth_decoder', 'pose_encoder', 'pose_decoder'},
  'batch_stats': {'encoder', 'depth_decoder', 'pose_encoder'}} (the SDE composite's submodules).
The load report is printed; any missing / unexpected / mis-shaped key aborts the conversion.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags

from sdeseg_jax.weights import importers
from sdeseg_jax.weights import report as report_lib


def convert(source: str, src: str, depth: int = 101, output_stride: int | None = None,
            num_input_images: int = 1, decoder: str = 'dec6', pose_depth: int = 18
            ) -> tuple[dict, list[report_lib.LoadReport]]:
  """Reads and converts; returns (the tree to save, the load reports). Raises WeightImportError."""
  if source == 'torchvision':
    variables, report = importers.import_torchvision_resnet(
        src, depth, output_stride or 32, num_input_images)
    return variables, [report]
  if source == 'reference_sde':
    components, reports = importers.import_reference_sde(
        src, depth, output_stride or 16, decoder, pose_depth)
    return importers.merge_components(components), list(reports.values())
  raise ValueError(f'--from {source}: expected torchvision or reference_sde')


def run(source: str, src: str, out: str, depth: int = 101, output_stride: int | None = None,
        num_input_images: int = 1, decoder: str = 'dec6', overwrite: bool = False) -> int:
  """The command on its flags' values: converts, prints the load reports and writes the checkpoint
  `out`; 1 with the reason on stderr when `out` exists (and not `overwrite`) or the import fails."""
  if os.path.exists(out) and not overwrite:
    print(f'{out} exists (pass --overwrite to replace it)', file=sys.stderr)
    return 1
  if not os.path.exists(src):
    print(f'--src {src}: no such file or folder', file=sys.stderr)
    return 1
  try:
    tree, reports = convert(source, src, depth, output_stride, num_input_images, decoder)
  except report_lib.WeightImportError as e:
    print(e, file=sys.stderr)
    return 1
  for report in reports:
    print(report.describe())
  from sdeseg_jax.training import checkpointing  # Orbax lives there
  path = checkpointing.write_tree(out, tree, overwrite=overwrite)
  print(f'wrote {path}')
  return 0


def _define_flags() -> None:
  """The command's flags, defined only when it runs (tests and tools import this module)."""
  flags.DEFINE_enum('from', None, ['torchvision', 'reference_sde'], 'format of --src')
  flags.DEFINE_string('src', None, 'torchvision: the .pth file; reference_sde: the folder with '
                      'encoder.pth, depth.pth, pose_encoder.pth, pose.pth, or a whole-model '
                      'checkpoint such as best_model_without_opt.pkl')
  flags.DEFINE_string('out', None, 'checkpoint directory to create')
  flags.mark_flags_as_required(['from', 'src', 'out'])
  flags.DEFINE_integer('depth', 101, 'ResNet depth (the depth encoder for reference_sde)')
  flags.register_validator('depth', lambda depth: depth in (18, 34, 50, 101),
                           'must be one of 18, 34, 50, 101')
  flags.DEFINE_integer('output_stride', None,
                       'encoder output stride (default: 32 torchvision, 16 reference_sde)')
  flags.register_validator('output_stride', lambda stride: stride in (None, 8, 16, 32),
                           'must be one of 8, 16, 32')
  flags.DEFINE_integer('num_input_images', 1,
                       'torchvision: frames stacked in conv1 (2 for the pose encoder)')
  flags.DEFINE_enum('decoder', 'dec6', ['dec6', 'dec9', 'dec11'],
                    'reference_sde: depth decoder design (dec11 with --output_stride 32 for the '
                    'SSDA source-domain SDE)')
  flags.DEFINE_boolean('overwrite', False, 'replace an existing --out')


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  return run(f['from'].value, f.src, f.out, f.depth, f.output_stride, f.num_input_images,
             f.decoder, f.overwrite)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
