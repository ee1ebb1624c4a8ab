"""Imports a video as a folder of frames, the `sequences/<clip>/` of the folder dataset layout.

    python -m data_pipelines.import_video --video clip.mp4 --out ROOT/sequences/clip \
        [--fps 10] [--resize WxH] [--format jpg|png] [--overwrite]

The frames are named 000000.jpg, 000001.jpg, ... in time order, consecutive at the extracted rate
(without --fps: every frame of the video, at its own rate). They are decoded into a temporary
folder beside --out (`.<name>.partial`), which is renamed to --out when complete: an interrupted
import leaves no --out (or the old one), and rerunning the same command starts it again cleanly.
An existing, non-empty --out is refused unless --overwrite replaces it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

from absl import app
from absl import flags

from data_pipelines import video
from data_pipelines.datasets.common import DataError
from data_pipelines.files import DiskFullError
from data_pipelines.prepare import parse_resolution


def _beside(out: str, suffix: str) -> str:
  """A hidden folder next to `out` (same file system, so a rename moves it whole)."""
  return os.path.join(os.path.dirname(out), f'.{os.path.basename(out)}.{suffix}')


def _check_out(out: str, overwrite: bool) -> None:
  """A DataError unless `out` is absent, an empty folder, or may be replaced."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise DataError(f'--out {out}: is a file, not a folder')
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise DataError(f'--out {out}: is not empty ({len(os.listdir(out))} entries); choose another '
                    'folder, or pass --overwrite to replace it')


def _replace_folder(new: str, out: str) -> None:
  """Puts folder `new` at `out`, replacing what is there. rename() replaces only an empty folder,
  so an old one is first moved aside, then deleted once the new one is in place."""
  old = _beside(out, 'old')
  if os.path.isdir(out) and os.listdir(out):
    os.replace(out, old)
  os.replace(new, out)
  shutil.rmtree(old, ignore_errors=True)


def import_video(video_path: str, out: str, *, fps: float | None = None,
                 size: tuple[int, int] | None = None, image_format: str = 'jpg',
                 overwrite: bool = False) -> dict:
  """Extracts the frames of `video_path` into folder `out` (see the module docstring).

  Returns:
    A summary: frames (count), fps (of the frames written), width, height, out, video (the
    probed VideoInfo of the source).
  """
  out = os.path.abspath(out.rstrip(os.sep) or os.sep)
  _check_out(out, overwrite)
  info = video.probe(video_path)
  if fps is not None and fps > info.fps * 1.001:
    logging.warning('--fps %g exceeds the %g fps of %s: frames will be repeated', fps, info.fps,
                    video_path)
  partial = _beside(out, 'partial')
  shutil.rmtree(partial, ignore_errors=True)  # what an interrupted import left
  shutil.rmtree(_beside(out, 'old'), ignore_errors=True)
  os.makedirs(partial)
  try:
    count = video.extract_frames(video_path, partial, fps=fps, size=size,
                                 image_format=image_format)
    if count == 0:
      raise DataError(f'{video_path}: ffmpeg decoded no frames from this video')
    _replace_folder(partial, out)
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  width, height = size or (info.width, info.height)
  return dict(frames=count, fps=fps or info.fps, width=width, height=height, out=out,
              video=info)


def _cli() -> None:
  flags.DEFINE_string('video', None, 'Video file to import (any format ffmpeg reads).')
  flags.DEFINE_string('out', None, 'Folder to write the frames into, e.g. ROOT/sequences/CLIP.')
  flags.DEFINE_float('fps', None, 'Frames per second to extract (default: the video\'s own rate, '
                     'every frame).')
  flags.DEFINE_string('resize', None, 'WIDTHxHEIGHT of the written frames (default: the video\'s '
                      'size).')
  flags.DEFINE_enum('format', 'jpg', list(video.FRAME_FORMATS), 'Image format of the frames.')
  flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --out.')
  flags.mark_flags_as_required(['video', 'out'])

  def main(argv):
    if len(argv) > 1:
      sys.exit(f'FATAL unexpected arguments: {" ".join(argv[1:])}')
    logging.getLogger().setLevel(logging.INFO)
    f = flags.FLAGS
    try:
      try:
        size = parse_resolution(f.resize) if f.resize else None
      except DataError as e:
        raise DataError(f'--resize: {e}') from None
      summary = import_video(f.video, f.out, fps=f.fps, size=size, image_format=f.format,
                             overwrite=f.overwrite)
    except (DataError, DiskFullError) as e:
      sys.exit(f'FATAL {type(e).__name__}: {e}')
    print(f'{summary["frames"]} frames at {summary["fps"]:g} fps, {summary["width"]}x'
          f'{summary["height"]}, {f.format}, in {summary["out"]} (from {f.video}: '
          f'{summary["video"].frames} frames at {summary["video"].fps:g} fps)')

  app.run(main)


if __name__ == '__main__':
  _cli()
