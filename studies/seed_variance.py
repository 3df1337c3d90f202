"""Train each architecture with many seeds at once and show how much the curves move between seeds.

    python -m studies.seed_variance --arch pyramid
    python -m studies.seed_variance --arch cnn_sep pyramid --channels 1
    python -m studies.seed_variance --arch pyramid final inverted --data path/to/chest_xray \\
           --image-size 180 --seeds 32 --epochs 20 --out runs/ann

Writes curves.csv, study.json, bands.png, report.md/html, run.json and groups/ (per arch: its curves,
checkpoints and every seed's final parameters, for `python -m studies.inspect`) into --out and prints
a summary table over seeds with the robust ranking; `--resume DIR` continues a stopped or killed study.
Everything here is one library call, `flaxray.run` (docs/python_api.md shows it from Python).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flaxray.models import CNN_SPECS, NOTES_STACKS
from studies import _cli, _flags

MODULE = "studies.seed_variance"


def parser() -> argparse.ArgumentParser:
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
                   "(the grammar is in flaxray/models/spec.py); or a model registered with flaxray.models.register, e.g. resnet18; "
                   "or your own model as FILE.py:NAME, NAME a function returning a keras.Model (compiled: its compile "
                   "trains it; each seed k is fit under keras.utils.set_random_seed(k): docs/keras.md) or a Flax NNX "
                   "factory")
    _flags.add_training_args(p)
    _flags.add_rope_arg(p)
    _flags.add_data_args(p, several=True)
    _flags.add_output_args(p)
    return p


def run(args) -> Path:
    from flaxray.analysis import stopping
    from flaxray.analysis.study import settle_sentence
    from flaxray.report import pairs
    from flaxray.report.table import format_summary_table, luck_lines, variance_lines
    from flaxray.report.study import format_diverged

    result = _cli.run_study(args, _cli.study_spec(args, args.arch, "seed_variance"), MODULE)
    if _cli.several(result):
        return result.out
    print()
    print(format_summary_table(result.analysis["summary"], result.analysis["ranking"]))

    for line in [*luck_lines(result.analysis), settle_sentence(result.analysis).replace("**", ""),
                 *variance_lines(result.analysis), *pairs.lines(result.analysis), *stopping.lines(result.analysis)]:
        if line:
            print(line)
    if diverged := format_diverged(result.record["diverged"]):
        print(diverged)
    out = result.out
    print(f"\nwrote {out / 'curves.csv'}, {out / 'study.json'}, {out / 'bands.png'}, {out / 'report.md'}")
    return out


def main(argv=None) -> int:
    return _cli.main(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
