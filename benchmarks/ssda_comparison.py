"""The paper's SSDA comparison at demo size (game -> city): target-only vs source + target vs
Target-Domain DepthMix vs Cross-Domain DepthMix vs both, over seeds; and whether Matching Geometry
Sampling picks source views whose camera height is closer to the target's than random choice does.

    python -m benchmarks.ssda_comparison [--seeds=0,1] [--steps=1000] [--labels=4]
        [--sequences=160] [--workdir=DIR] [--out=FILE] [--override=KEY=VALUE ...]

`--methods=` (empty) measures the camera heights only.

One shared run of configs/demo.py:ssda renders both worlds, trains both SDEs and writes the depth
labels of both domains; every (method, seed) then runs segment + evaluate from that target SDE
(benchmarks/comparison.py). The camera-height measurement uses the worlds' ground-truth cameras:
for each target training image, 5 random source images (the segment stage's candidates) or all of
them are scored with the geometric difference G of their depth labels (the segment stage's
criterion) or of the ground-truth disparities, and the height gap of the chosen one is compared
with that of a random one — over all source views, and over the level ones only (the game world's
cameras also pitch down by up to 15 degrees, which G matches as much as height).
"""

from __future__ import annotations

import json
import os

import numpy as np

from benchmarks import comparison
from configs import demo
from data_pipelines import sources
from data_pipelines.synthetic import layouts
from sdeseg_jax.ops import mixing
from sdeseg_jax.stages import depth_labels

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


def matching_geometry_heights(shared: str, config, candidates: int | None = 5, draws: int = 4,
                              seed: int = 0, disparities: str = 'depth_labels',
                              max_source_pitch_deg: float | None = None) -> dict:
  """Mean |camera height of the source view - target's| for MGS's choice vs a random candidate.

  candidates: source views drawn per choice (the segment stage's `segment.source.candidates`);
  None = every view of the pool, i.e. the best match there is.
  disparities: what G compares — 'depth_labels' (the SDEs' disparities, what the segment stage
  uses; each SDE has its own unknown scale) or 'ground_truth' (1 / the world's metric depth).
  max_source_pitch_deg: draw candidates only among source views pitched at most this much (the
  target cameras are level): the game world's cameras also pitch down by up to 15 degrees, which
  brings the road nearer just as a lower camera does, so over all views G trades height for pitch.
  """
  rng = np.random.default_rng(seed)
  rows = tuple(config.segment.source.geometry_rows)
  indices, heights, pitches, stems = {}, {}, {}, {}
  for role in ('target', 'source'):
    entry = config.data[role]
    reader = sources.open_dataset(entry, shared, role)
    indices[role] = reader.segmentation('train')
    raw_root = sources.roots(entry, shared, role)[0]
    poses = camera_poses(raw_root)
    relpaths = [os.path.relpath(p, reader.root) for p in indices[role].images]
    heights[role], pitches[role] = np.array([poses[os.path.splitext(r)[0]] for r in relpaths]).T
    stems[role] = [os.path.join(raw_root, layouts.groundtruth_stem(r)) for r in relpaths]

  def disparity(role, i):
    if disparities == 'ground_truth':
      return 1.0 / np.load(stems[role][i] + '_depth.npy')[None, ..., None]
    return np.load(os.path.join(depth_labels.depth_dir(shared, role),
                                indices[role].ids[i] + '.npy'))[None, ..., None]

  pool = np.arange(len(indices['source']))
  if max_source_pitch_deg is not None:
    pool = pool[np.abs(pitches['source']) <= max_source_pitch_deg]
  source_disparity = {i: disparity('source', i) for i in pool}
  candidates = len(pool) if candidates is None else candidates
  chosen, drawn = [], []   # per (target image, draw), target-major
  for t in range(len(indices['target'])):
    target = disparity('target', t)
    for _ in range(draws):
      picks = rng.choice(pool, candidates, replace=False)
      g = np.asarray(mixing.geometric_difference(np.repeat(target, candidates, 0),
                                                 np.concatenate([source_disparity[i] for i in picks]),
                                                 *rows))
      chosen.append(picks[np.argmin(g)])
      drawn.append(picks[0])   # the draw is random, so its first candidate is a random choice

  def mean_gap(views):
    return float(np.mean(np.abs(heights['source'][views] - np.repeat(heights['target'], draws))))

  return dict(disparities=disparities, max_source_pitch_deg=max_source_pitch_deg,
              source_views=len(pool), candidates=candidates, pairs=len(chosen),
              mean_height_gap_chosen_m=mean_gap(chosen), mean_height_gap_random_m=mean_gap(drawn),
              mean_pitch_chosen_deg=float(np.mean(pitches['source'][chosen])),
              mean_pitch_random_deg=float(np.mean(pitches['source'][drawn])),
              target_height_mean_m=float(np.mean(heights['target'])),
              source_height_mean_m=float(np.mean(heights['source'][pool])))


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
              for p in (None, 2.0) for d in ('depth_labels', 'ground_truth') for k in (5, None)]
  print(json.dumps(geometry, indent=2))
  comparison.report('ssda_comparison', args, table, matching_geometry=geometry)


if __name__ == '__main__':
  main()
