"""Reading and writing video with the ffmpeg binary that the imageio-ffmpeg package bundles.

No system ffmpeg is needed: `imageio_ffmpeg.get_ffmpeg_exe()` is a static build installed with the
package. ffmpeg runs as a plain subprocess (never with a preexec_fn, which is unsafe in the
multithreaded processes of TF and JAX). A video ffmpeg cannot read is a DataError naming the file
and what ffmpeg said (the last line of its stderr).

  probe(path) -> VideoInfo                    frame rate, size, frame count, duration
  extract_frames(path, folder, fps, size)     frames as 000000.jpg, 000001.jpg, ... in `folder`
  write_mp4(path, frames, fps)                H.264 yuv420p .mp4 from uint8 [H, W, 3] frames
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
from typing import Sequence

import imageio_ffmpeg
import numpy as np

from data_pipelines import files
from data_pipelines.datasets.common import DataError

FRAME_FORMATS = ('jpg', 'png')
# Frame files are named by their zero-padded number, the naming the dataset readers parse.
FRAME_PATTERN = '%06d'
# JPEG quality of extracted frames on ffmpeg's 2 (best usable) .. 31 scale: near-lossless, since
# the frames are decoded once more by the pipelines.
_JPEG_QSCALE = 2
# H.264 constant rate factor of written videos: visually lossless, small for synthetic scenes.
_CRF = 18


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What probe() reads from a video file.

  Attributes:
    fps: the video stream's average frame rate (frames per second).
    width, height: size of the decoded frames, after the rotation a phone stores in the file
      (ffmpeg applies it when decoding, so extracted frames have this size).
    frames: number of frames in the stream (counted, not estimated from the header).
    duration: seconds.
  """
  fps: float
  width: int
  height: int
  frames: int
  duration: float


def ffmpeg_exe() -> str:
  """The path of the ffmpeg binary bundled with imageio-ffmpeg."""
  return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_said(stderr: str) -> str:
  """The last line ffmpeg wrote to stderr, without its '[demuxer @ 0x...]' prefix."""
  lines = [line.strip() for line in stderr.replace('\r', '\n').splitlines() if line.strip()]
  if not lines:
    return 'no message'
  return re.sub(r'^(\[[^\]]* @ 0x[0-9a-f]+\] ?)+', '', lines[-1])


def _check_readable(path: str) -> None:
  """A DataError for a video path that is not a readable file, before ffmpeg says it worse."""
  if not os.path.isfile(path):
    what = 'a folder, not a video file' if os.path.isdir(path) else 'no such video file'
    raise DataError(f'{path}: {what}')


def _ffmpeg(args: Sequence[str], stdin: bytes | None = None) -> tuple[int, str]:
  """(exit status, stderr) of ffmpeg run with `args`."""
  result = subprocess.run([ffmpeg_exe(), '-hide_banner', '-nostdin', *args], input=stdin,
                          capture_output=True, check=False)
  return result.returncode, result.stderr.decode('utf-8', 'replace')


def _failed(path: str, what: str, status: int, stderr: str) -> DataError:
  """The error of an ffmpeg run about `path` that could not do `what`."""
  return DataError(f'{path}: ffmpeg could not {what} (exit status {status}): '
                   f'{ffmpeg_said(stderr)}')


def _run(args: Sequence[str], path: str, what: str, stdin: bytes | None = None) -> str:
  """ffmpeg's stderr after running it with `args`; a non-zero exit is a DataError about `path`
  that says `what` was being done and ffmpeg's last line."""
  status, stderr = _ffmpeg(args, stdin)
  if status != 0:
    raise _failed(path, what, status, stderr)
  return stderr


def _parse_info(stderr: str, path: str) -> VideoInfo:
  """A VideoInfo from the log of `ffmpeg -i path -map 0:v:0 -c copy -f null -` (info level):
  the input's header lines, then the progress line with the number of frames copied."""
  stream = re.search(r'Stream #0:\d+.*?: Video: (.*)', stderr)
  if stream is None:
    # ffmpeg's last line is then about the output it could not open: not worth repeating.
    raise DataError(f'{path}: no video stream in this file (is it truncated, or audio only?)')
  line = stream.group(1)
  size = re.search(r'[ ,](\d+)x(\d+)[ ,\[]', line + ' ')
  rate = re.search(r'([\d.]+)(k?) fps', line) or re.search(r'([\d.]+)(k?) tbr', line)
  counts = re.findall(r'frame=\s*(\d+)', stderr)
  if size is None or rate is None:
    raise DataError(f'{path}: ffmpeg reports no frame size or rate for its video stream: {line}')
  if not counts or int(counts[-1]) == 0:
    raise DataError(f'{path}: no video frames could be read ({ffmpeg_said(stderr)})')
  width, height = int(size.group(1)), int(size.group(2))
  rotation = re.search(r'rotation of (-?[\d.]+) degrees', stderr)
  if rotation and round(abs(float(rotation.group(1)))) % 180 == 90:
    width, height = height, width  # a portrait phone video, stored landscape
  fps = float(rate.group(1)) * (1000 if rate.group(2) else 1)
  frames = int(counts[-1])
  duration = re.search(r'Duration: (\d+):(\d+):([\d.]+)', stderr)
  seconds = (int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3))
             if duration else frames / fps)
  return VideoInfo(fps=fps, width=width, height=height, frames=frames, duration=seconds)


def probe(path: str) -> VideoInfo:
  """Frame rate, size, frame count and duration of the first video stream of `path`.

  The frames are counted by copying the stream's packets to nowhere (no decoding: fast), since
  headers of some containers omit the count or get it wrong.
  """
  _check_readable(path)
  status, stderr = _ffmpeg(['-i', path, '-map', '0:v:0?', '-c', 'copy', '-f', 'null', '-'])
  if status != 0 and not ('Input #0' in stderr and 'Video:' not in stderr):
    raise _failed(path, 'read this video', status, stderr)
  return _parse_info(stderr, path)  # an input without a video stream is named as such there


def _filters(fps: float | None, size: tuple[int, int] | None) -> list[str]:
  """The -vf chain: resample to `fps` (dropping or repeating frames), then scale to `size`."""
  chain = []
  if fps is not None:
    # round=up: tick k takes the frame on screen at time k / fps, so a 12 fps video at 4 fps
    # gives its frames 0, 3, 6, ... (the default, round=near, gives 1, 4, 7, ...).
    chain.append(f'fps={fps:g}:round=up')
  if size is not None:
    chain.append(f'scale={size[0]}:{size[1]}:flags=lanczos')
  return chain


def extract_frames(path: str, folder: str, *, fps: float | None = None,
                   size: tuple[int, int] | None = None, image_format: str = 'jpg') -> int:
  """Decodes `path` into `folder` as 000000.<image_format>, 000001..., consecutive in time.

  Args:
    path: a video file ffmpeg reads.
    folder: an existing folder; files of the same names are overwritten.
    fps: frames per second to extract at (ffmpeg's fps filter: at each tick k / fps, the frame
      on screen then).
      None keeps every frame of the video once, as stored (no frames repeated or dropped, also
      in a variable-frame-rate video).
    size: (width, height) to scale the frames to; None keeps the video's size.
    image_format: 'jpg' (quality near lossless) or 'png'.

  Returns:
    The number of frames written.
  """
  if image_format not in FRAME_FORMATS:
    raise DataError(f'image format {image_format!r}: expected one of {FRAME_FORMATS}')
  if fps is not None and not fps > 0:
    raise DataError(f'fps {fps}: must be positive')
  _check_readable(path)
  args = ['-v', 'error', '-i', path, '-map', '0:v:0']
  chain = _filters(fps, size)
  if chain:
    args += ['-vf', ','.join(chain)]
  if fps is None:
    args += ['-fps_mode', 'passthrough']
  if image_format == 'jpg':
    args += ['-q:v', str(_JPEG_QSCALE)]
  else:
    args += ['-pix_fmt', 'rgb24']
  pattern = os.path.join(folder, f'{FRAME_PATTERN}.{image_format}')
  with files.named_if_disk_full(folder):
    stderr = _run([*args, '-start_number', '0', '-y', pattern], path, 'decode this video')
  count = len(frame_files(folder, image_format))
  if stderr.strip():
    # ffmpeg decodes past damaged packets (a truncated download, a corrupt stretch): keep what it
    # could decode, but say so, since frames may be missing.
    logging.warning('%s: ffmpeg reported %d problems decoding it (damaged or truncated?); the '
                    '%d frames it could decode were written. Its last line: %s', path,
                    len(stderr.strip().splitlines()), count, ffmpeg_said(stderr))
  return count


def frame_files(folder: str, image_format: str | None = None) -> list[str]:
  """The names of the frame files in `folder` (digits only, then .jpg or .png), in time order."""
  formats = (image_format,) if image_format else FRAME_FORMATS
  names = [name for name in os.listdir(folder)
           if re.fullmatch(r'\d+\.(\w+)', name) and name.rsplit('.', 1)[1] in formats]
  return sorted(names, key=lambda name: int(name.split('.')[0]))


def _check_frames(frames: Sequence[np.ndarray], path: str) -> tuple[int, int]:
  """(width, height) of `frames` after checking they can make an H.264 yuv420p video."""
  if not len(frames):
    raise DataError(f'{path}: no frames to write')
  shape = np.shape(frames[0])
  for i, frame in enumerate(frames):
    if np.shape(frame) != shape or np.asarray(frame).dtype != np.uint8 or len(shape) != 3 \
        or shape[2] != 3:
      raise DataError(f'{path}: frame {i} is {np.asarray(frame).dtype} {np.shape(frame)}; every '
                      f'frame must be uint8 [H, W, 3] of one size (the first is {shape})')
  height, width = shape[:2]
  if height % 2 or width % 2:
    # yuv420p stores colour at half resolution in both directions.
    raise DataError(f'{path}: frames are {width}x{height}; H.264 yuv420p needs an even width '
                    'and height: crop or pad them')
  return width, height


def write_mp4(path: str, frames: Sequence[np.ndarray], fps: float) -> None:
  """Writes `frames` (uint8 [H, W, 3], even H and W) as an H.264 yuv420p .mp4 at `fps`, the
  format every player reads, atomically (see files.write_atomic)."""
  if not fps > 0:
    raise DataError(f'{path}: fps {fps} must be positive')
  width, height = _check_frames(frames, path)
  raw = b''.join(np.ascontiguousarray(frame).tobytes() for frame in frames)

  def save(tmp):
    _run(['-v', 'error', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', f'{width}x{height}',
          '-framerate', f'{fps:g}', '-i', '-', '-c:v', 'libx264', '-crf', str(_CRF),
          '-pix_fmt', 'yuv420p', '-movflags', '+faststart', '-y', tmp],
         path, 'write this video', stdin=raw)
  files.write_atomic(path, save)
