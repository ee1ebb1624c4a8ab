"""The evaluate stage against the official Cityscapes evaluation: cityscapesscripts'
evalPixelLevelSemanticLabeling, run on the labelIds PNGs the stage exports, gives our eval.json's
mIoU and per-class IoU."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines.datasets import cityscapes
from sdeseg_jax.stages import evaluate
from tests import runs


@pytest.mark.slow
def test_official_pixel_level_evaluation_agrees(tiny_demo, tmp_path):
  _, workdir = tiny_demo
  run_dir = runs.linked_run(workdir, 'official', links=('data', 'depth', 'raw', 'segment'))
  config = runs.tiny_config()
  config.evaluate.export_splits = ('val',)
  evaluate.run(config, run_dir)
  with open(os.path.join(run_dir, 'eval.json')) as f:
    ours = json.load(f)
  # The official script splits file names at '_' into city, sequence, frame and type; the
  # synthetic world's city names hold underscores (synthcity_a_val), so both trees are linked under
  # the same names without them. The files themselves are the stage's and the world's.
  gt_root, results = tmp_path / 'cityscapes', tmp_path / 'results'
  gt_val = os.path.join(run_dir, 'data', 'target', 'gtFine', 'val')
  for city in os.listdir(gt_val):
    official_city = city.replace('_', '')
    (gt_root / 'gtFine' / 'val' / official_city).mkdir(parents=True)
    for name in os.listdir(os.path.join(gt_val, city)):
      if name.endswith('_gtFine_labelIds.png'):
        os.symlink(os.path.join(gt_val, city, name),
                   gt_root / 'gtFine' / 'val' / official_city / name.replace(city, official_city))
  predictions = os.path.join(run_dir, 'predictions', 'val')
  results.mkdir()
  for name in os.listdir(predictions):
    city = next(c for c in os.listdir(gt_val) if name.startswith(c + '_'))
    os.symlink(os.path.join(predictions, name), results / name.replace(city, city.replace('_', '')))
  export = tmp_path / 'official'
  export.mkdir()
  env = dict(os.environ, CITYSCAPES_DATASET=str(gt_root), CITYSCAPES_RESULTS=str(results),
             CITYSCAPES_EXPORT_DIR=str(export))
  # The synthetic world writes no instance maps: the instance-level scores (iIoU) are left out;
  # the pixel-level ones are the script's own code path, unchanged.
  code = ('from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official; '
          'official.args.evalInstLevelScore = False; official.main()')
  result = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(export / 'resultPixelLevelSemanticLabeling.json') as f:
    official = json.load(f)
  # The same pixels counted alike: the official confusion matrix (label ids) restricted to the 19
  # evaluated classes is ours (train ids), count for count.
  label_of_train = {t: i for i, t in cityscapes.LABEL_SPEC.id_to_train.items() if t != 255}
  ids = [label_of_train[t] for t in range(len(ours['confusion']))]
  matrix = np.asarray(official['confMatrix'], np.int64)
  np.testing.assert_array_equal(matrix[np.ix_(ids, ids)], np.asarray(ours['confusion']))
  assert np.sum(ours['confusion']) > 0
  # Our IoUs are float32 arithmetic, the script's float64.
  assert official['averageScoreClasses'] == pytest.approx(ours['miou'], rel=1e-6)
  assert set(ours['iou']) <= set(official['classScores'])
  for name, iou in ours['iou'].items():
    if math.isnan(iou):  # neither in the ground truth nor predicted
      assert math.isnan(official['classScores'][name]), name
    else:
      assert official['classScores'][name] == pytest.approx(iou, rel=1e-6), name
  assert sum(not math.isnan(v) for v in ours['iou'].values()) >= 3  # a real comparison
