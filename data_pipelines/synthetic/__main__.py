"""Renders a synthetic world from the command line; prints the summary as JSON.

    python -m data_pipelines.synthetic --out DIR --domain city --layout cityscapes \
        --size 256x128 --sequences 8 --frames 5 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys

from data_pipelines.synthetic.layouts import LAYOUTS
from data_pipelines.synthetic.scene import DOMAINS
from data_pipelines.synthetic.world import render_world


def _size(text: str) -> tuple[int, int]:
  """'256x128' -> (256, 128)."""
  try:
    width, height = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'size must look like WIDTHxHEIGHT (e.g. 256x128), got {text!r}') from None
  if width < 1 or height < 1:
    raise argparse.ArgumentTypeError(f'size must be positive, got {text!r}')
  return width, height


def _count(minimum: int):
  """An argparse type: an integer >= minimum."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f'must be >= {minimum}, got {value}')
    return value
  return parse


def _fraction(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
  if not 0.0 <= value < 1.0:
    raise argparse.ArgumentTypeError(f'must be in [0, 1), got {value}')
  return value


def _scene_param(text: str) -> tuple[str, object]:
  """'name=value' with a JSON value (a number, true or false)."""
  name, sep, value = text.partition('=')
  if not sep:
    raise argparse.ArgumentTypeError(f'expected NAME=VALUE, got {text!r}')
  try:
    return name, json.loads(value)
  except json.JSONDecodeError:
    raise argparse.ArgumentTypeError(
        f'value of {name} must be a number, true or false, got {value!r}') from None


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m data_pipelines.synthetic',
      description="Render a procedural street world in a real dataset's on-disk layout.")
  parser.add_argument('--out', required=True, help='dataset root to write')
  parser.add_argument('--domain', required=True, choices=DOMAINS, help='appearance and geometry')
  parser.add_argument('--layout', required=True, choices=LAYOUTS, help='on-disk dataset layout')
  parser.add_argument('--size', type=_size, default=(256, 128), help='WxH of images (256x128)')
  parser.add_argument('--sequences', type=_count(1), default=8, help='number of snippets (8)')
  parser.add_argument('--frames', type=_count(1), default=5, help='frames per snippet (5)')
  parser.add_argument('--seed', type=_count(0), default=0, help='world seed (0)')
  parser.add_argument('--val_fraction', '--val-fraction', type=_fraction, default=0.2,
                      help='fraction of snippets held out (0.2)')
  parser.add_argument('--static', action='store_true', help='no moving objects')
  parser.add_argument('--num_workers', '--num-workers', type=_count(0), default=0,
                      help='parallel processes (0: render in this process)')
  parser.add_argument('--scene_param', '--scene-param', type=_scene_param, action='append',
                      default=[], metavar='NAME=VALUE',
                      help='override a SceneParams field, e.g. bus_probability=0.5 (repeatable)')
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    summary = render_world(
        args.out, domain=args.domain, layout=args.layout, size=args.size,
        sequences=args.sequences, frames=args.frames, seed=args.seed,
        val_fraction=args.val_fraction, moving_objects=not args.static,
        num_workers=args.num_workers, scene_params=dict(args.scene_param))
  except (ValueError, FileExistsError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(json.dumps(summary, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
