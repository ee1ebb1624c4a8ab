"""What the SDE loss does inside a multi-task (PAD-Net) segment run, at some of its checkpoints:

- the gradient norm of each loss term of the labeled batch (segmentation CE with its side output,
  the SDE loss at config.segment.sde_weight) per parameter group, averaged over a few batches of
  the run's own labeled stream at that step;
- the depth accuracy of the student's and the mean teacher's level-0 disparity on the validation
  images with ground truth (median-scaled, as the sde_pretrain stage evaluates), beside that of
  the SDE the run started from.

    python -m benchmarks.multitask_terms --run=workdirs/ssl_comparison/mtl+depthmix_seed0 \
        [--steps=1000,3000] [--batches=8] [--out=FILE]

A run's checkpoints are those it kept (config.segment.keep_checkpoints).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common


def _group(path) -> str:
  """'encoder', 'pose', or the PAD-Net part ('pad/seg_decoder', 'pad/distill_depth_to_seg', ...)."""
  names = [str(getattr(k, 'key', k)) for k in path]
  return '/'.join(names[:2] if names[0] == 'pad' else names[:1])


def gradient_norms(network, config, state: dict, batches) -> dict:
  """{term: {group: mean over batches of the gradient's L2 norm}} of the labeled-batch terms."""
  from sdeseg_jax.models import networks
  from sdeseg_jax.stages import segment
  seg = config.segment

  @jax.jit
  def grads(params, batch, key):
    def term(name):
      def loss(p):
        out, _ = networks.forward(network, 'mtl', p, state['batch_stats'], batch['frames'],
                                  train=True, key=key, frames=True)
        if name == 'segmentation':
          return segment.segmentation_loss(out, batch['label'])
        return seg.sde_weight * segment._sde_term(out, batch, key, config.sde)
      return jax.grad(loss)(params)
    return {name: term(name) for name in ('segmentation', 'sde')}

  totals = {}
  for i, batch in enumerate(batches):
    batch = {k: jnp.asarray(batch[k]) for k in ('frames', 'label', 'intrinsics')}
    for name, tree in grads(state['params'], batch, jax.random.key(i)).items():
      squares = {}
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        squares[_group(path)] = squares.get(_group(path), 0.0) + float(jnp.sum(leaf ** 2))
      for group, value in squares.items():
        totals.setdefault(name, {}).setdefault(group, []).append(np.sqrt(value))
  return {name: {g: float(np.mean(v)) for g, v in groups.items()}
          for name, groups in totals.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--run', required=True, help='a multi-task segment run (its workdir)')
  parser.add_argument('--steps', default='', help='checkpoint steps (default: the latest)')
  parser.add_argument('--batches', type=int, default=8)
  parser.add_argument('--out', default='')
  args = parser.parse_args()

  from data_pipelines import depth_truth
  from data_pipelines import pipeline
  from data_pipelines import sources
  from sdeseg_jax import predict
  from sdeseg_jax.models import networks
  from sdeseg_jax.stages import sde_pretrain
  from sdeseg_jax.stages import segment
  from sdeseg_jax.training import checkpointing
  from sdeseg_jax.training import sharding

  ckpt = os.path.join(args.run, 'segment', 'ckpt')
  config = predict.run_config(ckpt)
  if config.segment.network != 'mtl':
    raise SystemExit(f'{args.run}: segment.network is {config.segment.network!r}, not mtl')
  entry = config.data.target
  resolution = tuple(entry.resolution)
  reader = sources.open_dataset(entry, args.run, 'target')
  labeled, _ = segment.training_indices(config, reader, args.run)
  truth = depth_truth.DepthTruth(reader.root, sources.roots(entry, args.run, 'target')[0])
  mesh = sharding.make_mesh()

  def depth_accuracy(kind, variables):
    network = networks.build(kind, config.model)
    method = 'segment' if kind == 'mtl' else 'depth'
    predict_disparity = jax.jit(
        lambda v, batch: network.apply(v, batch['image'], method=method)['disp'][0])
    metrics = sde_pretrain.evaluate_depth(predict_disparity, variables, reader, truth,
                                          resolution=resolution, mesh=mesh, sde=config.sde)
    return {k: metrics[k] for k in ('abs_rel', 'rmse', 'a1')}

  sde = checkpointing.read_arrays(segment.sde_checkpoint(config, args.run))
  report = dict(benchmark='multitask_terms', run=os.path.abspath(args.run),
                sde_weight=config.segment.sde_weight, machine=common.machine(),
                sde_depth=depth_accuracy('sde', {k: sde[k] for k in ('params', 'batch_stats')}),
                steps={})
  network = networks.build('mtl', config.model)
  for step in [int(s) for s in args.steps.split(',') if s] or [None]:
    state = checkpointing.read_arrays(ckpt, step)
    step = int(state['step'])
    batches = pipeline.segmentation_batches(
        labeled, reader.label_spec, resolution=resolution, crop=tuple(config.data.crop),
        sharding=pipeline.Sharding(config.segment.batch_size, 0, 1), seed=config.seed,
        stream='labeled', flip_prob=config.data.flip_prob, strict_labels=config.data.strict_labels,
        with_frames=True, start_step=step, num_steps=args.batches)
    report['steps'][step] = dict(
        gradient_norms=gradient_norms(network, config, state, batches),
        **{f'{who}_depth': depth_accuracy('mtl', {'params': state[key],
                                                  'batch_stats': state['batch_stats']})
           for who, key in (('student', 'params'), ('teacher', 'ema_params'))})
    print(step, report['steps'][step], flush=True)
  common.emit(report, args.out)


if __name__ == '__main__':
  main()
