"""Flags and error handling every study shares: data, seeds, training, output."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import sys
import warnings
from pathlib import Path

from flaxray import results
from flaxray.errors import FlaxrayError
from flaxray.train import DTYPES, SOURCES

MAX_SEEDS = 1_000_000  # far beyond any device's memory; a larger --seeds is a typo
RESUME_FLAGS = ("--resume", "--no-progress", "--checkpoint-every", "--cache-dir")  # the rest come from run.json


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
    p.add_argument("--lr", type=float, nargs="+", default=[1e-3], metavar="LR",
                   help="Adam learning rate (Keras's Adam, epsilon 1e-7); several rates are crossed with the seeds "
                   "in one vmapped program and summarised per group NAME@lr=LR")
    p.add_argument("--vary", default=",".join(SOURCES),
                   help="comma-separated sources of randomness that differ between seeds "
                   f"({', '.join(SOURCES)}); the others are shared by all seeds. 'none' shares all")
    p.add_argument("--class-weight", choices=("none", "balanced"), default="none",
                   help="'balanced' weighs each class's loss by n / (2 n_class), as sklearn and Keras users do")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="compute dtype of activations and matmuls; parameters and Adam's state stay float32")
    p.add_argument("--chunk", type=int, default=None, metavar="N",
                   help="train at most N seeds at once (default: as many as fit in the free device memory, "
                   "estimated; the seeds are split over every local device). Does not change the curves")


def add_output_args(p: argparse.ArgumentParser, *, out=None, out_help="output folder (default: a new folder under runs/)",
                    overwrite_help="start again in an --out that already holds a study (its results and "
                    "checkpoints are deleted)", resumable=True) -> None:
    p.add_argument("--out", default=out, metavar="DIR", help=out_help)
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    if resumable:
        p.add_argument("--resume", default=None, metavar="DIR",
                       help="continue the stopped or killed study in DIR, with the flags recorded in DIR/run.json, to "
                       "the curves an uninterrupted run gives; only --no-progress, --checkpoint-every and --cache-dir "
                       "may be given with it")
        p.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                       help="save every seed's training state in the --out folder's checkpoints/ every N epochs and "
                       "after the last (0: never, then --resume starts over)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_vary(text: str) -> tuple[str, ...]:
    return () if text.strip() in ("", "none") else tuple(s.strip() for s in text.split(",") if s.strip())


def seed_list(args) -> list[int]:
    if not 1 <= args.seeds <= MAX_SEEDS:
        raise FlaxrayError(f"--seeds must be between 1 and {MAX_SEEDS}, got {args.seeds}")
    if args.first_seed < 0 or args.first_seed + args.seeds > 2**31 - 1:
        raise FlaxrayError(f"--first-seed must be >= 0 and K+N must fit in int32, got {args.first_seed}")
    return list(range(args.first_seed, args.first_seed + args.seeds))


def lr_list(args) -> list[float]:
    for lr in args.lr:
        if not (math.isfinite(lr) and lr > 0):
            raise FlaxrayError(f"--lr must be finite numbers > 0, got {lr}")
    if len(set(args.lr)) < len(args.lr):
        raise FlaxrayError(f"--lr lists a learning rate twice: {' '.join(map(str, args.lr))}")
    return list(args.lr)


def check_out(args) -> None:
    """Refuse to write into a folder that holds a study unless asked to continue or replace it."""
    if args.resume and args.overwrite:
        raise FlaxrayError("--resume continues a study and --overwrite deletes it: pass one of them")
    if args.checkpoint_every < 0:
        raise FlaxrayError(f"--checkpoint-every must be >= 0 (0: no checkpoints), got {args.checkpoint_every}")
    out = Path(args.out) if args.out else None
    if out and out.exists() and not out.is_dir():
        raise FlaxrayError(f"--out {out} is a file, not a folder")
    if out and not (args.resume or args.overwrite) and results.existing_outputs(out):
        status = (results.read_run(out) or {}).get("status", "unknown status")
        raise FlaxrayError(f"{out} already holds a study ({status}); pass --resume {out} to continue it, "
                           "--overwrite to start again, or choose another --out")


def resume_args(parse_args, args):
    """The flags of the study in `args.resume` (from its run.json) with the few that may change;
    None when that study is complete."""
    folder = Path(args.resume)
    run = results.read_run(folder)
    if not run or "argv" not in run:
        raise FlaxrayError(f"--resume {folder}: no readable {results.RUN_JSON} there, so no study to continue")
    given = [t.split("=", 1)[0] for t in args.argv if t.startswith("--")]
    for name in given:  # argparse accepts unambiguous prefixes; match them the same way
        if not any(flag.startswith(name) for flag in RESUME_FLAGS):
            raise FlaxrayError(f"--resume takes the study's flags from {folder / results.RUN_JSON}; only "
                               f"{', '.join(RESUME_FLAGS[1:])} may be given with it, not {name}")
    if run.get("status") == "complete":
        return None
    stored = parse_args(run["argv"])
    for name in ("data", "cache_dir"):  # relative to where the study was started
        if getattr(stored, name):
            setattr(stored, name, str(Path(run.get("cwd", ".")) / Path(getattr(stored, name)).expanduser()))
    for flag in RESUME_FLAGS[1:]:
        if any(flag.startswith(name) for name in given):
            dest = flag[2:].replace("-", "_")
            setattr(stored, dest, getattr(args, dest))
    stored.argv, stored.out, stored.resume, stored.overwrite = list(run["argv"]), str(folder), str(folder), False
    return stored


def _utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def recorded_run(out: Path, args, module: str):
    """run.json in `out` says "running" while the block runs (so a killed run reads as unfinished),
    then "complete", "interrupted" or "failed"."""
    if args.overwrite:
        results.clear_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        resumed = [*(results.read_run(out) or {}).get("resumed_utc", []), _utc()]
        results.write_run(out, status="running", pid=os.getpid(), resumed_utc=resumed)
    else:
        results.write_run(out, status="running", study=module, command=command(module, args), argv=args.argv,
                          cwd=os.getcwd(), pid=os.getpid(), started_utc=_utc())
    try:
        yield
    except KeyboardInterrupt as err:
        results.write_run(out, status="interrupted", stopped_utc=_utc())
        detail = f"{err}; " if str(err) else ""
        raise KeyboardInterrupt(f"{detail}continue with: python -m {module} --resume {out}") from None
    except BaseException as err:
        results.write_run(out, status="failed", error=" ".join(f"{type(err).__name__}: {err}".split()),
                          stopped_utc=_utc())
        raise
    results.write_run(out, status="complete", finished_utc=_utc())


def training_configs(args, archs):
    """One TrainConfig per arch from the training flags; validates every arch and flag before any data."""
    from flaxray.study import cross_lrs
    from flaxray.train import TrainConfig

    if args.chunk is not None and args.chunk < 1:
        raise FlaxrayError(f"--chunk must be >= 1, got {args.chunk}")
    return cross_lrs({arch: TrainConfig(arch=arch, epochs=args.epochs, batch_size=args.batch_size,
                                        vary=parse_vary(args.vary), dtype=args.dtype)
                      for arch in archs}, lr_list(args))


def prepare(args, configs):
    """Load the data the flags describe, apply --class-weight to the configs, put the data on the device.

    Returns (configs, dataset, device data) and prints a line describing the data.
    """
    import dataclasses

    from flaxray.study import balanced_class_weight
    from flaxray.train import check_batch_size, device_data

    dataset = load_data(args)
    if args.class_weight == "balanced":
        weight = balanced_class_weight(dataset.train.y)
        configs = {a: dataclasses.replace(c, class_weight=weight) for a, c in configs.items()}
    first = next(iter(configs.values()))
    check_batch_size(first, len(dataset.train.y))  # before anything is written
    data = device_data(dataset, eval_batch_size=first.eval_batch_size)
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


def report_info(args, seeds, dataset, command: str) -> tuple[dict, dict]:
    """`results.environment()` and the strings a report's header shows (see `flaxray.report.run_info`)."""
    env = results.environment()
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v and k != "flaxray")
    size, channels = dataset.summary["image_size"], dataset.summary["channels"]
    info = {"command": command, "seeds": f"{len(seeds)} ({seeds[0]}..{seeds[-1]})", "epochs": args.epochs,
            "data": f"{dataset.summary['source']}, {size}×{size}×{channels}, train {len(dataset.train.y)}, "
                    f"val {len(dataset.val.y)} (split by patient), test {len(dataset.test.y)}",
            "device": (f"CPU ({env['cpu_count']} cores)" if env["backend"] == "cpu"
                       else f"{env['backend']}: {env['device']} ({env['cpu_count']} CPU cores)"),
            "versions": f"Python {env['python']}, {versions}",
            "title": f"{len(seeds)} seeds · {size}×{size}×{channels}"}
    return env, info


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
    except KeyboardInterrupt as err:
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - only device memory is turned into a one-line message
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        print("error: out of device memory; use fewer --seeds or --lr values, a smaller --batch-size, "
              "--image-size or arch", file=sys.stderr)
        return 2
    return 0
