"""Renders a procedural street world in a real dataset's layout (or the generic folder layout);
prints the summary as JSON.

    python -m data_pipelines.synthetic --out DIR --domain city --layout cityscapes \\
        --size 256x128 --sequences 8 --frames 5 --seed 0
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags

from data_pipelines.synthetic.layouts import LAYOUTS
from data_pipelines.synthetic.scene import DOMAINS
from data_pipelines.synthetic.world import render_world


def _size(text: str) -> tuple[int, int]:
  """'256x128' -> (256, 128)."""
  try:
    width, height = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise ValueError(f'--size must look like WIDTHxHEIGHT (e.g. 256x128), got {text!r}') from None
  if width < 1 or height < 1:
    raise ValueError(f'--size must be positive, got {text!r}')
  return width, height


def _scene_param(text: str) -> tuple[str, object]:
  """'name=value' with a JSON value (a number, true or false)."""
  name, sep, value = text.partition('=')
  if not sep:
    raise ValueError(f'--scene_param: expected NAME=VALUE, got {text!r}')
  try:
    return name, json.loads(value)
  except json.JSONDecodeError:
    raise ValueError(f'--scene_param: value of {name} must be a number, true or false, got '
                     f'{value!r}') from None


def _define_flags() -> None:
  """The command's flags, defined only when it runs (the tests import this module)."""
  flags.DEFINE_string('out', None, 'dataset root to write')
  flags.DEFINE_enum('domain', None, DOMAINS, 'appearance and geometry')
  flags.DEFINE_enum('layout', None, LAYOUTS, 'on-disk dataset layout')
  flags.mark_flags_as_required(['out', 'domain', 'layout'])
  flags.DEFINE_string('size', '256x128', 'WIDTHxHEIGHT of the images')
  flags.DEFINE_integer('sequences', 8, 'number of snippets', lower_bound=1)
  flags.DEFINE_integer('frames', 5, 'frames per snippet', lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'world seed', lower_bound=0)
  flags.DEFINE_float('val_fraction', 0.2, 'fraction of snippets held out, in [0, 1)',
                     lower_bound=0.0)
  flags.register_validator('val_fraction', lambda v: v < 1.0, '--val_fraction must be < 1')
  flags.DEFINE_boolean('static', False, 'no moving objects')
  flags.DEFINE_integer('num_workers', 0, 'parallel processes (0: render in this process)',
                       lower_bound=0)
  flags.DEFINE_multi_string('scene_param', [], 'NAME=VALUE: override a SceneParams field, e.g. '
                            'bus_probability=0.5 (repeatable)')
  flags.DEFINE_integer('videos', 0, 'folder layout: the first N clips as videos/<clip>.mp4 '
                       'instead of frames', lower_bound=0)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  try:
    summary = render_world(
        f.out, domain=f.domain, layout=f.layout, size=_size(f.size), sequences=f.sequences,
        frames=f.frames, seed=f.seed, val_fraction=f.val_fraction, moving_objects=not f.static,
        num_workers=f.num_workers, scene_params=dict(_scene_param(p) for p in f.scene_param),
        videos=f.videos)
  except (ValueError, FileExistsError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 1
  print(json.dumps(summary, indent=1))
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(main)
