"""Is the race right, and what does it save? Replays of races, without retraining.

    python -m benchmarks.race_accuracy runs/fixed_s12_e3                 # 500 replays of a finished study
    python -m benchmarks.race_accuracy runs/fixed_s12_e3 --replays 2000 --round-seeds 4
    python -m benchmarks.race_accuracy --identical 14 --replays 2000     # the error rates, simulated
    python -m benchmarks.race_accuracy --scenario 8:6:1.5 --json race.json   # 8 tied archs, 6 worse by 1.5 sd

A finished fixed study (any architecture search, every arch with the same N seeds) is a reference:
its winner is the first of its ranking (`ranking.RANK_CRITERION`), its tie the archs whose P(winner
improves on them) has a CI that includes 0.5 (the report's "not told apart"). Each replay gives every
arch its N recorded final val losses in a random order (the seeds a race would have drawn, without
replacement, so a race that reaches N seeds sees exactly the fixed study's values; with --resample
bootstrap, N drawn with replacement: a fresh sample, on which the fixed design is replayed too).
--identical K and --scenario T:W:D simulate instead: normal per-seed values with sd 1, T archs (all K
with --identical) the best group, W worse by D sd; the truth is known, so every elimination of a best
arch is false. Each replay is raced by the race's own code (`flaxray.analysis.race.run_rounds`), with its
futility exit and without (`--futility 0`); its pick is its leader, the first by the ranking among the
archs raced to the end (`race.finalists`). Beside it: a fixed study with only --round-seeds seeds (the
race's first round, ranked), one seed per arch (the notes' method; exact over a study's recorded seeds)
and the fixed design itself. It prints a markdown table; --json FILE writes {method: its shares}, one key
per row as the table names it.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import scipy.stats

from flaxray import results
from flaxray.analysis import ranking
from flaxray.analysis import race


def scenario(text: str) -> tuple[int, int, float]:
    """T:W:D as (tied, worse, gap); argparse's one-line error otherwise."""
    try:
        tied, worse, gap = text.split(":")
        out = int(tied), int(worse), float(gap)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T:W:D (e.g. 8:6:1.5), got {text!r}") from None
    if out[0] < 1 or out[0] + out[1] < 2 or out[1] < 0:
        raise argparse.ArgumentTypeError(f"T >= 1 tied archs and at least 2 archs in all, got {text!r}")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.race_accuracy", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("study", nargs="?", help="a finished architecture search's folder (its study.json)")
    p.add_argument("--identical", type=int, default=None, metavar="K",
                   help="instead: races of K identical archs (normal per-seed values): how often one given arch, "
                   "and any arch, is eliminated")
    p.add_argument("--scenario", type=scenario, default=None, metavar="T:W:D",
                   help="instead: races of T tied best archs and W archs worse by D sd (normal per-seed values)")
    p.add_argument("--max-seeds", type=int, default=12, help="with --identical or --scenario: the seeds an arch can get")
    p.add_argument("--replays", type=int, default=500, help="races replayed (resampled or simulated)")
    p.add_argument("--round-seeds", type=int, default=3, help="seeds per arch per round")
    p.add_argument("--confidence", type=float, default=0.95, help="the race's alpha is 1 - this")
    p.add_argument("--futility", type=float, default=race.FUTILITY,
                   help="the futility gamma of row 'race' (default: the race's own, %(default)s; row 'race, futility off' is 0)")
    p.add_argument("--resample", choices=("permute", "bootstrap"), default="permute",
                   help="permute: each arch's recorded seeds in a random order (a race reaching N seeds sees "
                   "the fixed study's values); bootstrap: N drawn with replacement (a fresh sample of seeds, "
                   "on which a fixed study is replayed too)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling or simulation")
    p.add_argument("--json", default=None, metavar="FILE", help="also write {method: shares} to FILE")
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


def share(hits: int, n: int) -> dict:
    """A share with its 95 % Clopper-Pearson interval (over the replays)."""
    ci = scipy.stats.binomtest(int(hits), n).proportion_ci(0.95)
    return {"share": hits / n, "ci": [ci.low, ci.high]}


def rate(s: dict | None) -> str:
    if s is None:
        return ""
    return f"{s['share']:.1%} (exact)" if s.get("exact") else f"{s['share']:.1%} [{s['ci'][0]:.1%}, {s['ci'][1]:.1%}]"


class Tally:
    """One method's counts over the replays: picks, eliminations of best archs, seed-epochs."""

    def __init__(self, note: str):
        self.note, self.n, self.spent, self.hits, self.ends, self.sums = note, 0, [], {}, {}, {}

    def add(self, spent: float, **hits):
        self.n += 1
        self.spent.append(spent)
        for k, v in hits.items():
            self.hits[k] = self.hits.get(k, 0) + int(v)

    def end(self, kind: str, **counts):
        self.ends[kind] = self.ends.get(kind, 0) + 1
        for k, v in counts.items():
            self.sums[k] = self.sums.get(k, 0) + v

    def summary(self, fixed: float) -> dict:
        out = {k: share(v, self.n) for k, v in self.hits.items()}
        flat = {f"{k}_share": s["share"] for k, s in out.items()} | {f"{k}_ci": s["ci"] for k, s in out.items()}
        mean, half = np.mean(self.spent), 1.96 * np.std(self.spent, ddof=1) / np.sqrt(self.n) if self.n > 1 else 0.0
        return {**flat, "seed_epochs": float(mean), "seed_epochs_share": float(mean) / fixed,
                "seed_epochs_share_ci": [float(mean - half) / fixed, float(mean + half) / fixed],  # normal, of the mean
                "seed_epochs_range": [float(min(self.spent)), float(max(self.spent))], "replays": self.n,
                **({"ends": self.ends} if self.ends else {}), **{f"mean_{k}": v / self.n for k, v in self.sums.items()},
                "note": self.note}


def race_once(tally: Tally, table: dict, best: set, futility: float, *, round_seeds: int, epochs: int,
              confidence: float, winner=None) -> None:
    """One race on `table` (arch: its seeds in the order drawn) into `tally`."""
    n = len(next(iter(table.values())))
    r = race.run_rounds(lambda a, block: table[a][block], list(table), range(n), round_seeds=round_seeds,
                        epochs=epochs, alpha=1 - confidence, futility=futility)
    kept = r["decision"]["survivors"]
    sure = winner is None and set(kept) <= best  # any pick is a best arch: the ranking need not run
    pick = kept[0] if sure else race.leader(race.finalists(r), confidence)[0]  # the race's own pick
    first = min(best, key=list(table).index)  # "a given best arch": the first listed
    hits = {"tie": pick in best, "given_eliminated": first not in kept, "any_eliminated": not best <= set(kept)}
    if winner is not None:
        hits.update(winner=pick == winner, winner_kept=winner in kept)
    tally.add(r["seed_epochs"], **hits)
    tally.end(r["decision"]["kind"], tie_size=len(kept), worse_in_tie=len(set(kept) - best),
              left_by_futility=len(r["decision"]["futile"]))


def fixed_once(tally: Tally, table: dict, best: set, seeds: int, epochs: int, confidence: float, winner=None):
    """A fixed study of the first `seeds` seeds of every arch, ranked as the search ranks."""
    sure = winner is None and len(best) == len(table)
    pick = next(iter(best)) if sure else race.leader({a: v[:seeds] for a, v in table.items()}, confidence)[0]
    tally.add(len(table) * seeds * epochs, tie=pick in best, **({} if winner is None else {"winner": pick == winner}))


def run(draw, archs: list, best: set, *, n: int, replays: int, round_seeds: int, epochs: int, confidence: float,
        futility: float, winner=None, full_note: str = "the fixed design", progress: bool = True) -> dict:
    """{method: summary} over `replays` tables `draw(rng)` ({arch: n per-seed values in the order drawn})."""
    from tqdm.auto import tqdm

    tallies = {"race": Tally(f"futility gamma {futility:g}"), "race, futility off": Tally("futility gamma 0"),
               f"fixed, {round_seeds} seeds per arch": Tally("the race's round 1, ranked"),
               f"fixed, {n} seeds per arch": Tally(full_note)}
    names = list(tallies)
    for _ in tqdm(range(replays), desc="replays", disable=not progress):
        table = draw()
        for name, gamma in ((names[0], futility), (names[1], 0.0)):
            race_once(tallies[name], table, best, gamma, round_seeds=round_seeds, epochs=epochs,
                      confidence=confidence, winner=winner)
        fixed_once(tallies[names[2]], table, best, round_seeds, epochs, confidence, winner)
        fixed_once(tallies[names[3]], table, best, n, epochs, confidence, winner)
    return {name: t.summary(len(archs) * n * epochs) for name, t in tallies.items()}


def simulate(tied: int, worse: int, gap: float, *, replays: int, max_seeds: int = 12, round_seeds: int = 3,
             confidence: float = 0.95, futility: float = race.FUTILITY, seed: int = 0, progress: bool = True) -> dict:
    """--scenario T:W:D (and --identical K = K:0:0): archs t0.. (the best group, mean 0) and w0.. (mean D)."""
    rng = np.random.default_rng(seed)
    archs = [f"t{i}" for i in range(tied)] + [f"w{i}" for i in range(worse)]
    shift = np.array([0.0] * tied + [gap] * worse)[:, None]

    def draw():
        return dict(zip(archs, rng.normal(size=(len(archs), max_seeds)) + shift))

    return run(draw, archs, set(archs[:tied]), n=max_seeds, replays=replays, round_seeds=round_seeds, epochs=1,
               confidence=confidence, futility=futility, progress=progress)


def replay(values: dict[str, np.ndarray], winner: str, tie: set[str], *, replays: int, round_seeds: int, epochs: int,
           confidence: float, futility: float = race.FUTILITY, resample: str = "permute", seed: int = 0,
           progress: bool = True) -> dict:
    """Races on a finished study's recorded seeds (see the module's docstring): {method: summary}."""
    archs, n = list(values), len(next(iter(values.values())))
    rng = np.random.default_rng(seed)

    def draw():
        return {a: values[a][rng.permutation(n) if resample == "permute" else rng.integers(0, n, n)] for a in archs}

    out = run(draw, archs, tie, n=n, replays=replays, round_seeds=round_seeds, epochs=epochs, confidence=confidence,
              futility=futility, winner=winner, progress=progress,
              full_note="the study itself" if resample == "permute" else "a fresh sample of its seeds")
    one = ranking.one_seed_win_probability(values)  # exact over the recorded seeds: no replays
    out["one seed per arch"] = {"winner_share": one[winner], "tie_share": sum(one[a] for a in tie), "exact": True,
                                "seed_epochs": len(archs) * epochs, "seed_epochs_share": 1 / n, "note": "the notes' method"}
    return out


def table(methods: dict, columns: list[tuple[str, str]]) -> str:
    """The markdown table: a row per method, `columns` (header, key) of shares, then seed-epochs and a note."""
    lines = ["| method | " + " | ".join(h for h, _ in columns) + " | seed-epochs (share [95 % CI]), range | note |",
             "|---|" + "---|" * (len(columns) + 2)]
    for name, m in methods.items():
        cells = [rate(None if f"{k}_share" not in m else
                      {"share": m[f"{k}_share"], "ci": m.get(f"{k}_ci"), "exact": m.get("exact")}) for _, k in columns]
        ci = m.get("seed_epochs_share_ci", [m["seed_epochs_share"]] * 2)
        spent = f"{m['seed_epochs']:.0f} ({m['seed_epochs_share']:.1%}" + (
            f" [{ci[0]:.1%}, {ci[1]:.1%}])" if ci[1] > ci[0] else ")")
        if "seed_epochs_range" in m and m["seed_epochs_range"][0] != m["seed_epochs_range"][1]:
            spent += ", {:.0f}..{:.0f}".format(*m["seed_epochs_range"])
        note = m["note"] + ("; ends: " + ", ".join(f"{k} {v}" for k, v in m["ends"].items()) if "ends" in m else "")
        if "mean_tie_size" in m:
            note += (f"; not eliminated {m['mean_tie_size']:.1f} (of them not best {m['mean_worse_in_tie']:.1f}, "
                     f"left by futility {m['mean_left_by_futility']:.1f})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {spent} | {note} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    env = results.environment()
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    settings = dict(replays=args.replays, round_seeds=args.round_seeds, confidence=args.confidence,
                    futility=args.futility, seed=args.seed, progress=not args.no_progress)
    if args.identical or args.scenario:
        tied, worse, gap = (args.identical, 0, 0.0) if args.identical else args.scenario
        methods = simulate(tied, worse, gap, max_seeds=args.max_seeds, **settings)
        print(f"{tied} best archs and {worse} worse by {gap:g} sd, normal per-seed values; {args.replays} races, "
              f"{args.max_seeds} seeds, {args.round_seeds} a round, alpha {1 - args.confidence:g}; "
              f"{env['device']} ({env['cpu']}); {versions}\n")
        print(table(methods, [("picks a best arch [95 % CI]", "tie"), ("a given best arch eliminated", "given_eliminated"),
                              ("any best arch eliminated", "any_eliminated")]))
    else:
        study = results.read_json(f"{args.study}/study.json") if args.study else {}
        if not study.get("analysis"):
            print(f"error: {args.study} holds no finished study (study.json with an analysis)", file=sys.stderr)
            return 2
        values, winner, tie = reference(study)
        epochs, n = study["spec"]["epochs"], len(next(iter(values.values())))
        methods = replay(values, winner, tie, epochs=epochs, resample=args.resample, **settings)
        print(f"fixed study: {args.study}, {len(values)} archs x {n} seeds x {epochs} epochs; winner {winner}; "
              f"tie ({len(tie)}): {', '.join(sorted(tie))}")
        print(f"{args.replays} replays ({args.resample}), {args.round_seeds} seeds a round, alpha {1 - args.confidence:g}; "
              f"study trained on {study['environment']['device']} ({study['environment']['cpu']}); replayed with "
              f"{versions}\n")
        print(table(methods, [("picks the winner [95 % CI]", "winner"), ("picks a member of the tie [95 % CI]", "tie"),
                              ("keeps the winner", "winner_kept")]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(methods, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
