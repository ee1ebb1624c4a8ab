"""Tests of the procedural synthetic street world (data_pipelines/synthetic).

Tiny worlds are rendered once per module; every check reads what the world wrote to disk (images,
labels, depth, poses, intrinsics) in the formats docs/synthetic_world.md documents, not in-memory
objects.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from data_pipelines.synthetic import labels
from data_pipelines.synthetic import load_groundtruth
from data_pipelines.synthetic import render_world
from data_pipelines.synthetic import scene

FAR = 1000.0
GT = 'sdeseg_groundtruth'


# ------------------------------------------------------------------------------------------------
# Worlds rendered once per module.

def _render(factory, name, **kwargs):
  root = factory.mktemp(name)
  return root, render_world(root, **kwargs)


@pytest.fixture(scope='module')
def city_cityscapes(tmp_path_factory):
  return _render(tmp_path_factory, 'city_cs', domain='city', layout='cityscapes', size=(128, 64),
                 sequences=4, frames=3, seed=0)


@pytest.fixture(scope='module')
def game_gta5(tmp_path_factory):
  return _render(tmp_path_factory, 'game_gta', domain='game', layout='gta5', size=(128, 64),
                 sequences=4, frames=3, seed=0)


@pytest.fixture(scope='module')
def game_synthia(tmp_path_factory):
  return _render(tmp_path_factory, 'game_synthia', domain='game', layout='synthia',
                 size=(96, 48), sequences=2, frames=3, seed=0)


@pytest.fixture(scope='module')
def city_folder(tmp_path_factory):
  return _render(tmp_path_factory, 'city_folder', domain='city', layout='folder', size=(96, 48),
                 sequences=5, frames=3, seed=0)


@pytest.fixture(scope='module')
def camvid_worlds(tmp_path_factory):
  """Many small snippets of both domains (the CamVid layout renders only annotated frames)."""
  return {domain: _render(tmp_path_factory, f'{domain}_camvid', domain=domain, layout='camvid',
                          size=(96, 48), sequences=16, frames=3, seed=3)
          for domain in ('city', 'game')}


def _snippets(root):
  """All snippet records of a world, ordered by index."""
  files = sorted((Path(root) / GT / 'snippets').glob('*.json'))
  return [json.loads(f.read_text()) for f in files]


def _image(root, rel):
  """[H, W, 3] float64 in [0, 1]."""
  return np.asarray(Image.open(Path(root) / rel).convert('RGB'), np.float64) / 255.0


def _gt(root, rel, kind):
  """Ground truth beside image `rel`: kind 'depth' (float32 metres), 'moving' or 'labelIds'."""
  stem = Path(root) / GT / os.path.splitext(rel)[0]
  if kind == 'depth':
    return np.load(f'{stem}_depth.npy')
  return np.asarray(Image.open(f'{stem}_{kind}.png'))


def _record(snippet, frame):
  return next(r for r in snippet['frames'] if r['frame'] == frame)


# ------------------------------------------------------------------------------------------------
# Geometry: the ground truth explains the images.

def _warp_error(root, snippet):
  """Warps frame t+1 into frame t (t = annotated) with GT depth, poses and K, in float64.

  Returns:
    (mean abs error on valid pixels, fraction of valid pixels, mean displacement in pixels).
  """
  t = snippet['annotated_frame']
  rel_t, rel_s = _record(snippet, t)['images'][0], _record(snippet, t + 1)['images'][0]
  target, source = _image(root, rel_t), _image(root, rel_s)
  depth_t = _gt(root, rel_t, 'depth').astype(np.float64)
  depth_s = _gt(root, rel_s, 'depth').astype(np.float64)
  moving_t, moving_s = _gt(root, rel_t, 'moving') > 0, _gt(root, rel_s, 'moving') > 0
  K = np.asarray(snippet['intrinsics'])
  pose_t = np.asarray(_record(snippet, t)['cam_to_world'])
  pose_s = np.asarray(_record(snippet, t + 1)['cam_to_world'])
  h, w = depth_t.shape

  # Back-project every integer pixel of frame t, move it into camera t+1, project.
  u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
  rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(K).T
  t_to_s = np.linalg.inv(pose_s) @ pose_t
  points = (rays * depth_t[..., None]) @ t_to_s[:3, :3].T + t_to_s[:3, 3]
  z = points[..., 2]
  projected = points @ K.T
  us, vs = projected[..., 0] / z, projected[..., 1] / z
  inside = (z > 0.1) & (us >= 0) & (us <= w - 1) & (vs >= 0) & (vs <= h - 1)

  # Bilinear sampling of frame t+1.
  u0 = np.clip(np.floor(us), 0, w - 2).astype(int)
  v0 = np.clip(np.floor(vs), 0, h - 2).astype(int)
  a, b = (us - u0)[..., None], (vs - v0)[..., None]
  warped = ((1 - a) * (1 - b) * source[v0, u0] + a * (1 - b) * source[v0, u0 + 1]
            + (1 - a) * b * source[v0 + 1, u0] + a * b * source[v0 + 1, u0 + 1])

  # Occlusion / disocclusion: the projected depth must match frame t+1's depth there.
  un = np.clip(np.round(us), 0, w - 1).astype(int)
  vn = np.clip(np.round(vs), 0, h - 1).astype(int)
  visible = np.abs(depth_s[vn, un] - z) <= 0.03 * z
  valid = inside & visible & ~moving_t & ~moving_s[vn, un]
  error = np.abs(warped - target).mean(axis=-1)
  displacement = np.hypot(us - u, vs - v)
  return error[valid].mean(), valid.mean(), displacement[valid].mean()


@pytest.mark.parametrize('world', ['city_cityscapes', 'game_gta5'])
def test_warping_next_frame_with_ground_truth_reproduces_frame(world, request):
  root, _ = request.getfixturevalue(world)
  for snippet in _snippets(root):
    error, coverage, displacement = _warp_error(root, snippet)
    assert coverage > 0.5, snippet['snippet']
    assert error < 0.02, (snippet['snippet'], error)
    assert displacement > 0.5, snippet['snippet']  # the camera did move: the warp is not trivial


def test_moving_objects_are_masked_and_can_be_switched_off(city_cityscapes, tmp_path):
  root, _ = city_cityscapes
  snippets = _snippets(root)
  assert any(s['objects']['moving_primitives_by_class'] for s in snippets)
  assert any(_gt(root, r['images'][0], 'moving').any() for s in snippets for r in s['frames'])
  static = tmp_path / 'static'
  render_world(static, domain='city', layout='cityscapes', size=(128, 64), sequences=4, frames=3,
               seed=0, moving_objects=False)
  for moving_snippet, static_snippet in zip(snippets, _snippets(static)):
    assert not static_snippet['objects']['moving_primitives_by_class']
    for record in static_snippet['frames']:
      assert not _gt(static, record['images'][0], 'moving').any()
    # The same scene, frozen: at the annotated time (t = 0) both worlds look the same.
    annotated = _record(moving_snippet, moving_snippet['annotated_frame'])['images'][0]
    np.testing.assert_array_equal(_image(root, annotated), _image(static, annotated))


def test_sky_has_far_depth_and_road_lies_on_the_ground_plane(city_cityscapes):
  root, _ = city_cityscapes
  for path in sorted(root.glob('leftImg8bit/*/*/*.png')):
    rel = str(path.relative_to(root))
    depth = _gt(root, rel, 'depth')
    stem = rel[len('leftImg8bit/'):-len('_leftImg8bit.png')]
    label = np.asarray(Image.open(root / f'gtFine/{stem}_gtFine_labelIds.png'))
    camera = json.loads((root / f'camera/{stem}_camera.json').read_text())
    sky = label == labels.SKY
    assert sky.any()
    np.testing.assert_array_equal(depth[sky], FAR)
    assert np.all((depth[~sky] > 0) & (depth[~sky] < FAR))
    # A level camera at height h sees the ground in row v at z-depth h * fy / (v - cy).
    h, fy, cy = camera['extrinsic']['z'], camera['intrinsic']['fy'], camera['intrinsic']['v0']
    assert camera['extrinsic']['pitch'] == 0.0 and camera['extrinsic']['roll'] == 0.0
    rows = np.broadcast_to(np.arange(depth.shape[0])[:, None], depth.shape)
    road = (label == labels.ROAD) & (rows > depth.shape[0] / 2) & (rows > cy + 1)
    assert road.sum() > 100
    np.testing.assert_allclose(depth[road], h * fy / (rows[road] - cy), rtol=1e-4)


def test_groundtruth_loader_matches_files(game_gta5):
  root, _ = game_gta5
  snippet = _snippets(root)[1]
  record = _record(snippet, 2)
  rel = record['images'][0]
  gt = load_groundtruth(root, rel)
  np.testing.assert_array_equal(gt.depth, _gt(root, rel, 'depth'))
  np.testing.assert_array_equal(gt.cam_to_world, record['cam_to_world'])
  np.testing.assert_array_equal(gt.intrinsics, snippet['intrinsics'])
  assert gt.frame == 2 and gt.depth.dtype == np.float32 and gt.moving.dtype == bool
  assert gt.label_ids.shape == gt.depth.shape == (64, 128)
  suns = np.array([s['sun_direction'] for s in _snippets(root)])  # the game's turns per snippet
  np.testing.assert_allclose(np.linalg.norm(suns, axis=1), 1.0, rtol=1e-9)
  assert len(np.unique(suns.round(6), axis=0)) == len(suns) > 1


# ------------------------------------------------------------------------------------------------
# Domain gap.

def test_domains_differ_in_camera_geometry(camvid_worlds):
  rigs = {d: [s['camera'] for s in _snippets(root)] for d, (root, _) in camvid_worlds.items()}
  city_h = np.array([c['height_m'] for c in rigs['city']])
  game_h = np.array([c['height_m'] for c in rigs['game']])
  assert np.all((city_h >= 1.2) & (city_h <= 1.6))
  assert all(c['pitch_deg'] == 0.0 and c['roll_deg'] == 0.0 for c in rigs['city'])
  assert game_h.min() < 1.2 and game_h.max() > 3.0 and game_h.std() > 3 * city_h.std()
  game_pitch = np.array([c['pitch_deg'] for c in rigs['game']])
  assert game_pitch.min() >= -15.0 and game_pitch.max() <= 5.0 and game_pitch.std() > 3.0


def test_domains_differ_in_colour_statistics(camvid_worlds):
  stats = {}
  for domain, (root, _) in camvid_worlds.items():
    images = [p for p in sorted(root.glob('*/*.png')) if not p.parent.name.endswith('annot')]
    pixels = np.concatenate([_image(root, p.relative_to(root)).reshape(-1, 3) for p in images])
    saturation = (pixels.max(1) - pixels.min(1)) / np.maximum(pixels.max(1), 1e-6)
    stats[domain] = (pixels.mean(0), pixels.std(0), saturation.mean())
  (m_city, s_city, sat_city), (m_game, s_game, sat_game) = stats['city'], stats['game']
  assert np.abs(m_city - m_game).max() > 0.04
  assert np.abs(s_city - s_game).max() > 0.02
  assert sat_game > sat_city + 0.05


def test_game_sun_turns_per_scene_and_leaves_the_scene_as_it_was(monkeypatch):
  """The game domain's sun turns about the vertical per scene, so that camera-facing faces (sign
  plates, vehicle rears) are lit in some images and shaded in others; the geometry and colours are
  those of a fixed sun, and the city keeps its one sun."""
  def scenes(domain):
    return [scene.build_scene(np.random.SeedSequence([5, i]), domain, 3, scene.SceneParams())
            for i in range(12)]

  for s in scenes('city'):
    assert s.style == scene.STYLES['city']
  turned = scenes('game')
  suns = np.array([s.style.sun_direction for s in turned])
  np.testing.assert_allclose(np.linalg.norm(suns, axis=1), 1.0, rtol=1e-12)
  np.testing.assert_allclose(suns[:, 2], scene.STYLES['game'].sun_direction[2], rtol=0, atol=0)
  facing = -suns[:, 1]  # the sun's light on a face toward -y (toward the camera)
  assert facing.min() < -0.1 and facing.max() > 0.1
  monkeypatch.setitem(scene.STYLES, 'game',
                      dataclasses.replace(scene.STYLES['game'], sun_azimuth_spread_deg=0.0))
  for a, b in zip(turned, scenes('game')):
    assert b.style.sun_direction == scene.STYLES['game'].sun_direction
    for field in dataclasses.fields(a.prims):
      np.testing.assert_array_equal(getattr(a.prims, field.name), getattr(b.prims, field.name))
    assert a.ground == b.ground and a.camera.positions.tolist() == b.camera.positions.tolist()


# ------------------------------------------------------------------------------------------------
# Layouts.

CITYSCAPES_NAME = re.compile(r'^(synthcity_[a-z](?:_val)?)_(\d{6})_(\d{6})_leftImg8bit\.png$')


def test_cityscapes_layout(city_cityscapes):
  root, summary = city_cityscapes
  frames, anno, w, h = 3, 1, 128, 64
  assert summary['splits'] == {'train': 3, 'val': 1}
  annotated = sorted((root / 'leftImg8bit').glob('*/*/*.png'))
  assert len(annotated) == 4
  # As in Cityscapes, train and val have different cities, so ids are unique across splits.
  assert len({p.name for p in annotated}) == 4
  for path in annotated:
    split, city = path.parts[-3], path.parts[-2]
    match = CITYSCAPES_NAME.match(path.name)
    assert split in ('train', 'val') and match and match.group(1) == city
    assert int(match.group(3)) == anno
    stem = f'{city}_{match.group(2)}_{anno:06d}'
    sequence_dir = root / 'leftImg8bit_sequence' / split / city
    for f in range(frames):
      with Image.open(sequence_dir / f'{city}_{match.group(2)}_{f:06d}_leftImg8bit.png') as image:
        assert image.mode == 'RGB' and image.size == (w, h)
    np.testing.assert_array_equal(np.asarray(Image.open(path)),
                                  np.asarray(Image.open(sequence_dir / path.name)))
    with Image.open(root / 'gtFine' / split / city / f'{stem}_gtFine_labelIds.png') as label:
      assert label.mode == 'L' and label.size == (w, h)
      assert set(np.unique(np.asarray(label)).tolist()) <= labels.WORLD_CLASS_IDS
    camera = json.loads((root / 'camera' / split / city / f'{stem}_camera.json').read_text())
    assert set(camera) == {'extrinsic', 'intrinsic'}
    assert set(camera['extrinsic']) == {'baseline', 'pitch', 'roll', 'x', 'y', 'z', 'yaw'}
    assert camera['extrinsic']['baseline'] == 0.209313 and 1.2 <= camera['extrinsic']['z'] <= 1.6
    np.testing.assert_allclose(
        [camera['intrinsic'][k] for k in ('fx', 'fy', 'u0', 'v0')],
        [2262.52 / 2048 * w, 2265.3018 / 1024 * h, 1096.98 / 2048 * w, 513.137 / 1024 * h])
  assert len(list((root / 'leftImg8bit_sequence').glob('*/*/*.png'))) == 4 * frames
  # Nothing else at the top: the layout's folders, the ground truth and the marker.
  assert {p.name for p in root.iterdir()} == {
      'leftImg8bit', 'leftImg8bit_sequence', 'gtFine', 'camera', GT, 'sdeseg_synthetic.json'}


def test_gta5_layout(game_gta5):
  root, _ = game_gta5
  expected = [f'{i:05d}.png' for i in range(1, 5)]
  assert sorted(p.name for p in (root / 'images').iterdir()) == expected
  assert sorted(p.name for p in (root / 'labels').iterdir()) == expected
  palette = labels.cityscapes_colors()
  for path in (root / 'labels').iterdir():
    with Image.open(path) as label:
      assert label.mode == 'P' and label.size == (128, 64)
      ids = np.asarray(label)
      used = np.unique(ids)
      assert set(used.tolist()) <= labels.WORLD_CLASS_IDS
      written_palette = np.asarray(label.getpalette()[:768]).reshape(256, 3)
      np.testing.assert_array_equal(written_palette[used], palette[used])
    np.testing.assert_array_equal(ids, _gt(root, f'images/{path.name}', 'labelIds'))
  name = re.compile(r'^(\d{3})_(\d{5})\.png$')
  colour_to_id = {tuple(palette[i]): i for i in sorted(labels.WORLD_CLASS_IDS)}
  frames_seen = {}
  for image in sorted((root / 'sequences').glob('*/img/*/*.png')):
    split, seq = image.parts[-4], image.parts[-2]
    match = name.match(image.name)
    assert split in ('train', 'val') and match and match.group(1) == seq
    frames_seen.setdefault((split, seq), []).append(int(match.group(2)))
    colours = np.asarray(Image.open(root / 'sequences' / split / 'cls' / seq / image.name))
    ids = np.array([colour_to_id[tuple(c)] for c in colours.reshape(-1, 3)]).reshape(64, 128)
    np.testing.assert_array_equal(ids, _gt(root, str(image.relative_to(root)), 'labelIds'))
  assert sorted(frames_seen) == [('train', '001'), ('train', '002'), ('train', '003'),
                                 ('val', '001')]
  assert all(frames == [0, 1, 2] for frames in frames_seen.values())
  K = np.asarray(_snippets(root)[0]['intrinsics'])
  np.testing.assert_allclose(K, [[1.206285 * 128, 0, 64], [0, 2.144507 * 64, 32], [0, 0, 1]])


def test_synthia_layout(game_synthia):
  tf = pytest.importorskip('tensorflow')
  root, _ = game_synthia
  rand = sorted((root / 'RAND_CITYSCAPES' / 'RGB').iterdir())
  assert [p.name for p in rand] == ['0000000.png', '0000001.png']
  label_files = [root / 'RAND_CITYSCAPES' / 'GT' / 'LABELS' / p.name for p in rand]
  for i in (1, 2):
    folder = root / f'SYNTHIA-SEQS-{i:02d}-SUMMER'
    assert sorted(p.name for p in (folder / 'RGB/Stereo_Left/Omni_F').iterdir()) == [
        f'{f:06d}.png' for f in range(3)]
    label_files += sorted((folder / 'GT/LABELS/Stereo_Left/Omni_F').iterdir())
  lane_marking_seen = False
  for path in label_files:
    decoded = tf.io.decode_png(tf.io.read_file(str(path)), dtype=tf.uint16).numpy()
    assert decoded.dtype == np.uint16 and decoded.shape == (48, 96, 3)
    assert set(np.unique(decoded[..., 0]).tolist()) <= labels.SYNTHIA_IDS
    assert not decoded[..., 2].any()
    marking = decoded[..., 0] == labels.SYNTHIA_LANE_MARKING
    lane_marking_seen |= bool(marking.any())
    image_rel = str(path.relative_to(root)).replace('GT/LABELS', 'RGB')
    cityscapes_ids = _gt(root, image_rel, 'labelIds')
    expected = labels.SYNTHIA_FROM_CITYSCAPES[cityscapes_ids]
    np.testing.assert_array_equal(decoded[..., 0][~marking], expected[~marking])
    assert np.all(cityscapes_ids[marking] == labels.ROAD)
  assert lane_marking_seen
  K = np.asarray(_snippets(root)[0]['intrinsics'])
  np.testing.assert_allclose(
      K, [[532.740352 / 1280 * 96, 0, 48], [0, 532.740352 / 760 * 48, 24], [0, 0, 1]])


def test_camvid_layout(camvid_worlds):
  root, summary = camvid_worlds['city']
  name = re.compile(r'^(0001TP|0006R0|0016E5|Seq05VD)_(\d{6})\.png$')
  counts = {}
  for split in ('train', 'val', 'test'):
    images = sorted((root / split).iterdir())
    counts[split] = len(images)
    for path in images:
      assert name.match(path.name)
      with Image.open(root / f'{split}annot' / path.name) as label:
        assert label.mode == 'L' and label.size == (96, 48)
        assert set(np.unique(np.asarray(label)).tolist()) <= labels.CAMVID_IDS
  assert counts == {'train': 10, 'val': 3, 'test': 3} == summary['splits']
  # Only annotated frames: one image per snippet, no sequences.
  assert all(len(s['frames']) == 1 and s['frames'][0]['frame'] == 1 for s in _snippets(root))


def test_folder_layout(city_folder):
  root, summary = city_folder
  w, h = 96, 48
  assert summary['splits'] == {'train': 4, 'val': 1}
  classes = json.loads((root / 'classes.json').read_text())
  assert [c['name'] for c in classes['classes']][:3] == ['road', 'sidewalk', 'building']
  assert len(classes['classes']) == 19 and classes['ignore_id'] == 255
  assert classes['classes'][13] == {'name': 'car', 'colour': [0, 0, 142]}
  cameras = json.loads((root / 'intrinsics.json').read_text())
  assert cameras['default'] == {'hfov_deg': 60.0}
  # One form per clip: pixels, normalized, hfov, (default), pixels.
  assert sorted(cameras['clips']) == ['street000', 'street001', 'street002', 'street004']
  assert cameras['clips']['street000']['units'] == 'pixels'
  assert cameras['clips']['street000']['size'] == [w, h]
  assert cameras['clips']['street001']['units'] == 'normalized'
  assert cameras['clips']['street002'] == {'hfov_deg': 68.0}
  for snippet in _snippets(root):
    clip, split = f'street{snippet["snippet"]:03d}', snippet['split']
    focal = 0.5 * w / np.tan(np.radians((56.0, 62.0, 68.0, 60.0)[snippet['snippet'] % 4]) / 2)
    np.testing.assert_allclose(snippet['intrinsics'], [[focal, 0, w / 2], [0, focal, h / 2],
                                                       [0, 0, 1]])
    assert sorted(p.name for p in (root / 'sequences' / clip).iterdir()) == [
        '000000.png', '000001.png', '000002.png']
    image = f'images/{split}/{clip}/000001.png'
    np.testing.assert_array_equal(_image(root, image), _image(root, f'sequences/{clip}/000001.png'))
    with Image.open(root / f'labels/{split}/{clip}/000001.png') as label:
      assert label.mode == 'L' and label.size == (w, h)
      np.testing.assert_array_equal(
          np.asarray(label), labels.CLASS_ID_FROM_CITYSCAPES[_gt(root, image, 'labelIds')])
    with Image.open(root / f'depth/{split}/{clip}/000001.png') as depth:
      depth = np.asarray(depth).astype(np.float64) / 256
    truth = _gt(root, image, 'depth')
    unknown = (truth >= FAR) | (truth * 256 > 65535)  # the sky; beyond what 16 bits hold
    assert unknown.any() and (depth[unknown] == 0).all()
    assert np.abs(depth[~unknown] - truth[~unknown]).max() <= 1 / 512 + 1e-6
  assert {p.name for p in root.iterdir()} == {
      'classes.json', 'intrinsics.json', 'images', 'labels', 'sequences', 'depth', GT,
      'sdeseg_synthetic.json'}


def test_long_tail_class_frequencies(tmp_path):
  root = tmp_path / 'tail'
  render_world(root, domain='city', layout='cityscapes', size=(64, 32), sequences=40, frames=1,
               seed=0)
  ids = np.concatenate([np.asarray(Image.open(p)).ravel() for p in root.glob('gtFine/*/*/*.png')])
  fraction = {c: np.mean(ids == c) for c in labels.WORLD_CLASS_IDS}
  rare = max(fraction[labels.TRUCK], fraction[labels.BUS])
  for common in (labels.ROAD, labels.BUILDING, labels.VEGETATION, labels.SKY):
    assert fraction[common] > 0.02 and fraction[common] > 5 * rare, labels.CLASS_NAMES[common]
  assert min(fraction[labels.ROAD], fraction[labels.BUILDING]) > 20 * rare
  # Trucks and buses appear in a minority of snippets...
  heavy = [s for s in _snippets(root) if {'truck', 'bus'} & set(s['objects']['by_class'])]
  assert 0 < len(heavy) < 0.5 * 40
  # ...and the frequencies are configurable.
  busy = tmp_path / 'buses'
  render_world(busy, domain='city', layout='camvid', size=(32, 16), sequences=6, frames=1,
               scene_params={'bus_probability': 1.0})
  assert all('bus' in s['objects']['by_class'] for s in _snippets(busy))


# ------------------------------------------------------------------------------------------------
# Determinism, idempotence, validation, CLI.

def _tree_bytes(root):
  """{relative path: bytes} of every file except the marker (which records timings)."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob('*'))
          if p.is_file() and p.name != 'sdeseg_synthetic.json'}


def test_determinism_across_runs_seeds_and_workers(tmp_path):
  kwargs = dict(domain='game', layout='camvid', size=(64, 32), sequences=3, frames=3)
  render_world(tmp_path / 'a', seed=7, **kwargs)
  render_world(tmp_path / 'b', seed=7, num_workers=2, **kwargs)
  render_world(tmp_path / 'c', seed=8, **kwargs)
  a, b, c = (_tree_bytes(tmp_path / n) for n in 'abc')
  assert a == b
  image = 'train/0001TP_000001.png'
  assert a[image] != c[image]


def test_rerun_is_a_no_op_and_other_parameters_are_refused(city_cityscapes):
  root, summary = city_cityscapes
  kwargs = dict(domain='city', layout='cityscapes', size=(128, 64), sequences=4, frames=3)
  stamps = {p: p.stat().st_mtime_ns for p in root.rglob('*') if p.is_file()}
  again = render_world(root, seed=0, **kwargs)
  assert again['skipped'] and not summary['skipped']
  assert {p: p.stat().st_mtime_ns for p in root.rglob('*') if p.is_file()} == stamps
  with pytest.raises(FileExistsError, match='seed: 0 -> 1'):
    render_world(root, seed=1, **kwargs)
  marker = json.loads((root / 'sdeseg_synthetic.json').read_text())
  assert marker['params']['size'] == [128, 64]
  assert marker['summary']['num_images'] == 4 * 3 + 4


def test_half_written_world_is_detected(tmp_path):
  kwargs = dict(domain='city', layout='camvid', size=(32, 16), sequences=2, frames=1)
  render_world(tmp_path, **kwargs)
  (tmp_path / 'sdeseg_synthetic.json').unlink()  # as if interrupted before the marker
  with pytest.raises(FileExistsError, match='half-written'):
    render_world(tmp_path, seed=1, **kwargs)
  assert not render_world(tmp_path, **kwargs)['skipped']  # same parameters: completes it


@pytest.mark.parametrize('kwargs, message', [
    (dict(domain='town'), r'unknown domain .town.; allowed: city, game'),
    (dict(layout='kitti'),
     r'unknown layout .kitti.; allowed: cityscapes, gta5, synthia, camvid, folder'),
    (dict(size=(0, 10)), r'size must be'),
    (dict(frames=0), r'frames must be an integer >= 1'),
    (dict(val_fraction=1.0), r'val_fraction'),
    (dict(scene_params={'dragons': 1}), r'unknown scene parameter'),
    (dict(scene_params={'bus_probability': 2}), r'bus_probability must be'),
])
def test_invalid_arguments(tmp_path, kwargs, message):
  args = dict(domain='city', layout='cityscapes', size=(32, 16), sequences=1, frames=1)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    render_world(tmp_path, **args)
  assert not any(tmp_path.iterdir())


def _cli(*args: str) -> subprocess.CompletedProcess:
  """python -m data_pipelines.synthetic (absl flags are global: each command its own process)."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run([sys.executable, '-m', 'data_pipelines.synthetic', *args], cwd=repo,
                        capture_output=True, text=True, timeout=300)


def test_cli(tmp_path):
  out = tmp_path / 'cli'
  result = _cli('--out', str(out), '--domain', 'city', '--layout', 'gta5', '--size', '32x16',
                '--sequences', '2', '--frames', '3', '--seed', '4')
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout)['num_images'] == 2 + 2 * 3
  assert (out / 'sdeseg_synthetic.json').exists()
  result = _cli('--out', str(out), '--domain', 'town', '--layout', 'gta5')
  assert result.returncode == 1
  assert '--domain=town' in result.stderr and 'city|game' in result.stderr
  result = _cli('--out', str(out / 'other'), '--domain', 'city', '--layout', 'gta5', '--size',
                '32by16')
  assert result.returncode == 1
  assert "error: --size must look like WIDTHxHEIGHT (e.g. 256x128), got '32by16'" in result.stderr
