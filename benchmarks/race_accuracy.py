"""Is the race right? Replays of races on a finished fixed study's recorded seeds, without retraining.

    python -m benchmarks.race_accuracy runs/fixed_s12_e3                 # 500 replays, 3 seeds a round
    python -m benchmarks.race_accuracy runs/fixed_s12_e3 --replays 2000 --round-seeds 4
    python -m benchmarks.race_accuracy --identical 14 --replays 2000     # the error rates, simulated

The fixed study (any architecture search, every arch with the same N seeds) is the reference: its
winner is the first of its ranking (`ranking.RANK_CRITERION`), its tie the archs whose P(winner improves
on them) has a CI that includes 0.5 (the report's "not told apart"). Each replay gives every arch its
N recorded final val losses in a random order (the seeds a race would have drawn, without
replacement, so a race that reaches N seeds sees exactly the fixed study's values; with --resample
bootstrap, N drawn with replacement: a fresh sample, on which the fixed design is replayed too) and races them
(`flaxray.study.race.run_rounds`, the race's own code). Beside it: one seed per arch (the notes' method;
exact, `ranking.one_seed_win_probability` over the recorded seeds) and a fixed study with only
--round-seeds seeds (the race's first round, ranked as the search ranks). It prints a markdown table:
how often each picks the winner, or a member of the tie, and the seed-epochs it spends.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import scipy.stats

from flaxray import results
from flaxray.study import race
from flaxray.analysis import ranking


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.race_accuracy", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("study", nargs="?", help="a finished architecture search's folder (its study.json)")
    p.add_argument("--identical", type=int, default=None, metavar="K",
                   help="instead: --replays races of K identical archs (normal per-seed values, 12 seeds), "
                   "and how often one given arch, and any arch, is eliminated")
    p.add_argument("--replays", type=int, default=500, help="races replayed on resampled seed orders")
    p.add_argument("--round-seeds", type=int, default=3, help="seeds per arch per round")
    p.add_argument("--confidence", type=float, default=0.95, help="the race's alpha is 1 - this")
    p.add_argument("--resample", choices=("permute", "bootstrap"), default="permute",
                   help="permute: each arch's recorded seeds in a random order (a race reaching N seeds sees "
                   "the fixed study's values); bootstrap: N drawn with replacement (a fresh sample of seeds, "
                   "on which a fixed study is replayed too)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def reference(study: dict) -> tuple[dict[str, np.ndarray], str, set[str]]:
    """The fixed study's per-seed final val losses by arch, its winner and its statistical tie."""
    a = study["analysis"]
    values = {arch: np.array([np.nan if v is None else v for v in d[ranking.RANK_KEY]], float)
              for arch, d in a["values"].items()}
    m = a["improvement"]
    winner = m["archs"][0]  # improvement is in ranking order
    tie = {winner} | {b for j, b in enumerate(m["archs"]) if j and (m["low"][0][j] is None or m["low"][0][j] <= 0.5)}
    return values, winner, tie


def rate(hits: int, n: int) -> str:
    """A share with its 95 % Clopper-Pearson interval (over the replays)."""
    ci = scipy.stats.binomtest(hits, n).proportion_ci(0.95)
    return f"{hits / n:.0%} [{ci.low:.0%}, {ci.high:.0%}]"


def replay(values: dict[str, np.ndarray], winner: str, tie: set[str], *, replays: int, round_seeds: int,
           epochs: int, confidence: float, resample: str = "permute", seed: int = 0,
           progress: bool = True) -> list[list[str]]:
    from tqdm.auto import tqdm

    archs, n = list(values), len(next(iter(values.values())))
    rng = np.random.default_rng(seed)
    fixed = len(archs) * n * epochs
    race_hits = {"winner": 0, "tie": 0, "survives": 0}
    few_hits, all_hits = {"winner": 0, "tie": 0}, {"winner": 0, "tie": 0}
    spent, kinds = [], {"winner": 0, "tie": 0, "budget": 0}
    for _ in tqdm(range(replays), desc="replays", disable=not progress):
        order = {a: values[a][rng.permutation(n) if resample == "permute" else rng.integers(0, n, n)] for a in archs}
        r = race.run_rounds(lambda a, block: order[a][block], archs, range(n), round_seeds=round_seeds,
                            epochs=epochs, alpha=1 - confidence)
        last = r["rounds"][-1]["values"]
        pick = race.leader({a: last[a] for a in r["decision"]["survivors"]}, confidence)[0]
        race_hits["winner"] += pick == winner
        race_hits["tie"] += pick in tie
        race_hits["survives"] += winner in r["decision"]["survivors"]
        kinds[r["decision"]["kind"]] += 1
        spent.append(r["seed_epochs"])
        few = race.leader({a: order[a][:round_seeds] for a in archs}, confidence)[0]
        few_hits["winner"] += few == winner
        few_hits["tie"] += few in tie
        full = race.leader(order, confidence)[0]  # with "permute", the fixed study itself
        all_hits["winner"] += full == winner
        all_hits["tie"] += full in tie
    one = ranking.one_seed_win_probability(values)
    mean_spent = float(np.mean(spent))
    return [
        ["race", rate(race_hits["winner"], replays), rate(race_hits["tie"], replays),
         f"{mean_spent:.0f} ({mean_spent / fixed:.0%}), {min(spent)}..{max(spent)}",
         f"winner kept {race_hits['survives'] / replays:.0%}; ends: " + ", ".join(f"{k} {v}" for k, v in kinds.items())],
        [f"fixed, {round_seeds} seeds per arch", rate(few_hits["winner"], replays), rate(few_hits["tie"], replays),
         f"{len(archs) * round_seeds * epochs} ({round_seeds / n:.0%})", "the race's round 1, ranked"],
        ["one seed per arch", f"{one[winner]:.0%} (exact)", f"{sum(one[a] for a in tie):.0%} (exact)",
         f"{len(archs) * epochs} ({1 / n:.0%})", "the notes' method"],
        [f"fixed, {n} seeds per arch", rate(all_hits["winner"], replays), rate(all_hits["tie"], replays),
         f"{fixed} (100%)", "the study itself" if resample == "permute" else "a fresh sample of its seeds"],
    ]


def identical(k: int, *, replays: int, round_seeds: int, confidence: float, seed: int = 0) -> str:
    """The race's error rates where every elimination is false: K archs of one distribution."""
    rng, one, some = np.random.default_rng(seed), 0, 0
    for _ in range(replays):
        table = rng.normal(size=(k, 12))
        r = race.run_rounds(lambda a, block: table[a][block], range(k), range(12), round_seeds=round_seeds,
                            alpha=1 - confidence)
        one += 0 not in r["decision"]["survivors"]
        some += len(r["decision"]["survivors"]) < k
    return (f"{k} identical archs, {replays} races, 12 seeds, {round_seeds} a round, alpha {1 - confidence:g}: "
            f"a given arch eliminated {rate(one, replays)}, some arch eliminated {rate(some, replays)}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.identical:
        print(identical(args.identical, replays=args.replays, round_seeds=args.round_seeds,
                        confidence=args.confidence, seed=args.seed))
        return 0
    study = results.read_json(f"{args.study}/study.json") if args.study else {}
    if not study.get("analysis"):
        print(f"error: {args.study} holds no finished study (study.json with an analysis)", file=sys.stderr)
        return 2
    values, winner, tie = reference(study)
    epochs = study["spec"]["epochs"]
    rows = replay(values, winner, tie, replays=args.replays, round_seeds=args.round_seeds, epochs=epochs,
                  confidence=args.confidence, resample=args.resample, seed=args.seed, progress=not args.no_progress)
    env = results.environment()
    n = len(next(iter(values.values())))
    print(f"fixed study: {args.study}, {len(values)} archs x {n} seeds x {epochs} epochs; winner {winner}; "
          f"tie ({len(tie)}): {', '.join(sorted(tie))}")
    print(f"{args.replays} replays ({args.resample}), {args.round_seeds} seeds a round, alpha {1 - args.confidence:g}; study trained on "
          f"{study['environment']['device']} ({study['environment']['cpu']}); replayed with "
          + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + "\n")
    print("| method | picks the winner [95 % CI] | picks a member of the tie [95 % CI] | seed-epochs (share), range | note |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
