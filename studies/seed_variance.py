"""Train each architecture with many seeds at once and show how much the curves move between seeds.

    python -m studies.seed_variance --arch pyramid
    python -m studies.seed_variance --arch pyramid final inverted --data path/to/chest_xray \\
           --image-size 180 --seeds 32 --epochs 20 --out runs/ann

Writes curves.csv, study.json and bands.png into --out and prints a summary table over seeds.
Everything here is a few library calls (see the README for the same study from Python).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

from flaxray.errors import FlaxrayError
from flaxray.train import SOURCES


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m studies.seed_variance",
        description="Train every --arch with --seeds random seeds at once (jax.vmap) and report the "
        "spread of their train/val curves: curves.csv, study.json, bands.png and a summary table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", nargs="+", default=["pyramid"], metavar="NAME",
                   help="architecture names (pyramid, pyramid_d02, inverted, inverted_d02, hourglass, "
                   "hourglass_d02, mixed, final, each also NAME_plain) or spec strings like "
                   "'dense:1024@0.5,512@0.2'")
    p.add_argument("--seeds", type=int, default=16, help="number of seeds trained together")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are K..K+N-1, so any seed can be re-run alone")
    p.add_argument("--epochs", type=int, default=20, help="epochs per seed")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size per seed")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (Keras's Adam, epsilon 1e-7)")
    p.add_argument("--vary", default=",".join(SOURCES),
                   help="comma-separated sources of randomness that differ between seeds "
                   f"({', '.join(SOURCES)}); the others are shared by all seeds. 'none' shares all")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="a folder in the Kaggle layout {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg; "
                   "default: the embedded 28x28 data set derived from it")
    p.add_argument("--image-size", type=int, default=None,
                   help="images are resized to SIZE x SIZE (default: 180 with --data, 28 for the embedded data)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 = grey, 3 = RGB as in the notes")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of train carved out as val, by patient")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the patient split (same for every model seed)")
    p.add_argument("--class-weight", choices=("none", "balanced"), default="none",
                   help="'balanced' weighs each class's loss by n / (2 n_class), as sklearn and Keras users do")
    p.add_argument("--strict", action="store_true", help="unreadable images are fatal instead of skipped")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: a new folder under runs/)")
    p.add_argument("--overwrite", action="store_true", help="allow an --out that already holds a study")
    p.add_argument("--cache-dir", default=None, help="where prepared data is cached (default: $FLAXRAY_CACHE "
                   "or ~/.cache/flaxray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def check_args(args) -> None:
    if args.seeds < 1:
        raise FlaxrayError(f"--seeds must be >= 1, got {args.seeds}")
    if args.first_seed < 0:
        raise FlaxrayError(f"--first-seed must be >= 0, got {args.first_seed}")
    if args.first_seed + args.seeds > 2**31 - 1:
        raise FlaxrayError("--first-seed + --seeds must fit in int32")
    out = Path(args.out) if args.out else None
    if out and (out / "study.json").exists() and not args.overwrite:
        raise FlaxrayError(f"{out} already holds a study; pass --overwrite or choose another --out")


def parse_vary(text: str) -> tuple[str, ...]:
    return () if text.strip() in ("", "none") else tuple(s.strip() for s in text.split(",") if s.strip())


def run(args) -> Path:
    import jax

    from flaxray import plots, results, stats
    from flaxray.data import load_dataset
    from flaxray.train import TrainConfig, device_data, train_seeds

    check_args(args)
    configs = {
        arch: TrainConfig(arch=arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          vary=parse_vary(args.vary))
        for arch in args.arch
    }  # validates every arch and flag before any data is touched
    dataset = load_dataset(args.data, image_size=args.image_size, channels=args.channels,
                           val_fraction=args.val_fraction, split_seed=args.split_seed, strict=args.strict,
                           cache_dir=args.cache_dir, progress=not args.no_progress)
    if args.class_weight == "balanced":
        y = dataset.train.y
        weight = tuple(len(y) / (2 * max(1, int((y == c).sum()))) for c in (0, 1))
        configs = {a: dataclasses.replace(c, class_weight=weight) for a, c in configs.items()}
    data = device_data(dataset, eval_batch_size=next(iter(configs.values())).eval_batch_size)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    out = Path(args.out) if args.out else results.default_out_dir(args.arch)
    out.mkdir(parents=True, exist_ok=True)

    s = dataset.summary
    print(f"data: {s['source']} · {dataset.train.x.shape[1:]} images · train {len(dataset.train.y)}, "
          f"val {len(dataset.val.y)} (by patient), test {len(dataset.test.y)} · device {jax.devices()[0].device_kind}")
    histories, timings = {}, {}
    for arch, config in configs.items():
        start = time.perf_counter()
        _, histories[arch] = train_seeds(config, data, seeds, progress=not args.no_progress, desc=arch)
        timings[arch] = time.perf_counter() - start

    summaries = {arch: stats.summarize_history(h) for arch, h in histories.items()}
    ranking = stats.rank(summaries) if len(summaries) > 1 else None
    results.write_curves_csv(out / "curves.csv", histories, {a: seeds for a in histories})
    plots.plot_bands(histories, out / "bands.png",
                     title=f"{len(seeds)} seeds · {dataset.train.x.shape[1]}px × {dataset.train.x.shape[3]}ch")
    results.write_json(out / "study.json", {
        "study": "seed_variance",
        "command": " ".join(["python -m studies.seed_variance", *sys.argv[1:]]),
        "args": vars(args),
        "configs": {a: dataclasses.asdict(c) for a, c in configs.items()},
        "seeds": seeds,
        "environment": results.environment(),
        "data": dataset.summary,
        "train_seconds": timings,
        "summary": summaries,
        "ranking": ranking,
    })
    print()
    print(stats.format_summary_table(summaries, ranking))
    print(f"\nwrote {out / 'curves.csv'}, {out / 'study.json'}, {out / 'bands.png'}")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
