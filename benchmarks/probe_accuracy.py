"""How close auto's probe comes to each candidate's whole epoch, for several probe designs.

    python -m benchmarks.probe_accuracy --arch pyramid --steps 130 --seeds 4 8 --trials 3 --designs 4:16,4:32,4:64

At each S in --seeds, --trials times over, one process runs auto's probe once per design in --designs,
as a study of --probe-epochs epochs would (its budget, its early stop, not cached), then times every
candidate at whole epochs, taking turns for --verify-rounds rounds (`timing.whole_epochs`, what
`benchmarks.throughput --verify-rounds` judges auto by). A design is the two lengths timed, SHORT:LONG
(`probe.LENGTHS`, 4:16, is what the probe does for an epoch over `probe.WHOLE_STEPS` steps), or `whole`
(the epoch itself, what it does up to that). The designs and the check follow one another within
minutes, so a slow spell of a shared machine falls on all of them.

Per design: each candidate's predicted epoch over its whole epoch, less 1 (`error`); the same less the
mean over the candidates (`ranking error`: a bias common to all candidates does not change the choice);
the fastest whole epoch over the whole epoch of the candidate the design chose (`choice`, 1 at best);
and the probe's seconds of timing (`timing_s`, compilation apart). Prints a line per trial and design and a
summary per S; writes probe_accuracy.json into --out.

    python -m benchmarks.probe_accuracy --rechoose runs/probe-accuracy-130/probe_accuracy.json

replays every recorded probe (its timed calls) under other rules for the choice, and judges each by the
same whole epochs: the loop first among the tied (the rule before issue 31's fourth stop), the loop
last (`probe.preference`, now), the median round instead of the fastest, no tie at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from unittest import mock

from benchmarks.throughput import training_data
from benchmarks.timing import whole_epochs
from flaxray import results
from flaxray.errors import FlaxrayError
from flaxray.runtime import probe
from studies import _cli, _flags


def parse_design(text: str):
    if text == "whole":
        return text
    try:
        short, long = (int(n) for n in text.split(":"))
    except ValueError:
        raise FlaxrayError(f"--designs: {text!r} is not SHORT:LONG (e.g. 4:64) or 'whole'") from None
    if not 0 < short < long:
        raise FlaxrayError(f"--designs: {text!r} needs 0 < SHORT < LONG")
    return short, long


def design_lengths(design):
    """The probe timing `design`'s lengths whatever the epoch's length."""
    lengths = (lambda steps: (steps,)) if design == "whole" else (lambda steps: design)
    return mock.patch.object(probe, "lengths", lengths)


def trial(config, data, seeds: int, designs, epochs: int, rounds: int) -> dict:
    import jax

    from flaxray.core import settings
    from flaxray.runtime import plan

    lanes, study = settings.stack([settings.Settings()] * seeds), dataclasses.replace(config, epochs=epochs)
    probes = {}
    for name, design in designs.items():
        with design_lengths(design):
            chosen = plan.choose_strategy(study, data, lanes, "auto", seeds, jax.devices(), fresh=True)
        probes[name] = {"strategy": str(chosen["strategy"]), **chosen["evidence"]}
    whole = whole_epochs(config, data, seeds, rounds)  # keyed by the candidates' names, as the evidence is
    out = {"whole_epoch_s": whole, "designs": {}}
    for name, evidence in probes.items():
        error = {c: p / whole[c] - 1 for c, p in evidence["predicted_epoch_s"].items()}
        mean = statistics.fmean(error.values())
        out["designs"][name] = {
            "strategy": evidence["strategy"], "error": error,
            "ranking_error": {c: e - mean for c, e in error.items()},
            "choice": min(whole.values()) / whole[evidence["strategy"]], "timing_s": evidence["timing_s"],
            "rounds": evidence["rounds"], "evidence": evidence}
    return out


def summary(trials: list, name: str) -> dict:
    rows = [t["designs"][name] for t in trials]
    return {"mean_abs_ranking_error": statistics.fmean(abs(e) for r in rows for e in r["ranking_error"].values()),
            "max_abs_ranking_error": max(abs(e) for r in rows for e in r["ranking_error"].values()),
            "mean_error": statistics.fmean(e for r in rows for e in r["error"].values()),
            "choices": [round(r["choice"], 3) for r in rows],
            "timing_s": [round(r["timing_s"], 1) for r in rows]}


def loop_first(strategy) -> tuple:
    return (-1,) if strategy == "loop" else probe.preference(strategy)


RULES = {"loop first (before)": (min, loop_first, True), "loop last (now)": (min, probe.preference, True),
         "median round, loop last": (statistics.median, probe.preference, True),
         "no tie (the fastest)": (min, probe.preference, False)}


def rechoose(evidence: dict, steps: int, rule) -> str:
    """The candidate a recorded probe's timed calls give under `rule` (a statistic of the rounds, a tie
    order, whether the tie applies)."""
    stat, order, use_tie = rule
    predicted = {c: probe.predict({int(n): stat(ts) for n, ts in by.items()}, steps)
                 for c, by in evidence["seconds"].items()}
    key = lambda c: order(int(c) if c.isdigit() else c)  # noqa: E731 - a group size is recorded as text
    return probe.tied(predicted, probe.tie(evidence["noise"]) if use_tie else 0.0, key)[0]


def rechoose_all(path) -> None:
    report = results.read_json(path)
    if not report.get("by_seeds"):
        raise FlaxrayError(f"--rechoose: {path} holds no probe_accuracy.json of a finished run")
    steps = report.get("steps_per_epoch") or int(report["command"].split("--steps ")[1].split()[0])  # older runs
    print(f"{path}: every recorded probe chosen again under each rule, judged by its trial's whole epochs\n")
    print("| rule | choices >= 0.95 of the fastest | mean | lowest |\n|---|---|---|---|")
    for name, rule in RULES.items():
        got = [min(t["whole_epoch_s"].values()) / t["whole_epoch_s"][rechoose(d["evidence"], steps, rule)]
               for s in report["by_seeds"].values() for t in s["trials"] for d in t["designs"].values()]
        print(f"| {name} | {sum(g >= 0.95 for g in got)} of {len(got)} | {statistics.fmean(got):.3f} "
              f"| {min(got):.3f} |")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.probe_accuracy", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="pyramid", help="the arch trained (flaxray's name or spec)")
    p.add_argument("--seeds", type=int, nargs="+", default=[4], metavar="S", help="seed counts to probe for (> 1)")
    p.add_argument("--steps", type=int, default=None, help="training steps per epoch (the training split cut to fit)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--designs", default="4:16,4:64", help="probe designs, comma-separated: SHORT:LONG or whole")
    p.add_argument("--trials", type=int, default=3, help="probes of each design and checks per S")
    p.add_argument("--verify-rounds", type=int, default=3, metavar="R", help="rounds of whole epochs per check")
    p.add_argument("--probe-epochs", type=int, default=20, metavar="N", help="the study's epochs the probe is for")
    p.add_argument("--out", default="runs/probe-accuracy", metavar="DIR")
    p.add_argument("--rechoose", default=None, metavar="FILE", help="instead: a recorded probe_accuracy.json's probes "
                   "chosen again under other rules (see above)")
    p.add_argument("--no-progress", action="store_true")
    _flags.add_data_args(p)
    return p


def run(args) -> None:
    from flaxray.core.config import TrainConfig, device_data, train_count

    if args.rechoose:
        return rechoose_all(args.rechoose)
    designs = {d.strip(): parse_design(d.strip()) for d in args.designs.split(",") if d.strip()}
    if min(args.seeds) < 2 or min(args.trials, args.verify_rounds, args.probe_epochs) < 1:
        raise FlaxrayError("--seeds must be >= 2; --trials, --verify-rounds and --probe-epochs >= 1")
    config = TrainConfig(arch=args.arch, epochs=1, batch_size=args.batch_size)
    data = device_data(training_data(args, args.batch_size), eval_batch_size=config.eval_batch_size)
    by_seeds = {}
    for seeds in args.seeds:
        trials = []
        for k in range(args.trials):
            trials.append(trial(config, data, seeds, designs, args.probe_epochs, args.verify_rounds))
            for name, d in trials[-1]["designs"].items():
                errors = ", ".join(f"{c} {e:+.1%}" for c, e in d["error"].items())
                print(f"S={seeds} trial {k + 1} {name}: took {d['strategy']} ({d['choice']:.3f} of the fastest "
                      f"whole epoch), timing {d['timing_s']:.1f} s, errors {errors}", flush=True)
        by_seeds[seeds] = {"trials": trials, "summary": {name: summary(trials, name) for name in designs}}
        for name, s in by_seeds[seeds]["summary"].items():
            print(f"S={seeds} {name}: ranking error mean {s['mean_abs_ranking_error']:.1%}, max "
                  f"{s['max_abs_ranking_error']:.1%}; bias {s['mean_error']:+.1%}; choices {s['choices']}; "
                  f"timing {s['timing_s']} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results.write_json(out / "probe_accuracy.json", {
        "command": _cli.command("benchmarks.probe_accuracy", args), "environment": results.environment(),
        "config": config.record(), "steps_per_epoch": train_count(data) // args.batch_size,
        "designs": {n: list(d) if d != "whole" else d for n, d in designs.items()},
        "by_seeds": by_seeds})
    print(f"wrote {out / 'probe_accuracy.json'}")


def main(argv=None) -> int:
    return _cli.main(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
