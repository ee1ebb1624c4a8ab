"""Inference CLI: segmentation (and depth, for multi-task networks) of images, folders or videos.

    python -m sdeseg_jax.predict --checkpoint W/segment/best --input IMAGE_FOLDER_OR_VIDEO \\
        [--input ...] --out DIR

Videos (.mp4, .avi, .mov, .mkv, .webm; decoded with imageio's bundled ffmpeg) give one set of
outputs per frame, named <video>_<frame:06d>. For each image: <name>_seg.png (colourised classes),
<name>_overlay.png (over the image), <name>_labelIds.png (the dataset's raw label ids, e.g.
Cityscapes': the official result format, named after the input so cityscapesscripts and the
benchmark server accept it; the folder layout's: class ids, or raw ids through its id_map) and, for
multi-task networks, <name>_disparity.png. The network design comes from the segment run's
config.json beside the checkpoint. Images are resized to the working resolution for inference and
the predictions back to each image's own size (nearest for classes, bilinear for disparity).
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import sys
from typing import Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import imageio.v3 as iio

from data_pipelines import datasets
from data_pipelines import sources
from data_pipelines.datasets import common
from sdeseg_jax.models import networks
from sdeseg_jax.training import checkpointing
from sdeseg_jax.weights import layouts

# imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp (to keep Ctrl-C from reaching it) unless
# this is set. A preexec_fn runs Python in the forked child before exec, which is unsafe in this
# multithreaded (JAX) process and can deadlock. Without it a Ctrl-C stops ffmpeg too, as it should.
os.environ.setdefault('IMAGEIO_FFMPEG_NO_PREVENT_SIGINT', '1')

def disparity_image(disparity: np.ndarray) -> np.ndarray:
  """[H, W] disparity -> [H, W, 3] uint8, near = bright (per-image min-max)."""
  low, high = float(disparity.min()), float(disparity.max())
  grey = (disparity - low) / max(high - low, 1e-6)
  return (np.stack([grey, grey ** 0.5, 1 - grey], -1) * 255).astype(np.uint8)


def run_config(checkpoint: str) -> ml_collections.ConfigDict:
  """The config of the segment run that wrote `checkpoint` (<run>/segment/{best,ckpt})."""
  path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no run config beside the checkpoint {checkpoint} (the '
                            'segment stage writes it)')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def run_label_spec(config: ml_collections.ConfigDict, checkpoint: str) -> common.LabelSpec:
  """The classes the segment run that wrote `checkpoint` (<run>/segment/...) trained on: its
  dataset's, read from its prepared tree where the layout keeps them there (the folder layout's
  classes.json)."""
  entry = config.data.target
  reader = datasets.READERS[entry.name]
  if hasattr(reader, 'label_spec'):  # fixed by the dataset: no tree needed
    return reader.label_spec
  workdir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
  return reader.label_spec_at(sources.roots(entry, workdir, 'target')[1])


class Predictor:
  """predict(image [H, W, 3] uint8) -> dict(classes [H, W] train ids, disparity [H, W] or None).

  label_spec: the classes of the run's dataset (their colours and raw label ids)."""

  def __init__(self, checkpoint: str):
    config = run_config(checkpoint)
    kind = config.segment.network
    self.resolution = tuple(config.data.target.resolution)
    self.label_spec = run_label_spec(config, checkpoint)
    network = networks.build(kind, config.model)
    variables = layouts.read_variables(checkpoint, 'name W/segment/best or W/segment/ckpt of a '
                                       'finished segment run')
    self._apply = jax.jit(lambda x: networks.forward(
        network, kind, variables['params'], variables['batch_stats'], x, train=False, key=None,
        frames=False)[0])

  def __call__(self, image: np.ndarray) -> dict:
    height, width = image.shape[:2]
    x = np.asarray(Image.fromarray(image).resize(self.resolution, Image.Resampling.BILINEAR),
                   np.float32)[None] / 255.0
    out = self._apply(x)
    classes = np.asarray(jnp.argmax(out['logits'][0], -1)).astype(np.uint8)
    classes = np.asarray(Image.fromarray(classes).resize((width, height), Image.Resampling.NEAREST))
    disparity = None
    if 'disp' in out:
      disparity = np.asarray(jax.image.resize(out['disp'][0][0], (height, width, 1), 'bilinear'))
      disparity = disparity[..., 0]
    return dict(classes=classes, disparity=disparity)


VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm')


def _extension(path: str) -> str:
  return os.path.splitext(path)[1].lower()


def input_files(paths: list[str]) -> list[str]:
  """Images and videos named directly or found (recursively) in the folders, sorted."""
  known = common.IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
  files = []
  for path in paths:
    if os.path.isdir(path):
      files += [p for p in glob.glob(os.path.join(path, '**', '*'), recursive=True)
                if _extension(p) in known]
    elif not os.path.exists(path):
      raise FileNotFoundError(f'{path}: no such file or folder')
    elif _extension(path) in known:
      files.append(path)
    else:
      raise ValueError(f'{path}: not an image ({", ".join(common.IMAGE_EXTENSIONS)}), a video '
                       f'({", ".join(VIDEO_EXTENSIONS)}) or a folder')
  if not files:
    raise ValueError(f'no images or videos in {paths}')
  return sorted(set(files))


def frames(path: str):
  """Yields (name, [H, W, 3] uint8 RGB) for an image (one) or a video (every frame)."""
  stem = os.path.splitext(os.path.basename(path))[0]
  if _extension(path) in VIDEO_EXTENSIONS:
    try:
      for index, frame in enumerate(iio.imiter(path, plugin='FFMPEG')):
        yield f'{stem}_{index:06d}', np.ascontiguousarray(frame[..., :3])
    except (OSError, RuntimeError, StopIteration) as e:
      raise ValueError(f'{path}: cannot decode the video ({e})') from e
    return
  with Image.open(path) as opened:
    yield stem.removesuffix('_leftImg8bit'), np.asarray(opened.convert('RGB'))


def write_outputs(out_dir: str, name: str, image: np.ndarray, prediction: dict,
                  spec: common.LabelSpec) -> None:
  os.makedirs(out_dir, exist_ok=True)
  colours = spec.colour_table()[prediction['classes']]
  Image.fromarray(colours).save(os.path.join(out_dir, f'{name}_seg.png'))
  Image.fromarray(spec.raw_id_table()[prediction['classes']]).save(
      os.path.join(out_dir, f'{name}_labelIds.png'))
  overlay = (0.5 * image.astype(np.float32) + 0.5 * colours).astype(np.uint8)
  Image.fromarray(overlay).save(os.path.join(out_dir, f'{name}_overlay.png'))
  if prediction['disparity'] is not None:
    Image.fromarray(disparity_image(prediction['disparity'])).save(
        os.path.join(out_dir, f'{name}_disparity.png'))


def run(checkpoint: str, inputs: Sequence[str], out: str) -> int:
  """The command on its flags' values: writes the outputs of every image and video frame of
  `inputs` to `out` and prints a summary; 1 and `error: ...` on stderr for bad input."""
  try:
    predictor = Predictor(checkpoint)
    files = input_files(inputs)
    count = 0
    for name, image in itertools.chain.from_iterable(frames(path) for path in files):
      write_outputs(out, name, image, predictor(image), predictor.label_spec)
      count += 1
  except (FileNotFoundError, ValueError, checkpointing.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote predictions of {count} images/frames from {len(files)} files to {out}')
  return 0


def _define_flags() -> None:
  """The command's flags, defined only when it runs (other entry points import this module)."""
  flags.DEFINE_string('checkpoint', None, 'W/segment/best or W/segment/ckpt')
  flags.DEFINE_multi_string('input', None, 'images, videos and/or folders')
  flags.DEFINE_string('out', None, 'folder to write the outputs into')
  flags.mark_flags_as_required(['checkpoint', 'input', 'out'])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]} (each input needs its own --input)')
  return run(flags.FLAGS.checkpoint, flags.FLAGS.input, flags.FLAGS.out)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
