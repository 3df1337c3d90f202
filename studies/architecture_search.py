"""Choose the architecture that holds across seeds: the notes' whole catalogue, diagnosed and ranked.

    python -m studies.architecture_search                       # the notes' 14 stacks, embedded data
    python -m studies.architecture_search --arch pyramid final --seeds 16 --decompose
    python -m studies.architecture_search --data ../shared/data/chest_xray --image-size 32 --channels 1 \\
           --seeds 8 --epochs 10 --out runs/search32

Trains every arch with the same seeds (each arch saved under OUT/groups/ and reused on a rerun),
diagnoses each seed, compares the archs with robust statistics and writes OUT/report.md,
OUT/report.html (self-contained), the PNGs and OUT/study.json: `flaxray.study.study.run`, as every study.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flaxray.errors import FlaxrayError
from flaxray.analysis.race import FUTILITY
from flaxray.study.study import MAX_SEEDS
from studies import _cli, _flags


def parser() -> argparse.ArgumentParser:
    from flaxray.study.catalogue import DEFAULT_CATALOGUE, SAME_STACK

    p = argparse.ArgumentParser(
        prog="python -m studies.architecture_search",
        description="Train a catalogue of architectures with --seeds seeds each, diagnose every seed "
        "(good/overfit/underfit/unstable/diverged), rank the archs by a robust criterion with bootstrap CIs "
        "and P(improvement), and write report.md + report.html. A rerun with the same --out reuses every "
        "finished arch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", nargs="+", default=list(DEFAULT_CATALOGUE), metavar="NAME",
                   help="architecture names, spec strings like 'dense:1024@0.5,512@0.2' or your own models as FILE.py:NAME "
                   "(a Keras builder or a Flax NNX factory: docs/keras.md); default: every named "
                   "dense stack of the notes, with (NAME) and without (NAME_plain) BatchNorm/Dropout, each distinct stack once ("
                   + ", ".join(f"{a} is {b}" for a, b in SAME_STACK.items()) + ")")
    p.add_argument("--decompose", action="store_true",
                   help="also train each arch with only init, only dropout masks, only data order varied (and only "
                   "each other source of --vary: augment, split), and "
                   "with only a one-ulp nudge of the initial parameters (the numerical-noise floor), and report each "
                   "source's share of the variance of final val loss and its share above the floor (5x the training)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of every CI")
    _flags.add_rope_arg(p)
    race = p.add_argument_group("race", "spend seeds only where the choice is still open (flaxray.study.race)")
    race.add_argument("--race", action="store_true",
                      help="race the archs instead of giving each --seeds: round 1 trains every arch with "
                      "--round-seeds seeds, each later round the survivors with the next seeds (a fixed study's "
                      "seeds, in order); an arch is out when a one-sided exact Mann-Whitney test says another "
                      "survivor beats it, at 1 - --confidence split over its rivals and spent over the looks whose "
                      "exact p-values can reach it; an arch unlikely to be told apart leaves into the tie (--futility). "
                      "Stops with one arch left, a tie no further seed up to --max-seeds can break, or --budget spent. "
                      "A rerun with the same --out reuses every finished round")
    race.add_argument("--max-seeds", type=int, default=12, metavar="N",
                      help="with --race: the most seeds an arch gets; the fixed design the race is measured "
                      "against trains every arch with N")
    race.add_argument("--round-seeds", type=int, default=3, metavar="R",
                      help="with --race: seeds per arch per round; an arch leaves only at a round's end, so 2 "
                      "spends fewer seed-epochs, what a CPU pays (on a GPU a round of 2 costs about what 3 do)")
    race.add_argument("--budget", type=float, default=None, metavar="SEED_EPOCHS",
                      help="with --race: stop before a round that would take the seed-epochs trained past this "
                      "(none: the fixed design's, archs x N x --epochs; default: %(default)s)")
    race.add_argument("--futility", type=float, default=FUTILITY, metavar="GAMMA",
                      help="with --race: an arch with a predictive power below GAMMA to be eliminated by --max-seeds "
                      "(simulated by resampling the seeds seen) that no arch still raced needs as one of its two "
                      "strongest challengers (at the first look: as any challenger with that power) leaves the race "
                      "into the declared tie, trained no further; the arch the others are raced against stays "
                      "(default %(default)s; 0: off). "
                      "Non-binding: it cannot raise the chance that an arch no other beats is eliminated. On simulated "
                      "catalogues it saved 22-38 %% of the seed-epochs and kept the pick: docs/search_and_race.md")
    _flags.add_training_args(p, seeds=8, epochs=20)
    _flags.add_data_args(p, several=True)
    _flags.add_output_args(p, out=None, out_help="output folder (default: runs/architecture_search, with --race "
                         "runs/architecture_race); a rerun with the same folder skips every finished arch",
                         overwrite_help="retrain every arch even if --out holds a finished run of it")
    return p


RACE_FLAGS = ("max_seeds", "round_seeds", "budget", "futility")


def run(args) -> Path:
    from flaxray.report import search as report

    archs = list(dict.fromkeys(args.arch))  # a name given twice is trained once
    given = set(_cli.given_flags(parser, args.argv))
    if args.race:
        return run_race(args, archs, given)
    for flag in RACE_FLAGS:
        if flag in given:
            raise FlaxrayError(f"--{flag.replace('_', '-')} goes with --race")
    args.out = args.out or "runs/architecture_search"
    spec = _cli.study_spec(args, archs, "architecture_search", decompose=args.decompose, confidence=args.confidence)
    result = _cli.run_study(args, spec, "studies.architecture_search")
    if _cli.several(result):
        return result.out
    print()
    print(report.ranking_markdown(result.analysis))
    print(result.analysis["verdict"].replace("**", ""))
    from flaxray.report.pairs import lines as pair_lines
    from flaxray.report.table import luck_lines, variance_lines

    print("\n".join(luck_lines(result.analysis) + variance_lines(result.analysis) + pair_lines(result.analysis)))
    out = result.out
    print(f"\nwrote {out / 'report.md'}, {out / 'report.html'}, {out / 'study.json'}")
    return out


def run_race(args, archs, given) -> Path:
    """--race: `flaxray.study.race.race` through the same runner as every study (run.json, --resume)."""
    import dataclasses
    import functools

    from flaxray.study import race

    if "seeds" in given or args.decompose or args.tensorboard:
        raise FlaxrayError("--race sets the seeds with --max-seeds and --round-seeds, and writes no "
                           "--decompose or --tensorboard files; drop --seeds, --decompose and --tensorboard")
    if args.rope is not None:
        raise FlaxrayError("--rope judges the pairs of a fixed design; the race decides by its own tests: drop --rope")
    max_seeds, round_seeds = args.max_seeds, args.round_seeds
    if not 2 <= max_seeds <= MAX_SEEDS:
        raise FlaxrayError(f"--max-seeds must be between 2 and {MAX_SEEDS}, got {max_seeds}")
    spec = _cli.study_spec(args, archs, "architecture_race", confidence=args.confidence)
    if len(spec.datasets) > 1:
        raise FlaxrayError("--race takes one --data: its tests compare seeds of one data set; drop --race to "
                           "compare archs across several")
    spec = dataclasses.replace(spec, seeds=tuple(range(args.first_seed, args.first_seed + max_seeds)))
    race.check(spec, round_seeds, args.budget, args.futility)
    args.out = args.out or "runs/architecture_race"
    result = _cli.run_study(args, spec, "studies.architecture_search",
                            run=functools.partial(race.race, round_seeds=round_seeds, budget=args.budget,
                                                  futility=args.futility))
    print("\n" + result.decision["text"].replace("**", ""))
    print(f"\nwrote {result.out / 'report.md'}, {result.out / 'report.html'}, {result.out / race.RACE_JSON}")
    return result.out


def main(argv=None) -> int:
    return _cli.main(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
