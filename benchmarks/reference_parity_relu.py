"""How much of our float32 error of the SDE encoder's gradients its ReLU decisions carry.

    python -m benchmarks.reference_parity_relu --reference DIR [--seed=0] [--size=64x64] \\
        [--batch=2] [--out=benchmarks/results/reference_parity_relu_cpu.json]

The sde part of benchmarks/reference_parity.py finds the encoder's gradients the one quantity
whose float32 results differ by more than the tolerance, although ours and the reference agree in
float64. Nearly all of those gradients (99.96% at seed 0) come from the feature distance
||F - F_imnet|| of the encoder's output F, so this script takes that term alone, from the same
start (reference_parity.sde_setup), and measures, for our encoder and the reference's:
- float32 against float64: the error of each side's float32 gradient;
- on our side, the ReLUs that float32 decided otherwise than float64 (a pre-activation within
  float32 rounding of 0: one side passes that element's gradient, the other none), and float64
  with the encoder output's ReLUs, then with every ReLU, decided as float32 decided them: how
  much of our float32 error those decisions carry, and what is left (float32 against that; the
  stem's max-pool choices are not replayed).
Errors are the largest difference over the largest float64 gradient of the encoder.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import reference_parity

# Tensors reported one by one: the first layer (where the error ends largest) and the last block.
LAYERS = ('conv1/kernel', 'layer4_2/conv3/kernel', 'layer4_2/bn3/bias')


@contextlib.contextmanager
def relu_calls(decide: dict | None = None):
  """Records the decisions (input > 0) of every flax.linen.relu call inside the block, in call
  order (the list it yields); with `decide` ({call index: boolean mask}) those calls pass their
  input exactly where the mask is true, and so does their derivative: float64 with float32's
  decisions."""
  import flax.linen as nn
  relu, calls = nn.relu, []

  def recorded(x):
    calls.append(x > 0)
    mask = (decide or {}).get(len(calls) - 1)
    return relu(x) if mask is None else jnp.where(mask, x, jnp.zeros_like(x))

  nn.relu = recorded
  try:
    yield calls
  finally:
    nn.relu = relu


def ours(setup, dtype: str, decide: dict | None = None) -> tuple[np.ndarray, dict, list]:
  """Our encoder's output F, the feature-distance gradient of its parameters (weighted as the
  step weights it) in `dtype`, and its ReLU decisions (relu_calls; `decide` replays some)."""
  from sdeseg_jax import ops
  from sdeseg_jax.models import networks
  from sdeseg_jax.weights import report as report_lib
  model = copy.deepcopy(setup.config.model)
  model.compute_dtype = dtype
  encoder = networks.encoder_from_config(model.encoder, networks.compute_dtype(model))
  state = reference_parity.float64_tree(setup.state) if dtype == 'float64' else setup.state
  image = jnp.asarray(setup.augmented[:, 1], dtype)
  imnet = encoder.apply(state.constants, image, train=False)[-1]
  forward = lambda p: encoder.apply({'params': p, 'batch_stats': state.batch_stats['encoder']},
                                    image, train=True, mutable=['batch_stats'])[0][-1]
  with relu_calls(decide) as decisions:   # eagerly: the decisions are arrays
    features, vjp = jax.vjp(forward, state.params['encoder'])
  weight = setup.config.sde.feature_distance
  cotangent = jax.grad(lambda f: weight * ops.feature_distance(f, imnet))(features)
  (gradients,) = vjp(cotangent)
  return (np.asarray(features),
          {k: np.asarray(v, np.float64) for k, v in report_lib.flatten(gradients).items()},
          [np.asarray(d) for d in decisions])


def theirs(reference, setup, dtype: str) -> dict:
  """The reference's encoder (train mode) and ImageNet encoder (eval mode, as its model runs it):
  the gradients of its feature-distance loss, in `dtype`."""
  import torch
  with reference_parity.imagenet_weights(setup.imagenet):
    model = reference.models.get_model(copy.deepcopy(setup.cfg['model']), 19)
  model = model.to(getattr(torch, dtype))
  encoder, imnet = model.models['encoder'], model.models['imnet_encoder']
  encoder.train()
  imnet.eval()
  image = reference_parity._nchw(setup.augmented[:, 1]).to(getattr(torch, dtype))
  with torch.no_grad():
    target = imnet(image)[-1]
  loss = setup.cfg['training']['feat_dist_lambda'] * torch.dist(encoder(image)[-1], target)
  loss.backward()
  return {k: p.grad.double().numpy() for k, p in encoder.named_parameters()}


def error(gradients: dict, exact: dict, keys=None) -> float:
  """The largest difference (over `keys`, default all) over the largest exact gradient."""
  scale = max(float(np.max(np.abs(v))) for v in exact.values())
  return max(float(np.max(np.abs(gradients[k] - exact[k]))) for k in keys or exact) / scale


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reference', required=True)
  parser.add_argument('--size', default='64x64', help='WxH of the batch')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default='benchmarks/results/reference_parity_relu_cpu.json')
  args = parser.parse_args(argv)
  width, height = common.parse_size(args.size)
  jax.config.update('jax_default_matmul_precision', 'highest')
  reference = reference_parity.import_reference(args.reference)
  with tempfile.TemporaryDirectory() as workdir:
    setup = reference_parity.sde_setup(reference, batch=args.batch, height=height, width=width,
                                       seed=args.seed, workdir=workdir)
    features32, ours32, decisions32 = ours(setup, 'float32')
    with jax.enable_x64(True):
      features64, ours64, decisions64 = ours(setup, 'float64')
      last = len(decisions32) - 1
      # Float64 with float32's decisions of the encoder's output ReLU (its last call), then of
      # every ReLU.
      _, output_decided, _ = ours(setup, 'float64', {last: decisions32[last]})
      _, all_decided, _ = ours(setup, 'float64', dict(enumerate(decisions32)))
    theirs32, theirs64 = theirs(reference, setup, 'float32'), theirs(reference, setup, 'float64')
  rows = dict(
      ours_float32_vs_float64=error(ours32, ours64),
      ours_float64_with_float32_output_relu_decisions_vs_float64=error(output_decided, ours64),
      ours_float32_vs_float64_with_float32_output_relu_decisions=error(ours32, output_decided),
      ours_float32_vs_float64_with_all_float32_relu_decisions=error(ours32, all_decided),
      reference_float32_vs_float64=error(theirs32, theirs64))
  layers = {k: dict(ours_float32_vs_float64=error(ours32, ours64, [k]),
                    ours_float32_vs_float64_with_float32_output_relu_decisions=error(
                        ours32, output_decided, [k]),
                    ours_float32_vs_float64_with_all_float32_relu_decisions=error(
                        ours32, all_decided, [k]))
            for k in LAYERS}
  output = decisions32[last] != decisions64[last]
  result = dict(benchmark='reference_parity_relu', reference=args.reference,
                reference_commit=reference.commit, size=[width, height], batch=args.batch,
                seed=args.seed,
                output_relu_decisions=dict(
                    differing=int(output.sum()), float32=features32[output][:10].tolist(),
                    float64=features64[output][:10].tolist()),
                relu_decisions_differing=dict(
                    total=int(sum(np.sum(a != b) for a, b in zip(decisions32, decisions64))),
                    of=int(sum(a.size for a in decisions32)), calls=len(decisions32)),
                feature_distance_gradients=rows, layers=layers, machine=common.machine())
  common.emit(result, args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
