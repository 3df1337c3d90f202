"""Train each architecture with many seeds at once and show how much the curves move between seeds.

    python -m studies.seed_variance --arch pyramid
    python -m studies.seed_variance --arch pyramid final inverted --data path/to/chest_xray \\
           --image-size 180 --seeds 32 --epochs 20 --out runs/ann

Writes curves.csv, study.json and bands.png into --out and prints a summary table over seeds.
Everything here is a few library calls (see the README for the same study from Python).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from studies import _cli


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
    _cli.add_training_args(p)
    _cli.add_data_args(p)
    _cli.add_output_args(p)
    return p.parse_args(argv)


def run(args) -> Path:
    from flaxray import results, stats
    from flaxray.study import save_study, train_archs

    seeds = _cli.seed_list(args)
    _cli.check_out(args)
    configs, dataset, data = _cli.prepare(args, _cli.training_configs(args, args.arch))
    out = Path(args.out) if args.out else results.default_out_dir(args.arch)

    histories, seconds = train_archs(configs, data, seeds, progress=not args.no_progress)
    study = save_study(out, histories=histories, seeds=seeds, configs=configs, data_summary=dataset.summary,
                       study="seed_variance", command=_cli.command("studies.seed_variance", args),
                       args=vars(args), train_seconds=seconds)
    print()
    print(stats.format_summary_table(study["summary"], study["ranking"]))
    print(f"\nwrote {out / 'curves.csv'}, {out / 'study.json'}, {out / 'bands.png'}")
    return out


def main(argv=None) -> int:
    return _cli.main(run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
