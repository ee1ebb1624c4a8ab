"""Step-indexed sampling: the examples and augmentations of global step s are a pure function of
(seed, stream, s). Resuming at step s therefore reproduces the exact data order with no iterator
state, and every process computes the same global plan and keeps only its own rows.

Examples are drawn without replacement within an epoch: global position p = s * B + b reads row
perm_e[p mod N] of the permutation of epoch e = p // N.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib

import numpy as np

_EPOCH, _STEP = 0, 1  # domain tags, so epoch and step generators never share a seed


def stream_id(stream: str) -> int:
  """A stable integer for a stream name ('sde', 'labeled', 'unlabeled', 'source', ...)."""
  return zlib.crc32(stream.encode())


@functools.lru_cache(maxsize=8)
def epoch_permutation(seed: int, stream: str, epoch: int, num_examples: int) -> np.ndarray:
  """[N] int64: the order in which epoch `epoch` visits the examples."""
  rng = np.random.default_rng([seed, stream_id(stream), _EPOCH, epoch])
  permutation = rng.permutation(num_examples)
  permutation.flags.writeable = False
  return permutation


def step_rng(seed: int, stream: str, step: int) -> np.random.Generator:
  """The generator of a step's augmentation parameters."""
  return np.random.default_rng([seed, stream_id(stream), _STEP, step])


def example_indices(seed: int, stream: str, step: int, global_batch: int,
                    num_examples: int) -> np.ndarray:
  """[global_batch] int64: index rows of the examples of global step `step`."""
  if num_examples <= 0:
    raise ValueError(f'stream {stream!r}: cannot sample from an empty index')
  positions = step * global_batch + np.arange(global_batch)
  epochs, offsets = np.divmod(positions, num_examples)
  return np.array([epoch_permutation(seed, stream, int(e), num_examples)[o]
                   for e, o in zip(epochs, offsets)], np.int64)


@dataclasses.dataclass(frozen=True)
class ColorJitter:
  """monodepth2-style colour augmentation: factors in [1-b, 1+b] etc., hue shift in [-h, h]."""
  prob: float = 0.5
  brightness: float = 0.2
  contrast: float = 0.2
  saturation: float = 0.2
  hue: float = 0.1


def augmentation_params(rng: np.random.Generator, batch: int, *, resolution: tuple[int, int],
                        crop: tuple[int, int], flip_prob: float,
                        color: ColorJitter | None) -> dict[str, np.ndarray]:
  """Per-example augmentation parameters.

  Args:
    resolution: (W, H) of the images; crop: (w, h) of the crops (equal to resolution: no crop).
  Returns:
    crop_x, crop_y: [B] int32 crop offsets; flip: [B] bool; and when `color` is set,
    color_apply [B] bool, color_factors [B, 4] float32 (brightness, contrast, saturation factors and
    hue shift) and color_order [B, 4] int32 (the order of the four operations).
  """
  (width, height), (crop_w, crop_h) = resolution, crop
  if crop_w > width or crop_h > height:
    raise ValueError(f'crop {crop} is larger than the images {resolution}')
  params = dict(
      crop_x=rng.integers(0, width - crop_w + 1, batch).astype(np.int32),
      crop_y=rng.integers(0, height - crop_h + 1, batch).astype(np.int32),
      flip=rng.random(batch) < flip_prob)
  if color is not None:
    def factor(spread):
      return rng.uniform(1 - spread, 1 + spread, batch)
    params['color_apply'] = rng.random(batch) < color.prob
    params['color_factors'] = np.stack(
        [factor(color.brightness), factor(color.contrast), factor(color.saturation),
         rng.uniform(-color.hue, color.hue, batch)], axis=1).astype(np.float32)
    params['color_order'] = np.stack([rng.permutation(4) for _ in range(batch)]).astype(np.int32)
  return params
