"""How much of our float32 error of the SDE encoder's gradients one ReLU decision carries.

    python -m benchmarks.reference_parity_relu --reference DIR [--seed=0] [--size=64x64] \\
        [--batch=2] [--out=benchmarks/results/reference_parity_relu_cpu.json]

The sde part of benchmarks/reference_parity.py finds the encoder's gradients the one quantity
whose float32 results differ by more than the tolerance, although ours and the reference agree in
float64. Nearly all of those gradients (99.96% at seed 0) come from the feature distance
||F - F_imnet|| of the encoder's output F, so this script takes that term alone, from the same
start (reference_parity.sde_setup), and measures, for our encoder and the reference's:
- float32 against float64: the error of each side's float32 gradient;
- on our side, the encoder output's ReLUs that float32 decided otherwise than float64 (a
  pre-activation within float32 rounding of 0: float64 passes that element's gradient, float32
  none, or the reverse), and float64 with those decisions taken as float32 took them: how much of
  our float32 error the decisions carry, and what is left (float32 against that).
Errors are the largest difference over the largest float64 gradient of the encoder.
"""

from __future__ import annotations

import argparse
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


def ours(setup, dtype: str, decisions=None) -> tuple[np.ndarray, dict]:
  """Our encoder's output F and the feature-distance gradient of its parameters (weighted as the
  step weights it) in `dtype`; with `decisions` (a boolean mask of F's elements) the cotangent is 0
  there, as a ReLU that outputs 0 passes nothing."""
  from sdeseg_jax import ops
  from sdeseg_jax.models import networks
  from sdeseg_jax.weights import report as report_lib
  model = copy.deepcopy(setup.config.model)
  model.compute_dtype = dtype
  encoder = networks.encoder_from_config(model.encoder, networks.compute_dtype(model))
  state = reference_parity.float64_tree(setup.state) if dtype == 'float64' else setup.state
  image = jnp.asarray(setup.augmented[:, 1], dtype)
  imnet = encoder.apply(state.constants, image, train=False)[-1]
  features, vjp = jax.vjp(
      lambda p: encoder.apply({'params': p, 'batch_stats': state.batch_stats['encoder']}, image,
                              train=True, mutable=['batch_stats'])[0][-1],
      state.params['encoder'])
  weight = setup.config.sde.feature_distance
  cotangent = jax.grad(lambda f: weight * ops.feature_distance(f, imnet))(features)
  if decisions is not None:
    cotangent = jnp.where(decisions, 0.0, cotangent)
  (gradients,) = vjp(cotangent)
  return np.asarray(features), {k: np.asarray(v, np.float64)
                                for k, v in report_lib.flatten(gradients).items()}


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
    features32, ours32 = ours(setup, 'float32')
    with jax.enable_x64(True):
      features64, ours64 = ours(setup, 'float64')
      decided = (features32 > 0) != (features64 > 0)
      _, ours64_decided = ours(setup, 'float64', jnp.asarray(decided))
    theirs32, theirs64 = theirs(reference, setup, 'float32'), theirs(reference, setup, 'float64')
  rows = dict(
      ours_float32_vs_float64=error(ours32, ours64),
      ours_float64_with_float32_relu_decisions_vs_float64=error(ours64_decided, ours64),
      ours_float32_vs_float64_with_float32_relu_decisions=error(ours32, ours64_decided),
      reference_float32_vs_float64=error(theirs32, theirs64))
  layers = {k: dict(ours_float32_vs_float64=error(ours32, ours64, [k]),
                    ours_float32_vs_float64_with_float32_relu_decisions=error(
                        ours32, ours64_decided, [k]))
            for k in LAYERS}
  result = dict(benchmark='reference_parity_relu', reference=args.reference,
                reference_commit=reference.commit, size=[width, height], batch=args.batch,
                seed=args.seed, relu_decisions=dict(
                    count=int(decided.sum()), float32=features32[decided][:10].tolist(),
                    float64=features64[decided][:10].tolist()),
                feature_distance_gradients=rows, layers=layers, machine=common.machine())
  common.emit(result, args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
