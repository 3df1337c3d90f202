"""Choose the architecture that holds across seeds: the notes' whole catalogue, diagnosed and ranked.

    python -m studies.architecture_search                       # the notes' 14 stacks, embedded data
    python -m studies.architecture_search --arch pyramid final --seeds 16 --decompose
    python -m studies.architecture_search --data ../shared/data/chest_xray --image-size 32 --channels 1 \\
           --seeds 8 --epochs 10 --out runs/search32

Trains every arch with the same seeds (each arch saved under OUT/groups/ and reused on a rerun),
diagnoses each seed, compares the archs with robust statistics and writes OUT/report.md,
OUT/report.html (self-contained), the PNGs and OUT/study.json: `flaxray.study.run`, as every study.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from studies import _cli


def parse_args(argv=None) -> argparse.Namespace:
    from flaxray.catalogue import DEFAULT_CATALOGUE, SAME_STACK

    p = argparse.ArgumentParser(
        prog="python -m studies.architecture_search",
        description="Train a catalogue of architectures with --seeds seeds each, diagnose every seed "
        "(good/overfit/underfit/unstable/diverged), rank the archs by a robust criterion with bootstrap CIs "
        "and P(improvement), and write report.md + report.html. A rerun with the same --out reuses every "
        "finished arch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", nargs="+", default=list(DEFAULT_CATALOGUE), metavar="NAME",
                   help="architecture names or spec strings like 'dense:1024@0.5,512@0.2'; default: every named "
                   "dense stack of the notes, with (NAME) and without (NAME_plain) BatchNorm/Dropout, each distinct stack once ("
                   + ", ".join(f"{a} is {b}" for a, b in SAME_STACK.items()) + ")")
    p.add_argument("--decompose", action="store_true",
                   help="also train each arch with only init, only dropout masks, only data order varied, and "
                   "with only a one-ulp nudge of the initial parameters (the numerical-noise floor), and report each "
                   "source's share of the variance of final val loss and its share above the floor (5x the training)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of every CI")
    _cli.add_training_args(p, seeds=8, epochs=20)
    _cli.add_data_args(p)
    _cli.add_output_args(p, out="runs/architecture_search",
                         out_help="output folder; a rerun with the same folder skips every finished arch",
                         overwrite_help="retrain every arch even if --out holds a finished run of it")
    return p.parse_args(argv)


def run(args) -> Path:
    from flaxray import report

    archs = list(dict.fromkeys(args.arch))  # a name given twice is trained once
    spec = _cli.study_spec(args, archs, "architecture_search", decompose=args.decompose, confidence=args.confidence)
    result = _cli.run_study(args, spec, "studies.architecture_search")
    print()
    print(report.ranking_markdown(result.analysis))
    print(result.analysis["verdict"].replace("**", ""))
    from flaxray.analysis import luck_lines, variance_lines

    print("\n".join(luck_lines(result.analysis) + variance_lines(result.analysis)))
    out = result.out
    print(f"\nwrote {out / 'report.md'}, {out / 'report.html'}, {out / 'study.json'}")
    return out


def main(argv=None) -> int:
    return _cli.main(run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
