"""Train each architecture with many seeds at once and show how much the curves move between seeds.

    python -m studies.seed_variance --arch pyramid
    python -m studies.seed_variance --arch cnn_sep pyramid --channels 1
    python -m studies.seed_variance --arch pyramid final inverted --data path/to/chest_xray \\
           --image-size 180 --seeds 32 --epochs 20 --out runs/ann

Writes curves.csv, study.json, bands.png, run.json, checkpoints/ and params/ (every seed's final parameters,
for `python -m studies.inspect`) into --out and prints a summary
table over seeds; `--resume DIR` continues a stopped or killed study. Everything here is a few
library calls (see the README for the same study from Python).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flaxray.models import CNN_SPECS, NOTES_STACKS
from studies import _cli

MODULE = "studies.seed_variance"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m studies.seed_variance",
        description="Train every --arch with --seeds random seeds at once (jax.vmap) and report the "
        "spread of their train/val curves: curves.csv, study.json, bands.png and a summary table; "
        "run.json says whether the study finished, and --resume continues one that did not.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", nargs="+", default=["pyramid"], metavar="NAME",
                   help=f"architecture names: dense stacks {', '.join(NOTES_STACKS)}; CNNs {', '.join(CNN_SPECS)}; "
                   "each also NAME_plain (no BatchNorm, no Dropout). Or spec strings like "
                   "'dense:1024@0.5,512@0.2' or 'conv:32,pool,sep:64,pool,gap,dense:128@0.5' "
                   "(the grammar is in flaxray/models.py)")
    _cli.add_training_args(p)
    _cli.add_data_args(p)
    _cli.add_output_args(p)
    return p.parse_args(argv)


def run(args) -> Path:
    from flaxray import results, stats
    from flaxray.study import format_diverged, save_study, train_groups

    if args.resume:
        resumed = _cli.resume_args(parse_args, args)
        if resumed is None:
            print(f"{args.resume} holds a complete study; nothing to resume")
            return Path(args.resume)
        args = resumed
    seeds = _cli.seed_list(args)
    _cli.check_out(args)
    configs, dataset, data = _cli.prepare(args, _cli.training_configs(args, args.arch))
    out = Path(args.out) if args.out else results.default_out_dir(args.arch)

    with _cli.recorded_run(out, args, MODULE):
        groups = train_groups(configs, data, seeds, progress=not args.no_progress,
                              checkpoint_dir=out / results.CHECKPOINTS, checkpoint_every=args.checkpoint_every,
                              max_seeds_per_chunk=args.chunk)
        study = save_study(out, groups=groups, seeds=seeds, data_summary=dataset.summary, study="seed_variance",
                           command=_cli.command(MODULE, args), args=vars(args),
                           train_seconds={n: g.seconds for n, g in groups.items()})
    print()
    print(stats.format_summary_table(study["summary"], study["ranking"]))
    if diverged := format_diverged(study["diverged"]):
        print(diverged)
    print(f"\nwrote {out / 'curves.csv'}, {out / 'study.json'}, {out / 'bands.png'}")
    return out


def main(argv=None) -> int:
    return _cli.main(run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
