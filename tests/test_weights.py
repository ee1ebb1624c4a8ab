"""Weight import: the torch reference networks, converted with our importers, give the Flax
networks' outputs (float32, max abs error < 1e-4), and the load reports / CLI behave."""

import functools
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from sdeseg_jax.models import decoder as decoder_lib  # noqa: E402
from sdeseg_jax.models import padnet as padnet_lib  # noqa: E402
from sdeseg_jax.models import pose as pose_lib  # noqa: E402
from sdeseg_jax.models import resnet as resnet_lib  # noqa: E402
from sdeseg_jax.weights import convert as convert_lib  # noqa: E402
from sdeseg_jax.weights import importers  # noqa: E402
from sdeseg_jax.weights import report as report_lib  # noqa: E402
from benchmarks import torch_reference as tr  # noqa: E402

TOL = 1e-4
SIZE = 64  # input images [2, 3, 64, 64]
R101_CHANNELS = (64, 256, 512, 1024, 2048)


# ---------------------------------------------------------------------------------------------
# Helpers


def to_nhwc(x: 'torch.Tensor') -> np.ndarray:
  return x.detach().permute(0, 2, 3, 1).numpy()


def state_dict(module) -> dict:
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def assert_close(got, want, tol=TOL, what=''):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  err = float(np.max(np.abs(got - want)))
  assert err < tol, f'{what}: max abs error {err:.3g} (output scale {np.max(np.abs(want)):.3g})'


def randomize(module, *inputs, seed=0, gate=False):
  """Random BN affine parameters and running statistics (calibrated by a train-mode pass on
  `inputs`, then perturbed), random attention gates with gate=True; returns module.eval().

  The last BN of every residual branch gets a small scale (as in trained ResNets), which keeps the
  features of a 101-layer network O(10) so that an absolute float32 tolerance is meaningful.
  """
  gen = torch.Generator().manual_seed(seed)
  branch_ends = {id(m.bn3 if isinstance(m, tr.Bottleneck) else m.bn2) for m in module.modules()
                 if isinstance(m, (tr.Bottleneck, tr.BasicBlock))}
  bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for m in bns:
      low, high = (0.05, 0.25) if id(m) in branch_ends else (0.5, 1.5)
      m.weight.copy_(low + (high - low) * torch.rand(m.weight.shape, generator=gen))
      m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
      m.momentum = 1.0
    if gate:
      for m in module.modules():
        if isinstance(m, tr.SelfAttention):
          m.attention.weight.normal_(0.0, 0.05, generator=gen)
    if bns and inputs:
      module.train()
      module(*inputs)
    for m in bns:
      m.momentum = 0.1
      shift = torch.randn(m.running_mean.shape, generator=gen)
      m.running_mean.add_(0.1 * m.running_var.sqrt() * shift)
      m.running_var.mul_(0.7 + 0.6 * torch.rand(m.running_var.shape, generator=gen))
  return module.eval()


def random_images(channels=3, seed=1):
  return torch.rand(2, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def random_features(output_stride=16, channels=R101_CHANNELS, seed=2, width=SIZE):
  """Encoder-like (non-negative) features f0..f4 of a [SIZE, width] image."""
  gen = torch.Generator().manual_seed(seed)
  strides = (2, 4, 8, 16, output_stride)
  return [torch.relu(torch.randn(2, c, SIZE // s, width // s, generator=gen))
          for c, s in zip(channels, strides)]


@functools.lru_cache(maxsize=None)
def flax_apply(module, train=False):
  """Jitted apply of a (hashable) Flax module, shared between tests."""
  if train:
    return jax.jit(lambda v, *a: module.apply(v, *a, train=True, mutable=['batch_stats']))
  return jax.jit(lambda v, *a: module.apply(v, *a, train=False))


def checked(converted, expected, name='test'):
  variables, unmapped, ignored = converted
  report_lib.check_variables(variables, expected, name, unmapped, ignored)
  return variables


# ---------------------------------------------------------------------------------------------
# Parameter counts of the torch reference (SPEC section 3)


def test_torch_reference_parameter_counts():
  count = tr.count_parameters
  r101 = tr.ResnetEncoder(101, 16)
  ch = r101.num_ch_enc
  assert count(r101) == 42_500_160
  assert count(tr.ResnetEncoder(50, 16)) == 23_508_032
  assert count(tr.ResnetEncoder(18, 32, num_input_images=2)) == 11_185_920
  assert count(tr.depth_decoder('dec6', ch)) == 22_066_628
  assert count(tr.depth_decoder('dec11', ch)) == 19_830_356
  assert count(tr.depth_decoder('dec9', ch)) == 20_333_956
  assert count(tr.JointSegDepthDecoder(ch, 19)) == 22_066_771
  # The reference's transfer decoder computes the disparity heads it does not need.
  assert count(tr.depth_decoder('dec6', ch)) + count(tr.TransferSegmentationHead(64, 19)) \
      == 22_071_959
  assert count(tr.PAD(ch, 19)) == 44_721_578
  assert count(tr.PoseDecoder(512)) == 1_314_572


# ---------------------------------------------------------------------------------------------
# Encoders


@pytest.mark.slow
@pytest.mark.parametrize('depth,output_stride', [(18, 32), (50, 16), (101, 16), (101, 32)])
def test_resnet_parity_eval(depth, output_stride):
  x = random_images()
  net = randomize(tr.ResnetEncoder(depth, output_stride), x)
  with torch.no_grad():
    want = [to_nhwc(f) for f in net(x)]
  variables, report = importers.import_torchvision_resnet(
      {k[len('encoder.'):]: v for k, v in state_dict(net).items()}, depth, output_stride)
  assert report.ok and report.num_weights == tr.count_parameters(net)
  got = flax_apply(resnet_lib.ResNet(depth, output_stride))(variables, to_nhwc(x))
  for i, (g, w) in enumerate(zip(got, want)):
    assert_close(g, w, what=f'resnet{depth} OS{output_stride} f{i}')


@pytest.mark.slow
def test_resnet101_parity_float64_is_exact():
  """In float64 the two formulations agree to rounding (relative 1e-12): the float32 differences
  above are accumulated float32 rounding, not a difference of formulation."""
  x = random_images()
  net = randomize(tr.ResnetEncoder(101, 32), x).double()
  with torch.no_grad():
    want = [to_nhwc(f) for f in net(x.double())]
  variables, _ = importers.import_torchvision_resnet(
      {k[len('encoder.'):]: v for k, v in state_dict(net).items()}, 101, 32)
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    got = resnet_lib.ResNet(101, 32, dtype=jax.numpy.float64).apply(variables, to_nhwc(x.double()))
    for i, (g, w) in enumerate(zip(got, want)):
      assert g.dtype == np.float64
      assert_close(g, w, tol=1e-9 * max(1.0, float(np.abs(w).max())), what=f'float64 f{i}')


@pytest.mark.slow
def test_resnet_parity_train_mode_batch_statistics():
  """Batch-statistic BN (train mode) gives the same features and the same running-mean update."""
  x = random_images()
  net = randomize(tr.ResnetEncoder(50, 16), x)
  sd = state_dict(net)
  variables, _ = importers.import_torchvision_resnet(
      {k[len('encoder.'):]: v for k, v in sd.items()}, 50, 16)
  net.train()
  with torch.no_grad():
    want = [to_nhwc(f) for f in net(x)]
  got, updated = flax_apply(resnet_lib.ResNet(50, 16), train=True)(variables, to_nhwc(x))
  for i, (g, w) in enumerate(zip(got, want)):
    assert_close(g, w, what=f'train-mode f{i}')
  new, _, _ = importers.convert_resnet(state_dict(net), 'encoder')
  # torch momentum 0.1 == Flax momentum 0.9: the running statistics move identically.
  flat_got = report_lib.flatten(jax.device_get(updated['batch_stats']))
  flat_want = report_lib.flatten(new['batch_stats'])
  for key in flat_want:
    assert_close(flat_got[key], flat_want[key], what=key)


@pytest.mark.slow
def test_bn_running_var_update_matches_torch():
  # torch keeps the UNbiased batch variance (n / (n - 1)); for the ASPP image-pooling BN at batch 2
  # that is twice the biased one, so this fails for flax.linen.BatchNorm (layers.BatchNorm fixes
  # it).
  features = random_features()
  net = randomize(tr.depth_decoder('dec6', R101_CHANNELS), features)
  variables = checked(importers.convert_decoder(state_dict(net)),
                      importers.expected_decoder('dec6'))
  net.train()
  with torch.no_grad():
    net(features)
  want, _, _ = importers.convert_decoder(state_dict(net))
  _, updated = decoder_lib.Decoder().apply(
      variables, [to_nhwc(f) for f in features], train=True, mutable=['batch_stats'],
      rngs={'dropout': jax.random.key(0)})
  got = report_lib.flatten(jax.device_get(updated['batch_stats']))
  for key, value in report_lib.flatten(want['batch_stats']).items():
    assert_close(got[key], value, what=key)


def test_pose_conv1_from_duplicated_and_halved_3_channel_weights():
  x = random_images()
  net = randomize(tr.ResnetEncoder(18), x)
  sd = {k[len('encoder.'):]: v for k, v in state_dict(net).items()}
  three, _ = importers.import_torchvision_resnet(sd, 18)
  six, report = importers.import_torchvision_resnet(sd, 18, num_input_images=2)
  assert report.ok
  np.testing.assert_allclose(six['params']['conv1']['kernel'],
                             np.concatenate([three['params']['conv1']['kernel']] * 2, axis=2) / 2)
  single = flax_apply(resnet_lib.ResNet(18, 32))(three, to_nhwc(x))
  pair = flax_apply(resnet_lib.ResNet(18, 32))(six, np.concatenate([to_nhwc(x)] * 2, axis=-1))
  for i, (p, s) in enumerate(zip(pair, single)):
    assert_close(p, s, what=f"f{i}")


# ---------------------------------------------------------------------------------------------
# Decoders and heads


def _decoder_outputs(design, features, **kwargs):
  net = randomize(tr.depth_decoder(design, R101_CHANNELS, **kwargs), features)
  with torch.no_grad():
    out = net(features)
  return net, out


@pytest.mark.parametrize('design,output_stride,width', [
    ('dec6', 16, 96), ('dec9', 16, SIZE), ('dec11', 32, SIZE)])
def test_decoder_parity(design, output_stride, width):
  features = random_features(output_stride, width=width)
  net, want = _decoder_outputs(design, features)
  variables = checked(importers.convert_decoder(state_dict(net)),
                      importers.expected_decoder(design))
  got = flax_apply(decoder_lib.Decoder(**decoder_lib.DECODERS[design]))(
      variables, [to_nhwc(f) for f in features])
  for i in range(5):
    assert_close(got['levels'][i], to_nhwc(want[('upconv', i)]), what=f'{design} level {i}')
  for s in range(4):
    assert_close(got['disp'][s], to_nhwc(want[('disp', s)]), what=f'{design} disp {s}')


def test_transfer_segmentation_head_parity():
  features = random_features()
  net = randomize(tr.JointSegDepthDecoder(R101_CHANNELS, 19), features)
  with torch.no_grad():
    want = to_nhwc(net(features))
    level0 = net.unet_dec(features)[('upconv', 0)]
  parts = importers.convert_joint_seg_depth_decoder(state_dict(net))
  dec_vars = checked(parts['decoder'], importers.expected_decoder('dec6', disparity_levels=()))
  head_vars = checked(parts['head'], importers.expected_segmentation_head(19))
  head = decoder_lib.SegmentationHead(19)
  assert_close(head.apply(head_vars, to_nhwc(level0)), want, what='head on level 0')
  got_levels = flax_apply(decoder_lib.Decoder(disparity_levels=()))(
      dec_vars, [to_nhwc(f) for f in features])['levels']
  assert_close(head.apply(head_vars, got_levels[0]), want, what='decoder + head')


def test_padnet_parity_with_random_gates():
  features = random_features(width=96)
  net = randomize(tr.PAD(R101_CHANNELS, 19), features, gate=True)
  with torch.no_grad():
    want = net(features)
  variables = checked(importers.convert_padnet(state_dict(net)), importers.expected_padnet(19))
  assert np.abs(variables['params']['distill_depth_to_seg']['gate']['kernel']).max() > 0
  got = flax_apply(padnet_lib.PADNet(19))(variables, [to_nhwc(f) for f in features])
  assert_close(got['logits'], to_nhwc(want['semantics']), what='logits')
  assert_close(got['side_logits'], to_nhwc(want['intermediate_semantics']), what='side logits')
  for s in range(4):
    assert_close(got['disp'][s], to_nhwc(want[('disp', s)]), what=f'disp {s}')


def test_padnet_import_drops_reference_unused_segmentation_disparity_heads():
  """The reference's PAD keeps its segmentation decoder's replaced disparity heads (5,188
  weights)."""
  net = tr.PAD(R101_CHANNELS, 19)
  sd = state_dict(net)
  unused = {f'seg_dec.decoder.{14 + s}.conv.{leaf}': np.zeros(shape, np.float32)
            for s, c in enumerate((64, 128, 128, 256)) for leaf, shape in
            (('weight', (1, c, 3, 3)), ('bias', (1,)))}
  assert sum(v.size for v in unused.values()) == 5_188
  variables, unmapped, ignored = importers.convert_padnet({**sd, **unused})
  report = report_lib.check_variables(variables, importers.expected_padnet(19), 'pad', unmapped,
                                      ignored)
  assert report.num_weights == 44_721_578 and set(unused) <= set(report.ignored)


def test_pose_decoder_parity():
  f4 = torch.relu(torch.randn(2, 512, 2, 3, generator=torch.Generator().manual_seed(3)))
  net = tr.PoseDecoder(512).eval()
  with torch.no_grad():
    axisangle, translation = net(f4)
  variables = checked(importers.convert_pose_decoder(state_dict(net)),
                      importers.expected_pose_decoder())
  got_a, got_t = pose_lib.PoseDecoder().apply(variables, to_nhwc(f4))
  # Compare before the x0.01 output scaling, so that the tolerance means the same as elsewhere.
  assert_close(got_a / 0.01, axisangle[:, :, 0].numpy() / 0.01, what='axisangle')
  assert_close(got_t / 0.01, translation[:, :, 0].numpy() / 0.01, what='translation')


# ---------------------------------------------------------------------------------------------
# Load reports


@pytest.mark.parametrize('change,expected_text', [
    ('missing', 'layer2.0.bn1.running_var'), ('unexpected', 'layer2.0.extra.weight'),
    ('shape', 'params/layer2_0/conv1/kernel: got (3, 3, 64, 100)')])
def test_load_report_names_the_bad_key(change, expected_text):
  sd = state_dict(tr.ResNet(18))
  if change == 'missing':
    del sd['layer2.0.bn1.running_var']
    expected_text = 'batch_stats/layer2_0/bn1/var'
  elif change == 'unexpected':
    sd['layer2.0.extra.weight'] = np.zeros((3,), np.float32)
  else:
    sd['layer2.0.conv1.weight'] = np.zeros((100, 64, 3, 3), np.float32)
  with pytest.raises(report_lib.WeightImportError, match=re.escape(expected_text)) as info:
    importers.import_torchvision_resnet(sd, 18)
  report = info.value.report
  assert not report.ok
  assert len(report.missing) + len(report.unexpected) + len(report.mismatched) == 1


# ---------------------------------------------------------------------------------------------
# Reference SDE checkpoints and the CLI


@pytest.fixture(scope='module')
def reference_sde(tmp_path_factory):
  """Torch SDE components saved as the reference does (encoder.pth with monodepth2's extra
  entries)."""
  x, pair = random_images(), random_images(6, seed=4)
  encoder = randomize(tr.ResnetEncoder(101, 16), x, seed=5)
  with torch.no_grad():
    features = encoder(x)
  depth = randomize(tr.depth_decoder('dec6', encoder.num_ch_enc), features, seed=6)
  pose_encoder = randomize(tr.ResnetEncoder(18, 32, num_input_images=2), pair, seed=7)
  pose = tr.PoseDecoder(512).eval()
  folder = tmp_path_factory.mktemp('reference_sde')
  torch.save({**encoder.state_dict(), 'height': 512, 'width': 1024, 'use_stereo': False},
             folder / 'encoder.pth')
  torch.save(depth.state_dict(), folder / 'depth.pth')
  torch.save(pose_encoder.state_dict(), folder / 'pose_encoder.pth')
  torch.save(pose.state_dict(), folder / 'pose.pth')
  with torch.no_grad():
    disp = {s: to_nhwc(d) for (kind, s), d in depth(features).items() if kind == 'disp'}
    axisangle, translation = pose(pose_encoder(pair)[-1])
  return dict(folder=folder, x=to_nhwc(x), pair=to_nhwc(pair), disp=disp,
              axisangle=axisangle[:, :, 0].numpy(), translation=translation[:, :, 0].numpy())


@pytest.mark.slow
def test_reference_sde_import_round_trip(reference_sde):
  components, reports = importers.import_reference_sde(reference_sde['folder'])
  assert set(components) == {'encoder', 'depth_decoder', 'pose_encoder', 'pose_decoder'}
  assert all(r.ok for r in reports.values())
  assert {'height', 'width', 'use_stereo'} <= set(reports['encoder'].ignored)
  assert reports['encoder'].num_weights == 42_500_160
  assert reports['depth_decoder'].num_weights == 22_066_628
  assert reports['pose_encoder'].num_weights == 11_185_920
  assert reports['pose_decoder'].num_weights == 1_314_572
  features = flax_apply(resnet_lib.ResNet(101, 16))(components['encoder'], reference_sde['x'])
  disp = flax_apply(decoder_lib.Decoder())(components['depth_decoder'], features)['disp']
  for s in range(4):
    assert_close(disp[s], reference_sde['disp'][s], what=f'disp {s}')
  pose_features = flax_apply(resnet_lib.ResNet(18, 32))(components['pose_encoder'],
                                                         reference_sde['pair'])
  axisangle, translation = pose_lib.PoseDecoder().apply(components['pose_decoder'],
                                                        pose_features[-1])
  assert_close(axisangle / 0.01, reference_sde['axisangle'] / 0.01, what='axisangle')
  assert_close(translation / 0.01, reference_sde['translation'] / 0.01, what='translation')


def test_merge_components_layout():
  leaf = {'kernel': np.zeros((1, 1, 2, 2), np.float32)}
  components = {'encoder': {'params': {'conv1': leaf},
                            'batch_stats': {'bn1': {'mean': np.zeros(2)}}},
                'pose_decoder': {'params': {'squeeze': leaf}}}
  merged = importers.merge_components(components, {'pose_decoder': ('pose', 'pose_decoder')})
  assert merged['params']['pose']['pose_decoder']['squeeze'] is leaf
  assert set(merged['batch_stats']) == {'encoder'}


def sd_numpy(sd):
  return {k: v.numpy() for k, v in sd.items()}


def _restore(path):
  from sdeseg_jax.training import checkpointing
  return checkpointing.read_arrays(str(path))


def _assert_same_trees(restored, expected):
  got, want = report_lib.flatten(restored), report_lib.flatten(expected)
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_array_equal(np.asarray(got[key]), want[key], err_msg=key)


def _convert_cli(*args: str) -> subprocess.CompletedProcess:
  """python -m sdeseg_jax.weights.convert (absl flags are global: each command its own process)."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run([sys.executable, '-m', 'sdeseg_jax.weights.convert', *args], cwd=repo,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_convert_cli_torchvision(tmp_path, capsys):
  sd = tr.ResNet(18).state_dict()
  torch.save(sd, tmp_path / 'resnet18.pth')
  out = tmp_path / 'ckpt'
  assert convert_lib.run('torchvision', str(tmp_path / 'resnet18.pth'), str(out), depth=18,
                         num_input_images=2) == 0
  assert 'OK' in capsys.readouterr().out
  expected, _ = importers.import_torchvision_resnet(tmp_path / 'resnet18.pth', 18,
                                                    num_input_images=2)
  _assert_same_trees(_restore(out), expected)
  assert expected['params']['conv1']['kernel'].shape == (7, 7, 6, 64)
  # An existing checkpoint is kept unless --overwrite (the command line, its flags as above).
  again = ['--from', 'torchvision', '--src', str(tmp_path / 'resnet18.pth'), '--depth', '18',
           '--out', str(out)]
  result = _convert_cli(*again)
  assert result.returncode == 1 and 'exists' in result.stderr
  result = _convert_cli(*again, '--overwrite')
  assert result.returncode == 0, result.stderr[-2000:]
  _assert_same_trees(_restore(out), importers.import_torchvision_resnet(sd_numpy(sd), 18)[0])


@pytest.mark.slow
def test_convert_cli_reference_sde(reference_sde, tmp_path, capsys):
  out = tmp_path / 'sde'
  assert convert_lib.run('reference_sde', str(reference_sde['folder']), str(out)) == 0
  printed = capsys.readouterr().out
  assert printed.count('OK') == 4 and 'use_stereo' in printed
  components, _ = importers.import_reference_sde(reference_sde['folder'])
  restored = _restore(out)
  assert set(restored['params']) == {'encoder', 'depth_decoder', 'pose_encoder', 'pose_decoder'}
  _assert_same_trees(restored, importers.merge_components(components))


def test_convert_cli_reports_a_bad_checkpoint(tmp_path, capsys):
  sd = tr.ResNet(18).state_dict()
  del sd['layer1.0.conv1.weight']
  torch.save(sd, tmp_path / 'bad.pth')
  assert convert_lib.run('torchvision', str(tmp_path / 'bad.pth'), str(tmp_path / 'ckpt'),
                         depth=18) == 1
  assert 'params/layer1_0/conv1/kernel' in capsys.readouterr().err
  assert not (tmp_path / 'ckpt').exists()
  missing = str(tmp_path / 'nosuch.pth')
  assert convert_lib.run('torchvision', missing, str(tmp_path / 'ckpt'), depth=18) == 1
  assert capsys.readouterr().err.strip() == f'--src {missing}: no such file or folder'


@pytest.mark.slow
def test_converted_reference_sde_initialises_sde_pretrain_and_segment(reference_sde, tmp_path):
  """The reference's released SDE files -> weights.convert -> config.sde.init.sde and
  config.segment.sde_checkpoint: every converted array lands in the network (the pose network
  nested under 'pose'; the reference's pose decoder has no BatchNorm statistics). The networks
  are full size, so their variables are zeros of jax.eval_shape's shapes (the stages' own loading
  code, without compiling a full-size init)."""
  from configs import base
  from sdeseg_jax.models import networks
  from sdeseg_jax.stages import sde_pretrain
  from sdeseg_jax.stages import segment
  out = tmp_path / 'sde'
  assert convert_lib.run('reference_sde', str(reference_sde['folder']), str(out)) == 0
  converted = report_lib.flatten(_restore(out))
  assert not any(k.startswith('batch_stats/pose_decoder') for k in converted)

  def zeros(kind, model):
    shapes = jax.eval_shape(networks.build(kind, model).init, jax.random.key(0),
                            networks.example_input(kind, 1, 64, 64))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)

  def ours(key, decoder='depth_decoder'):
    key = re.sub(r'^(params|batch_stats)/(pose_encoder|pose_decoder)/', r'\1/pose/\2/', key)
    return key.replace('/depth_decoder/', f'/{decoder}/')

  def assert_loaded(variables, decoders):
    got = report_lib.flatten(variables)
    for key, value in converted.items():
      for decoder in decoders if '/depth_decoder/' in key else ('depth_decoder',):
        if decoder == 'pad/seg_decoder' and '/heads_disp' in key:
          continue  # PAD-Net's segmentation decoder has no disparity heads (SPEC 3)
        np.testing.assert_array_equal(np.asarray(got[ours(key, decoder)]), value, err_msg=key)

  config = base.get_config()
  config.sde.init.sde = str(out)
  assert_loaded(sde_pretrain.initial_variables(zeros('sde', config.model), config.sde.init),
                ('depth_decoder',))
  config.segment.update(network='mtl', init='sde', sde_checkpoint=str(out))
  assert_loaded(segment.initial_variables(config, str(tmp_path), zeros('mtl', config.model)),
                ('pad/depth_decoder', 'pad/seg_decoder'))


# ---------------------------------------------------------------------------------------------
# Every ImageNet entry point from a file in torchvision's format


def _torchvision_file(tmp_path, depth: int) -> str:
  """A random ResNet's state dict with torchvision's key names (fc included), saved by torch as
  torchvision's released resnet*.pth files are."""
  torch.manual_seed(depth)
  model = tr.ResNet(depth)
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):  # distinct statistics: a swap would show
      m.running_mean.normal_()
      m.running_var.uniform_(0.5, 1.5)
  path = str(tmp_path / f'resnet{depth}-random.pth')
  torch.save(model.state_dict(), path)
  return path


def _zeros(kind, model):
  """Zeros of a network's variable shapes (jax.eval_shape: no full-size init is compiled)."""
  from sdeseg_jax.models import networks
  shapes = jax.eval_shape(networks.build(kind, model).init, jax.random.key(0),
                          networks.example_input(kind, 1, 64, 64))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _sde_encoder(config, workdir, checkpoint):
  from sdeseg_jax.stages import sde_pretrain
  config.sde.init.encoder = checkpoint
  return sde_pretrain.initial_variables(_zeros('sde', config.model), config.sde.init)


def _sde_pose_encoder(config, workdir, checkpoint):
  from sdeseg_jax.stages import sde_pretrain
  config.sde.init.pose_encoder = checkpoint
  return sde_pretrain.initial_variables(_zeros('sde', config.model), config.sde.init)


def _segment_imagenet_encoder(config, workdir, checkpoint):
  from sdeseg_jax.stages import segment
  config.segment.update(network='mtl', init='imagenet', imagenet_encoder=checkpoint)
  return segment.initial_variables(config, workdir, _zeros('mtl', config.model))


def _student_encoder(config, workdir, checkpoint):
  from sdeseg_jax.models import networks
  from sdeseg_jax.stages.select_labels import students
  student = config.select.student
  student.init_encoder = checkpoint
  network = networks.build('depth_student', config.student_model)
  state = students.create_student_state(student, config.select.student.optim, network,
                                        jax.random.key(0))
  return {'params': state.params, 'batch_stats': state.batch_stats}


# entry point -> (ResNet depth, convert options, how the stage loads it, where the encoder lands)
IMAGENET_ENTRY_POINTS = {
    'sde.init.encoder': (101, dict(output_stride=16), _sde_encoder, 'encoder'),
    'sde.init.pose_encoder': (18, dict(num_input_images=2), _sde_pose_encoder,
                              'pose/pose_encoder'),
    'segment.imagenet_encoder': (101, dict(output_stride=16), _segment_imagenet_encoder,
                                 'encoder'),
    'select.student.init_encoder': (50, dict(output_stride=16), _student_encoder, 'encoder'),
}


@pytest.mark.slow
@pytest.mark.parametrize('entry', sorted(IMAGENET_ENTRY_POINTS))
def test_torchvision_file_initialises_entry_point(entry, tmp_path):
  """torchvision's format -> weights.convert -> the config key a user sets: the stage's own loading
  code puts every converted array (fc dropped) where that network's encoder is."""
  from configs import base
  depth, options, load, target = IMAGENET_ENTRY_POINTS[entry]
  out = str(tmp_path / 'converted')
  assert convert_lib.run('torchvision', _torchvision_file(tmp_path, depth), out, depth=depth,
                         **options) == 0
  converted = report_lib.flatten(_restore(out))
  variables = report_lib.flatten(load(base.get_config(), str(tmp_path), out))
  for key, value in converted.items():
    collection, rest = key.split('/', 1)
    np.testing.assert_array_equal(np.asarray(variables[f'{collection}/{target}/{rest}']), value,
                                  err_msg=key)
  assert len(converted) >= 100  # ResNet18: 100 arrays


def _whole_model_checkpoint(folder, path, extra=None):
  """The four SDE files of `folder` as the reference's Trainer saves the whole model
  (best_model.pkl: {'epoch', 'model_state': {'models.<name>.<key>': tensor}, ...})."""
  names = {'encoder.pth': 'encoder', 'depth.pth': 'depth', 'pose_encoder.pth': 'pose_encoder',
           'pose.pth': 'pose'}
  state = {}
  for filename, name in names.items():
    for key, value in torch.load(folder / filename, weights_only=True).items():
      if isinstance(value, torch.Tensor):  # encoder.pth's 'height', 'width' are not model state
        state[f'models.{name}.{key}'] = value
  torch.save({'epoch': 40001, 'model_state': {**state, **(extra or {})}, 'best_iou': 0.5}, path)


@pytest.mark.slow
def test_whole_model_checkpoint_converts_like_the_four_files(reference_sde, tmp_path):
  """A whole-model checkpoint (how the reference releases its source SDEs) converts to the same
  arrays as the four files; other modules in it (a segmentation head) are left out."""
  pkl = tmp_path / 'best_model_without_opt.pkl'
  _whole_model_checkpoint(reference_sde['folder'], pkl,
                          extra={'models.segmentation.head.2.weight': torch.zeros(19, 64, 1, 1)})
  from_folder = tmp_path / 'folder'
  from_pkl = tmp_path / 'pkl'
  assert convert_lib.run('reference_sde', str(reference_sde['folder']), str(from_folder)) == 0
  assert convert_lib.run('reference_sde', str(pkl), str(from_pkl)) == 0
  _assert_same_trees(_restore(from_pkl), _restore(from_folder))


def test_whole_model_checkpoint_without_an_sde_is_named(tmp_path, capsys):
  pkl = tmp_path / 'segmenter.pkl'
  torch.save({'model_state': {'models.encoder.encoder.conv1.weight': torch.zeros(64, 3, 7, 7),
                              'models.segmentation.head.2.weight': torch.zeros(19, 64, 1, 1)}},
             pkl)
  assert convert_lib.run('reference_sde', str(pkl), str(tmp_path / 'out')) == 1
  err = capsys.readouterr().err
  assert f'{pkl}: no models.depth.* keys' in err and 'models.segmentation' in err


@pytest.mark.slow
def test_released_source_sde_initialises_the_source_sde_stage(tmp_path):
  """The reference's SSDA source SDE (ResNet101 OS32 + dec11, a whole-model .pkl) -> convert
  --output_stride 32 --decoder dec11 -> config.source_sde.init.sde: every array lands in the
  source model of configs/ssda_gta.py."""
  from configs import ssda_gta
  from sdeseg_jax.stages import sde_pretrain
  x = random_images()
  encoder = randomize(tr.ResnetEncoder(101, 32), x, seed=8)
  with torch.no_grad():
    features = encoder(x)
  depth = randomize(tr.depth_decoder('dec11', encoder.num_ch_enc), features, seed=9)
  pose_encoder = randomize(tr.ResnetEncoder(18, 32, num_input_images=2), random_images(6), seed=3)
  modules = {'encoder': encoder, 'depth': depth, 'pose_encoder': pose_encoder,
             'pose': tr.PoseDecoder(512)}
  pkl = tmp_path / 'best_model_without_opt.pkl'
  torch.save({'model_state': {f'models.{name}.{k}': v for name, module in modules.items()
                              for k, v in module.state_dict().items()}}, pkl)
  out = tmp_path / 'sde_gta'
  assert convert_lib.run('reference_sde', str(pkl), str(out), output_stride=32,
                         decoder='dec11') == 0
  config = ssda_gta.get_config()
  config.source_sde.init.sde = str(out)
  variables = report_lib.flatten(sde_pretrain.initial_variables(
      _zeros('sde', config.source_model), config.source_sde.init))
  converted = report_lib.flatten(_restore(out))
  for key, value in converted.items():
    key_ours = re.sub(r'^(params|batch_stats)/(pose_encoder|pose_decoder)/', r'\1/pose/\2/', key)
    np.testing.assert_array_equal(np.asarray(variables[key_ours]), value, err_msg=key)
  assert len(converted) > 600
