"""Choose the architecture that holds across seeds: the notes' whole catalogue, diagnosed and ranked.

    python -m studies.architecture_search                       # the notes' 14 stacks, embedded data
    python -m studies.architecture_search --arch pyramid final --seeds 16 --decompose
    python -m studies.architecture_search --data ../shared/data/chest_xray --image-size 32 --channels 1 \\
           --seeds 8 --epochs 10 --out runs/search32

Trains every arch with the same seeds (each arch saved under OUT/archs/ and skipped on a rerun),
diagnoses each seed, compares the archs with robust statistics and writes OUT/report.md,
OUT/report.html (self-contained), the PNGs and OUT/search.json. Library calls: `flaxray.search`
(train_catalogue, analyse) and `flaxray.report.write_report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from studies import _cli


def parse_args(argv=None) -> argparse.Namespace:
    from flaxray.search import DEFAULT_CATALOGUE, SAME_STACK

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
                   "report each source's share of the variance of final val loss (4x the training)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of every CI")
    _cli.add_training_args(p, seeds=8, epochs=20)
    _cli.add_data_args(p)
    _cli.add_output_args(p, out="runs/architecture_search",
                         out_help="output folder; a rerun with the same folder skips every finished arch",
                         overwrite_help="retrain every arch even if --out holds a finished run of it", resumable=False)
    return p.parse_args(argv)


def run(args) -> Path:
    from flaxray import diagnose, report, results, search
    from flaxray.errors import FlaxrayError

    seeds = _cli.seed_list(args)
    if not 0 < args.confidence < 1:
        raise FlaxrayError(f"--confidence must be between 0 and 1, got {args.confidence}")
    archs = list(dict.fromkeys(args.arch))  # a name given twice is trained once
    configs, dataset, data = _cli.prepare(args, _cli.training_configs(args, archs))
    out = Path(args.out)

    runs = search.train_catalogue(configs, data, seeds, out, data_summary=dataset.summary,
                                  decompose=args.decompose, retrain=args.overwrite, progress=not args.no_progress,
                                  max_seeds_per_chunk=args.chunk)
    if runs.resumed:
        print(f"reused {len(runs.resumed)} finished run(s) from {out / 'archs'}: {', '.join(runs.resumed)}")
    class_weight = next(iter(configs.values())).class_weight
    analysis = search.analyse(runs.histories, decomposition=runs.decomposition or None, confidence=args.confidence,
                              baseline=diagnose.baseline_loss(dataset.train.y, class_weight))
    command = _cli.command("studies.architecture_search", args)
    env, info = _cli.report_info(args, seeds, dataset, command)
    md, page = report.write_report(out, analysis, runs.histories, info=info)
    results.write_json(out / "search.json", {
        "study": "architecture_search", "command": command, "args": vars(args), "seeds": seeds,
        "configs": {a: search.fingerprint(c, seeds, dataset.summary)["config"] for a, c in configs.items()},
        "environment": env, "data": dataset.summary, "train_seconds": runs.seconds, "resumed": runs.resumed,
        "analysis": analysis,
    })
    print()
    print(report.ranking_markdown(analysis))
    print(analysis["verdict"].replace("**", ""))
    print(f"\nwrote {md}, {page}, {out / 'search.json'}")
    return out


def main(argv=None) -> int:
    return _cli.main(run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
