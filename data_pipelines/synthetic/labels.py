"""Class ids of the synthetic world and their encodings in each dataset's own conventions.

The renderer labels every pixel with a Cityscapes labelId (0..33); the layout writers convert those
ids into the raw convention of the dataset a layout imitates (Cityscapes labelIds, GTA5 palette
indices, VIPER colours, SYNTHIA class ids, CamVid 11-class ids, the folder layout's class ids)
through the lookup tables below.
"""

from __future__ import annotations

import numpy as np

# Cityscapes labelIds of the classes the world contains (plus `unlabeled`).
UNLABELED = 0
ROAD = 7
SIDEWALK = 8
BUILDING = 11
WALL = 12
FENCE = 13
POLE = 17
TRAFFIC_LIGHT = 19
TRAFFIC_SIGN = 20
VEGETATION = 21
TERRAIN = 22
SKY = 23
PERSON = 24
RIDER = 25
CAR = 26
TRUCK = 27
BUS = 28
TRAIN = 31
MOTORCYCLE = 32
BICYCLE = 33

CLASS_NAMES = {
    UNLABELED: 'unlabeled', ROAD: 'road', SIDEWALK: 'sidewalk', BUILDING: 'building',
    WALL: 'wall', FENCE: 'fence', POLE: 'pole', TRAFFIC_LIGHT: 'traffic light',
    TRAFFIC_SIGN: 'traffic sign', VEGETATION: 'vegetation', TERRAIN: 'terrain', SKY: 'sky',
    PERSON: 'person', RIDER: 'rider', CAR: 'car', TRUCK: 'truck', BUS: 'bus', TRAIN: 'train',
    MOTORCYCLE: 'motorcycle', BICYCLE: 'bicycle',
}

# The standard Cityscapes label colours of all 34 labelIds (index = labelId). GTA5 ships its label
# PNGs with this palette; VIPER-style colour labels use the same colours.
_CITYSCAPES_COLORS_BY_ID = [
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (111, 74, 0), (81, 0, 81),
    (128, 64, 128), (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70),
    (102, 102, 156), (190, 153, 153), (180, 165, 180), (150, 100, 100), (150, 120, 90),
    (153, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35),
    (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]

# SYNTHIA class ids (channel 0 of SYNTHIA's 16-bit label PNGs).
SYNTHIA_LANE_MARKING = 22
_SYNTHIA_FROM_CITYSCAPES = {
    UNLABELED: 0, SKY: 1, BUILDING: 2, ROAD: 3, SIDEWALK: 4, FENCE: 5, VEGETATION: 6, POLE: 7,
    CAR: 8, TRAFFIC_SIGN: 9, PERSON: 10, BICYCLE: 11, MOTORCYCLE: 12, TRAFFIC_LIGHT: 15,
    TERRAIN: 16, RIDER: 17, TRUCK: 18, BUS: 19, TRAIN: 20, WALL: 21,
}
SYNTHIA_IDS = frozenset(range(23))

# CamVid (SegNet 11-class) ids; 11 = unlabelled.
CAMVID_UNLABELLED = 11
_CAMVID_FROM_CITYSCAPES = {
    SKY: 0, BUILDING: 1, WALL: 1, POLE: 2, ROAD: 3, SIDEWALK: 4, VEGETATION: 5, TERRAIN: 5,
    TRAFFIC_SIGN: 6, TRAFFIC_LIGHT: 6, FENCE: 7, CAR: 8, TRUCK: 8, BUS: 8, TRAIN: 8,
    PERSON: 9, RIDER: 10, BICYCLE: 10, MOTORCYCLE: 10,
}
CAMVID_IDS = frozenset(range(12))

# The 19 Cityscapes evaluation classes (labelIds in trainId order): the classes of the folder
# layout's classes.json, whose label maps hold their index (255 for everything else).
TRAIN_CLASS_IDS = (ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN,
                   VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE,
                   BICYCLE)
IGNORE_ID = 255

# labelIds that the world can produce (used by tests to check written label sets).
WORLD_CLASS_IDS = frozenset(CLASS_NAMES)


def _lookup(mapping: dict[int, int], default: int, dtype) -> np.ndarray:
  """A 256-entry table: table[cityscapes_label_id] -> id in another convention."""
  table = np.full(256, default, dtype=dtype)
  for src, dst in mapping.items():
    table[src] = dst
  return table


SYNTHIA_FROM_CITYSCAPES = _lookup(_SYNTHIA_FROM_CITYSCAPES, 0, np.uint16)
CAMVID_FROM_CITYSCAPES = _lookup(_CAMVID_FROM_CITYSCAPES, CAMVID_UNLABELLED, np.uint8)
CLASS_ID_FROM_CITYSCAPES = _lookup({raw: i for i, raw in enumerate(TRAIN_CLASS_IDS)}, IGNORE_ID,
                                   np.uint8)


def cityscapes_colors() -> np.ndarray:
  """[256, 3] uint8: the Cityscapes colour of each labelId (black beyond id 33)."""
  colors = np.zeros((256, 3), np.uint8)
  colors[: len(_CITYSCAPES_COLORS_BY_ID)] = np.asarray(_CITYSCAPES_COLORS_BY_ID, np.uint8)
  return colors


def folder_classes() -> list[dict]:
  """The "classes" of the folder layout's classes.json: name and Cityscapes colour, index = id."""
  colours = cityscapes_colors()
  return [{'name': CLASS_NAMES[raw], 'colour': [int(c) for c in colours[raw]]}
          for raw in TRAIN_CLASS_IDS]


def cityscapes_palette() -> list[int]:
  """The 768-entry flat palette of a 'P'-mode PNG whose indices are Cityscapes labelIds."""
  return cityscapes_colors().reshape(-1).tolist()
