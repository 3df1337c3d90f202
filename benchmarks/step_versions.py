"""Milliseconds per seed-step of the trainer's step at other git revisions of flaxray/core/train.py, or in
recipe variants of the working tree's, side by side.

    python -m benchmarks.step_versions --against 62d04f3 --arch pyramid final --seeds 1 8
    python -m benchmarks.step_versions --variants default "augment=flip,translate=0.1" "early-stopping=3,restore-best"

Each revision's flaxray/core/train.py is loaded as a module of its own beside the working tree's (the
rest of flaxray is the working tree's, so a revision whose train.py imports what the tree no longer has
cannot be loaded: one line says which), its `run_epoch` jitted, single-seed for S = 1 and vmapped
otherwise, on the embedded default (28x28x3, batch 32). The versions take turns epoch by epoch in
one process, so a machine's load slows all of them alike; the best and the median of --rounds
epochs are printed, wall and CPU time. What the epoch does besides its steps (the permutation and
val's 1042 images) is in the figure, divided over the steps like the rest.

A variant is a recipe of the tree's trainer, comma-separated: `default`, `augment=SPEC` (SPEC's own
commas included: `augment=flip,translate=0.1`), `early-stopping=PATIENCE` (the lane's `Settings.patience`),
`restore-best`, `monitor=METRIC`. What the runner decides on the host between epochs is not in
`run_epoch`; what the device carries for it is (`stopped`, the `best` copy and `keep`, and their selects).
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("default", "augment", "early-stopping", "restore-best", "monitor")  # a variant's items


def variant(text: str) -> tuple[dict, dict]:
    """(Recipe fields, Settings fields) of a variant (the module docstring's grammar)."""
    items = []
    for token in text.split(","):
        if token.partition("=")[0] in KEYS or not items:
            items.append(token)
        else:
            items[-1] += "," + token  # a comma of augment's own spec
    recipe, lane = {}, {}
    for item in items:
        key, _, value = item.partition("=")
        if key == "augment":
            recipe["augment"] = value
        elif key == "early-stopping":
            lane["patience"] = float(value)
        elif key == "restore-best":
            recipe["restore_best"] = True
        elif key == "monitor":
            recipe["monitor"] = value
        elif key != "default":
            raise SystemExit(f"error: --variants: {item!r} is not one of {', '.join(KEYS)}")
    return recipe, lane


def load(revision: str | None, folder: Path):
    """flaxray/core/train.py at `revision` (None: the working tree) as a module."""
    path = ROOT / "flaxray" / "core" / "train.py"
    if revision is not None:
        path = folder / f"train_{revision}.py"
        path.write_text(subprocess.run(["git", "show", f"{revision}:flaxray/core/train.py"], cwd=ROOT, check=True,
                                       capture_output=True, text=True).stdout)
    spec = importlib.util.spec_from_file_location(f"train_{revision or 'tree'}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except ImportError as err:
        raise SystemExit(f"error: flaxray/core/train.py at {revision} imports what the working tree no longer has "
                         f"({err}); compare revisions of the same layout") from None
    return module


def device_data(train, dataset):
    """The data on the device as the revision's trainer reads it (`device_data` moved to flaxray.core.config
    with the settings' pytree; the tree's own then)."""
    if hasattr(train, "device_data"):
        return train.device_data(dataset)
    from flaxray.core.config import device_data

    return device_data(dataset)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_versions", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--against", nargs="+", default=[], metavar="REV", help="git revisions to compare with the tree")
    p.add_argument("--variants", nargs="+", default=None, metavar="RECIPE",
                   help="recipe variants of the tree instead of the tree alone (the docstring's grammar)")
    p.add_argument("--arch", nargs="+", default=["pyramid"])
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--rounds", type=int, default=15, help="timed epochs per version, taking turns")
    args = p.parse_args(argv)
    if not args.against and not args.variants:
        p.error("give --against REV ..., --variants RECIPE ..., or both")
    import jax
    import jax.numpy as jnp

    from flaxray.core.recipe import Recipe
    from flaxray.core.settings import Settings
    from flaxray.data import load_dataset
    from flaxray.results import cpu_model

    dataset = load_dataset(progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        # name -> (train module, (Recipe fields, Settings fields) or None: the revision's own defaults)
        versions = {rev: (load(rev, Path(tmp)), None) for rev in args.against}
        tree = load(None, Path(tmp))
        versions.update({v: (tree, variant(v)) for v in args.variants} if args.variants else {"tree": (tree, None)})
        width = max(map(len, versions))
        print(f"device: {jax.devices()[0].device_kind} ({cpu_model()}), jax {jax.__version__}; "
              f"{shlex.join(['python', '-m', 'benchmarks.step_versions', *(argv if argv is not None else sys.argv[1:])])}")
        for arch in args.arch:
            for seeds in args.seeds:
                runs = {}
                for name, (train, (recipe, lane)) in ((n, (t, v or ({}, {}))) for n, (t, v) in versions.items()):
                    data = device_data(train, dataset)
                    config = train.TrainConfig(arch=arch, epochs=1, **({"recipe": Recipe(**recipe)} if recipe else {}))
                    trainer = train.make_train(config)
                    lanes = (Settings(**lane),) if lane else ()  # the same for every seed: vmap broadcasts it
                    if seeds == 1:
                        init, epoch = jax.jit(trainer.init), jax.jit(trainer.run_epoch, donate_argnums=0)
                        state = init(0, data, *lanes)
                    else:
                        init = jax.jit(jax.vmap(trainer.init, in_axes=(0, None) + (None,) * len(lanes)))
                        epoch = jax.jit(jax.vmap(trainer.run_epoch, in_axes=(0, None)), donate_argnums=0)
                        state = init(jnp.arange(seeds), data, *lanes)
                    state = jax.block_until_ready(epoch(state, data)[0])  # compiled, and one epoch run
                    runs[name] = {"epoch": epoch, "state": state, "data": data, "wall": [], "cpu": []}
                steps = len(dataset.train.y) // config.batch_size * seeds
                for _ in range(args.rounds):
                    for run in runs.values():
                        wall, cpu = time.perf_counter(), time.process_time()
                        run["state"] = jax.block_until_ready(run["epoch"](run["state"], run["data"]))[0]
                        run["wall"].append((time.perf_counter() - wall) * 1e3 / steps)
                        run["cpu"].append((time.process_time() - cpu) * 1e3 / steps)
                for name, run in runs.items():
                    print(f"{arch:>10} S={seeds:<3} {name:>{width}}  wall best {min(run['wall']):.2f} median "
                          f"{np.median(run['wall']):.2f}  cpu best {min(run['cpu']):.2f} median "
                          f"{np.median(run['cpu']):.2f}  ms per seed-step", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
