"""`render_world`: a synthetic world in a dataset layout, with ground truth and a done-marker."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from data_pipelines.synthetic import labels, layouts
from data_pipelines.synthetic.render import FAR_DEPTH, render_frame
from data_pipelines.synthetic.scene import DOMAINS, SceneParams, build_scene

MARKER = 'sdeseg_synthetic.json'
# Written before anything else: identifies the parameters of a half-written world.
PROGRESS = f'{layouts.GT_DIR}/params.json'
# 2: the game domain's sun turns per scene (worlds of version 1 differ from it; city ones do not).
FORMAT_VERSION = 2
# Frame rate of the folder layout's clips written as videos (render_world's `videos`).
VIDEO_FPS = 10

_CONVENTIONS = {
    'world': 'right-handed, metres: x right of the road direction, y along the road, z up; '
             'the ground is z = 0',
    'camera': 'x right, y down, z forward (OpenCV); pixel (u, v) is the ray K^-1 [u, v, 1]',
    'cam_to_world': 'X_world = T[:3, :3] @ X_camera + T[:3, 3]',
    'pitch_deg': 'positive = camera looks up',
    'depth': 'z-depth along the optical axis in metres (float32 .npy); far_depth_m for sky',
}


def render_world(out_dir, *, domain: str, layout: str, size=(256, 128), sequences: int = 8,
                 frames: int = 5, seed: int = 0, val_fraction: float = 0.2,
                 moving_objects: bool = True, num_workers: int = 0,
                 scene_params: Mapping[str, object] | None = None, videos: int = 0) -> dict:
  """Renders `sequences` snippets of `frames` frames into `out_dir` in a real dataset's layout.

  Args:
    out_dir: dataset root to write (created if missing).
    domain: 'city' (plays Cityscapes) or 'game' (plays GTA5 / SYNTHIA).
    layout: 'cityscapes' | 'gta5' | 'synthia' | 'camvid' | 'folder': on-disk layout and label
      convention.
    size: (W, H) of the written images.
    sequences: number of snippets (independent street scenes).
    frames: frames per snippet; frame `frames // 2` is the annotated one.
    seed: world seed (>= 0); the scene of snippet i depends only on (seed, domain, i).
    val_fraction: fraction of snippets in the held-out split(s).
    moving_objects: False freezes every object (a fully static world).
    num_workers: processes rendering snippets in parallel (0: in this process). The output does
      not depend on it. Workers are spawned (not forked), so a calling script needs the usual
      `if __name__ == '__main__':` guard.
    scene_params: overrides of SceneParams fields (content frequencies), e.g.
      {'bus_probability': 1.0}.
    videos: folder layout: the first `videos` clips are written as videos/<clip>.mp4 (H.264,
      VIDEO_FPS) instead of frames in sequences/<clip>/, as a user's camera would hand them over
      (python -m data_pipelines.import_video turns one back into frames).

  Returns:
    A summary dict: paths, counts, splits, intrinsics, class pixel fractions of the annotated
    frames; 'skipped' is True when the world already existed with the same parameters (nothing
    was written).

  Raises:
    ValueError: an invalid argument.
    FileExistsError: out_dir holds a world (complete or half-written) with other parameters.
  """
  params = _validated_params(domain, layout, size, sequences, frames, seed, val_fraction,
                             moving_objects, num_workers, scene_params, videos)
  root = Path(out_dir)
  marker = root / MARKER
  if marker.exists():
    stored = json.loads(marker.read_text())
    if stored.get('params') != params:
      raise FileExistsError(
          f'{root} already holds a synthetic world with other parameters '
          f"({_differences(stored.get('params'), params)}); choose another directory or delete it")
    return {**stored['summary'], 'skipped': True}
  progress = root / PROGRESS
  if progress.exists() and (previous := json.loads(progress.read_text())) != params:
    raise FileExistsError(
        f'{root} holds a half-written synthetic world with other parameters '
        f'({_differences(previous, params)}); delete it or rerun with those parameters')
  layouts.write_json(progress, params)

  start = time.perf_counter()
  plans = layouts.plan_layout(layout, sequences, frames, val_fraction)
  layouts.write_layout_files(root, layout, plans, *params['size'])
  jobs = [(str(root), params, plan) for plan in plans]
  if num_workers > 0:
    # spawn, not fork: the caller may run JAX / TF threads, which a forked child would inherit.
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
      results = list(pool.map(_render_snippet, jobs))
  else:
    results = [_render_snippet(job) for job in jobs]

  for plan in plans[:videos]:
    _frames_to_video(root, layouts.folder_clip(plan.index))
  index = {image: {'snippet': r['snippet_json'], 'frame': frame}
           for r in results for image, frame in r['images'].items()
           if (root / image).exists()}  # not the frames of clips now videos
  layouts.write_json(root / layouts.GT_DIR / 'images.json', index)
  summary = _summary(root, params, plans, results, time.perf_counter() - start)
  # Last: its presence means the world is complete.
  _write_marker(marker, {'format_version': FORMAT_VERSION, 'params': params, 'summary': summary})
  return {**summary, 'skipped': False}


def _frames_to_video(root: Path, clip: str) -> None:
  """Replaces the frames of sequences/<clip>/ by videos/<clip>.mp4."""
  from PIL import Image
  from data_pipelines import video  # imported lazily: only worlds with videos need ffmpeg
  folder = root / 'sequences' / clip
  paths = sorted(folder.glob('*.png'))
  video.write_mp4(str(root / 'videos' / f'{clip}.mp4'),
                  [np.asarray(Image.open(p).convert('RGB')) for p in paths], VIDEO_FPS)
  for path in paths:
    path.unlink()
  folder.rmdir()


def _validated_params(domain, layout, size, sequences, frames, seed, val_fraction,
                      moving_objects, num_workers, scene_params, videos=0) -> dict:
  """Checks the arguments; returns the JSON-able parameter record stored in the marker."""
  if domain not in DOMAINS:
    raise ValueError(f"unknown domain {domain!r}; allowed: {', '.join(DOMAINS)}")
  if layout not in layouts.LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(layouts.LAYOUTS)}")
  try:
    width, height = (int(v) for v in size)
    if (width, height) != tuple(size) or width < 1 or height < 1:
      raise ValueError
  except (TypeError, ValueError):
    raise ValueError(f'size must be (W, H) with positive integers, got {size!r}') from None
  for name, value, minimum in (('sequences', sequences, 1), ('frames', frames, 1),
                               ('seed', seed, 0), ('num_workers', num_workers, 0)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
      raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')
  if not 0.0 <= float(val_fraction) < 1.0:
    raise ValueError(f'val_fraction must be in [0, 1), got {val_fraction!r}')
  overrides = dict(scene_params or {})
  if 'moving_objects' in overrides:
    raise ValueError("pass moving_objects as render_world's own argument, not in scene_params")
  overrides['moving_objects'] = bool(moving_objects)
  scene = SceneParams.with_overrides(overrides)
  if isinstance(videos, bool) or not isinstance(videos, (int, np.integer)) or videos < 0:
    raise ValueError(f'videos must be an integer >= 0, got {videos!r}')
  if videos and (layout != 'folder' or frames < 3 or videos > sequences or width % 2
                 or height % 2):
    raise ValueError(f'videos={videos}: only the folder layout writes clips as videos, at most '
                     f'one per snippet ({sequences}), each of 3 or more frames ({frames}) of even '
                     f'width and height ({width}x{height})')
  params = {'domain': domain, 'layout': layout, 'size': [width, height],
            'sequences': int(sequences), 'frames': int(frames), 'seed': int(seed),
            'val_fraction': float(val_fraction), 'moving_objects': bool(moving_objects),
            'scene_params': scene.as_dict(), 'format_version': FORMAT_VERSION}
  if videos:  # recorded only when asked, so the markers of earlier worlds still match
    params['videos'] = int(videos)
  return params


def _differences(stored, params: dict) -> str:
  """'name: stored -> requested' for the parameters that differ (scene_params flattened)."""
  def flat(record):
    record = dict(record or {})
    scene = dict(record.pop('scene_params', None) or {})
    return {**record, **{f'scene_params.{k}': v for k, v in scene.items()}}
  old, new = flat(stored), flat(params)
  return ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}'
                   for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


def _snippet_seed(params: dict, index: int) -> np.random.SeedSequence:
  return np.random.SeedSequence([params['seed'], DOMAINS.index(params['domain']), index])


def _render_snippet(job) -> dict:
  """Renders and writes one snippet (in a worker process when num_workers > 0)."""
  root, params, plan = job
  root = Path(root)
  width, height = params['size']
  frames = params['frames']
  K = layouts.layout_intrinsics(params['layout'], width, height, plan.index)
  scene = build_scene(_snippet_seed(params, plan.index), params['domain'], frames,
                      SceneParams(**params['scene_params']))
  camera = scene.camera
  records, images = [], {}
  class_pixels = collections.Counter()
  for f in plan.frames:
    frame = render_frame(scene, K, width, height, f)
    layouts.write_frame(root, plan.targets[f], frame, K, camera.height, camera.pitch)
    paths = [t.image for t in plan.targets[f]]
    images.update({p: f for p in paths})
    records.append({'frame': f, 'time_s': camera.time(f), 'images': paths,
                    'cam_to_world': frame.cam_to_world.tolist()})
    if f == frames // 2:
      ids, counts = np.unique(frame.label, return_counts=True)
      class_pixels.update({int(i): int(c) for i, c in zip(ids, counts)})

  snippet_json = f'snippets/{plan.index:05d}.json'
  layouts.write_json(root / layouts.GT_DIR / snippet_json, {
      'format_version': FORMAT_VERSION, 'snippet': plan.index, 'domain': params['domain'],
      'layout': params['layout'], 'split': plan.split, 'width': width, 'height': height,
      'intrinsics': K.tolist(), 'far_depth_m': FAR_DEPTH, 'num_frames': frames,
      'annotated_frame': frames // 2, 'frame_interval_s': camera.frame_interval,
      'speed_mps': camera.speed,
      'camera': {'height_m': camera.height, 'pitch_deg': float(np.rad2deg(camera.pitch)),
                 'roll_deg': 0.0},
      'sun_direction': [float(v) for v in scene.style.sun_direction],
      'frames': records, 'objects': _object_counts(scene.prims), 'conventions': _CONVENTIONS,
  })
  return {'snippet_json': snippet_json, 'images': images, 'class_pixels': dict(class_pixels),
          'num_labels': sum(1 for ts in plan.targets.values() for t in ts if t.label)}


def _object_counts(prims) -> dict:
  """Objects per class name, and moving primitives per class name."""
  first = {o: i for i, o in reversed(list(enumerate(prims.object_id)))}  # first primitive of each
  by_class = collections.Counter(labels.CLASS_NAMES[int(prims.label[i])] for i in first.values())
  moving = collections.Counter(labels.CLASS_NAMES[int(c)] for c in prims.label[prims.moving])
  return {'by_class': dict(sorted(by_class.items())),
          'moving_primitives_by_class': dict(sorted(moving.items()))}


def _summary(root: Path, params: dict, plans, results, seconds: float) -> dict:
  pixels = collections.Counter()
  for r in results:
    pixels.update(r['class_pixels'])
  total = sum(pixels.values())
  splits = collections.Counter(p.split for p in plans if p.split is not None)
  width, height = params['size']
  return {
      'out_dir': str(root), 'marker': str(root / MARKER),
      'groundtruth_dir': str(root / layouts.GT_DIR),
      'domain': params['domain'], 'layout': params['layout'], 'size': params['size'],
      'sequences': params['sequences'], 'frames': params['frames'], 'seed': params['seed'],
      'annotated_frame': params['frames'] // 2, 'splits': dict(sorted(splits.items())),
      'num_images': sum(len(r['images']) for r in results),
      'num_labels': sum(r['num_labels'] for r in results),
      'intrinsics': layouts.layout_intrinsics(params['layout'], width, height).tolist(),
      'class_pixel_fraction': {labels.CLASS_NAMES[c]: n / total for c, n in sorted(pixels.items())},
      'seconds': round(seconds, 3),
  }


def _write_marker(path: Path, payload: dict) -> None:
  """Atomic write (temporary file + rename): the marker exists complete or not at all."""
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + '\n')
  os.replace(tmp, path)
