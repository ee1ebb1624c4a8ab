"""What a stage is: the object each stage module exports for the runner (sdeseg_jax.stages), and the
checks stages share."""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import ml_collections

from data_pipelines import datasets
from sdeseg_jax.errors import ConfigError


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


def check_num_classes(num_classes: int, label_spec: datasets.LabelSpec, *, model_key: str,
                      dataset: str) -> None:
  """Fails when a network's class count (config.<model_key>.num_classes) is not the dataset's:
  the classifier's shape, the labels and the confusion matrix would not agree."""
  if num_classes != label_spec.num_classes:
    raise ConfigError(
        f'config.{model_key}.num_classes={num_classes}, but the dataset {dataset} has '
        f'{label_spec.num_classes} classes: set --config.{model_key}.num_classes='
        f'{label_spec.num_classes}')


def check_num_classes_of(config: ml_collections.ConfigDict, role: str,
                         model_key: str = 'model') -> None:
  """check_num_classes before any stage runs, for datasets whose classes are fixed by their layout
  (the known readers); a layout whose classes come with the data is checked when it is opened."""
  name = config.data[role].name
  spec = getattr(datasets.READERS.get(name), 'label_spec', None)
  if isinstance(spec, datasets.LabelSpec):
    check_num_classes(config[model_key].num_classes, spec, model_key=model_key,
                      dataset=f'config.data.{role} ({name})')
