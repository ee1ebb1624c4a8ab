"""What every benchmark shares: the machine description, peak memory, and JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource


def machine() -> dict:
  return dict(platform=platform.platform(), processor=platform.processor(),
              python=platform.python_version(), cpu_count=os.cpu_count())


def peak_rss_mib() -> float:
  """The process's resident-set high-water mark so far, MiB (monotonic)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(report: dict, out: str = '') -> None:
  """Prints the report as JSON and, when `out` is set, writes it there too."""
  text = json.dumps(report, indent=2)
  print(text, flush=True)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
      f.write(text + '\n')
