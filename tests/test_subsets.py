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
