"""A minimal writer for 16-bit RGB PNGs (Pillow cannot write them; SYNTHIA ships its labels so)."""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _chunk(tag: bytes, payload: bytes) -> bytes:
  crc = zlib.crc32(tag + payload)
  return struct.pack('>I', len(payload)) + tag + payload + struct.pack('>I', crc)


def encode_png_u16(array: np.ndarray, level: int = 6) -> bytes:
  """PNG bytes of a [H, W, 3] uint16 image (colour type 2, bit depth 16, no filtering)."""
  if array.ndim != 3 or array.shape[2] != 3:
    raise ValueError(f'expected [H, W, 3], got shape {array.shape}')
  height, width, _ = array.shape
  rows = np.zeros((height, 1 + width * 6), np.uint8)  # leading 0 per row = filter type None
  rows[:, 1:] = np.ascontiguousarray(array, dtype='>u2').view(np.uint8).reshape(height, -1)
  header = struct.pack('>IIBBBBB', width, height, 16, 2, 0, 0, 0)
  data = zlib.compress(rows.tobytes(), level)
  return (_SIGNATURE + _chunk(b'IHDR', header) + _chunk(b'IDAT', data)
          + _chunk(b'IEND', b''))


def write_png_u16(path, array: np.ndarray) -> None:
  """Writes a [H, W, 3] uint16 array as a 16-bit RGB PNG."""
  with open(path, 'wb') as f:
    f.write(encode_png_u16(array))
