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
from sdeseg_jax.ops.augment import adjust_brightness_additive
from sdeseg_jax.ops.augment import adjust_contrast
from sdeseg_jax.ops.augment import adjust_hue
from sdeseg_jax.ops.augment import adjust_saturation
from sdeseg_jax.ops.augment import apply_strong_augment
from sdeseg_jax.ops.augment import gaussian_blur
from sdeseg_jax.ops.augment import sample_strong_augment_params
from sdeseg_jax.ops.augment import strong_augment
from sdeseg_jax.ops.augment import StrongAugmentParams
from sdeseg_jax.ops.mixing import berhu_loss
from sdeseg_jax.ops.mixing import classmix_mask
from sdeseg_jax.ops.mixing import cross_domain_pixel_weights
from sdeseg_jax.ops.mixing import depthmix_mask
from sdeseg_jax.ops.mixing import geometric_difference
from sdeseg_jax.ops.mixing import mix
from sdeseg_jax.ops.mixing import mix_labels
from sdeseg_jax.ops.mixing import normalize_disparity
from sdeseg_jax.ops.mixing import one_hot_targets
from sdeseg_jax.ops.mixing import pair_with_next
from sdeseg_jax.ops.mixing import pseudo_label_quality
from sdeseg_jax.ops.mixing import pseudo_labels
from sdeseg_jax.ops.mixing import signed_margin
from sdeseg_jax.ops.selection import adaptive_avg_pool
from sdeseg_jax.ops.selection import depth_student_loss
from sdeseg_jax.ops.selection import farthest_point_selection
from sdeseg_jax.ops.selection import farthest_point_selection_with_distances
from sdeseg_jax.ops.selection import normalize_by_range
from sdeseg_jax.ops.selection import normalized_entropy
from sdeseg_jax.ops.selection import selection_error
from sdeseg_jax.ops.selection import selection_error_mask
from sdeseg_jax.ops.selection import standardize_features
from sdeseg_jax.ops.selection import top_rows_mask
from sdeseg_jax.ops.segmentation import class_subset_miou
from sdeseg_jax.ops.segmentation import confusion_matrix
from sdeseg_jax.ops.segmentation import cross_entropy
from sdeseg_jax.ops.segmentation import IGNORE_LABEL
from sdeseg_jax.ops.segmentation import iou_from_confusion
from sdeseg_jax.ops.segmentation import resize_logits
from sdeseg_jax.ops.segmentation import SYNTHIA_13_CLASSES
from sdeseg_jax.ops.segmentation import SYNTHIA_16_CLASSES

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

# Segmentation, mixing and strong augmentation (SPEC sections 6-8).
__all__ += [
    'IGNORE_LABEL',
    'SYNTHIA_13_CLASSES',
    'SYNTHIA_16_CLASSES',
    'StrongAugmentParams',
    'adjust_brightness_additive',
    'adjust_contrast',
    'adjust_hue',
    'adjust_saturation',
    'apply_strong_augment',
    'berhu_loss',
    'class_subset_miou',
    'classmix_mask',
    'confusion_matrix',
    'cross_domain_pixel_weights',
    'cross_entropy',
    'depthmix_mask',
    'gaussian_blur',
    'geometric_difference',
    'iou_from_confusion',
    'mix',
    'mix_labels',
    'normalize_disparity',
    'one_hot_targets',
    'pair_with_next',
    'pseudo_label_quality',
    'pseudo_labels',
    'resize_logits',
    'sample_strong_augment_params',
    'signed_margin',
    'strong_augment',
]

# Automatic data selection (SPEC section 8).
__all__ += [
    'adaptive_avg_pool',
    'depth_student_loss',
    'farthest_point_selection',
    'farthest_point_selection_with_distances',
    'normalize_by_range',
    'normalized_entropy',
    'selection_error',
    'selection_error_mask',
    'standardize_features',
    'top_rows_mask',
]
