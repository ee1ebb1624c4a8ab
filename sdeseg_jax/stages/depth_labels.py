"""The `depth_labels` stage: a disparity map for every segmentation image, from the trained SDE,
the dataset's ground-truth depth or the user's depth files (config.depth_labels.source).

Writes <workdir>/depth/<role>/<example id>.npy: float32 [H, W] level-0 sigmoid disparity at the
working resolution, which the segmentation pipelines and the data selection read as depth labels
(depth_dir), whatever the source:
  sde          SDE inference: config.depth_labels.sde_checkpoint, or this workdir's SDE;
  groundtruth  the dataset's metric depth (data_pipelines.depth_truth: the synthetic world's depth,
               Cityscapes' stereo disparity with its cameras; in the raw tree);
  file         config.depth_labels.depth_dir/<example id>.npy (float metres) or .png (16-bit,
               metres = value / 256).
Metric depth becomes the disparity the SDE would output for it (config.sde's min/max depth;
unknown -> 0, the farthest), area-averaged over the known pixels to the working resolution
(data_pipelines.depth_maps says why). `source` and `sde_checkpoint` choose the target's labels;
the source domain of domain adaptation always gets its own SDE's (sde_source). Images whose file
exists are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
import numpy as np

from data_pipelines import depth_maps
from data_pipelines import depth_truth
from data_pipelines import files
from data_pipelines import sources
from data_pipelines.datasets import DataError
from sdeseg_jax import artifacts
from sdeseg_jax import evaluation
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.models import networks
from sdeseg_jax.stages import base
from sdeseg_jax.training import distributed
from sdeseg_jax.training import sharding
from sdeseg_jax.weights import layouts

# role -> the model config key of its SDE, and the SDE settings whose min/max depth define the
# disparity of its labels.
MODEL_OF_ROLE = {'target': 'model', 'source': 'source_model'}
SDE_OF_ROLE = {'target': 'sde', 'source': 'source_sde'}
SOURCES = ('sde', 'groundtruth', 'file')


def source_of(config: ml_collections.ConfigDict, role: str) -> str:
  """Where the labels of `role` come from: config.depth_labels.source for the target, the SDE for
  the source domain."""
  return config.depth_labels.source if role == 'target' else 'sde'


def sde_checkpoint(config: ml_collections.ConfigDict, workdir: str, role: str) -> str:
  """The SDE that labels `role`: config.depth_labels.sde_checkpoint (another run's sde/ckpt, e.g.
  an SDE of another dataset) for the target when set, else this workdir's SDE of the role."""
  if role == 'target' and config.depth_labels.sde_checkpoint:
    return config.depth_labels.sde_checkpoint
  return artifacts.sde_checkpoint(workdir, role)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails on a role with no SDE stage or a source that cannot work (stages.run_stages calls it
  before running any stage)."""
  labels = config.depth_labels
  unknown = [role for role in labels.roles if role not in MODEL_OF_ROLE]
  if unknown:
    raise ConfigError(f'config.depth_labels.roles: {unknown} have no SDE stage (known: '
                      f'{sorted(MODEL_OF_ROLE)})')
  if labels.source not in SOURCES:
    raise ConfigError(f'config.depth_labels.source={labels.source!r}: expected one of '
                      f'{", ".join(SOURCES)}')
  if labels.source == 'file' and not labels.depth_dir:
    raise ConfigError("config.depth_labels.source='file' reads config.depth_labels.depth_dir, "
                      'which is empty: set it to a folder of <example id>.npy (metres) or .png '
                      '(16-bit, metres = value / 256)')


def inputs(config: ml_collections.ConfigDict, workdir: str) -> list[base.Input]:
  """The SDE checkpoint of each role the SDE labels; the depth files of source 'file'."""
  items = []
  for role in config.depth_labels.roles:
    source = source_of(config, role)
    if source == 'file':
      items.append(base.Input(config.depth_labels.depth_dir, '',
                              "config.depth_labels.source='file' (config.depth_labels.depth_dir)",
                              'name the folder of the depth files'))
    elif source == 'sde':
      stage = artifacts.SDE_STAGE_OF_ROLE[role]
      named = role == 'target' and config.depth_labels.sde_checkpoint
      items.append(base.Input(
          sde_checkpoint(config, workdir, role), '' if named else stage,
          f'the depth labels of {role}', f'run the {stage} stage first' + (
              ' or set config.depth_labels.sde_checkpoint' if role == 'target' else '')))
  return items


def segmentation_indices(reader) -> dict:
  """{split: index} of every segmentation split the dataset has (one with files missing is an
  error, not a split to skip); depth labels are named by example id, so ids must not repeat across
  splits."""
  indices = reader.indices('segmentation')
  ids, counts = np.unique(np.concatenate([i.ids for i in indices.values()]), return_counts=True)
  if np.any(counts > 1):
    raise DataError(f'{reader.root}: example ids {ids[counts > 1][:5].tolist()} occur in several '
                    'splits; depth labels need unique ids')
  return indices


def missing_rows(index, out: str) -> list[int]:
  """Rows of `index` whose depth label is not yet in `out`."""
  return [i for i, example in enumerate(index.ids)
          if not os.path.exists(os.path.join(out, example + '.npy'))]


def save_label(out: str, example: str, label: np.ndarray) -> None:
  label = np.ascontiguousarray(label, np.float32)
  files.write_atomic(os.path.join(out, example + '.npy'), lambda tmp: np.save(tmp, label))


def write_predicted_labels(config: ml_collections.ConfigDict, workdir: str, role: str) -> int:
  """Predicts and writes the missing depth labels of `role` with its SDE; returns how many were
  written."""
  entry = config.data[role]
  mesh = sharding.make_mesh()
  batch_size = config.depth_labels.batch_size
  sharding.check_global_batch(batch_size, mesh)
  reader = sources.open_dataset(entry, workdir, role)
  out = artifacts.depth_dir(workdir, role)
  os.makedirs(out, exist_ok=True)
  network = networks.build('sde', config[MODEL_OF_ROLE[role]])
  stage = artifacts.SDE_STAGE_OF_ROLE[role]
  variables = sharding.replicate(layouts.read_sde(
      sde_checkpoint(config, workdir, role), f'run the {stage} stage first'), mesh)
  predict = sharding.jit_eval_step(evaluation.predict_disparity(network), mesh)
  written = 0
  for split, index in segmentation_indices(reader).items():
    todo = missing_rows(index, out)
    # All processes must list the same missing files before any of them writes some (else their
    # batch counts differ and the collectives of the prediction hang).
    distributed.barrier(f'depth labels {role}/{split}')
    if not todo:
      continue
    index = index.subset(todo)
    for example, disparity in evaluation.each_local_row(
        predict, variables, index, reader, resolution=tuple(entry.resolution), mesh=mesh,
        batch_size=batch_size):
      save_label(out, example, disparity[..., 0])
      written += 1
    logging.info('depth labels %s/%s: %d images', role, split, len(index))
  return written


def metric_depth_reader(config: ml_collections.ConfigDict, workdir: str, role: str, reader):
  """depth(example id, image path) -> [H, W] float32 metres (0 = unknown) of the configured
  source (groundtruth | file); an example without depth is a DataError naming it."""
  if source_of(config, role) == 'file':
    directory = config.depth_labels.depth_dir

    def from_file(example, image):
      del image
      path = depth_maps.depth_file(directory, example)
      if path is None:
        raise DataError(f'{os.path.join(directory, example)}.npy: missing depth of example '
                        f'{example!r} (config.depth_labels.depth_dir holds <id>.npy or <id>.png)')
      return depth_maps.read_depth_file(path)

    return from_file
  raw = sources.roots(config.data[role], workdir, role)[0]
  truth = depth_truth.DepthTruth(reader.root, raw)
  if not truth.available:
    raise ConfigError(
        f"config.depth_labels.source='groundtruth': no ground-truth depth for config.data.{role} "
        f'(raw tree {raw or "unset"!r}; the synthetic world: sdeseg_groundtruth/, Cityscapes: '
        f'disparity/ and camera/): set config.data.{role}.raw_root to the tree that holds it, or '
        "use config.depth_labels.source='sde' or 'file'")

  def from_truth(example, image):
    depth = truth(image)
    if depth is None:
      raise DataError(f'{image}: no ground-truth depth for example {example!r} in {raw} '
                      f"({truth.kind}; config.depth_labels.source='groundtruth')")
    return depth

  return from_truth


def write_converted_labels(config: ml_collections.ConfigDict, workdir: str, role: str) -> int:
  """Converts the metric depth of every image of `role` without a depth label (ground truth or
  files) into one; returns how many were written. No device work: each process converts its
  share of the missing labels."""
  entry = config.data[role]
  reader = sources.open_dataset(entry, workdir, role)
  out = artifacts.depth_dir(workdir, role)
  os.makedirs(out, exist_ok=True)
  depth_of = metric_depth_reader(config, workdir, role, reader)
  sde = config[SDE_OF_ROLE[role]]
  written = 0
  for split, index in segmentation_indices(reader).items():
    todo = missing_rows(index, out)[jax.process_index()::jax.process_count()]
    for row in todo:
      example = str(index.ids[row])
      label = depth_maps.depth_label(depth_of(example, str(index.images[row])),
                                     size=tuple(entry.resolution), min_depth=sde.min_depth,
                                     max_depth=sde.max_depth)
      save_label(out, example, label)
      written += 1
    logging.info('depth labels %s/%s from %s: %d images', role, split,
                 source_of(config, role), len(todo))
  return written


def write_depth_labels(config: ml_collections.ConfigDict, workdir: str, role: str) -> int:
  """Writes the missing depth labels of `role` from its source; returns how many were written."""
  if source_of(config, role) == 'sde':
    return write_predicted_labels(config, workdir, role)
  return write_converted_labels(config, workdir, role)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  check_config(config)
  for role in config.depth_labels.roles:
    write_depth_labels(config, workdir, role)


STAGE = base.Stage('depth_labels', run, check_config, inputs)
