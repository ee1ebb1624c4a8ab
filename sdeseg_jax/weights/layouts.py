"""Where each kind of weights goes in our networks: the one reader of SDE checkpoints and the
mappings {source prefix: target prefix} that checkpointing.merge_by_mapping applies.

An SDE checkpoint comes in two layouts: an SDE run's own (sde_pretrain: the pose network under
'pose') and a converted reference SDE (weights.convert --from reference_sde: encoder, depth_decoder,
pose_encoder and pose_decoder at top level; the pose decoder has no BatchNorm).
"""

from __future__ import annotations

import os

from sdeseg_jax.training import checkpointing

# A torchvision ImageNet ResNet (weights.convert --from torchvision) into the SDE's encoder, its
# pose encoder, or a segmentation network's encoder.
IMAGENET_ENCODER = {'params': 'params/encoder', 'batch_stats': 'batch_stats/encoder'}
IMAGENET_POSE_ENCODER = {'params': 'params/pose/pose_encoder',
                         'batch_stats': 'batch_stats/pose/pose_encoder'}
# An SDE checkpoint (after sde_variables) into the SDE network: everything.
WHOLE_SDE = {'params': 'params', 'batch_stats': 'batch_stats'}


def _pairs(*pairs):
  return [(f'{c}/{s}', f'{c}/{t}') for c in ('params', 'batch_stats') for s, t in pairs]


# An SDE checkpoint into each segmentation network (the depth decoder initialises every decoder).
SDE_INTO_SEGMENTATION = {
    'transfer': _pairs(('encoder', 'encoder'), ('depth_decoder', 'seg_decoder')),
    'mtl': _pairs(('encoder', 'encoder'), ('depth_decoder', 'pad/depth_decoder'),
                  ('depth_decoder', 'pad/seg_decoder'), ('pose', 'pose')),
}


def sde_variables(arrays: dict) -> dict:
  """{'params', 'batch_stats'} of an SDE checkpoint's arrays in an SDE run's layout: a converted
  reference SDE gets its pose network nested under 'pose'; an SDE run's checkpoint keeps its
  layout."""
  variables = {}
  for collection in ('params', 'batch_stats'):
    tree = dict(arrays.get(collection, {}))
    pose = {m: tree.pop(m) for m in ('pose_encoder', 'pose_decoder') if m in tree}
    if pose:
      tree['pose'] = pose
    variables[collection] = tree
  return variables


def read_sde(path: str, missing: str = 'run the sde_pretrain stage first') -> dict:
  """{'params', 'batch_stats'} of the SDE checkpoint at `path` (either layout); `missing` says
  what to do when there is none."""
  if not os.path.isdir(path):
    raise checkpointing.CheckpointError(f'{path}: no SDE checkpoint; {missing}')
  return sde_variables(checkpointing.read_arrays(path))


def read_variables(path: str, missing: str) -> dict:
  """{'params', 'batch_stats'} of a network checkpoint (e.g. the segment stage's weights)."""
  if not os.path.isdir(path):
    raise checkpointing.CheckpointError(f'{path}: no weights; {missing}')
  arrays = checkpointing.read_arrays(path)
  return {'params': arrays['params'], 'batch_stats': arrays['batch_stats']}
