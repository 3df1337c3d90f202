"""Seed k of a user's Keras model in flaxray against `model.fit` for seed k, measured on the same arrays.

    python -m benchmarks.keras_fit_parity --seeds 12 --epochs 4 --json runs/keras_fit_parity.json
    python -m benchmarks.keras_fit_parity --models pyramid --seeds 2 --epochs 1 --images 64 --json /tmp/p.json

For each compiled Keras builder NAME of --file (default examples/keras_xray.py: `pyramid`, the notes'
dense stack, and `small_cnn`, Conv2D + SeparableConv2D + BatchNorm + Dropout), --seeds seeds twice:

    flaxray   `train_seeds(TrainConfig(arch="FILE.py:NAME", ...), device_data(data), seeds, strategy=...)`:
              every seed in one jitted program (vmap by default), seed k built as set_random_seed(k) builds it,
              fit's data order for seed k, the compile's loss and optimizer
    Keras     `keras.utils.set_random_seed(k)`, `NAME(input_shape=..., num_classes=...)`, `fit(x, y,
              batch_size, epochs, shuffle=True, validation_data=val)`, seed after seed; x as float32 in 0-255
              where the model's first layer is a Rescaling (as flaxray gives it), else in [0, 1]

Two figures per model. Epoch 1: each seed's train loss (fit's `history["loss"][0]`) in both, as a
relative difference |flaxray - Keras| / Keras: the same initial weights, dropout states and batches, so
only rounding separates them, and rounding grows within an epoch (RESULTS.md, issue 13: 1e-2 of the
parameters after 20 steps between a batched and a one-seed program). So a control (on by default,
--no-map-check to skip): the same seeds for one epoch in the `map` strategy, seed after seed inside one
program, where each seed's arithmetic is a one-seed program's, as fit's is. The final epoch: each seed's
val loss, compared as two samples (Mann-Whitney U two-sided, exact, and two-sample Kolmogorov-Smirnov
p-values; a small p says the two do not train to one distribution).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.keras_baseline import keras_status
from benchmarks.keras_parity import commit, compare
from flaxray.errors import FlaxrayError
from studies import _cli, _flags

FILE, MODELS = "examples/keras_xray.py", ("pyramid", "small_cnn")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.keras_fit_parity",
        description="Is seed k of a Keras model trained by flaxray (all seeds in one jitted program) the model.fit "
        "of seed k? Epoch-1 train loss per seed against fit's, and the final val loss distributions (Mann-Whitney, "
        "KS); a markdown table and a JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--file", default=FILE, help="the Python file whose builders are trained")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated builders of --file; each must return a compiled keras.Model")
    p.add_argument("--seeds", type=int, default=12, help="seeds 0..N-1 in each tool")
    p.add_argument("--epochs", type=int, default=4, help="epochs per seed")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--strategy", default="vmap", help="flaxray's strategy (vmap, map, a group size K, auto)")
    p.add_argument("--map-check", action=argparse.BooleanOptionalAction, default=True,
                   help="also train one epoch in the map strategy (each seed a one-seed program's arithmetic), "
                        "the control for the epoch-1 differences")
    p.add_argument("--images", type=int, default=None, metavar="N",
                   help="a seeded random N images of train and of val (default: all)")
    p.add_argument("--out", default="runs/keras_fit_parity", metavar="DIR", help="where the JSON goes by default")
    p.add_argument("--json", default=None, metavar="FILE", help="the results (default: DIR/keras_fit_parity.json)")
    _flags.add_data_args(p)
    return p


def load_data(args):
    """The flags' data (default: the embedded 28x28x3 X-rays), train and val, cut to --images each."""
    import flaxray

    d = _cli.data_spec(args).load(cache_dir=args.cache_dir, progress=False)
    (xt, yt), (xv, yv) = (d.train.x, d.train.y), (d.val.x, d.val.y)
    if args.images is not None:  # a random subset: the splits may be sorted by class
        rng = np.random.default_rng(0)
        it, iv = (np.sort(rng.permutation(len(y))[: args.images]) for y in (yt, yv))
        (xt, yt), (xv, yv) = (xt[it], yt[it]), (xv[iv], yv[iv])
    return flaxray.data.from_arrays(xt, yt, xv, yv, class_names=d.class_names)


def run_flaxray(route: str, args, dataset, strategy: str, epochs: int) -> dict:
    from flaxray.core.config import TrainConfig, device_data
    from flaxray.runtime.runner import train_seeds

    config = TrainConfig(arch=route, epochs=epochs, batch_size=args.batch_size,
                         num_classes=len(dataset.class_names))
    start = time.perf_counter()
    _, history = train_seeds(config, device_data(dataset), range(args.seeds), progress=False, strategy=strategy)
    return {"loss": np.asarray(history["loss"]).tolist(), "val_loss": np.asarray(history["val_loss"]).tolist(),
            "seconds": time.perf_counter() - start}


def run_keras(builder, args, dataset) -> dict:
    """`model.fit` seed after seed, each seed's model built after `set_random_seed(seed)`."""
    import keras

    from flaxray.models import keras_kind

    shape, classes = dataset.train.x.shape[1:], len(dataset.class_names)
    x, vx = dataset.train.x.astype(np.float32), dataset.val.x.astype(np.float32)
    y, vy = dataset.train.y.astype(np.float32), dataset.val.y.astype(np.float32)
    start, loss, val_loss = time.perf_counter(), [], []
    for seed in range(args.seeds):
        keras.utils.set_random_seed(seed)
        model = builder(**keras_kind.wanted_arguments(builder, shape, classes))
        scale = 1.0 if keras_kind.rescales(model) else 1 / 255  # as flaxray gives the model its images
        history = model.fit(x * scale, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0,
                            validation_data=(vx * scale, vy)).history
        loss.append([float(v) for v in history["loss"]])
        val_loss.append([float(v) for v in history["val_loss"]])
    return {"loss": loss, "val_loss": val_loss, "seconds": time.perf_counter() - start}


def relative(ours, theirs) -> dict:
    """|ours - theirs| / |theirs| per seed, with its median and max."""
    d = np.abs(np.asarray(ours, float) - np.asarray(theirs, float)) / np.abs(np.asarray(theirs, float))
    return {"per_seed": d.tolist(), "median": float(np.median(d)), "max": float(np.max(d))}


def measure(name: str, args, dataset) -> dict:
    from flaxray.models import keras_kind, user

    route = f"{args.file}:{name}"
    builder = user.load(route)
    shape, classes = dataset.train.x.shape[1:], len(dataset.class_names)
    if not keras_kind.build(builder, shape, classes, route, seed=0).compiled:  # before any training
        raise FlaxrayError(f"{route}: not compiled; this benchmark compares a compiled model with its own fit")
    ours = run_flaxray(route, args, dataset, args.strategy, args.epochs)
    theirs = run_keras(builder, args, dataset)
    first = lambda r: [curve[0] for curve in r["loss"]]  # noqa: E731
    last = lambda r: [curve[-1] for curve in r["val_loss"]]  # noqa: E731
    row = {"route": route, "flaxray": ours, "keras": theirs, "epoch1_loss": relative(first(ours), first(theirs)),
           "val_loss": compare(last(ours), last(theirs))}
    if args.map_check:
        row["map"] = run_flaxray(route, args, dataset, "map", 1)
        row["epoch1_loss_map"] = relative(first(row["map"]), first(theirs))
    return row


def format_table(rows: dict, strategy: str) -> str:
    lines = [f"| model | epoch-1 loss Δ {strategy}: median (max) | Δ map: median (max) | flaxray final val loss | "
             "Keras final val loss | MW p | KS p | s flaxray / Keras |", "|" + "---|" * 8]
    for name, r in rows.items():
        e, m, c = r["epoch1_loss"], r.get("epoch1_loss_map"), r["val_loss"]
        lines.append(f"| {name} | {e['median']:.1e} ({e['max']:.1e}) | "
                     + (f"{m['median']:.1e} ({m['max']:.1e})" if m else "–")
                     + f" | {c['flaxray_mean']:.3f} ± {c['flaxray_std']:.3f} | {c['keras_mean']:.3f} ± "
                     f"{c['keras_std']:.3f} | {c['mannwhitney_p']:.2g} | {c['ks_p']:.2g} | "
                     f"{r['flaxray']['seconds']:.0f} / {r['keras']['seconds']:.0f} |")
    return "\n".join(lines)


def format_seeds(name: str, r: dict) -> str:
    """Each seed's epoch-1 train loss in each tool."""
    theirs = [c[0] for c in r["keras"]["loss"]]
    lines = [f"{name}: epoch-1 train loss per seed (Keras fit, flaxray {'and map ' * ('map' in r)}with relative Δ)"]
    for k, fit in enumerate(theirs):
        line = f"  seed {k:>2}  fit {fit:.6f}  flaxray {r['flaxray']['loss'][k][0]:.6f} " \
               f"({r['epoch1_loss']['per_seed'][k]:.1e})"
        if "map" in r:
            line += f"  map {r['map']['loss'][k][0]:.6f} ({r['epoch1_loss_map']['per_seed'][k]:.1e})"
        lines.append(line)
    return "\n".join(lines)


def run(args) -> Path:
    from flaxray import results

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names:
        raise FlaxrayError("--models: none given")
    if args.seeds < 2 or args.epochs < 1 or args.batch_size < 1:
        raise FlaxrayError(f"--seeds must be >= 2 (two samples), --epochs and --batch-size >= 1, got {args.seeds}, "
                           f"{args.epochs}, {args.batch_size}")
    if args.images is not None and args.images < 2:
        raise FlaxrayError(f"--images must be >= 2, got {args.images}")
    if why := keras_status("jax"):
        raise FlaxrayError(why)
    dataset = load_data(args)
    rows = {}
    for name in names:
        rows[name] = measure(name, args, dataset)
        print(format_seeds(name, rows[name]), flush=True)
        print(format_table({name: rows[name]}, args.strategy).splitlines()[-1], flush=True)
    config = {k: getattr(args, k) for k in ("file", "seeds", "epochs", "batch_size", "strategy", "map_check", "images")}
    n = len(dataset.train.y)
    report = {"command": _cli.command("benchmarks.keras_fit_parity", args), "commit": commit(), "config": config,
              "data": {"train": n, "val": len(dataset.val.y), "image_shape": list(dataset.train.x.shape[1:]),
                       "steps_per_epoch": -(-n // args.batch_size)},  # fit takes the partial last batch
              "environment": results.environment((*results.PACKAGES, "keras")), "load_average": os.getloadavg(),
              "models": rows}
    path = Path(args.json) if args.json else Path(args.out) / "keras_fit_parity.json"
    results.write_json(path, report)
    print()
    print(format_table(rows, args.strategy))
    print(f"\nwrote {path}")
    return path


def main(argv=None) -> int:
    return _cli.main(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
