"""A race over architectures: seeds are spent only where the choice is still open.

    from flaxray.study.race import race
    from flaxray.study.study import Study
    result = race(Study(archs=catalogue.DEFAULT_CATALOGUE, seeds=tuple(range(12)), epochs=5), "runs/race")
    result.decision["kind"]              # "winner", "tie" or "budget"

Round 1 trains every arch on the first `round_seeds` seeds of `study.seeds`; each later round trains
the survivors on the next block, so a raced arch's seeds are exactly a fixed study's first seeds.
Each block of each arch is its own unit (`OUT/groups/<arch>/seeds-<lo>-<hi>/`, `flaxray.study.units`), so
the same call again reads every finished round back and continues where a killed race stopped.

The elimination test, after each round (all survivors then have the same n seeds):
an arch `a` is out when, for some other survivor `b`, a one-sided exact Mann-Whitney test says a
seed of `a` ends with a higher final val loss than a seed of `b` (P(a improves on b) < 0.5, the
rliable probability of improvement, which is this U statistic over n*n) at level
    alpha' = alpha / ((K - 1) * L)
with K the archs raced and L the planned looks at which the test can reject at all (a look with n
seeds cannot reach p < 1 / C(2n, n); such looks spend nothing). Why this is valid: take any arch `a`
that no other arch is stochastically better than (the best, or one tied with it). It is eliminated
only if one of the (K - 1) * L tests "a worse than b at look l" rejects, each of which rejects with
probability at most alpha' (exact for any continuous distribution; ties are counted in a's favour,
which only raises p), so by the union bound it survives the whole race with probability >= 1 - alpha,
whoever the leader is and however the looks depend on each other. Comparing against every survivor
(not only the leader) is free under that bound. The test is distribution-free, which seeds need:
their final losses are skewed and a diverged seed is +inf.

It stops when one arch is left ("winner"), when no pair of survivors could be told apart even at
`max_seeds` with every further seed as extreme as possible ("tie", exact: no more seeds can change
the survivors), or when the next round would exceed `budget` seed-epochs ("budget").
"""

from __future__ import annotations

import dataclasses
import functools
from math import comb
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from flaxray import results
from flaxray.analysis import diagnose, ranking, stats
from flaxray.analysis.study import analyse
from flaxray.errors import FlaxrayError
from flaxray.report.race import write_report
from flaxray.runtime.checkpoint import DEFAULT_EVERY
from flaxray.study import units
from flaxray.study.study import prepare

RACE_JSON = "race.json"


def looks(max_seeds: int, round_seeds: int) -> list[int]:
    """Seeds per arch after each planned round: R, 2R, ..., max_seeds (the last round may be short)."""
    return sorted({min(k, max_seeds) for k in range(round_seeds, max_seeds + round_seeds, round_seeds)})


def level(n_archs: int, planned: Sequence[int], alpha: float) -> tuple[float, list[int]]:
    """(alpha per test, the looks that can reject at it): Bonferroni over (K - 1) rivals x those looks.

    With n seeds per arch the smallest one-sided p is 1 / C(2n, n), so the first looks often cannot
    reject at any Bonferroni share and spend nothing: counted are the most looks, from some look on
    to the last, whose first look can reach alpha / ((K - 1) x their number). A function of the design
    alone (K, the looks, alpha), fixed before any seed is seen."""
    for i, n in enumerate(planned):
        share = alpha / (max(n_archs - 1, 1) * (len(planned) - i))
        if 1 / comb(2 * n, n) <= share:
            return share, list(planned[i:])
    return alpha / max(n_archs - 1, 1), []


@functools.cache
def _null_sf(m: int, n: int) -> np.ndarray:
    """P(U >= u), u = 0..m n, where U counts the pairs (x, y) with x > y among m x's and n y's drawn
    from one continuous distribution: the exact Mann-Whitney null. The largest of the m + n values is
    an x with probability m / (m + n), and then beats all n y's; otherwise it is a y and beats nothing."""
    pmf = np.ones(1)
    if m and n:
        pmf = np.zeros(m * n + 1)
        pmf[n:] += m / (m + n) * np.diff(-_null_sf(m - 1, n), append=0.0)
        pmf[: m * (n - 1) + 1] += n / (m + n) * np.diff(-_null_sf(m, n - 1), append=0.0)
    return np.cumsum(pmf[::-1])[::-1]


def worse_p(x, y) -> np.ndarray:
    """One-sided exact Mann-Whitney p that seeds of x end with higher (worse) losses than seeds of y,
    along the last axis (broadcast). A tie between an x and a y seed counts as x better, which can only
    raise p, so the exact no-ties null stays valid with ties and diverged seeds (NaN: +inf)."""
    x, y = (np.where(np.isnan(v), np.inf, v) for v in (np.asarray(x, float), np.asarray(y, float)))
    u = (x[..., :, None] > y[..., None, :]).sum(axis=(-1, -2))
    return _null_sf(x.shape[-1], y.shape[-1])[u]


def decide(values: Mapping[str, np.ndarray], n_archs: int, planned: Sequence[int], alpha: float) -> dict:
    """One look: {eliminated: {arch: (by, p)}, p_min: {arch: (by, p)}, separable: whether any pair of
    survivors could still be told apart at a later planned look}. `values[a]`: (n,) final val losses."""
    archs = list(values)
    v = np.stack([stats.as_scores(values[a]) for a in archs])
    share, active = level(n_archs, planned, alpha)
    p = worse_p(v[:, None, :], v[None, :, :])
    np.fill_diagonal(p, np.inf)
    by = p.argmin(axis=1)
    p_min = {a: (archs[by[i]], float(p[i, by[i]])) for i, a in enumerate(archs)}
    out = {a: bp for a, bp in p_min.items() if bp[1] <= share and v.shape[1] in active}  # a look not counted rejects nothing
    if len(out) == len(archs):  # a cycle of significant losses, never seen in practice: keep one
        out.pop(min(archs, key=lambda a: p_min[a][1]))
    n, rest = v.shape[1], v[[i for i, a in enumerate(archs) if a not in out]]

    def separable(m):  # at look m, in the most extreme continuation: every new seed of a worst, of b best
        x = np.concatenate([rest, np.full((len(rest), m - n), np.inf)], axis=1)
        y = np.concatenate([rest, np.full((len(rest), m - n), -np.inf)], axis=1)
        q = worse_p(x[:, None, :], y[None, :, :])
        np.fill_diagonal(q, np.inf)
        return bool((q <= share).any())

    later = [m for m in planned if m > n][::-1]  # the last look first: it separates the most, so usually alone
    return {"eliminated": out, "p_min": p_min, "level": share, "separable": any(separable(m) for m in later)}


def run_rounds(values_of: Callable[[str, Sequence[int]], np.ndarray], archs: Sequence[str], seeds: Sequence[int], *,
               round_seeds: int, epochs: int = 1, budget: float | None = None, alpha: float = 0.05,
               on_round: Callable[[dict], None] | None = None) -> dict:
    """The race itself, given `values_of(arch, seed_block)`, the final val losses of those seeds (trained,
    read back, or looked up in a finished study). Returns {rounds: [...], decision, seed_epochs}; each
    round: seeds (per arch), survivors (before it), values (so far), eliminated, p_min, level."""
    archs, seeds = list(archs), list(seeds)
    planned = looks(len(seeds), round_seeds)
    survivors, got, rounds, spent, lo = list(archs), {a: np.empty(0) for a in archs}, [], 0, 0
    while True:
        hi = planned[len(rounds)]
        for a in survivors:
            got[a] = np.concatenate([got[a], np.ravel(values_of(a, seeds[lo:hi])).astype(float)])
        spent += len(survivors) * (hi - lo) * epochs
        look = decide({a: got[a] for a in survivors}, len(archs), planned, alpha)
        rounds.append({"round": len(rounds) + 1, "seeds": hi, "survivors": list(survivors),
                       "values": {a: got[a].copy() for a in survivors}, "seed_epochs": spent, **look})
        survivors = [a for a in survivors if a not in look["eliminated"]]
        if on_round:
            on_round(rounds[-1])
        nxt = planned[len(rounds)] - hi if hi < planned[-1] else 0
        if len(survivors) == 1:
            kind = "winner"
        elif not nxt or not look["separable"]:
            kind = "tie"
        elif budget is not None and spent + len(survivors) * nxt * epochs > budget:
            kind = "budget"
        else:
            lo = hi
            continue
        return {"rounds": rounds, "seed_epochs": spent, "fixed_seed_epochs": len(archs) * len(seeds) * epochs,
                "max_seeds": len(seeds),
                "decision": {"kind": kind, "survivors": survivors, "seeds": hi}}


def leader(values: Mapping[str, np.ndarray], confidence: float = 0.95) -> tuple[str, dict]:
    """The project's one ranking (`ranking.rank`, `RANK_CRITERION`) of these per-seed final val losses:
    (its first arch, {arch: summary})."""
    summ = {a: {ranking.RANK_KEY: stats.describe(v, lower_is_better=True, confidence=confidence)}
            for a, v in values.items()}
    return ranking.rank(summ)[0]["arch"], summ


def evidence(race_record: dict, confidence: float = 0.95) -> dict:
    """Per round the leader, each survivor's IQM with its CI, P(leader improves on it) with its CI;
    and the decision's leader and sentence. Adds them into `race_record` and returns it."""
    for r in race_record["rounds"]:
        r["leader"], summ = leader(r["values"], confidence)
        r["intervals"] = {a: [summ[a][ranking.RANK_KEY][k] for k in ("iqm", "iqm_ci_low", "iqm_ci_high")]
                          for a in r["values"]}
        r["p_leader"] = {a: ranking.prob_improvement(r["values"][r["leader"]], v, confidence=confidence)
                         for a, v in r["values"].items() if a != r["leader"]}
    d, last = race_record["decision"], race_record["rounds"][-1]
    d["leader"] = leader({a: last["values"][a] for a in d["survivors"]}, confidence)[0]
    spent, fixed = race_record["seed_epochs"], race_record["fixed_seed_epochs"]
    cost = f"{spent} seed-epochs, {spent / fixed:.0%} of the fixed design's {fixed} (every arch x every seed)"
    names = ", ".join(f"**{a}**" for a in d["survivors"])
    d["text"] = {
        "winner": f"**{d['leader']}** wins the race: every other arch was eliminated by round {last['round']}",
        "tie": f"a tie between {names}: " + (
            f"at {d['seeds']} seeds per arch, the most allowed, the race's test does not tell them apart"
            if d["seeds"] == race_record["max_seeds"] else
            f"at {d['seeds']} seeds per arch no further seed up to {race_record['max_seeds']} could tell them apart")
        + f" (leader by the ranking: **{d['leader']}**)",
        "budget": f"budget spent with {names} still in the race (leader by the ranking: **{d['leader']}**)",
    }[d["kind"]] + f"; {cost}."
    return race_record


@dataclasses.dataclass
class RaceResult:
    out: Path
    record: dict  # race.json's content
    groups: dict[str, list]  # arch -> its units (flaxray.study.units.Group), one per round it ran
    reused: list[str]

    @property
    def decision(self) -> dict:
        return self.record["decision"]


def block_dir(out, arch: str, seeds: Sequence[int]) -> Path:
    return units.unit_dir(out, arch) / f"seeds-{seeds[0]}-{seeds[-1]}"


def merged(blocks: list) -> "units.Group":
    """An arch's rounds as one group: its seeds in order, each curve stacked over seeds."""
    first = blocks[0]
    return units.Group(first.name, first.config, first.settings, [s for g in blocks for s in g.seeds],
                       {k: np.concatenate([g.history[k] for g in blocks]) for k in first.history},
                       np.concatenate([g.diverged for g in blocks]), first.folder.parent)


def race(study, out, *, round_seeds: int = 3, budget: float | None = None, progress: bool = True,
         checkpoint_every: int | str = DEFAULT_EVERY, chunk: int | None = None, cache_dir=None, info: Mapping | None = None,
         prepared: Any = None, on_round: Callable[[dict], None] | None = None, strategy=None) -> RaceResult:
    """Race `study.archs` over the seeds `study.seeds` (in order, `round_seeds` a round) into `out`:
    trains (or reads back) each round's units, writes race.json after every round, then the report.

    Args:
      study: the archs, the seeds (at most), the settings; alpha = 1 - study.confidence.
      out: the race's folder.
      round_seeds: seeds each arch still raced gets per round.
      budget: seed-epochs at most (None: the fixed design's).
      on_round: called with each round's record as it ends.
      progress, checkpoint_every, chunk, cache_dir, strategy, info, prepared: as `flaxray.run`'s.
    Returns:
      A `RaceResult`: its folder, race.json's record, each arch's units and what was reused.
    """
    check(study, round_seeds, budget)
    out = Path(out)
    prepared = prepared or prepare(study, out, progress=progress, checkpoint_every=checkpoint_every, chunk=chunk,
                                   cache_dir=cache_dir, strategy=strategy)
    trained, reused = {a: [] for a in study.archs}, []

    def values_of(arch, block):
        (group,), was_reused = units.train_unit(arch, prepared.configs[arch], study.settings, block,
                                                block_dir(out, arch, block), prepared.data, prepared.dataset,
                                                progress=progress, checkpoint_every=checkpoint_every, chunk=chunk,
                                                strategy=strategy)
        trained[arch].append(group)
        reused.extend([f"{arch} seeds {block[0]}-{block[-1]}"] if was_reused else [])
        return ranking.per_seed_values(group.history, diverged=group.diverged > 0)[ranking.RANK_KEY]

    def record_round(r):  # a killed race leaves the rounds it finished in race.json
        results.write_json(out / RACE_JSON, {"status": "running", "rounds": rounds_so_far + [r]})
        rounds_so_far.append(r)
        if progress and not results.elsewhere():
            gone = ", ".join(f"{a} (p {p:.2g} vs {b})" for a, (b, p) in r["eliminated"].items()) or "none"
            print(f"round {r['round']}: {len(r['survivors'])} archs at {r['seeds']} seeds, out: {gone}", flush=True)
        if on_round:
            on_round(r)

    rounds_so_far: list = []
    out.mkdir(parents=True, exist_ok=True)
    record = evidence(run_rounds(values_of, study.archs, study.seeds, round_seeds=round_seeds, epochs=study.epochs,
                                 budget=budget, alpha=1 - study.confidence, on_round=record_round), study.confidence)
    record.update(status="complete", spec=study.record(), round_seeds=round_seeds, budget=budget,
                  alpha=1 - study.confidence, planned_looks=looks(len(study.seeds), round_seeds),
                  environment=results.environment(), data=prepared.dataset.summary, **dict(info or {}))
    results.write_json(out / RACE_JSON, record)
    groups = {a: merged(blocks) for a, blocks in trained.items() if blocks}
    units.write_curves(out / "curves.csv", list(groups.values()))
    analysis = analyse({a: g.history for a, g in groups.items()},
                       baseline=diagnose.baseline_loss(prepared.dataset.train.y,
                                                       next(iter(groups.values())).config.class_weight),
                       confidence=study.confidence, seeds={a: g.seeds for a, g in groups.items()})
    if not results.elsewhere():  # a multi-process race: process 0 writes the report
        write_report(out, record, analysis, study, prepared.dataset)
    return RaceResult(out, record, trained, reused)


def check(study, round_seeds: int, budget: float | None) -> None:
    """The race's own refusals, one line each, before anything is trained."""
    if study.decompose or study.test or study.n_settings > 1:
        raise FlaxrayError("--race compares archs at one setting (one value of each of --lr, --dropout, "
                           "--weight-decay, --momentum, --early-stopping), without --decompose")
    if len(study.archs) < 2:
        raise FlaxrayError("--race needs at least two archs")
    if not 1 <= round_seeds <= len(study.seeds):
        raise FlaxrayError(f"--round-seeds must be between 1 and --max-seeds ({len(study.seeds)}), got {round_seeds}")
    first = len(study.archs) * round_seeds * study.epochs
    if budget is not None and budget < first:
        raise FlaxrayError(f"--budget {budget:g} seed-epochs does not cover round 1: {len(study.archs)} archs x "
                           f"{round_seeds} seeds x {study.epochs} epochs = {first}")
