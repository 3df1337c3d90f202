"""Is a CNN really better than the notes' dense network, or was it a lucky seed? Phase 3 of the notes.

    python -m studies.cnn_vs_ann
    python -m studies.cnn_vs_ann --seeds 8 --epochs 15 --channels 1 --out runs/cnn_vs_ann
    python -m studies.cnn_vs_ann --cnn cnn_conv --ann pyramid --data path/to/chest_xray --image-size 180

Trains both models on the same data, patient split, seeds and epochs, then evaluates every seed
once on the held-out test split. Writes report.md / report.html (tables and figures),
intervals.png, bands.png, study.json (with the test analysis), curves.csv, run.json and groups/ into
--out: `flaxray.study.study.run` with `test=True`, as every study.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from studies import _cli, _flags

MODULE = "studies.cnn_vs_ann"
DEFAULT_CNN = "cnn_sep"
DEFAULT_ANN = "final"
WHY_CNN = ("cnn_sep is the keras.io 'Pneumonia Classification' network built for this very data set (separable "
           "convs, BatchNorm, widths 16->256); cnn_sep_wide doubles every width (about 4x the parameters) and "
           "cnn_conv is the generic conv-pool stack. No run has ranked the three yet, so the default is the one designed "
           "for this task, chosen before any test result was seen")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m studies.cnn_vs_ann",
        description="Train a CNN and a dense network (ANN) with the same --seeds, data, patient split and epochs, "
        "evaluate every seed once on the held-out test split and report per model mean, std and bootstrap CI "
        "of loss, accuracy, precision, recall, specificity and AUC; P(CNN beats ANN) on a random pair of seeds; "
        "Welch's t-test and the Mann-Whitney U test; and the seed ensemble (mean probability of the seeds). "
        f"Default CNN: {WHY_CNN}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--cnn", default=DEFAULT_CNN, metavar="NAME",
                   help="the CNN: a registry name (cnn_conv, cnn_sep, cnn_sep_wide, each also NAME_plain) or a spec "
                   "string like 'conv:32,pool,sep:64,pool,gap,dense:128@0.5'")
    p.add_argument("--ann", default=DEFAULT_ANN, metavar="NAME",
                   help="the dense network: a notes' stack (pyramid, final, ...) or a spec string like 'dense:64@0.5'")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of every CI")
    _flags.add_training_args(p, seeds=8, epochs=20)
    _flags.add_data_args(p)
    _flags.add_output_args(p, out="runs/cnn_vs_ann", out_help="output folder",
                         overwrite_help="replace the study --out already holds")
    return p


def run(args) -> Path:
    from flaxray.errors import FlaxrayError
    from flaxray.report.study import format_diverged

    if args.cnn == args.ann:
        raise FlaxrayError(f"--cnn and --ann are both {args.cnn!r}; compare two different models")
    if len(args.lr or ()) > 1:  # None: --lr not given (the default rate)
        raise FlaxrayError("--lr takes one learning rate here: both models train with the same one")
    spec = _cli.study_spec(args, [args.cnn, args.ann], "cnn_vs_ann", test=True, confidence=args.confidence)
    result = _cli.run_study(args, spec, MODULE)
    analysis = result.test
    print()
    print(analysis["verdict"].replace("**", ""))
    for name, m in analysis["models"].items():
        s = m["summary"]
        print(f"{name}: test accuracy {s['accuracy']['mean']:.4f} ± {s['accuracy']['std']:.4f}, "
              f"AUC {s['auc']['mean']:.4f}; ensemble accuracy {m['ensemble']['accuracy']:.4f}, "
              f"AUC {m['ensemble']['auc']:.4f}")
    from flaxray.analysis.study import seeds_to_settle

    accuracy = [m["values"]["accuracy"] for m in analysis["models"].values()]
    n = seeds_to_settle(*accuracy)
    print(f"seeds a claim needs: {f'about {n}' if n else 'more than 512'} seeds per model would tell the two apart "
          "on test accuracy with 80 % power (a Mann-Whitney test at 0.05, simulated from the observed seeds)")
    ranking = ", ".join(f"{r['rank']}. {r['arch']}" for r in result.analysis["ranking"])
    print(f"on validation, by the {result.analysis['criterion']}: {ranking}")
    if diverged := format_diverged(result.record["diverged"]):
        print(diverged)
    out = result.out
    print(f"\nwrote {out / 'report.md'}, {out / 'report.html'}, {out / 'study.json'}, {out / 'curves.csv'}")
    return out


def main(argv=None) -> int:
    return _cli.main(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
