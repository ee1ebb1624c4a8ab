"""Procedural synthetic street world that stands in for the real datasets.

`render_world` ray-casts deterministic 3D street scenes and writes them in the real on-disk layouts
of Cityscapes, GTA5 (+ VIPER-style sequences), SYNTHIA and CamVid, or in the generic folder
layout (docs/folder_dataset.md), with metric depth, poses, intrinsics and moving-object masks
beside them. See docs/synthetic_world.md.
"""

from data_pipelines.synthetic.groundtruth import GroundTruth, load_groundtruth
from data_pipelines.synthetic.layouts import GT_DIR, LAYOUTS, layout_intrinsics
from data_pipelines.synthetic.render import FAR_DEPTH
from data_pipelines.synthetic.scene import DOMAINS, SceneParams
from data_pipelines.synthetic.world import MARKER, render_world

__all__ = ['render_world', 'load_groundtruth', 'GroundTruth', 'SceneParams', 'layout_intrinsics',
           'DOMAINS', 'LAYOUTS', 'FAR_DEPTH', 'GT_DIR', 'MARKER']
