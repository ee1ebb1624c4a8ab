"""What a stage is: the object each stage module exports for the runner (sdeseg_jax.stages)."""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import ml_collections


class Input(NamedTuple):
  """A file or folder a stage reads. maker: the stage that writes it under the config, '' when
  none does (a file the config names, which the user provides); reader: who reads it, todo: what
  to do when it is missing (both for the error)."""
  path: str
  maker: str
  reader: str
  todo: str


@dataclasses.dataclass(frozen=True)
class Stage:
  """A stage of the method.

  run(config, workdir): does the work, writing only under workdir (artifacts names the files).
  check_config(config): raises ConfigError on values that cannot work; the runner calls it for
    every stage it will run before it runs the first, so a bad value of a late stage fails in
    seconds, not after hours of the earlier ones.
  inputs(config, workdir) -> [Input]: the files it reads that other stages write or the config
    names.
  primary_only: no device work, but writes of shared files (rendering, preparing, summarising),
    which two processes doing at once would race on: process 0 runs it while the others wait.
  """
  name: str
  run: Callable[[ml_collections.ConfigDict, str], None]
  check_config: Callable[[ml_collections.ConfigDict], None] | None = None
  inputs: Callable[[ml_collections.ConfigDict, str], list[Input]] | None = None
  primary_only: bool = False
