"""Fault injection: SIGKILL the tiny demo at random moments, rerun it, compare with a clean run.

    python -m benchmarks.faults [--trials N] [--seed S] [--workdir DIR] [--out FILE.json]

A benchmark of crash safety, not a test (minutes per trial). It runs the tiny demo's stages
(`python -m sdeseg_jax.main --config=configs/demo.py:tiny`) once uninterrupted as the reference,
one stage per command, keeping a copy of the workdir before each stage. Each trial draws a moment
(seeded), starts the full command in a copy of the reference workdir from before that moment's
stage (finished stages are skipped, as on any resume), kills its process group with SIGKILL at
that moment and reruns the same command, killing it again at a later moment on some trials, until
a run finishes. The production code has no fault hooks: the harness chooses its moments by
watching the workdir and the run's log (polling), from two kinds:
  - time in a stage: a random time, up to the stage's reference duration, after the log says it
    started (every stage);
  - a write in flight: a random short delay after a new file or folder appears that marks a write
    (an Orbax temporary checkpoint folder of each stage and of segment/best, a hidden temporary file
    of data_pipelines.files.write_atomic, a prepared image, a depth label, a selection step file).
    When such a write never shows (polling missed a short-lived file), the kill falls back to the
    moment its stage's `done` marker appears, so each planned kill happens.
After each kill it checks that every stage with a `done` marker has its outputs complete; after the
last run it checks that the outputs equal the reference's bit for bit: the arrays of every stage's
final checkpoint and of segment/best (checkpointing.read_arrays), the depth labels (.npy bytes), the
selection files, eval.json and the other JSON reports (values equal), and
that no run's log names a temporary file a killed run left behind (one read as complete).

Output: a table of the faults (stage running, the moment, what was being written, the outcome:
resumed ok / mismatch / error) and the same as JSON (default benchmarks/results/faults_cpu.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from benchmarks import common
from configs import demo
from data_pipelines import files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/demo.py:tiny'
STAGES = demo.get_config('tiny').stages.split(',')
POLL_S = 0.02
RUN_TIMEOUT_S = 1800
MAX_RUNS_PER_TRIAL = 6
# The CPU figures (faults_cpu.json), as the Makefile runs the demo on a machine without accelerator.
ENV = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'),
           TF_CPP_MIN_LOG_LEVEL=os.environ.get('TF_CPP_MIN_LOG_LEVEL', '2'))

# What a killed run can leave half-written: Orbax's temporary checkpoint folders and
# data_pipelines.files.write_atomic's hidden temporary files (.<stem>.tmp<pid>.<ext>).
ORBAX_TMP = '*.orbax-checkpoint-tmp*'
ATOMIC_TMP = '.*.tmp[0-9]*'
_RUNNING = re.compile(r"Running stage '(\w+)'")


# --------------------------------------------------------------------------------------------------
# Kill moments.

@dataclasses.dataclass(frozen=True)
class Moment:
  """A kind of kill moment: `max_delay` s at most after the trigger fires. The trigger is the log
  line that starts `stage` (pattern '') or a new path under `root` (relative to the workdir) whose
  relative path matches `pattern` (fnmatch: * crosses folders); `stage` is where it happens."""
  name: str
  stage: str
  pattern: str = ''
  root: str = ''
  max_delay: float = 0.2


def write_moments() -> list[Moment]:
  """The writes in flight worth a kill; their short delays land inside or right after the write."""
  return [
      Moment('prepare: a prepared file', 'data', 'data/*/*.*', 'data'),
      Moment('prepare: write_atomic tmp', 'data', f'*/{ATOMIC_TMP}', 'data', 0.0),
      Moment('sde checkpoint save', 'sde_pretrain', f'sde/ckpt/{ORBAX_TMP}', 'sde/ckpt', 0.3),
      Moment('depth label: first .npy', 'depth_labels', 'depth/*/*.npy', 'depth', 0.1),
      Moment('depth label: write_atomic tmp', 'depth_labels', f'*/{ATOMIC_TMP}', 'depth', 0.0),
      Moment('select: student checkpoint save', 'select_labels', f'*/ckpt/{ORBAX_TMP}',
             'select_labels', 0.3),
      Moment('select: step file', 'select_labels', 'select_labels/steps/*.json', 'select_labels'),
      Moment('segment checkpoint save', 'segment', f'segment/ckpt/{ORBAX_TMP}', 'segment/ckpt',
             0.3),
      Moment('segment best save', 'segment', f'segment/best*{ORBAX_TMP}', 'segment', 0.3),
      Moment('done marker write', 'evaluate', '*/.done.tmp*', '', 0.0),
  ]


def stage_moments(durations: dict[str, float]) -> list[Moment]:
  """A random time inside each stage, from the reference run's stage durations (s)."""
  return [Moment(f'time in {stage}', stage, max_delay=durations[stage]) for stage in STAGES]


def pick_moment(moments: list[Moment], workdir: str, rng: random.Random) -> Moment:
  """A moment a run of `workdir` still reaches: one of a stage without a `done` marker."""
  pending = [m for m in moments if not os.path.exists(os.path.join(workdir, m.stage, 'done'))]
  return rng.choice(pending)


# --------------------------------------------------------------------------------------------------
# Watching a run.

def command(workdir: str, cache_dir: str, stages: str = '') -> list[str]:
  """The demo command; `stages` (comma-separated) runs only those stages."""
  return [sys.executable, '-m', 'sdeseg_jax.main', f'--config={CONFIG}', f'--workdir={workdir}',
          f'--config.compilation_cache_dir={cache_dir}'] + (
              [f'--config.stages={stages}'] if stages else [])


def relative_paths(workdir: str, root: str) -> set[str]:
  """Every file and folder under workdir/root, relative to workdir."""
  found = set()
  for folder, dirs, names in os.walk(os.path.join(workdir, root)):
    for name in dirs + names:
      found.add(os.path.relpath(os.path.join(folder, name), workdir))
  return found


def stages_started(log_path: str) -> list[str]:
  """The stages the run's log says it started, in order."""
  with open(log_path, errors='replace') as f:
    return _RUNNING.findall(f.read())


class Run:
  """One run of the demo command in a workdir, its output in a log file."""

  def __init__(self, workdir: str, cache_dir: str, log_path: str, stages: str = ''):
    self.workdir, self.log_path, self.start = workdir, log_path, time.monotonic()
    with open(log_path, 'w') as log:
      # A new session: the kill takes the run's whole process group, workers included, as a crash.
      self.process = subprocess.Popen(command(workdir, cache_dir, stages), cwd=REPO, env=ENV,
                                      stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def running(self) -> bool:
    return self.process.poll() is None and self.elapsed() < RUN_TIMEOUT_S

  def kill(self) -> None:
    try:
      os.killpg(self.process.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    self.process.wait()

  def finish(self) -> int:
    """Waits for the run; its exit status (a run past RUN_TIMEOUT_S is killed: -9)."""
    while self.running():
      time.sleep(0.2)
    if self.process.poll() is None:
      self.kill()
    return self.process.returncode


def wait_for_trigger(run: Run, moment: Moment) -> tuple[str, str]:
  """Polls until `moment`'s trigger fires: (what fired, the new path or ''); ('', '') when the run
  ended first. A write never seen by the time its stage's marker appears fires as a fallback."""
  marker = os.path.join(run.workdir, moment.stage, 'done')
  before = relative_paths(run.workdir, moment.root) if moment.pattern else set()
  while run.running():
    if not moment.pattern:
      if moment.stage in stages_started(run.log_path):
        return 'stage start', ''
    else:
      new = sorted(p for p in relative_paths(run.workdir, moment.root) - before
                   if fnmatch.fnmatch(p, moment.pattern))
      if new:
        return 'write seen', new[0]
      if os.path.exists(marker):
        return 'fallback: stage marker', os.path.relpath(marker, run.workdir)
    time.sleep(POLL_S)
  return '', ''


def leftovers(workdir: str) -> list[str]:
  """The temporary files and folders of interrupted writes in the workdir."""
  return sorted(p for p in relative_paths(workdir, '')
                if fnmatch.fnmatch(os.path.basename(p), ORBAX_TMP)
                or fnmatch.fnmatch(os.path.basename(p), ATOMIC_TMP))


def kill_at(run: Run, moment: Moment, rng: random.Random) -> dict | None:
  """Kills `run` at `moment` plus a random delay; the record of the kill, or None when the run
  finished before the moment came."""
  fired, path = wait_for_trigger(run, moment)
  if not fired:
    return None
  delay = rng.uniform(0.0, moment.max_delay)
  deadline = time.monotonic() + delay
  while run.running() and time.monotonic() < deadline:
    time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
  if not run.running():
    return None
  at = run.elapsed()
  run.kill()
  started = stages_started(run.log_path)
  return dict(moment=moment.name, trigger=fired, trigger_path=path, delay_s=round(delay, 3),
              at_s=round(at, 2), stage=started[-1] if started else 'startup',
              unfinished=first_unfinished(run.workdir), left_behind=leftovers(run.workdir))


def first_unfinished(workdir: str) -> str:
  return next((s for s in STAGES if not os.path.exists(os.path.join(workdir, s, 'done'))), '')


# --------------------------------------------------------------------------------------------------
# Checks.

def stage_outputs(workdir: str, reference: str) -> dict[str, list[str]]:
  """The files each finished stage must have written (relative paths): its final checkpoint at
  num_steps, its reports, every depth label of the reference run."""
  config = demo.get_config('tiny')
  depth = sorted(os.path.relpath(p, reference)
                 for p in glob.glob(os.path.join(reference, 'depth', '*', '*.npy')))
  return {
      'data': ['data/summary.json'],
      'sde_pretrain': [f'sde/ckpt/{config.sde.num_steps}/commit_success.txt'],
      'depth_labels': depth,
      'select_labels': ['selection.json', 'select_labels/report.json'],
      'segment': [f'segment/ckpt/{config.segment.num_steps}/commit_success.txt',
                  'segment/best/_METADATA', 'segment/best.json'],
      'evaluate': ['eval.json'],
  }


def marker_problems(workdir: str, outputs: dict[str, list[str]]) -> list[str]:
  """A `done` marker of a stage whose outputs are incomplete: each missing or unparsable output."""
  problems = []
  for stage, paths in outputs.items():
    if not os.path.exists(os.path.join(workdir, stage, 'done')):
      continue
    for path in paths:
      full = os.path.join(workdir, path)
      if not os.path.exists(full):
        problems.append(f'{stage} done but {path} missing')
      elif path.endswith('.json'):
        try:
          read_json(full)
        except ValueError as e:
          problems.append(f'{stage} done but {path} unreadable ({e})')
  return problems


def read_json(path: str):
  """The JSON at `path`; a saved config without its `stages` (which differ by design: the
  reference runs one stage per command)."""
  with open(path) as f:
    value = json.load(f)
  if os.path.basename(path) == 'config.json':
    value.pop('stages', None)
  return value


def array_differences(a, b) -> list[str]:
  """The paths of two trees of arrays whose keys, dtypes, shapes or bytes differ."""
  import jax
  def leaves(tree):
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  ours, theirs = leaves(a), leaves(b)
  if set(ours) != set(theirs):
    return [f'keys differ: {sorted(set(ours) ^ set(theirs))[:3]}']
  return [k for k, v in ours.items()
          if (v.dtype, v.shape, v.tobytes()) != (theirs[k].dtype, theirs[k].shape,
                                                 theirs[k].tobytes())]


def compare_outputs(reference: str, workdir: str) -> list[str]:
  """What differs between the trial's final outputs and the reference's (empty: bitwise equal)."""
  from sdeseg_jax.training import checkpointing  # JAX loads only for the comparison
  config = demo.get_config('tiny')
  differences = []
  checkpoints = {'sde/ckpt': config.sde.num_steps, 'segment/ckpt': config.segment.num_steps,
                 'segment/best': None}
  for path, step in checkpoints.items():
    try:
      diff = array_differences(checkpointing.read_arrays(os.path.join(reference, path), step),
                          checkpointing.read_arrays(os.path.join(workdir, path), step))
    except Exception as e:  # a missing or unreadable checkpoint is a difference, named
      diff = [f'unreadable: {type(e).__name__}: {e}'[:300]]
    differences += [f'{path}: {d}' for d in diff[:5]]
  for pattern, read in (('depth/*/*.npy', _bytes), ('select_labels/*.npy', _bytes),
                        ('*.json', read_json), ('*/*.json', read_json),
                        ('select_labels/steps/*.json', read_json)):
    differences += compare_files(reference, workdir, pattern, read)
  return differences


def _bytes(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def compare_files(reference: str, workdir: str, pattern: str, read) -> list[str]:
  """The files matching `pattern` that one run lacks or whose contents differ."""
  def listing(root):
    return {os.path.relpath(p, root) for p in glob.glob(os.path.join(root, pattern))}
  ours, theirs = listing(reference), listing(workdir)
  differences = [f'{p}: missing' for p in sorted(ours - theirs)]
  differences += [f'{p}: extra' for p in sorted(theirs - ours)]
  differences += [f'{p}: differs' for p in sorted(ours & theirs)
                  if read(os.path.join(reference, p)) != read(os.path.join(workdir, p))]
  return differences


# Log lines that name a leftover to delete it (Orbax removes an unfinished temporary folder).
_CLEANUP = re.compile(r'[Rr]emov|[Cc]lean|[Dd]elet')


def names_leftover(log_path: str, left: list[str]) -> list[str]:
  """The temporary paths of killed runs that a later run's log names other than to delete them (a
  sign one was read as if complete)."""
  with open(log_path, errors='replace') as f:
    lines = [line for line in f if not _CLEANUP.search(line)]
  return [p for p in left if any(os.path.basename(p) in line for line in lines)]


# --------------------------------------------------------------------------------------------------
# Reference and trials.

def run_reference(workdir: str, cache_dir: str, snapshots: str, reference: str) -> dict:
  """The uninterrupted run in `workdir`, one stage per command (stages hand over only through the
  workdir), copying the workdir to snapshots/<stage> before each stage; its final state is moved
  to `reference`. Trials run in the same `workdir` path, restored from a snapshot, so the paths
  that reports and markers record are the same as in the reference. Returns the wall time and how
  long each stage took (s, from its log line to its `done` marker), which bounds the time-in-stage
  kills."""
  for folder in (workdir, snapshots, reference):
    shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(workdir)
  durations, start = {}, time.monotonic()
  for stage in STAGES:
    shutil.copytree(workdir, os.path.join(snapshots, stage))
    run = Run(workdir, cache_dir, f'{reference}.{stage}.log', stages=stage)
    started = None
    while run.running() and not os.path.exists(os.path.join(workdir, stage, 'done')):
      if started is None and stages_started(run.log_path):
        started = run.elapsed()
      time.sleep(POLL_S)
    durations[stage] = round(run.elapsed() - (started or 0.0), 2)
    if run.finish() != 0:
      raise RuntimeError(f'the reference run failed; see {run.log_path}')
  shutil.move(workdir, reference)
  return dict(wall_s=round(time.monotonic() - start, 1), stage_s=durations)


def run_trial(index: int, root: str, reference: str, cache_dir: str, moments: list[Moment],
              outputs: dict, rng: random.Random) -> dict:
  """Kills and reruns root/work until a run finishes; its faults and outcome. The workdir starts
  as the reference's before the stage of the first kill's moment; a trial that does not resume
  bitwise equal keeps it as root/trial_<index>."""
  workdir = os.path.join(root, 'work')
  first = rng.choice(moments)
  shutil.rmtree(workdir, ignore_errors=True)
  shutil.copytree(os.path.join(root, 'snapshots', first.stage), workdir)
  kills_planned = rng.choice((1, 1, 2, 3))  # at least one kill, sometimes more
  kills, problems, left, start, status = [], [], [], time.monotonic(), None
  for attempt in range(MAX_RUNS_PER_TRIAL):
    log_path = os.path.join(root, f'trial_{index:02d}.run{attempt}.log')
    run, kill = Run(workdir, cache_dir, log_path), None
    if len(kills) < kills_planned and first_unfinished(workdir):
      kill = kill_at(run, first if not kills else pick_moment(moments, workdir, rng), rng)
    if kill is None:
      status = run.finish()  # no kill planned, or the moment never came
    # What earlier kills left behind must never be read by a later run (as a complete file).
    problems += [f'run {attempt} names {p}' for p in names_leftover(log_path, left)]
    if kill is None:
      break
    kill['marker_problems'] = marker_problems(workdir, outputs)
    problems += kill['marker_problems']
    left += kill['left_behind']
    kills.append(kill)
  seconds = round(time.monotonic() - start, 1)
  if status != 0:
    outcome, differences = 'error', [f'last run exit status {status}; see {log_path}']
  else:
    differences = compare_outputs(reference, workdir) + problems
    outcome = 'mismatch' if differences else 'resumed ok'
  if outcome != 'resumed ok':
    shutil.move(workdir, os.path.join(root, f'trial_{index:02d}'))
  return dict(trial=index, from_stage=first.stage, kills=kills, runs=len(kills) + 1,
              outcome=outcome, differences=differences, wall_s=seconds)


def table(trials: list[dict]) -> str:
  """One row per kill: the trial, the stage running, the moment, what was left half-written, the
  trial's outcome."""
  rows = ['| trial | kill | stage | moment (trigger) | at s | left half-written | outcome |',
          '|---|---|---|---|---|---|---|']
  for trial in trials:
    for n, kill in enumerate(trial['kills'] or [{}]):
      left = ', '.join(os.path.basename(p) for p in kill.get('left_behind', [])) or '-'
      rows.append(f"| {trial['trial']} | {n + 1 if kill else '-'} | {kill.get('stage', '-')} | "
                  f"{kill.get('moment', 'none')} ({kill.get('trigger', '-')}) | "
                  f"{kill.get('at_s', '-')} | {left} | {trial['outcome']} |")
  return '\n'.join(rows)


def moment_table(trials: list[dict]) -> str:
  """One row per kind of moment: how many kills, what they left half-written, and the outcomes of
  the trials they were in (the README's table)."""
  rows = ['| moment | kills | kills leaving a temporary file or folder | trials: outcome |',
          '|---|---|---|---|']
  kinds = {}
  for trial in trials:
    for kill in trial['kills']:
      kind = kinds.setdefault(kill['moment'], dict(kills=0, left=0, trials={}))
      kind['kills'] += 1
      kind['left'] += bool(kill['left_behind'])
      kind['trials'][trial['trial']] = trial['outcome']
  for name, kind in sorted(kinds.items()):
    outcomes = list(kind['trials'].values())
    counted = ', '.join(f'{outcomes.count(o)} {o}' for o in sorted(set(outcomes)))
    rows.append(f"| {name} | {kind['kills']} | {kind['left']} | {counted} |")
  return '\n'.join(rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--trials', type=int, default=4)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workdir', default=os.path.join(REPO, 'workdirs', 'faults'),
                      help='reference and trial workdirs, and their run logs (replaced)')
  parser.add_argument('--cache', default=os.path.join(REPO, '.cache', 'xla_faults'),
                      help='persistent XLA compilation cache, shared by all runs')
  parser.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results',
                                                    'faults_cpu.json'))
  args = parser.parse_args()
  rng = random.Random(args.seed)
  root = os.path.abspath(args.workdir)
  reference_dir = os.path.join(root, 'reference')
  reference = run_reference(os.path.join(root, 'work'), args.cache, os.path.join(root, 'snapshots'),
                            reference_dir)
  print(f'reference run: {reference}', flush=True)
  moments = stage_moments(reference['stage_s']) + write_moments()
  outputs = stage_outputs(reference_dir, reference_dir)
  trials = []
  for index in range(args.trials):
    trials.append(run_trial(index, root, reference_dir, args.cache, moments, outputs, rng))
    print(f"trial {index}: {trials[-1]['outcome']} after {len(trials[-1]['kills'])} kill(s), "
          f"{trials[-1]['wall_s']} s {trials[-1]['differences'][:5]}", flush=True)
    # After every trial, so that a run stopped early keeps what it measured.
    files.write_json(args.out, report(args, reference, trials))
  print(table(trials), moment_table(trials), sep='\n\n', flush=True)
  common.emit(report(args, reference, trials), args.out)


def report(args, reference: dict, trials: list[dict]) -> dict:
  outcomes = [t['outcome'] for t in trials]
  commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
  return dict(benchmark='faults', config=CONFIG, seed=args.seed, machine=common.machine(),
              commit=commit, reference=reference, trials=trials,
              summary={o: outcomes.count(o) for o in sorted(set(outcomes))},
              kills=sum(len(t['kills']) for t in trials))


if __name__ == '__main__':
  main()
