"""What a race would spend on T tied and W worse archs if it knew which were tied: a reference for futility rules.

    python -m benchmarks.race_oracle --scenario 8:6:1.5 --replays 2000        # every look, keeping 1, 2, 3 tied archs
    python -m benchmarks.race_oracle --scenario 8:6:1.5 --round-seeds 2 --keep 1 --json oracle.json

The race (`flaxray.analysis.race`) eliminates by its exact test and lets archs leave by futility; what
costs seeds on T:W:D is that it cannot tell, from a few seeds, a tied arch that is redundant from a
best arch hidden behind a lucky worse one. This oracle knows. It races as the race does (the same
simulated seeds as `benchmarks.race_accuracy --scenario`: normal, sd 1, the worse archs D sd higher;
the same looks, levels and eliminations, `race.decide` with futility off), but after the look at L
seeds it keeps only the KEEP tied archs with the lowest mean so far and drops the others; it never
lets a worse arch leave untested, and it stops as soon as no worse arch is left to eliminate or none
could be told apart by the cap. Each row: its seed-epochs as a share of the fixed design's, and the
share of worse archs it eliminates, to set beside the race's (`race_accuracy`'s "not eliminated ...
of them not best"). Knowing which archs are tied does not make a rule optimal, and a rule that drops
tied archs at several looks can do better than any one row; the rows show what dropping them by a
given look buys and costs.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from benchmarks.race_accuracy import scenario
from flaxray import results
from flaxray.analysis import race
from flaxray.analysis.sequential import looks, spending


def oracle_race(values: np.ndarray, tied: int, keep: int, drop: int, round_seeds: int,
                alpha: float = 0.05) -> tuple[int, int]:
    """One race of `values` (K archs x max seeds; the first `tied` are the best group) by the oracle that
    keeps `keep` tied archs after the look at `drop` seeds: (seed-epochs spent, worse archs eliminated)."""
    k, cap = values.shape
    planned = looks(cap, round_seeds)
    levels = spending(k, planned, alpha)
    alive, spent, lo, eliminated = list(range(k)), 0, 0, 0
    for n in planned:
        spent += len(alive) * (n - lo)
        lo = n
        look = race.decide({i: values[i, :n] for i in alive}, levels, planned, futility=0.0)
        eliminated += sum(i >= tied for i in look["eliminated"])
        alive = [i for i in alive if i not in look["eliminated"]]
        if n == drop:
            best = sorted((i for i in alive if i < tied), key=lambda i: values[i, :n].mean())[:keep]
            alive = [i for i in alive if i >= tied or i in best]
        if not any(i >= tied for i in alive) or not look["separable"]:
            break
    return spent, eliminated


def bound(tied: int, worse: int, gap: float, *, keep: int, drop: int, replays: int, max_seeds: int = 12,
          round_seeds: int = 3, seed: int = 0) -> dict:
    """The oracle over `replays` simulated races: its mean share of the fixed design's seed-epochs (normal
    95 % interval) and the mean share of worse archs it eliminates."""
    rng = np.random.default_rng(seed)
    shift = np.repeat([0.0, gap], [tied, worse])[:, None]
    got = np.array([oracle_race(rng.normal(size=(tied + worse, max_seeds)) + shift, tied, keep, drop, round_seeds)
                    for _ in range(replays)], float)
    share = got[:, 0] / ((tied + worse) * max_seeds)
    half = 1.96 * share.std(ddof=1) / np.sqrt(replays) if replays > 1 else 0.0
    return {"keep": keep, "drop_after_seeds": drop, "seed_epochs_share": float(share.mean()),
            "seed_epochs_share_ci": [float(share.mean() - half), float(share.mean() + half)],
            "worse_eliminated_share": float(got[:, 1].sum() / max(worse * replays, 1))}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.race_oracle", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenario", type=scenario, default=(8, 6, 1.5), metavar="T:W:D",
                   help="T tied best archs and W archs worse by D sd (normal per-seed values)")
    p.add_argument("--keep", type=int, nargs="+", default=[1, 2, 3], help="tied archs the oracle keeps")
    p.add_argument("--max-seeds", type=int, default=12, help="the seeds an arch can get")
    p.add_argument("--round-seeds", type=int, default=3, help="seeds per arch per round, as the race's")
    p.add_argument("--replays", type=int, default=2000, help="simulated races per row")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated values")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if not 1 <= args.round_seeds <= args.max_seeds or args.replays < 1 or min(args.keep) < 1:
        p.error("--round-seeds must be in 1..--max-seeds, --replays and --keep at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    tied, worse, gap = args.scenario
    env = results.environment()
    print(f"{tied} tied archs, {worse} worse by {gap:g} sd; {args.replays} races, {args.max_seeds} seeds, "
          f"{args.round_seeds} a round, alpha 0.05; {env['device']} ({env['cpu']})\n")
    print("| tied archs kept | dropped after | seed-epochs share [95 % CI] | worse archs eliminated |\n"
          "|---|---|---|---|")
    rows = []
    for drop in looks(args.max_seeds, args.round_seeds)[:-1]:
        for keep in sorted(set(args.keep)):
            rows.append(bound(tied, worse, gap, keep=keep, drop=drop, replays=args.replays, max_seeds=args.max_seeds,
                              round_seeds=args.round_seeds, seed=args.seed))
            r = rows[-1]
            print(f"| {keep} | {drop} seeds | {r['seed_epochs_share']:.1%} [{r['seed_epochs_share_ci'][0]:.1%}, "
                  f"{r['seed_epochs_share_ci'][1]:.1%}] | {r['worse_eliminated_share']:.1%} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scenario": list(args.scenario), "round_seeds": args.round_seeds, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
