"""Video import for the folder layout: data_pipelines.video (the bundled ffmpeg),
import_video (a video -> sequences/<clip>/000000.jpg...) and pair_frames (labelled image -> its
frame, pairs.json), on a 12-frame 64x48 synthetic clip."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from data_pipelines import import_video
from data_pipelines import pair_frames
from data_pipelines import video
from data_pipelines.datasets.common import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES, WIDTH, HEIGHT, FPS = 12, 64, 48, 12


def moving_frames(count: int = FRAMES, stripes: bool = False) -> list[np.ndarray]:
  """uint8 [H, W, 3] frames: gradients and waves drifting under a square moving diagonally, so
  consecutive frames differ clearly even as 64 px grayscale thumbnails. `stripes`: another scene
  (horizontal stripes), the frames of another video."""
  y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
  frames = []
  for t in range(count):
    if stripes:
      grey = 128 + 120 * np.sign(np.sin((y + t) / 3.0))
      image = grey[..., None] * np.array([1.0, 0.5, 0.2])
    else:
      image = np.stack([128 + 100 * np.sin((x + 3 * t) / 6.0),
                        128 + 100 * np.sin((y - 2 * t) / 5.0), x * 2 + y * 2 - 8 * t], -1)
      image[6 + 2 * t:18 + 2 * t, 4 + 4 * t:16 + 4 * t] = (250, 250, 40)
    frames.append(np.clip(image, 0, 255).astype(np.uint8))
  return frames


@pytest.fixture(scope='module')
def clip_mp4(tmp_path_factory):
  """(path of the synthetic clip written as .mp4 at FPS, its frames)."""
  frames = moving_frames()
  path = str(tmp_path_factory.mktemp('video') / 'clip.mp4')
  video.write_mp4(path, frames, FPS)
  return path, frames


def read_image(path: str) -> np.ndarray:
  return np.asarray(Image.open(path).convert('RGB'), np.float32)


def nearest_frame(image: np.ndarray, frames: list[np.ndarray]) -> int:
  return int(np.argmin([np.abs(image - frame).mean() for frame in frames]))


# --------------------------------------------------------------------------------------------------
# video.py

def test_write_mp4_and_probe(clip_mp4):
  path, _ = clip_mp4
  info = video.probe(path)
  assert (info.fps, info.width, info.height, info.frames) == (FPS, WIDTH, HEIGHT, FRAMES)
  assert info.duration == pytest.approx(FRAMES / FPS, abs=0.1)
  assert not [n for n in os.listdir(os.path.dirname(path)) if n != 'clip.mp4']  # no temp file


def test_write_mp4_refuses_frames_h264_cannot_hold(tmp_path):
  path = str(tmp_path / 'odd.mp4')
  with pytest.raises(DataError, match='even width and height'):
    video.write_mp4(path, [np.zeros((47, 64, 3), np.uint8)], FPS)
  with pytest.raises(DataError, match=r'frame 1 is .*one size'):
    video.write_mp4(path, [np.zeros((48, 64, 3), np.uint8), np.zeros((48, 66, 3), np.uint8)], FPS)
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('content', ['garbage', 'truncated', 'missing'])
def test_unreadable_video_is_a_data_error_naming_it(clip_mp4, tmp_path, content):
  path = str(tmp_path / 'bad.mp4')
  if content == 'garbage':
    with open(path, 'wb') as f:
      f.write(b'not a video at all\n' * 50)
  elif content == 'truncated':  # cut inside its header (a download stopped early)
    with open(clip_mp4[0], 'rb') as f:
      head = f.read(300)
    with open(path, 'wb') as f:
      f.write(head)
  expected = 'no such video file' if content == 'missing' else 'bad.mp4: '
  for call in (video.probe, lambda p: video.extract_frames(p, str(tmp_path))):
    with pytest.raises(DataError, match=expected) as error:
      call(path)
    assert path in str(error.value)
    if content == 'garbage':
      assert 'Invalid data found when processing input' in str(error.value)  # ffmpeg's words


def test_a_video_cut_mid_stream_gives_its_frames_and_a_warning(clip_mp4, tmp_path, caplog):
  with open(clip_mp4[0], 'rb') as f:
    data = f.read()
  path = tmp_path / 'cut.mp4'
  path.write_bytes(data[:int(len(data) * 0.7)])  # write_mp4 puts the index first (faststart)
  out = tmp_path / 'frames'
  out.mkdir()
  count = video.extract_frames(str(path), str(out))
  assert 0 < count < FRAMES
  assert any('cut.mp4: ffmpeg reported' in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------------
# import_video

def test_import_at_the_videos_own_rate(clip_mp4, tmp_path):
  path, frames = clip_mp4
  out = str(tmp_path / 'sequences' / 'clip')
  summary = import_video.import_video(path, out)
  names = [f'{i:06d}.jpg' for i in range(FRAMES)]
  assert sorted(os.listdir(out)) == names
  assert os.listdir(tmp_path / 'sequences') == ['clip']  # the temporary folder is gone
  assert (summary['frames'], summary['fps'], summary['width'], summary['height']) == (
      FRAMES, FPS, WIDTH, HEIGHT)
  for i, name in enumerate(names):
    image = read_image(os.path.join(out, name))
    assert np.abs(image - frames[i]).mean() < 6  # H.264 then JPEG: close, not exact
    assert nearest_frame(image, frames) == i


def test_import_at_a_lower_fps_takes_the_frame_on_screen_at_each_tick(clip_mp4, tmp_path):
  path, frames = clip_mp4
  out = str(tmp_path / 'clip')
  summary = import_video.import_video(path, out, fps=4)
  assert sorted(os.listdir(out)) == ['000000.jpg', '000001.jpg', '000002.jpg', '000003.jpg']
  assert (summary['frames'], summary['fps']) == (4, 4)
  taken = [nearest_frame(read_image(os.path.join(out, f'{i:06d}.jpg')), frames) for i in range(4)]
  assert taken == [0, 3, 6, 9]


def test_import_resized_as_png(clip_mp4, tmp_path):
  out = str(tmp_path / 'clip')
  summary = import_video.import_video(clip_mp4[0], out, size=(32, 24), image_format='png')
  assert sorted(os.listdir(out)) == [f'{i:06d}.png' for i in range(FRAMES)]
  assert Image.open(os.path.join(out, '000005.png')).size == (32, 24)
  assert (summary['width'], summary['height']) == (32, 24)


def test_import_refuses_a_non_empty_out_unless_overwrite(clip_mp4, tmp_path):
  out = tmp_path / 'clip'
  out.mkdir()
  (out / 'mine.txt').write_text('keep me')
  with pytest.raises(DataError, match=r'clip: is not empty .*--overwrite'):
    import_video.import_video(clip_mp4[0], str(out), fps=6)
  assert os.listdir(out) == ['mine.txt']
  # What an interrupted run left beside --out does not get in the way of the rerun.
  (tmp_path / '.clip.partial').mkdir()
  (tmp_path / '.clip.partial' / '000000.jpg').write_bytes(b'half')
  import_video.import_video(clip_mp4[0], str(out), fps=6, overwrite=True)
  assert sorted(os.listdir(out)) == [f'{i:06d}.jpg' for i in range(6)]
  assert os.listdir(tmp_path) == ['clip']


def test_a_failed_import_leaves_no_out(tmp_path):
  bad = tmp_path / 'bad.mp4'
  bad.write_bytes(b'\0' * 1000)
  out = tmp_path / 'sequences' / 'clip'
  with pytest.raises(DataError, match='bad.mp4'):
    import_video.import_video(str(bad), str(out))
  assert not out.exists()
  assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]


# --------------------------------------------------------------------------------------------------
# pair_frames

def save(image: np.ndarray, path) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, quality=90)
  return str(path)


@pytest.fixture()
def folder_root(clip_mp4, tmp_path):
  """A folder dataset: sequences/clip from the .mp4; labelled images = frames 3 (JPEG), 5 (PNG),
  0 (the clip's first: no previous neighbour) in images/<split>/clip/, frame 8 loose in
  images/train/, and a frame of another video in images/val/clip/."""
  _, frames = clip_mp4
  root = tmp_path / 'root'
  import_video.import_video(clip_mp4[0], str(root / 'sequences' / 'clip'))
  save(frames[3], root / 'images/train/clip/a.jpg')
  save(frames[5], root / 'images/val/clip/b.png')
  save(frames[0], root / 'images/train/clip/first.png')
  save(frames[8], root / 'images/train/loose.png')
  save(moving_frames(stripes=True)[4], root / 'images/val/clip/elsewhere.png')
  return str(root)


def test_pair_frames_finds_each_images_frame(folder_root):
  matches, pairs = pair_frames.pair_frames(folder_root, ['clip'])
  expected = {'images/train/clip/a.jpg': 'sequences/clip/000003.jpg',
              'images/val/clip/b.png': 'sequences/clip/000005.jpg',
              'images/train/loose.png': 'sequences/clip/000008.jpg'}
  assert pairs == expected
  with open(os.path.join(folder_root, 'pairs.json')) as f:
    assert json.load(f) == expected
  assert list(expected) != sorted(expected) and list(pairs) == sorted(expected)  # keys sorted
  by_image = {m.image: m for m in matches}
  assert all(by_image[image].error < 4 for image in expected)
  elsewhere = by_image['images/val/clip/elsewhere.png']
  assert elsewhere.error > pair_frames.DEFAULT_MAX_ERROR and '--max_error' in elsewhere.problem
  first = by_image['images/train/clip/first.png']
  assert first.frame == 'sequences/clip/000000.jpg' and 'no neighbour numbered -1' in first.problem
  assert not [n for n in os.listdir(folder_root) if n.startswith('.')]  # written atomically


def test_pair_frames_without_clip_skips_loose_images_and_keeps_other_pairs(folder_root):
  path = os.path.join(folder_root, 'pairs.json')
  with open(path, 'w') as f:
    json.dump({'images/train/other/x.png': 'sequences/other/000004.jpg',
               'images/train/clip/a.jpg': 'sequences/clip/000009.jpg'}, f)
  matches, pairs = pair_frames.pair_frames(folder_root)
  assert pairs == {'images/train/clip/a.jpg': 'sequences/clip/000003.jpg',
                   'images/train/other/x.png': 'sequences/other/000004.jpg',
                   'images/val/clip/b.png': 'sequences/clip/000005.jpg'}
  loose = [m for m in matches if m.image == 'images/train/loose.png']
  assert len(loose) == 1 and '--clip' in loose[0].problem


def test_pair_frames_bad_input(folder_root, tmp_path):
  with pytest.raises(DataError, match=r'sequences/nope: no such folder.*import_video'):
    pair_frames.pair_frames(folder_root, ['nope'])
  with pytest.raises(DataError, match='no images/ folder'):
    pair_frames.pair_frames(str(tmp_path / 'empty'))
  with pytest.raises(DataError, match='none of the 5 labelled images could be paired'):
    pair_frames.pair_frames(folder_root, ['clip'], max_error=0.01)
  assert not os.path.exists(os.path.join(folder_root, 'pairs.json'))


# --------------------------------------------------------------------------------------------------
# The two commands, as a user runs them.

def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=False)


def test_commands(clip_mp4, tmp_path):
  root = tmp_path / 'root'
  out = str(root / 'sequences' / 'clip')
  done = run_module('data_pipelines.import_video', '--video', clip_mp4[0], '--out', out,
                    '--fps', '6', '--resize', '32x24', '--format', 'png')
  assert done.returncode == 0, done.stderr
  assert f'6 frames at 6 fps, 32x24, png, in {out}' in done.stdout
  again = run_module('data_pipelines.import_video', '--video', clip_mp4[0], '--out', out)
  assert again.returncode == 1 and again.stderr.startswith('FATAL DataError: --out')
  save(clip_mp4[1][4], root / 'images/train/clip/a.png')  # frame 4 = frame 2 at 6 fps
  paired = run_module('data_pipelines.pair_frames', '--root', str(root))
  assert paired.returncode == 0, paired.stderr
  assert 'images/train/clip/a.png -> sequences/clip/000002.png  error' in paired.stdout
  assert 'pairs.json: 1 pairs' in paired.stdout
