"""Rendering speed and memory of the synthetic street world, as JSON.

    python -m benchmarks.synthetic_world [--sizes=256x128,1024x512] [--frames=10] [--repeats=3]
                                         [--out=FILE]

For each domain and image size: `render_fps` times ray casting + shading alone (frames of fresh
snippets, as `render_world` renders them); `world_fps` times `render_world` end to end into a
temporary directory (PNG / ground-truth writing included, Cityscapes layout, in this process).
Memory: `traced_peak_mb` is the peak of Python/NumPy allocations while rendering one frame
(tracemalloc), `maxrss_mb` the process's resident-set high-water mark so far (monotonic).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
import tracemalloc

import numpy as np

from benchmarks import common
from data_pipelines.synthetic import layouts
from data_pipelines.synthetic import render
from data_pipelines.synthetic import scene as scene_lib
from data_pipelines.synthetic import world


def _scenes(domain: str, count: int, frames: int):
  """`count` snippets' scenes, built the way render_world builds them (seed 0)."""
  params = scene_lib.SceneParams()
  code = scene_lib.DOMAINS.index(domain)
  return [scene_lib.build_scene(np.random.SeedSequence([0, code, i]), domain, frames, params)
          for i in range(count)]


def _render_fps(domain: str, size, frames: int, repeats: int) -> list[float]:
  """Frames/s of render_frame over `frames` frames (one per snippet), `repeats` times."""
  width, height = size
  K = layouts.layout_intrinsics('cityscapes', width, height)
  scenes = _scenes(domain, frames, 3)
  render.render_frame(scenes[0], K, width, height, 1)  # warm-up (imports, caches)
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    for scene in scenes:
      render.render_frame(scene, K, width, height, 1)
    runs.append(frames / (time.perf_counter() - start))
  return runs


def _traced_peak_mb(domain: str, size) -> float:
  width, height = size
  K = layouts.layout_intrinsics('cityscapes', width, height)
  scene = _scenes(domain, 1, 3)[0]
  tracemalloc.start()
  render.render_frame(scene, K, width, height, 1)
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  return peak / 2**20


def _world_fps(domain: str, size, sequences: int, frames: int) -> float:
  """Frames/s of render_world end to end (Cityscapes layout: every frame is rendered)."""
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    world.render_world(tmp, domain=domain, layout='cityscapes', size=size, sequences=sequences,
                       frames=frames, seed=0)
    return sequences * frames / (time.perf_counter() - start)


def _maxrss_mb() -> float:
  # ru_maxrss is KiB on Linux, bytes on macOS.
  scale = 1.0 if sys.platform == 'darwin' else 1024.0
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', default='256x128,1024x512', help='comma-separated WxH')
  parser.add_argument('--domains', default='city,game')
  parser.add_argument('--frames', type=int, default=10, help='frames timed per repeat')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--world_sequences', type=int, default=2,
                      help='snippets of the end-to-end render_world run (5 frames each)')
  parser.add_argument('--out', default='', help='also write the JSON here')
  args = parser.parse_args(argv)

  results = []
  # Small sizes first: maxrss is monotonic.
  for size in (common.parse_size(s) for s in args.sizes.split(',')):
    for domain in args.domains.split(','):
      runs = _render_fps(domain, size, args.frames, args.repeats)
      results.append({
          'domain': domain, 'size': list(size),
          'render_fps_median': float(np.median(runs)), 'render_fps_min': float(np.min(runs)),
          'render_fps_max': float(np.max(runs)),
          'world_fps': _world_fps(domain, size, args.world_sequences, 5),
          'traced_peak_mb': round(_traced_peak_mb(domain, size), 1),
          'maxrss_mb': round(_maxrss_mb(), 1),
      })
      print(json.dumps(results[-1]), file=sys.stderr, flush=True)
  report = {
      'benchmark': 'synthetic_world', 'frames': args.frames, 'repeats': args.repeats,
      'machine': {'platform': platform.platform(), 'python': platform.python_version(),
                  'numpy': np.__version__, 'processor': platform.processor()},
      'results': results,
  }
  common.emit(report, args.out)


if __name__ == '__main__':
  main()
