"""The paper's SSL comparison at demo size: supervised baseline vs ClassMix vs DepthMix vs
multi-task + DepthMix, over several seeds, on the synthetic city world (CPU-sized).

    python -m benchmarks.ssl_comparison [--seeds=0,1] [--steps=1000] [--labels=4]
        [--sequences=160] [--workdir=DIR] [--out=FILE] [--override=KEY=VALUE ...]

The city world is larger than the demo's (160 snippets: 128 training images, 32 held out for
validation), so that 4 labels are 1/32 of the training set, as in the paper's sparsest setting, and
the validation mIoU is measured on more than a handful of images. One shared run of configs/demo.py
renders the world, trains the SDE and writes depth labels; every (method, seed) then runs the
segment and evaluate stages in its own workdir, initialised from that SDE (benchmarks/comparison.py).
"""

from __future__ import annotations

from benchmarks import comparison

METHODS = {
    'supervised': {'segment.network': 'transfer', 'segment.mix': 'none'},
    'classmix': {'segment.network': 'transfer', 'segment.mix': 'classmix'},
    'depthmix': {'segment.network': 'transfer', 'segment.mix': 'depthmix'},
    'mtl+depthmix': {'segment.network': 'mtl', 'segment.mix': 'depthmix'},
}


def main() -> None:
  args = comparison.arguments(__doc__.splitlines()[0], METHODS, 'workdirs/ssl_comparison').parse_args()
  table = comparison.compare(
      args, config='configs/demo.py', shared_stages='data,sde_pretrain,depth_labels',
      methods=METHODS, links=('raw', 'data', 'depth'),
      checkpoints={'segment.sde_checkpoint': 'sde/ckpt'})
  comparison.report('ssl_comparison', args, table)


if __name__ == '__main__':
  main()
