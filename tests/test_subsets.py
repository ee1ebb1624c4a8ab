"""Labeled subsets (random or from a selection file) and the image/sequence join."""

import json

import numpy as np
import pytest

from data_pipelines import subsets
from data_pipelines.datasets import DataError
from data_pipelines.datasets.common import ExampleIndex


def _index(n, prefix='img'):
  return ExampleIndex.from_rows([dict(id=f'{prefix}{i}', image=f'/{prefix}{i}.png',
                                      label=f'/{prefix}{i}_label.png') for i in range(n)])


def test_random_subsets_are_seeded_and_sized():
  index = _index(20)
  a = subsets.labeled_rows(index, 5, seed=0)
  assert len(a) == 5 and len(set(a)) == 5 and np.all(np.diff(a) > 0)
  np.testing.assert_array_equal(a, subsets.labeled_rows(index, 5, seed=0))
  assert not np.array_equal(a, subsets.labeled_rows(index, 5, seed=1))
  np.testing.assert_array_equal(subsets.labeled_rows(index, 0, seed=0), np.arange(20))
  np.testing.assert_array_equal(subsets.labeled_rows(index, 50, seed=0), np.arange(20))


def test_selection_file_gives_its_first_ids(tmp_path):
  index = _index(10)
  path = tmp_path / 'selection.json'
  path.write_text(json.dumps({'ids': ['img7', 'img2', 'img9', 'img0']}))
  np.testing.assert_array_equal(subsets.labeled_rows(index, 3, seed=0, selection=str(path)),
                                [2, 7, 9])
  with pytest.raises(DataError, match='holds 4 ids, fewer than the 5'):
    subsets.labeled_rows(index, 5, seed=0, selection=str(path))
  path.write_text(json.dumps(['img1', 'elsewhere3']))
  with pytest.raises(DataError, match=r"ids not in the dataset split: \['elsewhere3'\]"):
    subsets.labeled_rows(index, 2, seed=0, selection=str(path))
  path.write_text('{not json')
  with pytest.raises(DataError, match='unreadable selection file'):
    subsets.labeled_rows(index, 2, seed=0, selection=str(path))


def test_semi_supervised_keeps_labels_only_on_the_subset():
  index = subsets.semi_supervised(_index(6), np.array([1, 4]))
  assert index.is_labeled.tolist() == [False, True, False, False, True, False]
  assert len(index) == 6


def test_with_neighbours_joins_by_id():
  images = _index(3)
  sequences = ExampleIndex.from_rows([
      dict(id=f'img{i}', image=f'/seq/img{i}.png', prev=f'/seq/prev{i}.png',
           next=f'/seq/next{i}.png')
      for i in (2, 0, 1, 5)])
  joined = subsets.with_neighbours(images, sequences)
  assert joined.prev_frames.tolist() == ['/seq/prev0.png', '/seq/prev1.png', '/seq/prev2.png']
  assert joined.images.tolist() == images.images.tolist()  # the annotated images themselves
  with pytest.raises(DataError, match=r"have no frame triplet.*\['img3'\]"):
    subsets.with_neighbours(_index(4), sequences)


def test_frame_fractions_are_sized_seeded_and_stable():
  """The SDE's frame subsets (Table 9): round(fraction * n) rows, at least one, the same rows for
  the same (n, fraction, seed) (a resumed run trains on the same frames), others for other seeds."""
  assert [subsets.fraction_count(83_300, f) for f in (1.0, 0.1, 0.01, 0.001)] == [
      83_300, 8330, 833, 83]
  assert subsets.fraction_count(40, 0.001) == 1 and subsets.fraction_count(0, 0.5) == 0
  np.testing.assert_array_equal(subsets.fraction_rows(7, 1.0, seed=3), np.arange(7))
  a = subsets.fraction_rows(1000, 0.01, seed=0)
  assert len(a) == 10 and len(set(a)) == 10 and np.all(np.diff(a) > 0) and a[-1] < 1000
  np.testing.assert_array_equal(a, subsets.fraction_rows(1000, 0.01, seed=0))
  assert not np.array_equal(a, subsets.fraction_rows(1000, 0.01, seed=1))
  # Not the labeled subset of the same seed and size.
  assert not np.array_equal(a, subsets.labeled_rows(_index(1000), 10, seed=0))
  for bad in (0.0, -0.1, 1.5):
    with pytest.raises(ValueError, match='0 < fraction <= 1'):
      subsets.fraction_rows(10, bad, seed=0)
