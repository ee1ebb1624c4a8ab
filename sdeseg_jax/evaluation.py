"""Whole-image inference over a dataset split and the segmentation metrics: the one home of the
forward passes and scores that segment, evaluate, select_labels and depth_labels share (predict
runs single images through the same networks.forward).

Predict functions are (variables, batch) -> array, jitted by the caller over its mesh
(sharding.jit_eval_step); batches come from pipeline.validation_batches (whole images at the
working resolution, padded to the batch size with rows marked invalid).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import pipeline
from data_pipelines.datasets import common
from sdeseg_jax.models import networks
from sdeseg_jax.ops import segmentation
from sdeseg_jax.training import sharding

# config.evaluate.class_subsets: the SYNTHIA protocols' class subsets.
CLASS_SUBSETS = {'16': segmentation.SYNTHIA_16_CLASSES, '13': segmentation.SYNTHIA_13_CLASSES}


def predict_logits(network, kind: str):
  """(variables, batch) -> [B, H, W, C] logits of batch['image'] (a segmentation network of
  `kind`, inference mode)."""
  def predict(variables, batch):
    return networks.forward(network, kind, variables['params'], variables['batch_stats'],
                            batch['image'], train=False, key=None, frames=False)[0]['logits']
  return predict


def predict_disparity(network):
  """(variables, batch) -> [B, H, W, 1] level-0 disparity of batch['image'] (an SDE network,
  inference mode)."""
  def predict(variables, batch):
    return network.apply(variables, batch['image'], method='depth')['disp'][0]
  return predict


def _sharding_of_process(batch_size: int) -> pipeline.Sharding:
  return pipeline.Sharding(batch_size, jax.process_index(), jax.process_count())


def per_image(fn, variables, index: common.ExampleIndex, reader: common.Reader, *, resolution,
              mesh, batch_size: int, depth_dir: str = '') -> np.ndarray:
  """[N, ...] = fn(variables, batch)[row] for every image of `index`, on every process (batch
  keys: image [B, H, W, 3] and, with depth_dir, depth [B, H, W, 1])."""
  compiled = sharding.jit_eval_step(fn, mesh)
  batches = pipeline.validation_batches(
      index.without_labels(), reader.label_spec, resolution=resolution, depth_dir=depth_dir,
      sharding=_sharding_of_process(batch_size))
  result = None
  for batch in batches:
    keys = ['image', 'index', 'valid'] + (['depth'] if depth_dir else [])
    placed = sharding.global_batch({k: batch[k] for k in keys}, mesh)
    values = sharding.to_host(compiled(variables, placed))
    rows, valid = sharding.to_host(placed['index']), sharding.to_host(placed['valid'])
    if result is None:
      result = np.zeros((len(index),) + values.shape[1:], values.dtype)
    result[rows[valid]] = values[valid]
  return result


def each_local_row(predict, variables, index: common.ExampleIndex, reader: common.Reader, *,
                   resolution, mesh, batch_size: int):
  """Yields (example id, [H, W, ...] prediction) of the rows of `index` that this process loads
  (predict: a jitted predict function)."""
  batches = pipeline.validation_batches(index.without_labels(), reader.label_spec,
                                        resolution=resolution,
                                        sharding=_sharding_of_process(batch_size))
  for batch in batches:
    values = sharding.local_rows(predict(variables, sharding.global_batch(
        {'image': batch['image']}, mesh)))
    for row in np.flatnonzero(batch['valid']):
      yield index.ids[batch['index'][row]], values[row]


@functools.partial(jax.jit, static_argnames='num_classes')
def _confusion_of_logits(logits, labels, valid, *, num_classes: int) -> jax.Array:
  """Compiled once per class count (a lambda jitted per call would recompile every evaluation)."""
  return segmentation.confusion_matrix(jnp.argmax(logits, -1), labels, num_classes, valid)


def confusion(predict, variables, index, reader, *, resolution, mesh, batch_size: int,
              strict_labels: bool = True) -> np.ndarray:
  """[C, C] confusion matrix (rows: ground truth) of whole-image predictions over `index`."""
  num_classes = reader.label_spec.num_classes
  count = functools.partial(_confusion_of_logits, num_classes=num_classes)
  total = np.zeros((num_classes, num_classes), np.int64)
  batches = pipeline.validation_batches(
      index, reader.label_spec, resolution=resolution, strict_labels=strict_labels,
      sharding=_sharding_of_process(batch_size))
  for batch in batches:
    placed = sharding.global_batch({k: batch[k] for k in ('image', 'label', 'valid')}, mesh)
    total += np.asarray(jax.device_get(count(predict(variables, placed), placed['label'],
                                             placed['valid'])))
  return total


def miou_report(matrix: np.ndarray, class_names) -> dict:
  """{'miou', 'iou': {class: IoU}} of a confusion matrix."""
  iou, miou = segmentation.iou_from_confusion(jnp.asarray(matrix))
  return dict(miou=float(miou), iou={n: float(v) for n, v in zip(class_names, np.asarray(iou))})


def subset_mious(matrix: np.ndarray, subsets) -> dict:
  """{name: mIoU over that CLASS_SUBSETS entry} of a confusion matrix."""
  return {name: float(segmentation.class_subset_miou(jnp.asarray(matrix), CLASS_SUBSETS[name])[1])
          for name in subsets}


def format_table(report: dict) -> str:
  """The per-class IoU, mIoU and subset mIoUs of a miou_report, in percent."""
  lines = [f'{"class":16s} {"IoU":>7s}']
  lines += [f'{name:16s} {100 * iou:7.2f}' for name, iou in report['iou'].items()]
  lines.append(f'{"mIoU":16s} {100 * report["miou"]:7.2f}')
  for name, value in report.get('subsets', {}).items():
    lines.append(f'{"mIoU (" + name + ")":16s} {100 * value:7.2f}')
  return '\n'.join(lines)
