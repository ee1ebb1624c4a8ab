"""Writing the files a stage hands on: whole or not at all, and a full disk named as such.

Every artifact a later stage (or a rerun) reads is written through `write_atomic`: to a temporary
name beside it, then renamed over it, so a crash, a SIGKILL or a full disk mid-write leaves the
previous file (or none), never half a file under the real name. A write that runs out of space
(ENOSPC, a quota, a file-size limit) is a DiskFullError naming the file and the free space left;
the temporary file is removed, so what was written before stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from typing import Any, Callable

# errno values of a write that ran out of room: the disk, the user's quota, or RLIMIT_FSIZE.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_ROOM_TEXT = ('No space left on device', 'Disk quota exceeded', 'File too large')
# NumPy's tofile reports a short write without an errno: "131072 requested and 64480 written".
_SHORT_WRITE = re.compile(r'\d+ requested and \d+ written')


class DiskFullError(OSError):
  """A write that ran out of disk space; the message names the file and the free space left."""


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an exception it was raised from, is a write that ran out of room. Some
  libraries (Orbax, TensorStore) re-raise the OSError as another type with its text in the
  message."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _NO_ROOM:
      return True
    if any(text in str(error) for text in _NO_ROOM_TEXT) or _SHORT_WRITE.search(str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


def disk_full_error(path: str, error: BaseException) -> DiskFullError:
  """The DiskFullError of a write to `path` (a file or folder) that failed with `error`."""
  folder = path if os.path.isdir(path) else os.path.dirname(path) or '.'
  while not os.path.exists(folder) and os.path.dirname(folder) != folder:
    folder = os.path.dirname(folder)
  usage = shutil.disk_usage(folder)
  return DiskFullError(
      f'{path}: no space left to write it ({usage.free / 2**20:.1f} MiB free of '
      f'{usage.total / 2**20:.1f} MiB on the filesystem of {folder}; {error}). Free space and '
      'rerun the same command: the files written before, and the last checkpoint, are intact.')


@contextlib.contextmanager
def named_if_disk_full(path: str):
  """Re-raises a write error that ran out of room as the DiskFullError of `path`."""
  try:
    yield
  except DiskFullError:
    raise
  except Exception as e:  # libraries wrap the OSError in many types
    if is_disk_full(e):
      raise disk_full_error(path, e) from e
    raise


def write_atomic(path: str, save: Callable[[str], Any]) -> None:
  """Writes `path` whole or not at all: `save(tmp)` writes a temporary file beside it (same
  extension, so savers that pick the format by name pick the same), which then replaces `path`.
  A DiskFullError (or any other error) leaves `path` as it was and no temporary file."""
  folder = os.path.dirname(path) or '.'
  stem, extension = os.path.splitext(os.path.basename(path))
  tmp = os.path.join(folder, f'.{stem}.tmp{os.getpid()}{extension}')
  with named_if_disk_full(path):
    os.makedirs(folder, exist_ok=True)
    try:
      save(tmp)
      os.replace(tmp, path)
    except BaseException:
      with contextlib.suppress(OSError):
        os.remove(tmp)
      raise


def write_json(path: str, value, indent: int = 1) -> None:
  """`value` as JSON at `path`, written atomically (see write_atomic)."""
  def save(tmp):
    with open(tmp, 'w') as f:
      json.dump(value, f, indent=indent)
  write_atomic(path, save)
