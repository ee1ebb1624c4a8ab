"""Finds the video frame each labelled image of a folder dataset was taken from; writes pairs.json.

    python -m data_pipelines.pair_frames --root ROOT [--clip CLIP ...] [--max_error E]

In the folder layout, labelled images are ROOT/images/<split>/[<clip>/]<name>.{png,jpg} and video
frames ROOT/sequences/<clip>/<number>.{jpg,png}. The readers find a labelled image's neighbours
(frames number-1 and number+1) through ROOT/pairs.json:

    {"images/train/<clip>/<name>.png": "sequences/<clip>/000123.jpg", ...}

(paths relative to ROOT, '/'-separated, keys sorted). This command writes it by content: each image
is compared with every frame of its clip as a grayscale thumbnail 64 px wide (at the frames'
aspect ratio), and pairs with the frame of the smallest mean absolute difference (0-255 scale).
Exact matching cannot work: the video's compression and a re-encoded image change the pixels.

Which images: those in images/<split>/<clip>/ folders whose sequences/<clip>/ exists (with --clip:
those of the named clips only), and, with --clip, also the images directly in images/<split>/,
each searched in all the named clips.

An image is left out of pairs.json, and reported by name, when its best frame differs by more than
--max_error (it is not from this video, or the video was cut without it), or when that frame lacks
a neighbour (the clip's first or last frame: re-import more of the video around it). Left out is
not fatal: the image stays a labelled image, only without neighbours. Entries of an existing
pairs.json for images this run did not look at are kept, so clips can be paired one at a time.
The run fails (status 1) only on bad input or when it pairs none of the images it looked at.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import sys

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from data_pipelines import files
from data_pipelines import video
from data_pipelines.datasets import common
from data_pipelines.datasets.common import DataError
from data_pipelines.files import DiskFullError

PAIRS_FILE = 'pairs.json'
# Thumbnail width: small enough that compression noise and slight misalignment average out,
# large enough that consecutive frames of a moving camera still differ.
THUMBNAIL_WIDTH = 64
# Mean absolute grayscale difference (0-255) above which a best frame is not taken as a match.
# A frame and its JPEG or H.264 copy differ by about 1-3; unrelated scenes by tens.
DEFAULT_MAX_ERROR = 10.0


@dataclasses.dataclass(frozen=True)
class Clip:
  """The frames of sequences/<name>/ as thumbnails.

  Attributes:
    name: the clip folder's name.
    frames: frame paths relative to the root ('/'-separated), in time order.
    numbers: [N] int, each frame's number (its file name's stem).
    thumbnails: [N, h, w] float32 grayscale thumbnails, `size` = (w, h).
  """
  name: str
  frames: tuple[str, ...]
  numbers: np.ndarray
  thumbnails: np.ndarray
  size: tuple[int, int]

  def missing_neighbours(self, index: int) -> list[int]:
    """Which of frames number-1 and number+1 of frame `index` the clip lacks."""
    number = int(self.numbers[index])
    return [n for n in (number - 1, number + 1) if n not in self.numbers]


@dataclasses.dataclass(frozen=True)
class Match:
  """The outcome for one labelled image (paths relative to the root).

  Attributes:
    image: the labelled image.
    frame: its best frame ('' when no clip was searched).
    error: mean absolute grayscale difference to that frame (inf when none).
    problem: why it is left out of pairs.json; '' when it is paired.
  """
  image: str
  frame: str
  error: float
  problem: str


def _relative(root: str, path: str) -> str:
  return os.path.relpath(path, root).replace(os.sep, '/')


def thumbnail(path: str, size: tuple[int, int]) -> np.ndarray:
  """[h, w] float32 grayscale of the image at `path`, resized to `size` = (w, h) by area."""
  try:
    with Image.open(path) as image:
      image.draft('L', size)  # JPEG: decode at 1/2..1/8 scale, still at least `size`
      return np.asarray(image.convert('L').resize(size, Image.Resampling.BOX), np.float32)
  except (OSError, SyntaxError) as e:
    raise DataError(f'{path}: unreadable image ({e})') from e


def load_clip(root: str, name: str) -> Clip:
  """The thumbnails of ROOT/sequences/<name>/; a DataError if it holds no frames."""
  folder = os.path.join(root, 'sequences', name)
  if not os.path.isdir(folder):
    raise DataError(f'{folder}: no such folder; import the clip\'s video with python -m '
                    f'data_pipelines.import_video --video VIDEO --out {folder}')
  names = video.frame_files(folder)
  if not names:
    raise DataError(f'{folder}: no frames (files named by their number, e.g. 000123.jpg)')
  width, height = common.image_size(os.path.join(folder, names[0]))
  size = (THUMBNAIL_WIDTH, max(1, round(THUMBNAIL_WIDTH * height / width)))
  thumbnails = np.stack([thumbnail(os.path.join(folder, n), size) for n in names])
  numbers = np.array([int(n.split('.')[0]) for n in names])
  if len(set(numbers.tolist())) < len(numbers):
    raise DataError(f'{folder}: frame numbers occur twice (e.g. as .jpg and .png); keep one')
  frames = tuple(f'sequences/{name}/{n}' for n in names)
  return Clip(name, frames, numbers, thumbnails, size)


def labelled_images(root: str) -> tuple[dict[str, list[str]], list[str]]:
  """({clip: [image path]}, [image path outside a clip folder]) of ROOT/images/<split>/, paths
  relative to the root, sorted."""
  in_clips, loose = {}, []
  for path in sorted(glob.glob(os.path.join(root, 'images', '*', '**'), recursive=True)):
    if os.path.splitext(path)[1].lower() not in common.IMAGE_EXTENSIONS:
      continue
    parts = _relative(root, path).split('/')  # images, split, [clip,] name
    if len(parts) == 3:
      loose.append('/'.join(parts))
    elif len(parts) == 4:
      in_clips.setdefault(parts[2], []).append('/'.join(parts))
  return in_clips, loose


def best_match(root: str, image: str, clips: list[Clip], max_error: float) -> Match:
  """The Match of labelled `image` (relative to root) among the frames of `clips`."""
  best = (math.inf, None, -1)
  for clip in clips:
    errors = np.abs(clip.thumbnails - thumbnail(os.path.join(root, image), clip.size))
    errors = errors.mean(axis=(1, 2))
    index = int(np.argmin(errors))
    if errors[index] < best[0]:
      best = (float(errors[index]), clip, index)
  error, clip, index = best
  frame = clip.frames[index]
  if error > max_error:
    problem = f'its best frame differs by {error:.2f} > --max_error {max_error:g}'
  elif missing := clip.missing_neighbours(index):
    problem = (f'its best frame {frame} (error {error:.2f}) has no neighbour numbered '
               f'{" or ".join(map(str, missing))} in sequences/{clip.name}/; re-import more '
               'of the video around it')
  else:
    problem = ''
  return Match(image, frame, error, problem)


def read_pairs(path: str) -> dict[str, str]:
  """An existing pairs.json ({} if none); a DataError unless it maps paths to paths."""
  if not os.path.exists(path):
    return {}
  pairs = common.read_json(path)
  if not isinstance(pairs, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in pairs.items()):
    raise DataError(f'{path}: expected {{"images/...": "sequences/<clip>/<frame>", ...}}; fix '
                    'or delete it')
  return pairs


def match_images(root: str, clip_names: list[str] | None, max_error: float) -> list[Match]:
  """The Match of every labelled image this run looks at (see the module docstring)."""
  in_clips, loose = labelled_images(root)
  names = sorted(in_clips) if clip_names is None else list(dict.fromkeys(clip_names))
  matches, searched = [], {}
  for name in names:
    if clip_names is None and not os.path.isdir(os.path.join(root, 'sequences', name)):
      matches += [Match(image, '', math.inf, f'there is no sequences/{name}/ to search')
                  for image in in_clips[name]]
      continue
    searched[name] = load_clip(root, name)
    matches += [best_match(root, image, [searched[name]], max_error)
                for image in in_clips.get(name, [])]
  for image in loose:
    if clip_names is None:
      matches.append(Match(image, '', math.inf, 'it is in no clip folder: name the clips to '
                           'search with --clip'))
    else:
      matches.append(best_match(root, image, list(searched.values()), max_error))
  return matches


def pair_frames(root: str, clip_names: list[str] | None = None,
                max_error: float = DEFAULT_MAX_ERROR) -> tuple[list[Match], dict[str, str]]:
  """Matches the labelled images of `root` and writes ROOT/pairs.json atomically.

  Args:
    root: the folder dataset's root.
    clip_names: the clips to pair (None: every clip folder of images/<split>/).
    max_error: the largest mean absolute grayscale difference (0-255) taken as a match.

  Returns:
    (the Match of every image looked at, the pairs written).
  """
  if not os.path.isdir(os.path.join(root, 'images')):
    raise DataError(f'{root}: no images/ folder; is --root the folder dataset\'s root?')
  matches = match_images(root, clip_names, max_error)
  if not matches:
    where = 'images/<split>/<clip>/' + ('' if clip_names is None else ' or images/<split>/')
    raise DataError(f'{os.path.join(root, "images")}: no labelled images to pair (in {where})')
  paired = {m.image: m.frame for m in matches if not m.problem}
  if not paired:
    raise DataError(f'{root}: none of the {len(matches)} labelled images could be paired '
                    f'(the first: {matches[0].image}: {matches[0].problem}); pairs.json unchanged')
  path = os.path.join(root, PAIRS_FILE)
  looked_at = {m.image for m in matches}
  pairs = {k: v for k, v in read_pairs(path).items() if k not in looked_at}
  pairs = dict(sorted({**pairs, **paired}.items()))
  files.write_json(path, pairs, indent=1)
  return matches, pairs


def report(matches: list[Match], pairs: dict[str, str]) -> list[str]:
  """The lines the command prints: each match and its error, what was left out and why."""
  lines = []
  for m in matches:
    if not m.problem:
      lines.append(f'{m.image} -> {m.frame}  error {m.error:.2f}')
  for m in matches:
    if m.problem:
      lines.append(f'LEFT OUT {m.image}: {m.problem}')
  frames = [m.frame for m in matches if not m.problem]
  for frame in sorted({f for f in frames if frames.count(f) > 1}):
    lines.append(f'NOTE {frame} is the frame of several images: '
                 f'{", ".join(m.image for m in matches if m.frame == frame and not m.problem)}')
  paired = len(frames)
  lines.append(f'{PAIRS_FILE}: {len(pairs)} pairs ({paired} from this run, '
               f'{len(pairs) - paired} kept from before); {len(matches) - paired} of '
               f'{len(matches)} images left out')
  return lines


def _cli() -> None:
  flags.DEFINE_string('root', None, 'Root of the folder dataset (holds images/ and sequences/).')
  flags.DEFINE_multi_string('clip', None, 'A clip to pair (repeatable; default: every clip '
                            'folder of images/<split>/). Images directly in images/<split>/ are '
                            'searched in the named clips.')
  flags.DEFINE_float('max_error', DEFAULT_MAX_ERROR, 'Largest mean absolute grayscale difference '
                     '(0-255, at 64 px wide) taken as a match.', lower_bound=0)
  flags.mark_flags_as_required(['root'])

  def main(argv):
    if len(argv) > 1:
      sys.exit(f'FATAL unexpected arguments: {" ".join(argv[1:])}')
    f = flags.FLAGS
    try:
      matches, pairs = pair_frames(f.root, f.clip, f.max_error)
    except (DataError, DiskFullError) as e:
      sys.exit(f'FATAL {type(e).__name__}: {e}')
    print('\n'.join(report(matches, pairs)))

  app.run(main)


if __name__ == '__main__':
  _cli()
