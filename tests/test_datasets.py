"""Readers of the real layouts and the prepare step, on tiny trees with the real naming
conventions."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from data_pipelines import datasets
from data_pipelines import prepare
from data_pipelines.datasets import cityscapes, common, synthia
from tests import fixtures


# --------------------------------------------------------------------------------------------------
# Label mappings: the SPEC's tables.

def test_cityscapes_label_mapping_is_the_spec_table():
  table = cityscapes.LABEL_SPEC.lookup_table()
  spec_ids = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
  assert [int(table[i]) for i in spec_ids] == list(range(19))
  others = [i for i in range(256) if i not in spec_ids]
  assert (table[others] == common.IGNORE_LABEL).all()
  assert cityscapes.LABEL_SPEC.num_classes == 19


def test_synthia_label_mapping_is_the_spec_table():
  spec = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
          8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
  table = synthia.LABEL_SPEC.lookup_table()
  assert {i: int(table[i]) for i in spec} == spec
  assert table[0] == table[13] == table[14] == table[22] == common.IGNORE_LABEL
  assert len(synthia.CLASSES_16) == 16 and len(synthia.CLASSES_13) == 13
  assert 'terrain' not in synthia.CLASSES_16 and 'pole' not in synthia.CLASSES_13


def test_invalid_ids_are_reported():
  assert cityscapes.LABEL_SPEC.invalid_ids(np.array([0, 7, 33, 255, 34, 200])) == [34, 200]
  assert synthia.LABEL_SPEC.invalid_ids(np.array([0, 22, 23])) == [23]


# --------------------------------------------------------------------------------------------------
# Cityscapes.

@pytest.fixture(scope='module')
def cityscapes_root(tmp_path_factory):
  return fixtures.write_cityscapes(str(tmp_path_factory.mktemp('cityscapes')), frames=5, snippets=2)


def test_cityscapes_segmentation_index(cityscapes_root):
  reader = datasets.get_reader('cityscapes', cityscapes_root)
  train = reader.segmentation('train')
  assert train.ids.tolist() == ['aachen_000000_000002', 'aachen_000001_000002']
  assert all(os.path.exists(p) for p in train.labels)
  assert train.labels[0].endswith('gtFine/train/aachen/aachen_000000_000002_gtFine_labelIds.png')
  # Camera JSON in pixels of 64x32 images -> normalised.
  np.testing.assert_allclose(train.intrinsics, [[0.5, 0.25, 0.4, 0.6]] * 2, rtol=1e-6)
  assert len(reader.segmentation('val')) == 1


def test_cityscapes_triplets_need_both_neighbours(cityscapes_root):
  reader = datasets.get_reader('cityscapes', cityscapes_root)
  triplets = reader.sequences('train')
  # 5 frames per snippet: frames 1..3 have both neighbours, in each of the 2 snippets.
  assert len(triplets) == 6
  assert triplets.ids[0] == 'aachen_000000_000001'
  assert triplets.prev_frames[0].endswith('aachen_000000_000000_leftImg8bit.png')
  assert triplets.next_frames[0].endswith('aachen_000000_000002_leftImg8bit.png')
  assert triplets.is_triplet.all()


def test_cityscapes_frame_gap_breaks_triplets(tmp_path):
  root = fixtures.write_cityscapes(str(tmp_path / 'cs'), frames=5, snippets=1)
  os.remove(f'{root}/leftImg8bit_sequence/train/aachen/aachen_000000_000002_leftImg8bit.png')
  # Frames 0 1 _ 3 4: no frame has both neighbours any more.
  with pytest.raises(datasets.DataError, match='no frame has both neighbours'):
    datasets.get_reader('cityscapes', root).sequences('train')


def test_cityscapes_without_camera_uses_official_intrinsics(tmp_path):
  root = fixtures.write_cityscapes(str(tmp_path / 'cs'), camera=False)
  index = datasets.get_reader('cityscapes', root).segmentation('train')
  np.testing.assert_allclose(index.intrinsics[0], [2262.52 / 2048, 2265.3018 / 1024,
                                                   1096.98 / 2048, 513.137 / 1024], rtol=1e-6)


def test_cityscapes_image_without_label_is_named(tmp_path):
  root = fixtures.write_cityscapes(str(tmp_path / 'cs'))
  label = f'{root}/gtFine/train/aachen/aachen_000001_000002_gtFine_labelIds.png'
  os.remove(label)
  with pytest.raises(datasets.DataError,
                     match='aachen_000001_000002_leftImg8bit.png: no label map'):
    datasets.get_reader('cityscapes', root).segmentation('train')


def test_missing_folders_are_named(tmp_path):
  with pytest.raises(datasets.DataError, match=f'{tmp_path}/nowhere: missing folder'):
    datasets.get_reader('cityscapes', str(tmp_path / 'nowhere'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(datasets.DataError, match='leftImg8bit/train: missing folder'):
    datasets.get_reader('cityscapes', str(tmp_path / 'empty')).segmentation('train')
  with pytest.raises(datasets.DataError, match="unknown dataset 'kitti'"):
    datasets.get_reader('kitti', str(tmp_path))


def test_broken_camera_json_is_named(tmp_path):
  root = fixtures.write_cityscapes(str(tmp_path / 'cs'))
  path = f'{root}/camera/train/aachen/aachen_000000_000002_camera.json'
  with open(path, 'w') as f:
    json.dump({'intrinsic': {'fx': 1.0}}, f)
  with pytest.raises(datasets.DataError, match=f'{path}: missing intrinsic key'):
    datasets.get_reader('cityscapes', root).segmentation('train')


# --------------------------------------------------------------------------------------------------
# GTA5, Synthia, CamVid.

def test_gta5_reader(tmp_path):
  root = fixtures.write_gta5(str(tmp_path / 'gta'), images=6, sequence_frames=4)
  reader = datasets.get_reader('gta5', root, val_count=2)
  train, val = reader.segmentation('train'), reader.segmentation('val')
  assert train.ids.tolist() == ['00001', '00002', '00003', '00004']
  assert val.ids.tolist() == ['00005', '00006']
  np.testing.assert_allclose(train.intrinsics[0], [1.206285, 2.144507, 0.5, 0.5])
  # Palette PNG: the raw ids are the palette indices, not colours.
  assert set(np.unique(reader.decode_raw_label(train.labels[0]))) == {0, 7, 23, 26}
  triplets = reader.sequences('train')
  assert triplets.ids.tolist() == ['001_00001', '001_00002', '002_00001', '002_00002']
  with pytest.raises(datasets.DataError, match='val_count=6 does not leave training images'):
    datasets.get_reader('gta5', root, val_count=6).segmentation('train')
  os.remove(f'{root}/labels/00003.png')
  with pytest.raises(datasets.DataError, match='images/00003.png: no label map'):
    reader.segmentation('train')


def test_synthia_reader_decodes_16bit_labels(tmp_path):
  root = fixtures.write_synthia(str(tmp_path / 'synthia'), images=5, sequence_frames=4)
  reader = datasets.get_reader('synthia', root, val_count=1)
  train = reader.segmentation('train')
  assert len(train) == 4 and len(reader.segmentation('val')) == 1
  ids = reader.decode_raw_label(train.labels[0])
  assert ids.dtype == np.uint8 and set(np.unique(ids)) == {1, 2, 3, 4, 8, 22}
  triplets = reader.sequences('train')
  # 2 sequences of 4 frames: frames 1 and 2 of each, ids prefixed by the sequence.
  assert triplets.ids.tolist() == ['SYNTHIA-SEQS-01-SUMMER_000001', 'SYNTHIA-SEQS-01-SUMMER_000002',
                                   'SYNTHIA-SEQS-02-SPRING_000001', 'SYNTHIA-SEQS-02-SPRING_000002']
  np.testing.assert_allclose(triplets.intrinsics[0], [532.740352 / 1280, 532.740352 / 760, .5, .5])
  with pytest.raises(datasets.DataError, match="no 'val' split"):
    reader.sequences('val')


def test_camvid_reader(tmp_path):
  root = fixtures.write_camvid(str(tmp_path / 'camvid'))
  reader = datasets.get_reader('camvid', root)
  assert [len(reader.segmentation(s)) for s in ('train', 'val', 'test')] == [3, 2, 1]
  assert np.isnan(reader.segmentation('train').intrinsics).all()  # CamVid has no calibration
  table = reader.label_spec.lookup_table()
  assert table[10] == 10 and table[11] == common.IGNORE_LABEL
  with pytest.raises(datasets.DataError, match='no video sequences'):
    reader.sequences('train')


def test_index_helpers():
  index = common.ExampleIndex.from_rows([dict(id='a', image='/a.png', label='/a_l.png'),
                                         dict(id='b', image='/b.png')])
  assert index.is_labeled.tolist() == [True, False]
  assert index.select_ids(['b', 'a']).images.tolist() == ['/b.png', '/a.png']
  assert not index.without_labels().is_labeled.any()
  with pytest.raises(datasets.DataError, match=r"unknown example ids \['c'\]"):
    index.select_ids(['c'])
  with pytest.raises(datasets.DataError, match="duplicate example id 'a'"):
    common.ExampleIndex.from_rows([dict(id='a', image='/1.png'), dict(id='a', image='/2.png')])


# --------------------------------------------------------------------------------------------------
# prepare: downsampling once, resumable and idempotent.

def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_prepare_cityscapes_downsamples_and_keeps_intrinsics(cityscapes_root, tmp_path):
  dst = str(tmp_path / 'prepared')
  marker = prepare.prepare('cityscapes', cityscapes_root, dst, (32, 16), image_format='jpg')
  # 15 sequence frames + 3 annotated images + 3 label maps + 3 camera JSONs.
  assert marker['resolution'] == [32, 16] and marker['files'] == 24
  reader = prepare.open_prepared('cityscapes', dst, (32, 16))
  train = reader.segmentation('train')
  assert train.images[0].endswith('.jpg')
  with Image.open(train.images[0]) as image:
    assert image.size == (32, 16) and image.mode == 'RGB'
  with Image.open(train.labels[0]) as label:
    assert label.size == (32, 16) and label.mode == 'L'
    # Nearest downsampling keeps only ids that were there (no blending of ids).
    assert set(np.unique(np.array(label))) <= set(fixtures.CITYSCAPES_IDS)
  # Rescaled camera JSON: the normalised intrinsics do not change.
  np.testing.assert_allclose(train.intrinsics, [[0.5, 0.25, 0.4, 0.6]] * 2, rtol=1e-6)
  assert len(reader.sequences('train')) == 6


def test_prepare_converts_palette_and_16bit_labels(tmp_path):
  gta = fixtures.write_gta5(str(tmp_path / 'gta'))
  prepare.prepare('gta5', gta, str(tmp_path / 'gta_p'), (64, 32), image_format='png')
  with Image.open(tmp_path / 'gta_p' / 'labels' / '00001.png') as label:
    assert label.mode == 'L'
    np.testing.assert_array_equal(np.array(label), fixtures.label_ids((64, 32), (7, 26, 0, 23)))
  syn = fixtures.write_synthia(str(tmp_path / 'syn'))
  prepare.prepare('synthia', syn, str(tmp_path / 'syn_p'), (64, 32), image_format='png')
  path = tmp_path / 'syn_p' / 'RAND_CITYSCAPES' / 'GT' / 'LABELS' / '0000000.png'
  with Image.open(path) as label:
    np.testing.assert_array_equal(np.array(label),
                                  fixtures.label_ids((64, 32), (3, 4, 2, 22, 8, 1)))
  # The prepared 8-bit map reads back through the same reader.
  np.testing.assert_array_equal(datasets.get_reader('synthia', syn).decode_raw_label(str(path)),
                                np.array(Image.open(path)))


def test_prepare_is_idempotent_and_resumes(cityscapes_root, tmp_path):
  dst = str(tmp_path / 'p')
  prepare.prepare('cityscapes', cityscapes_root, dst, (32, 16), image_format='png')
  files = _files(dst)
  mtimes = {f: os.path.getmtime(os.path.join(dst, f)) for f in files}
  # A finished tree: nothing is rewritten.
  prepare.prepare('cityscapes', cityscapes_root, dst, (32, 16), image_format='png')
  assert {f: os.path.getmtime(os.path.join(dst, f)) for f in files} == mtimes
  # An interrupted run (no marker, some files missing): only the missing ones are written.
  os.remove(os.path.join(dst, prepare.MARKER))
  victim = [f for f in files if f.startswith('leftImg8bit/')][0]
  os.remove(os.path.join(dst, victim))
  prepare.prepare('cityscapes', cityscapes_root, dst, (32, 16), image_format='png')
  assert _files(dst) == files
  assert all(os.path.getmtime(os.path.join(dst, f)) == t for f, t in mtimes.items() if f != victim
             and f != prepare.MARKER)
  # The same destination at another resolution is refused.
  with pytest.raises(datasets.DataError, match='choose another destination'):
    prepare.prepare('cityscapes', cityscapes_root, dst, (16, 8))


def test_prepare_errors_name_the_file(cityscapes_root, tmp_path):
  root = fixtures.write_cityscapes(str(tmp_path / 'cs'))
  label = f'{root}/gtFine/train/aachen/aachen_000000_000002_gtFine_labelIds.png'
  Image.fromarray(np.full((32, 64), 200, np.uint8), 'L').save(label)
  with pytest.raises(datasets.DataError, match=f'{label}: label ids \\[200\\]'):
    prepare.prepare('cityscapes', root, str(tmp_path / 'p1'), (32, 16))
  root = fixtures.write_cityscapes(str(tmp_path / 'cs2'))
  image = f'{root}/leftImg8bit/train/aachen/aachen_000001_000002_leftImg8bit.png'
  data = open(image, 'rb').read()
  open(image, 'wb').write(data[:len(data) // 2])
  with pytest.raises(datasets.DataError, match=f'{image}: unreadable image'):
    prepare.prepare('cityscapes', root, str(tmp_path / 'p2'), (32, 16))
  assert not os.path.exists(tmp_path / 'p2' / prepare.MARKER)


def test_open_prepared_refuses_raw_and_mismatched_trees(cityscapes_root, tmp_path):
  with pytest.raises(datasets.DataError,
                     match='not a prepared cityscapes tree.*data_pipelines.prepare'):
    prepare.open_prepared('cityscapes', cityscapes_root, (64, 32))
  dst = str(tmp_path / 'p')
  prepare.prepare('cityscapes', cityscapes_root, dst, (32, 16), image_format='png')
  with pytest.raises(datasets.DataError, match=r'holds cityscapes at \[32, 16\]'):
    prepare.open_prepared('cityscapes', dst, (64, 32))


@pytest.mark.parametrize('text,expected', [('1024x512', (1024, 512)), ('672X512', (672, 512))])
def test_parse_resolution(text, expected):
  assert prepare.parse_resolution(text) == expected


def test_parse_resolution_rejects_garbage():
  with pytest.raises(datasets.DataError, match="resolution '1024'"):
    prepare.parse_resolution('1024')
