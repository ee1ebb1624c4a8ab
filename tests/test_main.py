"""The entry point, the stage runner and the `data` stage."""

import json
import logging
import os
import subprocess
import sys

import ml_collections
import pytest

from configs import base
from sdeseg_jax import artifacts
from sdeseg_jax import stages
from sdeseg_jax.errors import ConfigError
from tests import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fixture_config(raw_root):
  config = base.get_config()
  config.data.target.raw_root = raw_root
  config.data.target.resolution = (32, 16)
  config.data.image_format = 'png'
  config.lock()
  return config


def test_data_stage_summarises_and_is_skipped_when_done(tmp_path, capsys, caplog):
  raw = fixtures.write_cityscapes(str(tmp_path / 'raw'))
  config, workdir = _fixture_config(raw), str(tmp_path / 'work')
  assert stages.run_stages(config, workdir) == ['data']
  printed = capsys.readouterr().out
  assert 'segmentation/train' in printed and 'class pixel frequencies' in printed
  summary = json.load(open(os.path.join(workdir, 'data', 'summary.json')))['target']
  assert summary['splits']['segmentation/train'] == 2
  assert summary['splits']['sequences/train'] == 6
  assert summary['splits']['segmentation/test'].startswith('absent')
  frequencies = summary['class_frequencies']
  # Stripes of ids (7, 8, 11, 26, 0, 23, 33, 255) over 64 columns, nearest-downsampled to 32
  # columns, sample the odd columns (pixel centres): ids 8, 26, 23, 255 = sidewalk, car, sky,
  # ignored.
  for name in ('sidewalk', 'car', 'sky', '(ignored)'):
    assert frequencies[name] == pytest.approx(0.25)
  assert frequencies['road'] == frequencies['building'] == 0
  assert summary['intrinsics'][0]['pixels']['fx'] == pytest.approx(16.0)
  assert os.path.exists(artifacts.done_marker(workdir, 'data'))

  caplog.set_level(logging.INFO)
  assert stages.run_stages(config, workdir) == []
  assert "Skipping stage 'data'" in caplog.text
  config.unlock()
  config.seed = 7
  caplog.clear()
  stages.run_stages(config, workdir)
  assert 'different config' in caplog.text


def test_unknown_stage_is_named():
  with pytest.raises(ValueError, match=r"unknown stage\(s\) \['segmnt'\]"):
    stages.parse_stages('data,segmnt')
  assert stages.parse_stages(' data , ') == ['data']


def test_data_stage_names_a_bad_label(tmp_path):
  raw = fixtures.write_cityscapes(str(tmp_path / 'raw'))
  config, workdir = _fixture_config(raw), str(tmp_path / 'work')
  stages.run_stages(config, workdir)  # prepares the tree
  os.remove(artifacts.done_marker(workdir, 'data'))
  label = os.path.join(workdir, 'data', 'target', 'gtFine', 'train', 'aachen',
                       'aachen_000000_000002_gtFine_labelIds.png')
  fixtures._save(label, fixtures.label_ids((32, 16), (7, 77)), 'L')
  with pytest.raises(Exception, match=f'{label}: label ids \\[77\\]'):
    stages.run_stages(config, workdir)
  assert not os.path.exists(artifacts.done_marker(workdir, 'data'))


def test_a_later_stage_with_a_bad_config_fails_before_any_stage_runs(tmp_path):
  raw = fixtures.write_cityscapes(str(tmp_path / 'raw'))
  workdir = str(tmp_path / 'work')
  for key, value, message in (('segment.mix', 'cutmix', "config.segment.mix='cutmix'"),
                              ('evaluate.class_subsets', ('16', '17'), r"unknown \['17'\]")):
    config = _fixture_config(raw)
    with config.unlocked():
      config.stages = 'data,segment,evaluate'
      section, name = key.split('.')
      config[section][name] = value
    with pytest.raises(ConfigError, match=message):
      stages.run_stages(config, workdir)
    assert not os.path.exists(artifacts.done_marker(workdir, 'data'))
  # An input no earlier stage of the run writes: DepthMix without a depth_labels stage.
  config = _fixture_config(raw)
  with config.unlocked():
    config.stages = 'data,segment'
    config.segment.update(network='transfer', mix='depthmix')
  with pytest.raises(ConfigError, match='run the depth_labels stage first'):
    stages.run_stages(config, workdir)
  assert not os.path.exists(artifacts.done_marker(workdir, 'data'))
  with config.unlocked():
    config.stages = 'data,depth_labels,segment'
    config.depth_labels.roles = ('target', 'src')
  with pytest.raises(ConfigError, match=r"roles: \['src'\] have no SDE stage"):
    stages.run_stages(config, workdir)
  for stage_list, message in (
      ('data,depth_labels', r"depth labels of target reads \S+/sde/ckpt, which does not exist: "
                            'run the sde_pretrain stage first'),
      ('data,segment', 'config.segment.init=sde reads .* run the sde_pretrain stage first'),
      ('evaluate', "config.evaluate.weights='best' reads \\S+/segment/best, .* run the segment")):
    config = _fixture_config(raw)
    with config.unlocked():
      config.stages = stage_list
    with pytest.raises(ConfigError, match=message):
      stages.run_stages(config, workdir)
  config = _fixture_config(raw)
  with config.unlocked():
    config.stages = 'sde_pretrain,depth_labels'
    config.sde.init.encoder = str(tmp_path / 'resnet18')
  with pytest.raises(ConfigError, match='config.sde.init.encoder reads .*resnet18, which does not'):
    stages.run_stages(config, workdir)
  # A finished stage is not checked again: only those still to run are.
  config = _fixture_config(raw)
  stages.run_stages(config, workdir)
  with config.unlocked():
    config.stages = 'data'
    config.segment.mix = 'cutmix'
  assert stages.run_stages(config, workdir) == []


def _main(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', 'sdeseg_jax.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_main_cli_overrides_and_unknown_keys(tmp_path):
  raw = fixtures.write_cityscapes(str(tmp_path / 'raw'))
  result = _main('--config=configs/base.py', f'--workdir={tmp_path}/w',
                 f'--config.data.target.raw_root={raw}', '--config.data.target.resolution=(32,16)',
                 '--config.data.image_format=png', '--config.stages=data')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'class pixel frequencies' in result.stdout
  result = _main('--config=configs/base.py', f'--workdir={tmp_path}/w2',
                 '--config.data.trget.root=x')
  assert result.returncode != 0
  assert 'trget' in result.stderr


@pytest.mark.slow
def test_main_reports_bad_input_in_one_line(tmp_path):
  """A config that cannot work and a data set that is not there end the run with status 1 and the
  message, not a traceback."""
  for stage_list, override, message in (
      ('data,segment', '--config.segment.mix=cutmix',
       "FATAL ConfigError: config.segment.mix='cutmix': expected"),
      ('data,segment', '--config.segment.init=sde',
       f'FATAL ConfigError: config.segment.init=sde reads {tmp_path}/w/sde/ckpt, which does not'),
      ('data', f'--config.data.target.raw_root={tmp_path}/nowhere',
       f'FATAL DataError: {tmp_path}/nowhere')):
    result = _main('--config=configs/base.py', f'--workdir={tmp_path}/w', override,
                   f'--config.stages={stage_list}')
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]
    assert 'Traceback' not in result.stderr


def _user_env() -> dict:
  """The environment of a user's shell: without what conftest and the Makefile set."""
  return {k: v for k, v in os.environ.items()
          if k not in ('TF_CPP_MIN_LOG_LEVEL', 'JAX_PLATFORMS')}


@pytest.mark.slow
def test_bad_flags_config_files_and_overrides_end_in_one_line(tmp_path):
  """The whole output of the command as a user's shell runs it, start-up included, is one FATAL
  line: no TensorFlow or absl start-up lines, no traceback, no escaped string."""
  cases = (
      (['--config=configs/nosuch.py'],
       f'--config=configs/nosuch.py: no such config file (relative to {REPO})'),
      (['--config', 'configs/nosuch.py', '--config.sde.num_steps=3'],  # absl's other form
       f'--config=configs/nosuch.py: no such config file (relative to {REPO})'),
      (['--config=configs/demo.py:huge'],
       "flag --config=configs/demo.py:huge: configs/demo.py: unknown variant(s) ['huge'] "
       '(known: tiny, ssda)'),
      (['--config=configs/demo.py:tiny', '--config.sde.num_step=3'],
       'no key \'num_step\' in config.sde (did you mean "num_steps"?)'),
      (['--config=configs/demo.py:tiny', '--config.sde.num_steps=abc'],
       "flag --config.sde.num_steps=abc: invalid literal for int() with base 10: 'abc'"))
  # All at once: each is a process start-up (imports), which is most of the time.
  running = [subprocess.Popen([sys.executable, '-m', 'sdeseg_jax.main', *args,
                               f'--workdir={tmp_path}/w'], cwd=REPO, env=_user_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for args, _ in cases]
  for process, (_, message) in zip(running, cases):
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1, output[-2000:]
    assert output.splitlines() == [f'FATAL invalid flag, config or override: {message}'], (
        output[-2000:])


def _override_error(*overrides: str) -> str:
  """cli's one line for ml_collections' own error from parsing `overrides` of the tiny demo
  config."""
  from absl import flags
  from ml_collections import config_flags
  from sdeseg_jax import cli
  argv = ['main', '--config=configs/demo.py:tiny', *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=flag_values, sys_argv=argv,
                                  lock_config=True)
  with pytest.raises(Exception) as error:
    flag_values(argv)
  return cli._one_line(error.value, argv)


def test_a_misspelt_override_key_is_named_with_its_section_and_the_suggestion(monkeypatch):
  monkeypatch.chdir(REPO)
  assert _override_error('--config.sde.num_step=3') == (
      'no key \'num_step\' in config.sde (did you mean "num_steps"?)')
  assert _override_error('--config.sdee.num_steps=3') == (
      'no key \'sdee\' in config (did you mean "sde"?)')
  assert _override_error('--config.nosuch=3') == "no key 'nosuch' in config"
  # The key is the leaf of the override at fault, not a section of another override.
  assert _override_error('--config.sde.num_steps=3', '--config.segment.sde=1') == (
      "no key 'sde' in config.segment")
  # Other key errors keep ml_collections' message.
  assert _override_error('--config.sde.num_steps.x=3').startswith(
      "Attribute <class 'int'>.x does not exist")


def test_entry_points_quiet_native_start_up_logs_unless_the_user_says_otherwise():
  """TensorFlow's and XLA's C++ INFO lines (oneDNN, CPU features, absl's InitializeLog warning)
  are off by default, before JAX or TensorFlow loads; a level the user set is kept."""
  script = ('import os, sys; import sdeseg_jax; '
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'jax' in sys.modules)")
  for user, expected in ((None, '2 False'), ('0', '0 False')):
    env = _user_env() if user is None else dict(_user_env(), TF_CPP_MIN_LOG_LEVEL=user)
    result = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == expected, result.stderr[-2000:]


def test_cpu_xla_flags_merge_with_the_users():
  import sdeseg_jax
  flag = sdeseg_jax.CPU_XLA_FLAGS[0]
  assert sdeseg_jax.merged_xla_flags('') == ' '.join(sdeseg_jax.CPU_XLA_FLAGS)
  assert sdeseg_jax.merged_xla_flags(' --xla_force_host_platform_device_count=4 ') == (
      f'--xla_force_host_platform_device_count=4 {flag}')
  # A value the user chose for the same flag, whatever it is, wins.
  name = flag.split('=')[0]
  assert sdeseg_jax.merged_xla_flags(f'{name}=individual_convolution') == (
      f'{name}=individual_convolution')


def test_cpu_xla_flags_reach_xla_on_the_cpu_only():
  """With JAX on the CPU only, importing sdeseg_jax before JAX starts its backend puts the CPU
  defaults into XLA_FLAGS, and XLA compiles with them: a convolution stays XLA's own, not a YNNPACK
  fusion (as it is under jaxlib's default, which the user can ask for: the control). Elsewhere
  XLA_FLAGS is left alone."""
  import sdeseg_jax
  name = sdeseg_jax.CPU_XLA_FLAGS[0].split('=')[0]
  script = ('import os; import sdeseg_jax, jax, jax.numpy as jnp; '
            'conv = lambda x: jax.lax.conv_general_dilated(x, jnp.ones((3, 3, 64, 64)), (1, 1), '
            '"SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")); '
            'text = jax.jit(conv).lower(jnp.ones((2, 64, 64, 64))).compile().as_text(); '
            'print(os.environ["XLA_FLAGS"] + "|" + str("__ynn_fusion" in text))')

  def run(platforms, user_flags, code=script):
    env = dict(_user_env(), JAX_PLATFORMS=platforms, XLA_FLAGS=user_flags)
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().rsplit('|', 1)

  assert run('cpu', '--xla_force_host_platform_device_count=2') == [
      ' '.join(['--xla_force_host_platform_device_count=2', *sdeseg_jax.CPU_XLA_FLAGS]), 'False']
  assert run('cpu', f'{name}=individual_convolution') == [f'{name}=individual_convolution', 'True']
  assert run('cuda', '', 'import os, sdeseg_jax; print(os.environ["XLA_FLAGS"] + "|")') == ['', '']


def test_progress_lines_say_progress(caplog):
  from clu import platform
  from sdeseg_jax import cli
  cli.start(ml_collections.ConfigDict(dict(compilation_cache_dir='')))
  with caplog.at_level(logging.INFO):
    platform.work_unit().set_notes('1.5 steps/s, 40.0% (4/10), ETA: 0m')
  assert 'progress: 1.5 steps/s, 40.0% (4/10), ETA: 0m' in caplog.text
  assert 'work unit' not in caplog.text


@pytest.mark.slow
def test_no_tpu_runtime_warnings_on_a_machine_without_accelerators():
  """libtpu is installed (test extra), but without an accelerator the entry points run JAX on the
  CPU only: no TPU runtime start-up warnings; a JAX_PLATFORMS the user set is kept."""
  import glob
  import sdeseg_jax
  if any(glob.glob(p) for p in sdeseg_jax.ACCELERATOR_DEVICES):
    pytest.skip('this machine has an accelerator')
  script = 'import sdeseg_jax, jax, os; print(jax.default_backend(), os.environ["JAX_PLATFORMS"])'
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and result.stdout.split() == ['cpu', 'cpu'], result.stderr
  assert 'TPU' not in result.stderr, result.stderr
  # The user's choice is kept: '' (every platform JAX has) starts libtpu, which warns (the control
  # that the check above could fail).
  env['JAX_PLATFORMS'] = ''
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and result.stdout.split() == ['cpu'], result.stderr
  assert 'TPU' in result.stderr
