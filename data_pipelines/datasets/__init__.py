"""Readers of the real datasets' on-disk layouts and of the generic `folder` layout for the user's
own data; `get_reader(name, root, ...)` picks one."""

from data_pipelines.datasets.camvid import CamVid
from data_pipelines.datasets.cityscapes import Cityscapes
from data_pipelines.datasets.common import (DataError, ExampleIndex, IGNORE_LABEL, LabelSpec,
                                            Reader)
from data_pipelines.datasets.folder import Folder
from data_pipelines.datasets.gta5 import GTA5
from data_pipelines.datasets.synthia import Synthia

READERS = {r.name: r for r in (Cityscapes, GTA5, Synthia, CamVid, Folder)}


def get_reader(name: str, root: str, **kwargs) -> Reader:
  """The reader of dataset `name` over the tree at `root` (kwargs: val_count, sequence_root)."""
  if name not in READERS:
    raise DataError(f'unknown dataset {name!r} (known: {", ".join(sorted(READERS))})')
  return READERS[name](root, **kwargs)
