"""sdeseg_jax.ops segmentation losses and metrics, DepthMix / ClassMix, pseudo-labels, berHu and
the strong augmentation.

Every op is compared with an independent float64 formulation written here (PyTorch for what torch
has: cross-entropy, interpolation, convolution; NumPy / colorsys otherwise); JAX runs in float32
and jitted. Tolerance: |jax - ref| <= RTOL * (|ref| + max|ref|) elementwise. Known-answer tests
check DepthMix against synthetic scenes with known depth ordering, ClassMix's subset semantics and
the random gates of the strong augmentation statistically.
"""

import colorsys
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_pipelines.datasets import common
from sdeseg_jax import ops
from sdeseg_jax.ops import augment
from sdeseg_jax.ops import segmentation

RTOL = 1e-5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_close(actual, expected, rtol=RTOL):
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  np.testing.assert_allclose(actual, expected, rtol=rtol,
                             atol=rtol * max(np.abs(expected).max(initial=0.0), 1e-30))


def nchw64(x):
  """[B, H, W, C] array -> float64 torch [B, C, H, W]."""
  return torch.from_numpy(np.asarray(x, np.float64)).permute(0, 3, 1, 2)


def random_labels(rng, shape, num_classes, ignore_fraction=0.2):
  labels = rng.integers(0, num_classes, shape).astype(np.int32)
  labels[rng.random(shape) < ignore_fraction] = ops.IGNORE_LABEL
  return labels


def test_ignore_label_is_the_data_pipelines_one():
  assert segmentation.IGNORE_LABEL == common.IGNORE_LABEL == ops.IGNORE_LABEL == 255


# ---------------------------------------------------------------------------------------------
# Cross-entropy and logit resizing.

def test_cross_entropy_valid_mean_matches_torch_ignore_index():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (2, 5, 7, 4)).astype(np.float32)
  labels = random_labels(rng, (2, 5, 7), 4)
  got = jax.jit(ops.cross_entropy)(logits, labels)
  ref = F.cross_entropy(nchw64(logits), torch.from_numpy(labels).long(), ignore_index=255)
  assert_close(got, ref.item())


def test_cross_entropy_all_mean_with_weights_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3, (2, 6, 5, 3)).astype(np.float32)
  labels = random_labels(rng, (2, 6, 5), 3, ignore_fraction=0.3)
  weights = rng.uniform(0, 1, (2, 6, 5)).astype(np.float32)
  got = jax.jit(lambda l, y, w: ops.cross_entropy(l, y, weights=w, reduction='all_mean'))(
      logits, labels, weights)
  x = logits.astype(np.float64)
  log_probs = x - x.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  valid = labels != 255
  nll = -np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  ref = np.sum(np.where(valid, nll, 0.0) * weights) / labels.size   # ignored: 0 in the sum
  assert_close(got, ref)


def test_cross_entropy_edge_cases():
  logits = jnp.zeros((1, 2, 2, 3))
  labels = jnp.full((1, 2, 2), 255, jnp.int32)
  assert float(ops.cross_entropy(logits, labels)) == 0.0                 # torch: NaN
  assert float(ops.cross_entropy(logits, labels, reduction='all_mean')) == 0.0
  assert np.isnan(float(ops.cross_entropy(logits, labels.at[0, 0, 0].set(7))))  # bad label: loud
  with pytest.raises(ValueError, match='resize'):
    ops.cross_entropy(jnp.zeros((1, 4, 4, 3)), labels)
  with pytest.raises(ValueError, match='reduction'):
    ops.cross_entropy(logits, labels, reduction='sum')
  # Stable for huge logits; gradient only where the label is valid.
  big = jnp.asarray([[[[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]]]])
  y = jnp.asarray([[[1, 255]]], jnp.int32)
  assert_close(ops.cross_entropy(big, y), 2e4)
  grad = jax.grad(lambda l: ops.cross_entropy(l, y))(big)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[0, 0, 1] == 0)


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('size', [(16, 24), (3, 5), (7, 1)])
def test_resize_logits_matches_torch_interpolate(align_corners, size):
  rng = np.random.default_rng(2)
  logits = rng.normal(0, 1, (2, 6, 8, 3)).astype(np.float32)
  got = jax.jit(ops.resize_logits, static_argnums=(1, 2, 3))(logits, *size, align_corners)
  ref = F.interpolate(nchw64(logits), size=size, mode='bilinear', align_corners=align_corners)
  assert_close(got, ref.permute(0, 2, 3, 1).numpy())


# ---------------------------------------------------------------------------------------------
# Confusion matrix and IoU.

def numpy_confusion(pred, labels, num_classes, valid):
  conf = np.zeros((num_classes, num_classes), np.int64)
  for b in range(labels.shape[0]):
    if not valid[b]:
      continue
    lt, lp = labels[b].ravel(), pred[b].ravel()
    keep = (lt >= 0) & (lt < num_classes)
    conf += np.bincount(num_classes * lt[keep] + lp[keep],
                        minlength=num_classes ** 2).reshape(num_classes, num_classes)
  return conf


def numpy_iou(conf):
  conf = conf.astype(np.float64)
  inter = np.diag(conf)
  union = conf.sum(0) + conf.sum(1) - inter
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = inter / union
  return iou, np.nanmean(iou)


def confusion_case(seed=3, num_classes=6):
  """Random predictions / labels with ignore pixels, an invalid (padding) row and class 4 absent
  from both labels and predictions of the valid rows."""
  rng = np.random.default_rng(seed)
  labels = random_labels(rng, (3, 9, 11), num_classes)
  pred = rng.integers(0, num_classes, (3, 9, 11)).astype(np.int32)
  labels[labels == 4] = 5
  pred[pred == 4] = 0
  pred[2] = 4   # the invalid row predicts class 4 everywhere: must not count
  valid = np.array([True, True, False])
  return pred, labels, valid


def test_confusion_matrix_and_iou_match_numpy():
  pred, labels, valid = confusion_case()
  conf = jax.jit(ops.confusion_matrix, static_argnums=2)(pred, labels, 6, valid)
  assert conf.dtype == jnp.int32
  ref = numpy_confusion(pred, labels, 6, valid)
  np.testing.assert_array_equal(conf, ref)
  np.testing.assert_array_equal(ops.confusion_matrix(pred, labels, 6), numpy_confusion(
      pred, labels, 6, [True] * 3))
  iou, miou = jax.jit(ops.iou_from_confusion)(conf)
  ref_iou, ref_miou = numpy_iou(ref)
  assert np.isnan(iou[4]) and np.isnan(ref_iou[4])
  assert_close(np.nan_to_num(iou, nan=-1), np.nan_to_num(ref_iou, nan=-1))
  assert_close(miou, ref_miou)
  assert_close(miou, np.mean(ref_iou[[0, 1, 2, 3, 5]]))


def test_class_subset_miou():
  rng = np.random.default_rng(4)
  labels = random_labels(rng, (2, 20, 20), 19)
  pred = rng.integers(0, 19, (2, 20, 20)).astype(np.int32)
  conf = np.asarray(ops.confusion_matrix(pred, labels, 19))
  keep = list(ops.SYNTHIA_16_CLASSES)
  assert len(keep) == 16 and len(ops.SYNTHIA_13_CLASSES) == 13
  assert set(ops.SYNTHIA_13_CLASSES) < set(keep) and not {9, 14, 16} & set(keep)
  # Default: the full 19-class IoU averaged over the kept classes.
  full_iou, _ = numpy_iou(conf)
  iou, miou = jax.jit(lambda c: ops.class_subset_miou(c, keep))(conf)
  assert_close(iou, full_iou[keep])
  assert_close(miou, full_iou[keep].mean())
  # restrict=True: IoU of the matrix restricted to the kept rows and columns.
  sub_iou, sub_miou = numpy_iou(conf[np.ix_(keep, keep)])
  iou, miou = ops.class_subset_miou(conf, keep, restrict=True)
  assert_close(iou, sub_iou)
  assert_close(miou, sub_miou)
  # When no pixel involves a dropped class the two protocols agree.
  conf13 = conf.copy()
  dropped = [c for c in range(19) if c not in ops.SYNTHIA_13_CLASSES]
  conf13[dropped, :] = 0
  conf13[:, dropped] = 0
  assert_close(ops.class_subset_miou(conf13, ops.SYNTHIA_13_CLASSES)[1],
               ops.class_subset_miou(conf13, ops.SYNTHIA_13_CLASSES, restrict=True)[1])


SHARDED_SCRIPT = r'''
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from sdeseg_jax.ops import segmentation
assert jax.device_count() == 4
mesh = jax.make_mesh((4,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
rng = np.random.default_rng(0)
labels = rng.integers(0, 5, (8, 6, 7)).astype(np.int32)
labels[rng.random(labels.shape) < 0.2] = 255
pred = rng.integers(0, 5, (8, 6, 7)).astype(np.int32)
valid = np.arange(8) < 6
batch = NamedSharding(mesh, P('data'))
f = jax.jit(lambda p, l, v: segmentation.confusion_matrix(p, l, 5, v),
            in_shardings=(batch, batch, batch), out_shardings=NamedSharding(mesh, P()))
args = [jax.device_put(x, batch) for x in (pred, labels, valid)]
assert len(args[0].sharding.device_set) == 4
sharded = f(*args)
single = segmentation.confusion_matrix(pred, labels, 5, valid)
np.testing.assert_array_equal(np.asarray(sharded), np.asarray(single))
print('OK', int(np.asarray(sharded).sum()))
'''


def test_confusion_matrix_under_jit_with_batch_sharded_input():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', SHARDED_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith('OK')


# ---------------------------------------------------------------------------------------------
# DepthMix.

def street_scene(height, width, object_box, object_disp, object_label, horizon, scale, offset):
  """A synthetic scene with known depth ordering: sky (label 10, disparity 0) above `horizon`,
  road (label 0) below with disparity rising linearly to 0.6 at the bottom, one box-shaped object
  at constant disparity. Returns the raw disparity (true disparity * scale + offset, as an SDE
  with an unknown scale would give) [H, W, 1], the true disparity and the labels [H, W]."""
  rows = np.arange(height, dtype=np.float64)[:, None] * np.ones((1, width))
  disp = np.where(rows >= horizon, 0.6 * (rows - horizon) / (height - 1 - horizon), 0.0)
  labels = np.where(rows >= horizon, 0, 10).astype(np.int32)
  top, left, bottom, right = object_box
  disp[top:bottom, left:right] = object_disp
  labels[top:bottom, left:right] = object_label
  disp[-1, -1] = 1.0   # the nearest point: normalisation maps the true disparity onto [0, 1]
  return (disp * scale + offset)[..., None], disp[..., None], labels


def test_depthmix_keeps_the_nearer_surface():
  h, w = 40, 48
  scenes = [
      street_scene(h, w, (12, 5, 30, 20), 0.9, 13, horizon=15, scale=0.3, offset=0.05),   # near car
      street_scene(h, w, (5, 25, 35, 29), 0.35, 5, horizon=20, scale=2.0, offset=0.4),    # far pole
      street_scene(h, w, (22, 30, 39, 46), 0.75, 11, horizon=10, scale=0.8, offset=0.0),  # person
  ]
  raw = np.stack([s[0] for s in scenes]).astype(np.float32)
  true = np.stack([s[1] for s in scenes])
  labels = np.stack([s[2] for s in scenes])

  disp = jax.jit(ops.normalize_disparity)(raw)
  assert_close(disp, true, rtol=1e-5)
  partner_disp = ops.pair_with_next(disp)
  mask = jax.jit(ops.depthmix_mask)(disp, partner_disp)
  mixed = np.asarray(ops.mix_labels(mask, labels, ops.pair_with_next(labels)))

  # Every pixel shows the nearer surface (larger disparity); inside the margin image i wins
  # (M = [d_i >= d_j - margin]). Pixels within float32 rounding of the margin are not judged.
  own = true[..., 0]
  partner = np.roll(true, -1, axis=0)[..., 0]
  partner_labels = np.roll(labels, -1, axis=0)
  decided = np.abs((partner - own) - 0.03) > 1e-5
  partner_wins = (partner - own > 0.03) & decided
  own_wins = (partner - own < 0.03) & decided
  np.testing.assert_array_equal(mixed[own_wins], labels[own_wins])
  np.testing.assert_array_equal(mixed[partner_wins], partner_labels[partner_wins])
  assert partner_wins.sum() > 100 and own_wins.sum() > 100 and decided.mean() > 0.99
  # The known occlusions. Image 0 (near car) mixed with image 1 (far pole, 0.35): the car hides
  # the pole's scene; the pole is pasted over image 0's sky but its lower part is hidden by
  # image 0's road, nearer than 0.35 - 0.03 from row 28 on.
  assert np.all(mixed[0, 12:30, 5:20] == 13)
  assert np.all(mixed[0, 5:15, 25:29] == 5)
  assert np.all(mixed[0, 15:28, 25:29] == 5) and np.all(mixed[0, 28:35, 25:29] == 0)
  # Image 1 mixed with image 2: image 2's road (horizon 10) covers image 1's sky from row 12 on;
  # row 11 (0.021 nearer) stays sky because of the margin.
  assert np.all(mixed[1, 12:20, :25] == 0) and np.all(mixed[1, 11, :25] == 10)
  # Image 2's person (0.75) is nearer than anything of image 0 behind it.
  assert np.all(mixed[2, 22:39, 30:46] == 11)
  # The same mask mixes images and probability maps.
  images = np.random.default_rng(5).uniform(size=(3, h, w, 3)).astype(np.float32)
  mixed_images = ops.mix(mask, images, ops.pair_with_next(images))
  expected = np.where(np.asarray(mask) > 0.5, images, np.roll(images, -1, axis=0))
  assert_close(mixed_images, expected)


def test_depthmix_margin_and_normalisation_edge_cases():
  a = jnp.full((2, 1, 3, 1), 0.5)
  b = jnp.asarray([0.52, 0.529, 0.531]).reshape(1, 1, 3, 1) * jnp.ones((2, 1, 1, 1))
  mask = ops.depthmix_mask(a, b)                                 # 0.5 >= b - 0.03
  np.testing.assert_array_equal(mask[..., 0], [[[1, 1, 0]], [[1, 1, 0]]])
  margins = ops.signed_margin(jax.random.key(0), shape=(2,))
  assert margins.shape == (2,)
  np.testing.assert_allclose(np.abs(margins), 0.03)
  per_pair = ops.depthmix_mask(a, b, jnp.asarray([0.03, -0.03]))
  np.testing.assert_array_equal(per_pair[..., 0], [[[1, 1, 0]], [[0, 0, 0]]])
  flips = jax.vmap(lambda k: ops.signed_margin(k))(jax.random.split(jax.random.key(1), 2000))
  assert 0.45 < np.mean(np.asarray(flips) < 0) < 0.55
  constant = ops.normalize_disparity(jnp.full((1, 4, 4, 1), 0.3))
  np.testing.assert_array_equal(constant, 0.0)


def test_cross_domain_pixel_weights():
  mask = jnp.asarray([[[[1.0], [0.0]], [[0.0], [1.0]]]])
  np.testing.assert_allclose(ops.cross_domain_pixel_weights(mask, 0.25), [[[1, 0.25], [0.25, 1]]])


# ---------------------------------------------------------------------------------------------
# ClassMix.

def classmix_case():
  rng = np.random.default_rng(6)
  labels = np.zeros((4, 12, 14), np.int32)
  labels[0] = rng.choice([0, 2, 5, 7, 8, 11, 18], size=(12, 14))       # 7 classes -> 3
  labels[0, :7, 0] = [0, 2, 5, 7, 8, 11, 18]                            # all surely present
  labels[1] = 3                                                         # 1 class -> 0
  labels[2] = rng.choice([1, 4, 9, 255], size=(12, 14))                 # 3 + ignore -> 1
  labels[2, 0, :4] = [1, 4, 9, 255]
  labels[3] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7], size=(12, 14))       # 8 classes -> 4
  labels[3, 0, :8] = np.arange(8)
  return labels


def selected_classes(mask, labels):
  """The classes of one image the mask selects; asserts each class is wholly in or out."""
  chosen = set()
  for c in np.unique(labels):
    inside = mask[labels == c]
    assert np.all(inside == inside[0]), f'class {c} split by the mask'
    if inside[0]:
      chosen.add(int(c))
  return chosen


def test_classmix_mask_selects_half_of_the_present_classes():
  labels = classmix_case()
  fn = jax.jit(ops.classmix_mask)
  masks = []
  for seed in range(6):
    mask = np.asarray(fn(labels, jax.random.key(seed)))
    assert mask.shape == (4, 12, 14, 1) and set(np.unique(mask)) <= {0.0, 1.0}
    chosen = [selected_classes(mask[b, ..., 0], labels[b]) for b in range(4)]
    for b, expected_n in enumerate([3, 0, 1, 4]):
      present = set(np.unique(labels[b]).tolist()) - {255}
      assert len(chosen[b]) == expected_n and chosen[b] <= present
    assert 255 not in chosen[2] and np.all(mask[2][labels[2] == 255] == 0)
    masks.append(mask)
  np.testing.assert_array_equal(fn(labels, jax.random.key(0)), masks[0])   # deterministic per key
  assert any(not np.array_equal(masks[0], m) for m in masks[1:])          # keys differ
  # Uniform over subsets: each of image 3's 8 classes is chosen about half of the time.
  many = jax.vmap(lambda k: fn(labels[3:], k))(jax.random.split(jax.random.key(9), 400))
  frequency = [np.mean(np.asarray(many)[:, 0, 0, c, 0]) for c in range(8)]
  assert all(0.4 < f < 0.6 for f in frequency), frequency


# ---------------------------------------------------------------------------------------------
# Pseudo-labels.

def test_one_hot_targets_and_pseudo_labels_match_numpy():
  rng = np.random.default_rng(7)
  labels = random_labels(rng, (2, 5, 6), 4)
  one_hot = np.asarray(ops.one_hot_targets(labels, 4))
  ref = (labels[..., None] == np.arange(4)).astype(np.float32)
  np.testing.assert_array_equal(one_hot, ref)
  assert np.all(one_hot[labels == 255] == 0)

  probs = rng.dirichlet(np.full(4, 0.3), (2, 5, 6)).astype(np.float32)
  probs[0, 0, 0] = [0.99, 0.01, 0, 0]
  mask = (rng.random((2, 5, 6, 1)) < 0.5).astype(np.float32)
  mixed = mask * one_hot + (1 - mask) * probs                           # labeled onto unlabeled
  got_labels, got_max = jax.jit(ops.pseudo_labels)(mixed)
  ref_max = mixed.max(-1)
  ref_labels = np.where(ref_max == 0, 255, mixed.argmax(-1))
  assert got_labels.dtype == jnp.int32
  np.testing.assert_array_equal(got_labels, ref_labels)
  assert np.any(ref_labels == 255)
  assert_close(got_max, ref_max)
  quality = jax.jit(ops.pseudo_label_quality)(got_max)
  assert quality.shape == ()
  assert_close(quality, np.mean(ref_max >= 0.968))
  zero_labels, zero_max = ops.pseudo_labels(jnp.zeros((1, 2, 3, 5)))
  np.testing.assert_array_equal(zero_labels, 255)
  assert float(ops.pseudo_label_quality(zero_max)) == 0.0


# ---------------------------------------------------------------------------------------------
# Matching geometry and berHu.

def test_geometric_difference_matches_numpy():
  rng = np.random.default_rng(8)
  a = rng.uniform(0, 1, (3, 200, 12, 1)).astype(np.float32)
  b = rng.uniform(0, 1, (3, 200, 12, 1)).astype(np.float32)
  got = jax.jit(ops.geometric_difference)(a, b)
  diff = np.abs(np.log(1 + a.astype(np.float64)) - np.log(1 + b.astype(np.float64)))
  diff[:, :80] = 0
  diff[:, -100:] = 0
  assert_close(got, diff.mean(axis=(1, 2, 3)))
  assert_close(ops.geometric_difference(a, b, top=0, bottom=0),
               np.abs(np.log1p(a.astype(np.float64)) - np.log1p(b)).mean(axis=(1, 2, 3)))
  assert np.all(np.asarray(ops.geometric_difference(a, a)) == 0)


def torch_berhu(pred, target, mask):
  """SPEC section 8 berHu in float64 torch, c taken as a Python number (a constant)."""
  absdiff = torch.abs(target - pred) * mask
  c = 0.2 * torch.max(absdiff).item()
  return torch.mean(torch.where(absdiff <= c, absdiff, (absdiff ** 2 + c ** 2) / (2 * c)))


def test_berhu_loss_and_gradient_match_torch():
  rng = np.random.default_rng(9)
  pred = rng.uniform(0, 1, (2, 10, 12, 1)).astype(np.float32)
  target = rng.uniform(0, 1, (2, 10, 12, 1)).astype(np.float32)
  mask = np.ones_like(pred)
  mask[:, 9:] = 0                                                      # bottom 10% of the rows
  loss, grad = jax.jit(jax.value_and_grad(ops.berhu_loss))(pred, target, mask)
  pred_t = torch.from_numpy(pred.astype(np.float64)).requires_grad_()
  ref = torch_berhu(pred_t, torch.from_numpy(target.astype(np.float64)),
                    torch.from_numpy(mask.astype(np.float64)))
  ref.backward()
  assert_close(loss, ref.item())
  assert_close(grad, pred_t.grad.numpy())
  # All errors zero: c = 0 -> loss 0 with a finite gradient.
  zero, zero_grad = jax.value_and_grad(ops.berhu_loss)(pred, pred, mask)
  assert float(zero) == 0.0 and np.all(np.isfinite(zero_grad))


# ---------------------------------------------------------------------------------------------
# Strong augmentation.

def colour_image(rng, batch=2, height=6, width=7):
  images = rng.uniform(0, 1, (batch, height, width, 3)).astype(np.float32)
  images[0, 0, 0] = [0.5, 0.5, 0.5]                                    # grey: hue undefined
  images[0, 0, 1] = 0.0                                                # black
  images[0, 0, 2] = [1.0, 1.0, 0.2]                                    # R == G maximum
  return images


def colorsys_map(images, fn):
  """Applies fn(h, s, v) -> (h, s, v) per pixel in float64 with colorsys."""
  out = np.empty(images.shape, np.float64)
  for idx in np.ndindex(images.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*images[idx].astype(np.float64))
    out[idx] = colorsys.hsv_to_rgb(*fn(idx[0], h, s, v))
  return out


def test_colour_adjustments_match_float64_references():
  rng = np.random.default_rng(10)
  images = colour_image(rng)
  delta = np.array([-0.25, 0.2], np.float32)
  factor = np.array([0.75, 1.25], np.float32)
  shift = np.array([-0.23, 0.19], np.float32)
  x = images.astype(np.float64)
  per = lambda v: np.asarray(v, np.float64)[:, None, None, None]       # noqa: E731
  assert_close(jax.jit(ops.adjust_brightness_additive)(images, delta),
               np.clip(x + per(delta), 0, 1))
  assert_close(jax.jit(ops.adjust_contrast)(images, factor), np.clip(x * per(factor), 0, 1))
  sat_ref = colorsys_map(images, lambda b, h, s, v: (h, min(max(s * factor[b], 0.0), 1.0), v))
  assert_close(jax.jit(ops.adjust_saturation)(images, factor), sat_ref)
  hue_ref = colorsys_map(images, lambda b, h, s, v: ((h + shift[b]) % 1.0, s, v))
  assert_close(jax.jit(ops.adjust_hue)(images, shift), hue_ref)
  # A full turn is the identity, HSV round trips.
  assert_close(ops.adjust_hue(images, np.ones(2, np.float32)), images)
  assert_close(augment.hsv_to_rgb(augment.rgb_to_hsv(images)), images)


def test_gaussian_kernel_size_follows_the_reference_formula():
  for n in (8, 30, 33, 100, 360, 512, 672, 1024):
    c = np.ceil(0.1 * n)
    assert augment.gaussian_kernel_size(n) == int(np.floor(c - 0.5 + c % 2))
    assert augment.gaussian_kernel_size(n) % 2 == 1
  assert augment.gaussian_kernel_size(512) == 51 and augment.gaussian_kernel_size(1024) == 103


def torch_gaussian_blur(images, sigma, kh, kw):
  """kornia 0.4.0 GaussianBlur2d in float64 torch: outer product of normalised 1-D Gaussians,
  torch 'reflect' padding, depthwise conv2d. images [B, H, W, C] -> NumPy [B, H, W, C]."""

  def taps(k):
    x = torch.arange(k, dtype=torch.float64) - k // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()

  channels = images.shape[-1]
  kernel = torch.outer(taps(kh), taps(kw))[None, None].repeat(channels, 1, 1, 1)
  padded = F.pad(nchw64(images), (kw // 2, kw // 2, kh // 2, kh // 2), mode='reflect')
  return F.conv2d(padded, kernel, groups=channels).permute(0, 2, 3, 1).numpy()


def test_gaussian_blur_matches_torch_reflect_conv():
  rng = np.random.default_rng(11)
  images = rng.uniform(0, 1, (2, 40, 52, 3)).astype(np.float32)
  kh, kw = augment.gaussian_kernel_size(40), augment.gaussian_kernel_size(52)
  assert (kh, kw) == (3, 5)                                            # rows from H, columns from W
  assert_close(jax.jit(ops.gaussian_blur)(images, 1.1), torch_gaussian_blur(images, 1.1, kh, kw))
  # The kernel of a 512-pixel side (51 taps), on an image just large enough to reflect it.
  big = rng.uniform(0, 1, (1, 60, 64, 3)).astype(np.float32)
  got = jax.jit(ops.gaussian_blur, static_argnums=2)(big, 0.7, (51, 51))
  assert_close(got, torch_gaussian_blur(big, 0.7, 51, 51))
  with pytest.raises(ValueError, match='odd'):
    ops.gaussian_blur(big, 0.7, kernel_size=(4, 5))


@pytest.mark.slow
def test_strong_augment_composes_the_adjustments_in_the_drawn_order():
  rng = np.random.default_rng(12)
  images = rng.uniform(0, 1, (2, 32, 36, 3)).astype(np.float32)
  params = augment.sample_strong_augment_params(jax.random.key(3), 2)
  params = params._replace(apply_jitter=jnp.array(True), apply_blur=jnp.array(True),
                           order=jnp.array([3, 0, 2, 1], jnp.int32))
  steps = [lambda x: ops.adjust_brightness_additive(x, params.brightness),
           lambda x: ops.adjust_contrast(x, params.contrast),
           lambda x: ops.adjust_saturation(x, params.saturation),
           lambda x: ops.adjust_hue(x, params.hue)]
  expected = images
  for i in (3, 0, 2, 1):
    expected = steps[i](expected)
  expected = ops.gaussian_blur(expected, params.sigma)
  assert_close(jax.jit(ops.apply_strong_augment)(images, params), expected)
  off = params._replace(apply_jitter=jnp.array(False), apply_blur=jnp.array(False))
  np.testing.assert_array_equal(ops.apply_strong_augment(images, off), images)


@pytest.mark.slow
def test_strong_augment_range_determinism_and_gates():
  rng = np.random.default_rng(13)
  images = rng.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
  fn = jax.jit(ops.strong_augment)
  out = np.asarray(fn(jax.random.key(0), images))
  assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
  np.testing.assert_array_equal(fn(jax.random.key(0), images), out)
  outs = [np.asarray(fn(jax.random.key(s), images)) for s in range(1, 4)]
  assert any(not np.array_equal(out, o) for o in outs)

  n = 4000
  params = jax.jit(jax.vmap(lambda k: augment.sample_strong_augment_params(k, 2)))(
      jax.random.split(jax.random.key(1), n))
  jitter_rate = np.mean(np.asarray(params.apply_jitter))
  blur_rate = np.mean(np.asarray(params.apply_blur))
  # 5 standard deviations: 0.8 +- 0.032, 0.5 +- 0.040.
  assert abs(jitter_rate - 0.8) < 0.032, jitter_rate
  assert abs(blur_rate - 0.5) < 0.040, blur_rate
  both = np.mean(np.asarray(params.apply_jitter) & np.asarray(params.apply_blur))
  assert abs(both - 0.4) < 0.04, both                                   # independent coins
  for name, low, high in [('brightness', -0.25, 0.25), ('contrast', 0.75, 1.25),
                          ('saturation', 0.75, 1.25), ('hue', -0.25, 0.25)]:
    values = np.asarray(getattr(params, name))
    assert values.shape == (n, 2) and values.min() >= low and values.max() <= high
    assert abs(values.mean() - (low + high) / 2) < 0.01
    assert np.mean(values[:, 0] != values[:, 1]) > 0.99                # per-image factors
  sigma = np.asarray(params.sigma)
  assert sigma.min() >= 0.15 and sigma.max() <= 1.15 and abs(sigma.mean() - 0.65) < 0.02
  orders = np.asarray(params.order)
  assert np.all(np.sort(orders, axis=1) == np.arange(4))
  assert len({tuple(o) for o in orders}) == 24                          # every order occurs

  # The gates act on the images: a constant-colour image is unchanged by any blur (reflect
  # borders, normalised kernel), so it changes exactly when the jitter coin fires.
  flat = np.broadcast_to(np.array([0.6, 0.4, 0.3], np.float32), (2, 32, 32, 3))
  keys = jax.random.split(jax.random.key(2), 200)
  changed = np.asarray(jax.jit(jax.vmap(lambda k: jnp.any(
      jnp.abs(ops.strong_augment(k, flat) - flat) > 1e-6)))(keys))
  fired = np.asarray(jax.vmap(lambda k: augment.sample_strong_augment_params(k, 2).apply_jitter)(
      keys))
  np.testing.assert_array_equal(changed, fired)
