"""Flags and error handling every study shares: data, seeds, training, output."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from flaxray.errors import FlaxrayError
from flaxray.train import SOURCES


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, metavar="PATH",
                   help="a folder in the Kaggle layout {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg; "
                   "default: the embedded 28x28 data set derived from it")
    p.add_argument("--image-size", type=int, default=None,
                   help="images are resized to SIZE x SIZE (default: 180 with --data, 28 for the embedded data)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 = grey, 3 = RGB as in the notes")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of train carved out as val, by patient")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the patient split (same for every model seed)")
    p.add_argument("--strict", action="store_true", help="unreadable images are fatal instead of skipped")
    p.add_argument("--cache-dir", default=None,
                   help="where prepared data is cached (default: $FLAXRAY_CACHE or ~/.cache/flaxray)")


def add_training_args(p: argparse.ArgumentParser, *, seeds=16, epochs=20) -> None:
    p.add_argument("--seeds", type=int, default=seeds, help="number of seeds trained together")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are K..K+N-1, so any seed can be re-run alone")
    p.add_argument("--epochs", type=int, default=epochs, help="epochs per seed")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size per seed")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (Keras's Adam, epsilon 1e-7)")
    p.add_argument("--vary", default=",".join(SOURCES),
                   help="comma-separated sources of randomness that differ between seeds "
                   f"({', '.join(SOURCES)}); the others are shared by all seeds. 'none' shares all")
    p.add_argument("--class-weight", choices=("none", "balanced"), default="none",
                   help="'balanced' weighs each class's loss by n / (2 n_class), as sklearn and Keras users do")


def add_output_args(p: argparse.ArgumentParser, *, out=None, out_help="output folder (default: a new folder under runs/)",
                    overwrite_help="allow an --out that already holds a study") -> None:
    p.add_argument("--out", default=out, metavar="DIR", help=out_help)
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_vary(text: str) -> tuple[str, ...]:
    return () if text.strip() in ("", "none") else tuple(s.strip() for s in text.split(",") if s.strip())


def seed_list(args) -> list[int]:
    if args.seeds < 1:
        raise FlaxrayError(f"--seeds must be >= 1, got {args.seeds}")
    if args.first_seed < 0 or args.first_seed + args.seeds > 2**31 - 1:
        raise FlaxrayError(f"--first-seed must be >= 0 and K+N must fit in int32, got {args.first_seed}")
    return list(range(args.first_seed, args.first_seed + args.seeds))


def check_out(args) -> None:
    out = Path(args.out) if args.out else None
    if out and (out / "study.json").exists() and not args.overwrite:
        raise FlaxrayError(f"{out} already holds a study; pass --overwrite or choose another --out")


def training_configs(args, archs):
    """One TrainConfig per arch from the training flags; validates every arch and flag before any data."""
    from flaxray.train import TrainConfig

    return {arch: TrainConfig(arch=arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              vary=parse_vary(args.vary))
            for arch in archs}


def prepare(args, configs):
    """Load the data the flags describe, apply --class-weight to the configs, put the data on the device.

    Returns (configs, dataset, device data) and prints a line describing the data.
    """
    import dataclasses

    from flaxray.study import balanced_class_weight
    from flaxray.train import device_data

    dataset = load_data(args)
    if args.class_weight == "balanced":
        weight = balanced_class_weight(dataset.train.y)
        configs = {a: dataclasses.replace(c, class_weight=weight) for a, c in configs.items()}
    data = device_data(dataset, eval_batch_size=next(iter(configs.values())).eval_batch_size)
    print(describe_data(dataset))
    return configs, dataset, data


def load_data(args):
    """The data set the flags describe (no device transfer)."""
    from flaxray.data import load_dataset

    return load_dataset(args.data, image_size=args.image_size, channels=args.channels,
                        val_fraction=args.val_fraction, split_seed=args.split_seed, strict=args.strict,
                        cache_dir=args.cache_dir, progress=not args.no_progress)


def command(module: str, args) -> str:
    """The command line that reproduces this run."""
    return " ".join(["python -m", module, *args.argv])


def describe_data(dataset) -> str:
    import jax

    return (f"data: {dataset.summary['source']} · {dataset.train.x.shape[1:]} images · train {len(dataset.train.y)}, "
            f"val {len(dataset.val.y)} (by patient), test {len(dataset.test.y)} · device {jax.devices()[0].device_kind}")


def main(run, parse_args, argv=None) -> int:
    """Run a study; user errors are one line on stderr and exit 2, never a traceback."""
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in study.json
    warnings.formatwarning = lambda message, category, *_, **__: f"warning: {message}\n"
    try:
        run(args)
    except FlaxrayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
