"""Pure, jittable math without parameters (NHWC, float32). The public op API of ARCHITECTURE.md."""

from sdeseg_jax.ops.geometry import backproject
from sdeseg_jax.ops.geometry import bilinear_sample
from sdeseg_jax.ops.geometry import disp_to_depth
from sdeseg_jax.ops.geometry import project
from sdeseg_jax.ops.geometry import rotation_from_axisangle
from sdeseg_jax.ops.geometry import transformation_from_parameters
from sdeseg_jax.ops.geometry import warp
from sdeseg_jax.ops.metrics import DEPTH_METRIC_NAMES
from sdeseg_jax.ops.metrics import depth_metrics
from sdeseg_jax.ops.photometric import feature_distance
from sdeseg_jax.ops.photometric import reprojection_loss
from sdeseg_jax.ops.photometric import sde_loss
from sdeseg_jax.ops.photometric import smoothness_loss
from sdeseg_jax.ops.photometric import ssim

__all__ = [
    'backproject',
    'bilinear_sample',
    'depth_metrics',
    'disp_to_depth',
    'feature_distance',
    'project',
    'reprojection_loss',
    'rotation_from_axisangle',
    'sde_loss',
    'smoothness_loss',
    'ssim',
    'transformation_from_parameters',
    'warp',
]
