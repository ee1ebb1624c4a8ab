"""Network structure: the exact parameter counts of SPEC section 3, output shapes, dtypes, tiny
configs.

Parameter counts and shapes come from jax.eval_shape (no compute); forward passes use tiny networks.
Numerical parity with PyTorch is in test_weights.py.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from sdeseg_jax.errors import ConfigError
from sdeseg_jax.models import decoder, layers, networks, padnet, pose, resnet
from sdeseg_jax.ops import segmentation
from sdeseg_jax.stages import segment

KEY = jax.random.key(0)


def _params(module, *inputs):
  return jax.eval_shape(lambda: module.init(KEY, *inputs))['params']


def _features(channels, height=64, width=64, output_stride=16):
  """Encoder-like features f0..f4 for decoders: strides 2, 4, 8, 16, output_stride."""
  strides = (2, 4, 8, 16, output_stride)
  return [jnp.zeros((1, height // s, width // s, c)) for s, c in zip(strides, channels)]


RESNET101 = (64, 256, 512, 1024, 2048)


@pytest.mark.parametrize('module,inputs,expected', [
    (resnet.ResNet(101, 16), (jnp.zeros((1, 64, 64, 3)),), 42_500_160),
    (resnet.ResNet(50, 16), (jnp.zeros((1, 64, 64, 3)),), 23_508_032),
    (resnet.ResNet(18, 32), (jnp.zeros((1, 64, 64, 6)),), 11_185_920),   # pose encoder, 6 channels
    (decoder.Decoder(**decoder.DECODERS['dec6']), (_features(RESNET101),), 22_066_628),
    (decoder.Decoder(**decoder.DECODERS['dec11']), (_features(RESNET101, output_stride=32),),
     19_830_356),
    (decoder.Decoder(**decoder.DECODERS['dec9']), (_features(RESNET101),), 20_333_956),
    (padnet.PADNet(19), (_features(RESNET101),), 44_721_578),
    (pose.PoseDecoder(), (jnp.zeros((1, 2, 2, 512)),), 1_314_572),
], ids=['resnet101', 'resnet50', 'pose_encoder', 'dec6', 'dec11', 'dec9', 'padnet', 'pose_decoder'])
def test_parameter_counts_match_the_reference(module, inputs, expected):
  assert networks.count_parameters(_params(module, *inputs)) == expected


def test_transfer_decoder_count_excludes_unused_disparity_heads():
  params = jax.eval_shape(lambda: networks.init_variables('transfer', base.get_config().model,
                                                          KEY))['params']
  decoder_and_head = networks.count_parameters(params['seg_decoder']) + networks.count_parameters(
      params['seg_head'])
  assert decoder_and_head == 22_066_771


def test_batch_norm_statistics_are_counted_apart():
  variables = jax.eval_shape(lambda: resnet.ResNet(101, 16).init(KEY, jnp.zeros((1, 64, 64, 3))))
  # Every BN layer has a mean and a variance of its channel count; scale and bias are parameters.
  stats = networks.count_parameters(variables['batch_stats'])
  assert stats == 2 * 52_672
  scales = sum(int(x.size) for path, x in jax.tree_util.tree_leaves_with_path(variables['params'])
               if path[-1].key == 'scale')
  assert stats == 2 * scales


def test_batch_norm_variance_keeps_float32_accuracy_where_the_mean_is_large():
  """Two values per channel far from zero (the ASPP pooling branch at batch 2): the variance,
  shifted by the running mean, is as accurate as float32 allows; E[x^2] - E[x]^2 would lose it
  (here: 0 for a spread of 2e-3 around 30)."""
  x = np.array([30.0, 30.002], np.float32).reshape(2, 1, 1, 1)
  bn = layers.BatchNorm()
  variables = bn.init(KEY, jnp.asarray(x))
  variables = {'params': variables['params'],
               'batch_stats': {'mean': jnp.full((1,), 30.0), 'var': jnp.ones((1,))}}
  y, _ = bn.apply(variables, jnp.asarray(x), mutable=['batch_stats'])
  x64 = x.astype(np.float64)
  exact = (x64 - x64.mean()) / np.sqrt(x64.var() + 1e-5)
  np.testing.assert_allclose(np.asarray(y), exact, rtol=1e-3)
  naive = np.float32(np.mean(np.square(x))) - np.float32(np.mean(x)) ** 2
  assert abs(naive - x64.var()) > 0.5 * x64.var()  # what the one-pass formula gives here


@pytest.mark.slow
@pytest.mark.parametrize('height,width', [(512, 512), (512, 1024)])
def test_output_shapes(height, width):
  config = base.get_config()
  shapes = {}
  for kind, model in (('sde', config.model), ('mtl', config.model), ('transfer', config.model),
                      ('depth_student', config.student_model)):
    network = networks.build(kind, model)
    x = networks.example_input(kind, 2, height, width)
    variables = jax.eval_shape(lambda: network.init(KEY, networks.example_input(kind, 1, 64, 64)))
    shapes[kind] = jax.eval_shape(lambda v, x: network.apply(v, x), variables, x)
  for kind in ('sde', 'mtl', 'depth_student'):
    disp = shapes[kind]['disp']
    assert sorted(disp) == [0, 1, 2, 3]
    for s in range(4):
      assert disp[s].shape == (2, height // 2**s, width // 2**s, 1)
      assert disp[s].dtype == jnp.float32
  for kind in ('mtl', 'transfer'):
    assert shapes[kind]['logits'].shape == (2, height, width, 19)
  assert shapes['mtl']['side_logits'].shape == (2, height // 4, width // 4, 19)
  for kind in ('sde', 'mtl'):
    axisangle, translation = shapes[kind]['pose_prev']
    assert axisangle.shape == translation.shape == (2, 3)
  features = shapes['sde']['features']
  assert [f.shape[1:] for f in features] == [
      (height // 2, width // 2, 64), (height // 4, width // 4, 256), (height // 8, width // 8, 512),
      (height // 16, width // 16, 1024), (height // 16, width // 16, 2048)]
  # Data-selection features: decoder level 3, 256 channels at 1/8.
  assert shapes['sde']['levels'][3].shape == (2, height // 8, width // 8, 256)


@pytest.mark.slow
def test_multitask_network_without_side_output():
  """side_output=False drops exactly the side head: no side_classifier parameters, no side_logits,
  the same final logits from the same remaining parameters, and a supervised loss of the final
  head's CE alone (with the side head it is the mean of both)."""
  config = base.make_tiny(base.model_config())
  frames = jax.random.uniform(KEY, (1, 3, 64, 64, 3))
  labels = jax.random.randint(jax.random.key(1), (1, 64, 64), 0, 19)
  with_side = networks.build('mtl', config)
  variables = with_side.init(KEY, frames)
  config = base.make_tiny(base.model_config())
  config.side_output = False
  without_side = networks.build('mtl', config)
  params = flax.core.unfreeze(variables['params'])
  del params['pad']['side_classifier']
  stripped = dict(variables, params=params)
  assert (jax.tree.structure(jax.eval_shape(lambda: without_side.init(KEY, frames)))
          == jax.tree.structure(stripped))
  out = with_side.apply(variables, frames)
  out_without = without_side.apply(stripped, frames)
  assert 'side_logits' in out and 'side_logits' not in out_without
  np.testing.assert_array_equal(out['logits'], out_without['logits'])
  final_ce = segmentation.cross_entropy(out['logits'], labels)
  assert float(segment.segmentation_loss(out_without, labels)) == float(final_ce)
  side = segmentation.resize_logits(out['side_logits'], 64, 64, align_corners=True)
  np.testing.assert_allclose(segment.segmentation_loss(out, labels),
                             (final_ce + segmentation.cross_entropy(side, labels)) / 2, rtol=1e-6)


@pytest.mark.slow
def test_multitask_network_without_distillation():
  """distillation=False drops exactly the two distillation modules, and the decoders then share only
  the encoder: changing the depth decoder leaves the segmentation logits unchanged and changing the
  segmentation decoder leaves every disparity unchanged (with distillation both change)."""
  frames = jax.random.uniform(KEY, (1, 3, 64, 64, 3))
  networks_by_switch, variables_by_switch = {}, {}
  for distillation in (True, False):
    config = base.make_tiny(base.model_config())
    config.distillation = distillation
    networks_by_switch[distillation] = networks.build('mtl', config)
    variables_by_switch[distillation] = networks_by_switch[distillation].init(KEY, frames)
  full = flax.core.unfreeze(variables_by_switch[True]['params'])
  del full['pad']['distill_depth_to_seg'], full['pad']['distill_seg_to_depth']
  assert (jax.tree.structure(variables_by_switch[False]['params'])
          == jax.tree.structure(full))

  def outputs(distillation, perturbed_decoder=None):
    variables = flax.core.unfreeze(variables_by_switch[distillation])
    if perturbed_decoder:
      variables['params']['pad'][perturbed_decoder] = jax.tree.map(
          lambda x: x + 0.05, variables['params']['pad'][perturbed_decoder])
    return networks_by_switch[distillation].apply(variables, frames)

  for distillation in (True, False):
    out = outputs(distillation)
    seg_moved = outputs(distillation, 'depth_decoder')['logits']
    disp_moved = outputs(distillation, 'seg_decoder')['disp']
    assert np.array_equal(out['logits'], seg_moved) == (not distillation)
    for s in (0, 1):
      assert np.array_equal(out['disp'][s], disp_moved[s]) == (not distillation)
    for s in (2, 3):   # before the distillation level: never reached by the other decoder
      np.testing.assert_array_equal(out['disp'][s], disp_moved[s])


@pytest.mark.slow
def test_multitask_network_with_projected_head():
  """projected_head=True replaces PAD-Net's classifier by the transfer network's head (its own
  parameters, same design): the logits are that head applied to the segmentation decoder's level-0
  output, and nothing else changes."""
  frames = jax.random.uniform(KEY, (1, 3, 64, 64, 3))
  config = base.make_tiny(base.model_config())
  config.projected_head = True
  network = networks.build('mtl', config)
  variables = network.init(KEY, frames)
  pad = variables['params']['pad']
  assert 'classifier' not in pad and set(pad['seg_head']) == {'project', 'classifier'}
  reference = jax.eval_shape(lambda: networks.build('mtl', base.make_tiny(base.model_config())
                                                    ).init(KEY, frames))['params']['pad']
  assert set(pad) - {'seg_head'} == set(reference) - {'classifier'}
  out = network.apply(variables, frames)
  head = decoder.SegmentationHead(config.num_classes)
  np.testing.assert_allclose(out['logits'], head.apply({'params': pad['seg_head']},
                                                       out['seg_levels'][0]), rtol=1e-6)


def test_output_stride_32_and_8():
  x = jnp.zeros((1, 64, 128, 3))
  f32 = jax.eval_shape(lambda: resnet.ResNet(101, 32).init_with_output(KEY, x))[0]
  f8 = jax.eval_shape(lambda: resnet.ResNet(50, 8).init_with_output(KEY, x))[0]
  assert [f.shape[1] for f in f32] == [32, 16, 8, 4, 2]
  assert [f.shape[1] for f in f8] == [32, 16, 8, 8, 8]


def _tiny(kind='mtl', dtype='float32'):
  model = base.make_tiny(base.get_config().model)
  model.compute_dtype = dtype
  return networks.build(kind, model)


@pytest.mark.slow
def test_tiny_network_trains_batch_norm_and_keeps_float32_state():
  network = _tiny('mtl')
  frames = jax.random.uniform(KEY, (2, 3, 64, 64, 3))
  variables = network.init(KEY, frames[:1])
  assert networks.count_parameters(variables["params"]) < 1_000_000  # full size: 99.7M
  out, updates = network.apply(variables, frames, train=True, mutable=['batch_stats'],
                               rngs={'dropout': KEY})
  assert out['logits'].shape == (2, 64, 64, 19) and bool(jnp.isfinite(out['logits']).all())
  before = jax.tree.leaves(variables['batch_stats'])
  after = jax.tree.leaves(updates['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  # Inference mode is deterministic (dropout off, running statistics).
  a = network.apply(variables, frames)['logits']
  b = network.apply(variables, frames)['logits']
  np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters_and_outputs():
  image = jax.random.uniform(KEY, (2, 64, 64, 3))
  f32, bf16 = _tiny('transfer'), _tiny('transfer', 'bfloat16')
  variables = f32.init(KEY, image)
  bf16_variables = bf16.init(KEY, image)
  for tree in (bf16_variables['params'], bf16_variables['batch_stats']):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
  out32 = f32.apply(variables, image)['logits']
  out16 = bf16.apply(variables, image)['logits']
  assert out16.dtype == jnp.float32
  # Same weights, lower precision: close, not identical.
  error = float(jnp.max(jnp.abs(out32 - out16)))
  assert 0 < error < 0.1 * float(jnp.max(jnp.abs(out32)))


def test_float64_compute_needs_64_bit_jax():
  model = base.get_config().model
  model.compute_dtype = 'float64'
  with pytest.raises(ConfigError, match='jax_enable_x64'):
    networks.compute_dtype(model)
  with jax.enable_x64(True):
    assert networks.compute_dtype(model) == jnp.float64


@pytest.mark.slow
def test_float64_sde_computes_in_float64_throughout():
  """The SDE network in float64 (the parity harness's float64 step): float64 disparities, poses
  and BatchNorm statistics, where float32 and bfloat16 compute them in float32."""
  frames = jax.random.uniform(KEY, (2, 3, 64, 64, 3))
  with jax.enable_x64(True):
    network = _tiny('sde', 'float64')
    variables = network.init(KEY, frames[:1].astype(jnp.float64))
    variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
    out, updates = network.apply(variables, frames.astype(jnp.float64), train=True,
                                 mutable=['batch_stats'], rngs={'dropout': KEY})
  dtypes = {x.dtype for x in jax.tree.leaves((out['disp'], out['pose_prev'], updates))}
  assert dtypes == {jnp.dtype(jnp.float64)}


@pytest.mark.slow
def test_distillation_gate_starts_at_zero():
  params = networks.init_variables('mtl', base.make_tiny(base.get_config().model), KEY)['params']
  for name in ('distill_depth_to_seg', 'distill_seg_to_depth'):
    assert not np.any(params['pad'][name]['gate']['kernel'])
    assert np.any(params['pad'][name]['conv']['kernel'])


def test_auto_compute_dtype_is_the_platform_default():
  model = base.get_config().model
  assert model.compute_dtype == 'auto'
  assert (networks.compute_dtype(model, 'tpu') == networks.compute_dtype(model, 'gpu')
          == jnp.bfloat16)
  assert networks.compute_dtype(model, 'cpu') == jnp.float32
  expected = {'cpu': jnp.float32, 'gpu': jnp.bfloat16, 'tpu': jnp.bfloat16}[jax.default_backend()]
  assert networks.compute_dtype(model) == expected
  model.compute_dtype = 'float32'
  assert networks.compute_dtype(model, 'tpu') == jnp.float32


def test_bad_designs_are_named():
  model = base.get_config().model
  with pytest.raises(ValueError, match="network 'segformer'"):
    networks.build('segformer', model)
  model.compute_dtype = 'float16'
  with pytest.raises(ValueError, match="compute_dtype 'float16'"):
    networks.build('sde', model)
  model = base.get_config().model
  model.decoder.name = 'dec7'
  with pytest.raises(ValueError, match="decoder 'dec7'"):
    networks.init_variables('sde', model, KEY)
  with pytest.raises(ValueError, match='supports output stride 32 only'):
    resnet.ResNet(18, 16).init(KEY, jnp.zeros((1, 32, 32, 3)))


def test_summary_table_totals():
  from sdeseg_jax.models import summary
  text = summary.summarise(base.get_config(), 'mtl', depth=1)
  assert 'pad ' in text and 'pose ' in text
  assert text.splitlines()[-1].split()[1:] == ['99,722,230', '121,088']


@pytest.mark.parametrize('k,stride,dilation',
                         [(3, 1, 1), (3, 2, 1), (3, 1, 2), (7, 2, 1), (1, 1, 1)])
def test_cpu_convolution_matches_xla_convolution_and_its_gradients(k, stride, dilation):
  """The CPU path (im2col matmuls with a hand-written backward pass) against XLA's convolution
  op, values and both gradients, and against a float64 NumPy convolution."""
  rng = np.random.default_rng(k * 10 + stride + dilation)
  x = rng.normal(size=(2, 13, 11, 5)).astype(np.float32)
  kernel = rng.normal(size=(k, k, 5, 4)).astype(np.float32)
  cotangent = rng.normal(size=layers.conv_valid_native(x, kernel, stride, dilation).shape)

  def loss(fn):
    return jax.jit(jax.value_and_grad(
        lambda x, w: jnp.sum(fn(x, w, stride, dilation) * cotangent), argnums=(0, 1)))(x, kernel)
  value, (dx, dw) = loss(layers.conv_valid_cpu)
  expected_value, (expected_dx, expected_dw) = loss(layers.conv_valid_native)
  np.testing.assert_allclose(value, expected_value, rtol=1e-5)
  np.testing.assert_allclose(dx, expected_dx, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dw, expected_dw, rtol=1e-4, atol=1e-4)
  # Forward in float64 NumPy, straight from the definition.
  out = np.asarray(layers.conv_valid(x, kernel, stride, dilation))
  reference = np.zeros(out.shape)
  for i in range(k):
    for j in range(k):
      view = x[:, i * dilation::stride, j * dilation::stride][:, :out.shape[1], :out.shape[2]]
      reference += np.einsum('bhwc,cf->bhwf', view.astype(np.float64), kernel[i, j])
  np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4)


def test_cpu_convolution_switch(monkeypatch):
  """SDESEG_CPU_CONVOLUTION=im2col lowers conv_valid and its gradients to matmuls on CPU; the
  default keeps XLA's convolution; anything else is refused by name."""
  x, kernel = jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4))

  def hlo():
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(layers.conv_valid(x, w, 1, 1)), argnums=(0, 1)))
    return grad.lower(x, kernel).compile().as_text()
  assert ' convolution(' in hlo()
  monkeypatch.setenv(layers.CPU_CONVOLUTION_ENV, 'im2col')
  assert ' convolution(' not in hlo() and ' dot(' in hlo()
  monkeypatch.setenv(layers.CPU_CONVOLUTION_ENV, 'winograd')
  with pytest.raises(ValueError, match='SDESEG_CPU_CONVOLUTION=.winograd'):
    hlo()


# Rematerialised encoder blocks (config model.encoder.remat) change memory, not results.

@pytest.mark.slow
@pytest.mark.parametrize('depth,output_stride', [(18, 32), (50, 16)])
def test_remat_gives_identical_gradients_and_statistics(depth, output_stride):
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  plain = resnet.ResNet(depth, output_stride, width=8, stage_sizes=(1, 2, 1, 1))
  remat = plain.clone(remat=True)
  variables = plain.init(jax.random.key(0), x)
  # The same variables fit both: checkpoints move freely between the settings.
  assert (jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(0), x)) ==
          jax.tree.structure(variables))

  def grads_and_stats(module):
    def loss(params):
      features, updates = module.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                       x, train=True, mutable=['batch_stats'])
      return sum(jnp.mean(f ** 2) for f in features), updates['batch_stats']
    return jax.jit(jax.grad(loss, has_aux=True))(variables['params'])

  (g1, s1), (g2, s2) = grads_and_stats(plain), grads_and_stats(remat)
  # Equal up to float32 rounding (XLA fuses the recomputed forward pass differently): each
  # array's largest difference against its largest value.
  for a, b in zip(jax.tree.leaves((g1, s1)), jax.tree.leaves((g2, s2))):
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * float(jnp.max(jnp.abs(a))) + 1e-12
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g1)) > 0
  # Rematerialisation really happens: the backward pass recomputes (the jaxpr has remat calls).
  jaxpr = str(jax.make_jaxpr(lambda p: remat.apply(
      {'params': p, 'batch_stats': variables['batch_stats']}, x, train=True,
      mutable=['batch_stats']))(variables['params']))
  assert 'checkpoint' in jaxpr or 'remat' in jaxpr


def test_remat_switch_reaches_the_encoders_from_config():
  config = base.make_tiny(base.model_config())
  config.encoder.remat = True
  encoder = networks.encoder_from_config(config.encoder, jnp.float32)
  assert encoder.remat
  assert not networks.encoder_from_config(config.pose_encoder, jnp.float32).remat
