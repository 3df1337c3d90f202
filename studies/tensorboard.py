"""A finished study in TensorBoard: every seed's curves and the study's band over the seeds.

    python -m studies.tensorboard runs/my_study --logdir runs/tb
    tensorboard --logdir runs/tb

Writes event files under --logdir: a run per seed (GROUP/seed_K) and per group the study's own mean
and bootstrap CI over the seeds (GROUP/mean, GROUP/ci_low, GROUP/ci_high), a scalar per split and
metric (train/loss, val/auc, ...) at step = epoch; GROUP is the group's file-safe name (dense:8@0.5 ->
dense_8_0.5). Needs the tensorboard extra: pip install 'flaxray[tensorboard]'. Library call:
`flaxray.report.views.write_tensorboard`.
"""

from __future__ import annotations

import argparse
import sys

MODULE = "studies.tensorboard"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Write TensorBoard event files of a finished study: one run per seed (GROUP/seed_K) and, per "
        "group, the study's mean over the seeds and the bootstrap CI of that mean (GROUP/mean, GROUP/ci_low, "
        "GROUP/ci_high; what bands.png draws), for every split and metric of curves.csv, step = epoch. "
        "No TensorFlow needed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", metavar="OUT", help="the --out folder of a finished study")
    p.add_argument("--logdir", required=True, metavar="DIR",
                   help="where the event files go (runs already there that this does not write are kept)")
    p.add_argument("--confidence", type=float, default=None,
                   help="confidence of the CI runs (default: the study's own, from study.json)")
    return p.parse_args(argv)


def run(args):
    from flaxray.report import views

    logdir = views.write_tensorboard(args.run_dir, args.logdir, confidence=args.confidence)
    curves, _ = views.load_study(args.run_dir)
    for group, folder in views.run_names(dict.fromkeys(curves["arch"])).items():
        seeds = curves.loc[curves["arch"] == group, "seed"].nunique()
        print(f"{group}: {seeds} seed runs {folder}/seed_K and {folder}/mean, {folder}/ci_low, {folder}/ci_high")
    print(f"\nwrote {logdir}; view it with:\n  tensorboard --logdir {logdir}")
    return logdir


def main(argv=None) -> int:
    """User errors are one line on stderr and exit 2, as in every study (`studies._cli.main`, which is
    not used here: it imports jax, and this reads files only)."""
    from flaxray.errors import FlaxrayError

    args = parse_args(argv)
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
