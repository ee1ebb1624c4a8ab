"""Converts PyTorch checkpoints into an Orbax checkpoint of Flax variables.

  python -m sdeseg_jax.weights.convert --from torchvision --src resnet101-63fe2227.pth \\
      --depth 101 --output_stride 16 --out /ckpt/imnet_r101
  python -m sdeseg_jax.weights.convert --from torchvision --src resnet18-f37072fd.pth \\
      --depth 18 --num_input_images 2 --out /ckpt/imnet_r18_pose
  python -m sdeseg_jax.weights.convert --from reference_sde \\
      --src mono_cityscapes_1024x512_r101dil_aspp_dec6_lr5_fd2_crop512x512bs4 --out /ckpt/sde

The checkpoint holds one plain nested dict of numpy arrays:
- torchvision: {'params': <ResNet>, 'batch_stats': <ResNet>};
- reference_sde: {'params': {'encoder', 'depth_decoder', 'pose_encoder', 'pose_decoder'},
  'batch_stats': {'encoder', 'depth_decoder', 'pose_encoder'}} (the SDE composite's submodules).
The load report is printed; any missing / unexpected / mis-shaped key aborts the conversion.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m sdeseg_jax.weights.convert',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--from', dest='source', required=True,
                      choices=['torchvision', 'reference_sde'])
  parser.add_argument('--src', required=True,
                      help='torchvision: the .pth file; reference_sde: the folder with encoder.pth, '
                           'depth.pth, pose_encoder.pth, pose.pth')
  parser.add_argument('--out', required=True, help='checkpoint directory to create')
  parser.add_argument('--depth', type=int, default=101, choices=[18, 34, 50, 101],
                      help='ResNet depth (the depth encoder for reference_sde)')
  parser.add_argument('--output_stride', type=int, default=None, choices=[8, 16, 32],
                      help='encoder output stride (default: 32 torchvision, 16 reference_sde)')
  parser.add_argument('--num_input_images', type=int, default=1,
                      help='torchvision: frames stacked in conv1 (2 for the pose encoder)')
  parser.add_argument('--decoder', default='dec6', choices=['dec6', 'dec9', 'dec11'],
                      help='reference_sde: depth decoder design (dec11 with --output_stride 32 for '
                           'the SSDA source-domain SDE)')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  if os.path.exists(args.out) and not args.overwrite:
    print(f'{args.out} exists (pass --overwrite to replace it)', file=sys.stderr)
    return 1
  try:
    tree, reports = convert(args.source, args.src, args.depth, args.output_stride,
                            args.num_input_images, args.decoder)
  except report_lib.WeightImportError as e:
    print(e, file=sys.stderr)
    return 1
  for report in reports:
    print(report.describe())
  from sdeseg_jax.training import checkpointing  # Orbax lives there
  path = checkpointing.write_tree(args.out, tree, overwrite=args.overwrite)
  print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
