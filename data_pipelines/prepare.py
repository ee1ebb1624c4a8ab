"""Downsamples a raw dataset tree once to the working resolution, keeping its layout.

    python -m data_pipelines.prepare --dataset=cityscapes --src=/data/cityscapes \
        --dst=/data/cityscapes_1024x512 --resolution=1024x512

Images are resized with antialiasing (Lanczos) and written as PNG or JPEG (quality 98, as the
reference); label maps are resized nearest and written as 8-bit grayscale raw ids (GTA5 palette
indices and Synthia's 16-bit channel 0 become plain id maps); Cityscapes camera JSONs are rescaled
with the pixels; the folder layout's intrinsics.json is rewritten normalised, and its classes.json
and pairs.json are copied. The raw tree's layout is checked first (`Reader.check_layout`). Each
file is written to a temporary name and renamed, and existing outputs are skipped, so an
interrupted run resumes and a finished one is a no-op. The marker
`sdeseg_prepared.json`, written last, is what the pipelines check for.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import logging
import os
import shutil
import time

from absl import app
from absl import flags
from PIL import Image

from data_pipelines import datasets
from data_pipelines import files
from data_pipelines.datasets import cityscapes
from data_pipelines.datasets import common

MARKER = 'sdeseg_prepared.json'


def parse_resolution(text: str) -> tuple[int, int]:
  """'1024x512' -> (1024, 512)."""
  try:
    width, height = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise common.DataError(f'resolution {text!r}: expected WIDTHxHEIGHT, e.g. 1024x512') from None
  if width <= 0 or height <= 0:
    raise common.DataError(f'resolution {text!r}: sizes must be positive')
  return width, height


def read_marker(root: str) -> dict | None:
  path = os.path.join(root, MARKER)
  return common.read_json(path) if os.path.exists(path) else None


def _output_path(src: str, dst: str, path: str, kind: str, image_format: str) -> str:
  out = os.path.join(dst, os.path.relpath(path, src))
  if kind == 'image':
    out = os.path.splitext(out)[0] + '.' + image_format
  return out


def _convert(reader: common.Reader, kind: str, path: str, out: str, resolution, image_format):
  """Writes one prepared file; returns the output path."""
  if kind == 'image':
    try:
      with Image.open(path) as image:
        image = image.convert('RGB').resize(resolution, Image.Resampling.LANCZOS)
    except (OSError, SyntaxError) as e:
      raise common.DataError(f'{path}: unreadable image ({e})') from e
    options = dict(quality=98, subsampling=0) if image_format == 'jpg' else {}
    files.write_atomic(out, lambda tmp: image.save(tmp, **options))
  elif kind == 'label':
    ids = reader.decode_raw_label(path)
    invalid = reader.label_spec.invalid_ids(ids)
    if invalid:
      raise common.DataError(f'{path}: label ids {invalid} are not {reader.name} ids')
    label = Image.fromarray(ids, 'L').resize(resolution, Image.Resampling.NEAREST)
    files.write_atomic(out, label.save)
  elif kind == 'camera':
    camera = cityscapes.read_camera(path)
    image = path.replace(os.sep + 'camera' + os.sep, os.sep + 'leftImg8bit' + os.sep)
    image = common.with_image_extension(image.removesuffix('_camera.json') + '_leftImg8bit')
    if not image:  # a camera without its image: scale by the official full resolution
      width, height = 2048, 1024
    else:
      width, height = common.image_size(image)
    camera = cityscapes.rescale_camera(camera, resolution[0] / width, resolution[1] / height)
    files.write_json(out, camera, indent=2)
  elif kind == 'intrinsics':  # normalised: sizes in pixels would not hold after resizing
    files.write_json(out, reader.prepared_intrinsics(), indent=2)
  elif kind == 'copy':
    files.write_atomic(out, lambda tmp: shutil.copyfile(path, tmp))
  else:
    raise ValueError(f'{reader.name}: unknown prepare kind {kind!r} of {path}')
  return out


def prepare(dataset: str, src: str, dst: str, resolution: tuple[int, int], *,
            image_format: str = 'jpg', workers: int = 0) -> dict:
  """Converts every file of a raw tree into `dst`; returns the marker dict.

  Args:
    dataset: reader name (cityscapes, gta5, synthia, camvid, folder).
    src: the raw tree; dst: the prepared tree (created; may be partly written by an earlier run).
    resolution: (width, height) of the prepared images.
    image_format: 'jpg' or 'png' for images (labels are always PNG).
    workers: threads (0: one per core). PIL and TF release the GIL while decoding and resizing.
  """
  if image_format not in ('jpg', 'png'):
    raise common.DataError(f'image_format {image_format!r}: expected jpg or png')
  src, dst = os.path.abspath(src), os.path.abspath(dst)
  if src == dst:
    raise common.DataError(f'{dst}: the prepared tree must differ from the raw tree')
  reader = datasets.get_reader(dataset, src)
  wanted = dict(dataset=dataset, resolution=list(resolution), image_format=image_format)
  marker = read_marker(dst)
  if marker is not None:
    if {k: marker.get(k) for k in wanted} != wanted:
      raise common.DataError(f'{os.path.join(dst, MARKER)}: prepared as {marker}, not as {wanted}; '
                             'choose another destination')
    logging.info('%s is already prepared (%d files); nothing to do', dst, marker['files'])
    return marker
  reader.check_layout()  # a bad file is named in the raw tree, before hours of converting
  raw_files = [(kind, path) for kind, pattern in reader.prepare_patterns
               for path in sorted(glob.glob(os.path.join(src, pattern), recursive=True))
               if kind != 'image' or os.path.splitext(path)[1].lower() in common.IMAGE_EXTENSIONS]
  if not raw_files:
    raise common.DataError(f'{src}: no {dataset} files found (patterns: '
                           f'{[p for _, p in reader.prepare_patterns]})')
  jobs = [(kind, path, out) for kind, path in raw_files
          if not os.path.exists(out := _output_path(src, dst, path, kind, image_format))]
  started, total = time.time(), len(raw_files)
  logging.info('Preparing %s: %d of %d files to write into %s', dataset, len(jobs), total, dst)
  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
    futures = [pool.submit(_convert, reader, kind, path, out, resolution, image_format)
               for kind, path, out in jobs]
    for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
      future.result()  # re-raises the first DataError with its file named
      if done % 1000 == 0:
        logging.info('  %d / %d files (%.0f/s)', done, len(jobs), done / (time.time() - started))
  marker = dict(wanted, source=src, files=total)
  files.write_json(os.path.join(dst, MARKER), marker, indent=2)
  logging.info('Prepared %d files in %.1f s', len(jobs), time.time() - started)
  return marker


def open_prepared(dataset: str, root: str, resolution: tuple[int, int], **reader_kwargs):
  """The reader over a prepared tree, after checking that it was prepared for `resolution`."""
  marker = read_marker(root)
  if marker is None:
    raise common.DataError(
        f'{root}: not a prepared {dataset} tree (no {MARKER}); run '
        f'python -m data_pipelines.prepare --dataset={dataset} --src=RAW_TREE --dst={root} '
        f'--resolution={resolution[0]}x{resolution[1]}')
  if marker.get('dataset') != dataset or tuple(marker.get('resolution', ())) != tuple(resolution):
    raise common.DataError(f'{os.path.join(root, MARKER)}: holds {marker.get("dataset")} at '
                           f'{marker.get("resolution")}, but {dataset} at {list(resolution)} '
                           'was asked')
  return datasets.get_reader(dataset, root, **reader_kwargs)


def _cli() -> None:
  flags.DEFINE_enum('dataset', None, sorted(datasets.READERS), 'Dataset layout of --src.')
  flags.DEFINE_string('src', None, 'Raw dataset tree.')
  flags.DEFINE_string('dst', None, 'Prepared tree to write.')
  flags.DEFINE_string('resolution', '1024x512', 'WIDTHxHEIGHT of the prepared images.')
  flags.DEFINE_enum('image_format', 'jpg', ['jpg', 'png'], 'Format of prepared images.')
  flags.DEFINE_integer('workers', 0, 'Threads (0: one per core).')
  flags.mark_flags_as_required(['dataset', 'src', 'dst'])

  def main(argv):
    del argv
    logging.getLogger().setLevel(logging.INFO)
    f = flags.FLAGS
    marker = prepare(f.dataset, f.src, f.dst, parse_resolution(f.resolution),
                     image_format=f.image_format, workers=f.workers)
    print(json.dumps(marker, indent=2))

  app.run(main)


if __name__ == '__main__':
  _cli()
