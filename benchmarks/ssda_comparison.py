"""The paper's SSDA comparison at demo size (game -> city): target-only vs source + target vs
Target-Domain DepthMix vs Cross-Domain DepthMix vs both, over seeds; and whether Matching Geometry
Sampling picks source views whose camera height is closer to the target's than random choice does.

    python -m benchmarks.ssda_comparison [--seeds=0,1] [--steps=1000] [--labels=4]
        [--sequences=160] [--workdir=DIR] [--out=FILE] [--override=KEY=VALUE ...]

`--methods=` (empty) measures the camera heights only.

One shared run of configs/demo.py:ssda renders both worlds, trains both SDEs and writes the depth
labels of both domains; every (method, seed) then runs segment + evaluate from that target SDE
(benchmarks/comparison.py). The camera-height measurement uses the worlds' ground-truth cameras:
for each target training image, the best of 5 random source images (the segment stage's
candidates) or of all of them by the geometric difference G of their depth labels (the segment
stage's criterion) or of the ground-truth disparities; its expected height gap is compared with
that of a random view — over all source views, and over the level ones only (the game world's
cameras also pitch down by up to 15 degrees, which G matches as much as height).
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np

from benchmarks import comparison
from configs import demo
from data_pipelines import sources
from data_pipelines.synthetic import layouts
from sdeseg_jax.ops import mixing
from sdeseg_jax import artifacts

_TRANSFER = {'segment.network': 'transfer', 'segment.source.matching_geometry': False}
METHODS = {
    'target_only': dict(_TRANSFER, **{'segment.mix': 'none', 'segment.source.enabled': False}),
    'source+target': dict(_TRANSFER, **{'segment.mix': 'none', 'segment.source.mix': 'none'}),
    'tdm': dict(_TRANSFER, **{'segment.mix': 'depthmix', 'segment.source.mix': 'none'}),
    'cdm': dict(_TRANSFER, **{'segment.mix': 'none', 'segment.source.mix': 'depthmix'}),
    'cdm+tdm': dict(_TRANSFER, **{'segment.mix': 'depthmix', 'segment.source.mix': 'depthmix'}),
    'cdm+tdm+mg': dict(_TRANSFER, **{'segment.mix': 'depthmix', 'segment.source.mix': 'depthmix',
                                     'segment.source.matching_geometry': True}),
}


def camera_poses(raw_root: str) -> dict[str, tuple[float, float]]:
  """{image path relative to the dataset root, without extension: (camera height in metres, pitch
  in degrees, positive = looking up)} from a synthetic world's ground truth."""
  gt = os.path.join(raw_root, layouts.GT_DIR)
  with open(os.path.join(gt, 'images.json')) as f:
    entries = json.load(f)
  poses, snippets = {}, {}
  for relpath, entry in entries.items():
    if entry['snippet'] not in snippets:
      with open(os.path.join(gt, entry['snippet'])) as f:
        camera = json.load(f)['camera']
      snippets[entry['snippet']] = (camera['height_m'], camera['pitch_deg'])
    poses[os.path.splitext(relpath)[0]] = snippets[entry['snippet']]
  return poses


_geometric_difference = jax.jit(mixing.geometric_difference, static_argnums=(2, 3))


def choice_probabilities(views: int, candidates: int) -> np.ndarray:
  """[views] probability that the view ranked r-th best (0 = lowest G) is the best of `candidates`
  views drawn at random without replacement: it must be drawn and the others drawn from the
  views - 1 - r ranked below it, C(views - 1 - r, candidates - 1) / C(views, candidates)."""
  return np.array([math.comb(views - 1 - r, candidates - 1) for r in range(views)]) / math.comb(
      views, candidates)


def matching_geometry_heights(shared: str, config, candidates: int | None,
                              disparities: str = 'depth_labels',
                              max_source_pitch_deg: float | None = None) -> dict:
  """Mean |camera height of the source view - target's| for MGS's choice vs a random view.

  Both are expectations, computed exactly rather than sampled: from G of every (target training
  image, source view) pair, the chosen view's over the random draws of candidates
  (`choice_probabilities`), the random view's over the pool.
  candidates: source views drawn per choice (the segment stage draws `segment.source.candidates`);
  None = every view of the pool, i.e. the best match there is.
  disparities: what G compares — 'depth_labels' (the SDEs' disparities, what the segment stage
  uses; each SDE has its own unknown scale) or 'ground_truth' (1 / the world's metric depth).
  max_source_pitch_deg: candidates only among source views pitched at most this much (the
  target cameras are level): the game world's cameras also pitch down by up to 15 degrees, which
  brings the road nearer just as a lower camera does, so over all views G trades height for pitch.
  """
  rows = tuple(config.segment.source.geometry_rows)
  disparity, heights, pitches = {}, {}, {}
  for role in ('target', 'source'):
    entry = config.data[role]
    reader = sources.open_dataset(entry, shared, role)
    index = reader.segmentation('train')
    raw_root = sources.roots(entry, shared, role)[0]
    poses = camera_poses(raw_root)
    relpaths = [os.path.relpath(p, reader.root) for p in index.images]
    heights[role], pitches[role] = np.array([poses[os.path.splitext(r)[0]] for r in relpaths]).T
    if disparities == 'ground_truth':
      files = [os.path.join(raw_root, layouts.groundtruth_stem(r)) + '_depth.npy' for r in relpaths]
      disparity[role] = np.stack([1.0 / np.load(f) for f in files])[..., None]
    else:
      folder = artifacts.depth_dir(shared, role)
      disparity[role] = np.stack([np.load(os.path.join(folder, i + '.npy'))
                                  for i in index.ids])[..., None]

  pool = np.arange(len(heights['source']))
  if max_source_pitch_deg is not None:
    pool = pool[np.abs(pitches['source']) <= max_source_pitch_deg]
  pool_disparity, pool_heights, pool_pitches = (x[pool] for x in (
      disparity['source'], heights['source'], pitches['source']))
  candidates = len(pool) if candidates is None else candidates
  weights = choice_probabilities(len(pool), candidates)
  height_gap = np.abs(pool_heights[None, :] - heights['target'][:, None])  # [targets, pool]
  ranked = np.stack([  # [targets, pool] pool indices, lowest G first
      np.argsort(np.asarray(_geometric_difference(
          np.broadcast_to(target, pool_disparity.shape), pool_disparity, *rows)), kind='stable')
      for target in disparity['target']])

  def chosen(values):  # [targets, pool] or [pool] -> mean over targets of the chosen view's value
    per_target = np.broadcast_to(values, ranked.shape)
    return float(np.mean(np.take_along_axis(per_target, ranked, axis=1) @ weights))

  return dict(disparities=disparities, max_source_pitch_deg=max_source_pitch_deg,
              source_views=len(pool), candidates=candidates, targets=len(height_gap),
              mean_height_gap_chosen_m=chosen(height_gap),
              mean_height_gap_random_m=float(np.mean(height_gap)),
              mean_height_chosen_m=chosen(pool_heights),
              mean_pitch_chosen_deg=chosen(pool_pitches),
              mean_pitch_random_deg=float(np.mean(pool_pitches)),
              target_height_mean_m=float(np.mean(heights['target'])),
              source_height_mean_m=float(np.mean(pool_heights)))


def main() -> None:
  parser = comparison.arguments(__doc__.splitlines()[0], METHODS, 'workdirs/ssda_comparison')
  parser.add_argument('--source_sequences', type=int, default=100,
                      help='snippets of the source (game) world: its training images are 4/5')
  args = parser.parse_args()
  table = comparison.compare(
      args, config='configs/demo.py:ssda',
      shared_stages='data,sde_pretrain,sde_source,depth_labels', methods=METHODS,
      links=('raw', 'data', 'depth'), checkpoints={'segment.sde_checkpoint': 'sde/ckpt'},
      world=(f'--config.data.source.synthetic.sequences={args.source_sequences}',
             f'--config.data.source.val_count={args.source_sequences // 5}'),
      sdes=('sde', 'source_sde'))
  config = demo.get_config('ssda')
  config.data.target.synthetic.sequences = args.sequences
  config.data.source.synthetic.sequences = args.source_sequences
  config.data.source.val_count = args.source_sequences // 5
  shared = os.path.abspath(os.path.join(args.workdir, 'shared'))
  geometry = [matching_geometry_heights(shared, config, candidates=k, disparities=d,
                                        max_source_pitch_deg=p)
              for p in (None, 2.0) for d in ('depth_labels', 'ground_truth')
              for k in (config.segment.source.candidates, None)]
  print(json.dumps(geometry, indent=2))
  comparison.report('ssda_comparison', args, table, matching_geometry=geometry)


if __name__ == '__main__':
  main()
