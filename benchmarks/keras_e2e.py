"""End to end, compilation included: a seed study of a Keras model in flaxray against `fit` seed after seed.

    python -m benchmarks.keras_e2e --seeds 16 --epochs 5 --json runs/keras_e2e.json
    python -m benchmarks.keras_e2e --seeds 2 --epochs 1 --images 64 --json /tmp/e2e.json   # seconds-long

Two fresh Python processes, one after the other, each timed by the wall clock from its start to its end
(imports, data, compilation, training, validation and, for flaxray, its reports all included):

    flaxray   python -m studies.seed_variance --arch FILE.py:NAME --seeds S --epochs E --strategy vmap ...
    Keras     for k in 0..S-1: keras.utils.set_random_seed(k); NAME(input_shape, num_classes).fit(x, y,
              batch_size, epochs=E, shuffle=True, validation_data=val): sixteen `fit`s for 16 seeds, each
              compiling its own train step (`python -m benchmarks.keras_e2e --fits-only ...`)

Both train on the same data: the embedded 28x28x3 X-rays by default (--images N: N of each split, as an
.npz both read). The figure is the Keras seconds over flaxray's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from flaxray.errors import FlaxrayError
from studies import _cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.keras_e2e",
        description="Wall-clock seconds of a flaxray seed study of a Keras model (one vmapped program) against the "
        "same seeds' model.fit runs one after another, each in a fresh process, compilation included.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", default="examples/keras_xray.py:pyramid", help="FILE.py:NAME, a compiled Keras builder")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--strategy", default="vmap", help="flaxray's --strategy")
    p.add_argument("--images", type=int, default=None, metavar="N", help="N images of each split (default: all)")
    p.add_argument("--out", default="runs/keras_e2e", metavar="DIR", help="the study's folder and the data file")
    p.add_argument("--json", default=None, metavar="FILE", help="the results (default: DIR/keras_e2e.json)")
    p.add_argument("--fits-only", action="store_true", help="(internal) run the Keras fits in this process")
    p.add_argument("--data", default=None, metavar="NPZ", help="(internal) the .npz the fits read")
    return p


def write_data(args, path: Path) -> Path:
    """The embedded data's train, val and test splits (cut to --images each) as an .npz both tools read."""
    import flaxray

    d, arrays = flaxray.data.load_dataset(None, progress=False), {}
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        s = getattr(d, split)
        keep = np.arange(len(s.y)) if args.images is None else np.sort(rng.permutation(len(s.y))[: args.images])
        arrays[f"x_{split}"], arrays[f"y_{split}"] = s.x[keep], s.y[keep]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, class_names=np.array(d.class_names), **arrays)
    return path


def fits(args) -> None:
    """`model.fit` seed after seed on --data's train and val, as a user's loop would."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    from flaxray.models import keras_kind, user

    with np.load(args.data) as z:
        x, y = z["x_train"].astype(np.float32), z["y_train"].astype(np.float32)
        vx, vy = z["x_val"].astype(np.float32), z["y_val"].astype(np.float32)
        classes = len(z["class_names"])
    builder = user.load(args.arch)
    for seed in range(args.seeds):
        keras.utils.set_random_seed(seed)
        model = builder(**keras_kind.wanted_arguments(builder, x.shape[1:], classes))
        scale = 1.0 if keras_kind.rescales(model) else 1 / 255
        model.fit(x * scale, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0,
                  validation_data=(vx * scale, vy))


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    got = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if got.returncode != 0:
        raise FlaxrayError(f"{' '.join(command)} failed ({got.returncode}): {got.stderr.strip().splitlines()[-1:]}")
    return seconds


def run(args):
    from benchmarks.keras_fit_parity import commit
    from flaxray import results

    if args.fits_only:
        return fits(args)
    if min(args.seeds, args.epochs) < 1:
        raise FlaxrayError(f"--seeds and --epochs must be >= 1, got {args.seeds}, {args.epochs}")
    out = Path(args.out)
    data = write_data(args, out / "data.npz")
    common = ["--arch", args.arch, "--seeds", str(args.seeds), "--epochs", str(args.epochs),
              "--batch-size", str(args.batch_size)]
    study = [sys.executable, "-m", "studies.seed_variance", *common, "--strategy", args.strategy,
             "--data", str(data), "--out", str(out / "study"), "--overwrite", "--no-progress"]
    keras_fits = [sys.executable, "-m", "benchmarks.keras_e2e", "--fits-only", "--data", str(data),
                  *[a for a in common if a != "--strategy"]]
    load = {"before": os.getloadavg()}  # other jobs on the machine slow either run: said, not corrected
    flaxray_s = wall(study)
    load["between"] = os.getloadavg()
    print(f"flaxray study: {flaxray_s:.1f} s", flush=True)
    keras_s = wall(keras_fits)
    load["after"] = os.getloadavg()
    print(f"{args.seeds} Keras fits: {keras_s:.1f} s", flush=True)
    record = results.read_json(out / "study" / "study.json")
    report = {"command": _cli.command("benchmarks.keras_e2e", args), "commit": commit(),
              "config": {k: getattr(args, k) for k in ("arch", "seeds", "epochs", "batch_size", "strategy", "images")},
              "commands": {"flaxray": " ".join(study[1:]), "keras": " ".join(keras_fits[1:])},
              "flaxray_s": flaxray_s, "keras_s": keras_s, "speedup": keras_s / flaxray_s,
              "flaxray_train_s": record.get("train_seconds"), "load_average": load,
              "environment": results.environment((*results.PACKAGES, "keras"))}
    path = Path(args.json) if args.json else out / "keras_e2e.json"
    results.write_json(path, report)
    print(f"\n| {args.arch} | {args.seeds} seeds x {args.epochs} epochs | flaxray {flaxray_s:.0f} s | "
          f"Keras fit x {args.seeds} {keras_s:.0f} s | {keras_s / flaxray_s:.2f}x |\n\nwrote {path}")
    return path


def main(argv=None) -> int:
    return _cli.main(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
