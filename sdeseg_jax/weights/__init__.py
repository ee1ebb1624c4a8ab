"""Import of PyTorch checkpoints into Flax variable trees.

- `importers`: torchvision ImageNet ResNets and the reference's SDE checkpoints (and the other
  reference modules) -> {'params': ..., 'batch_stats': ...}; torch is imported only to read .pth
  files.
- `report`: load reports (missing / unexpected / mis-shaped keys) and WeightImportError.
- `layouts`: where SDE and ImageNet weights go in our networks; the one reader of SDE checkpoints.
- `convert`: the CLI writing converted trees as an Orbax checkpoint.
"""

from sdeseg_jax.weights.importers import import_reference_sde
from sdeseg_jax.weights.importers import import_torchvision_resnet
from sdeseg_jax.weights.importers import load_state_dict
from sdeseg_jax.weights.importers import merge_components
from sdeseg_jax.weights.report import LoadReport
from sdeseg_jax.weights.report import WeightImportError
from sdeseg_jax.weights.report import check_variables
from sdeseg_jax.weights.report import compare_variables
