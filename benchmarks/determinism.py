"""How fast two programs' numbers for the same seed drift apart: seed k in a batch of S against seed k alone.

    python -m benchmarks.determinism                         # inverted, embedded 28x28, S = 4, seed 2
    python -m benchmarks.determinism --arch pyramid --seeds 8 --seed 5

Both start from the same initial parameters and see the same batches; they differ only in the
program (a vmap over S lanes, or the one-seed program), so in the order XLA sums in. Trained for 1, 5,
20, ... steps (the training split cut to that many batches), it prints the relative difference of the
parameters, ||batched - alone|| / ||alone||, after each. docs/resume_and_determinism.md quotes it.
"""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.determinism", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="inverted")
    p.add_argument("--seeds", type=int, default=4, help="lanes of the batched program")
    p.add_argument("--seed", type=int, default=2, help="the seed compared (a lane of the batch)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 5, 20, 130], help="training steps to compare after")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    return p.parse_args(argv)


def drift(args) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from flaxray.data import load_dataset
    from flaxray.core.config import TrainConfig, device_data
    from flaxray.core.train import make_train

    if not 0 <= args.seed < args.seeds:
        raise SystemExit(f"--seed must be one of the {args.seeds} lanes 0..{args.seeds - 1}")
    dataset = load_dataset(channels=args.channels, progress=False)
    rows = []
    for steps in args.steps:
        n = steps * args.batch_size
        cut = SimpleNamespace(train=SimpleNamespace(x=dataset.train.x[:n], y=dataset.train.y[:n]), val=dataset.val)
        data = device_data(cut)
        trainer = make_train(TrainConfig(arch=args.arch, epochs=1, batch_size=args.batch_size))
        init = jax.jit(jax.vmap(trainer.init, in_axes=(0, None)))
        batched = jax.jit(jax.vmap(trainer.run_epoch, in_axes=(0, None)))(init(jnp.arange(args.seeds), data), data)[0]
        alone = jax.jit(trainer.run_epoch)(trainer.init(args.seed, data), data)[0]
        a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(alone.params)]).astype(np.float64)
        b = np.concatenate([np.ravel(np.asarray(x)[args.seed]) for x in jax.tree.leaves(batched.params)])
        rows.append({"steps": steps, "relative_difference": float(np.linalg.norm(b - a) / np.linalg.norm(a))})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from flaxray import results

    env = results.environment()
    print(f"{args.arch}, seed {args.seed} of {args.seeds} lanes vs alone, batch {args.batch_size}, embedded 28x28x"
          f"{args.channels}; {env['cpu']} ({env['cpu_count']} cores), jax {env['versions']['jax']}, "
          f"XLA_FLAGS={env['xla_flags'] or ''}")
    print("| steps | relative parameter difference |\n|---:|---:|")
    for row in drift(args):
        print(f"| {row['steps']} | {row['relative_difference']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
