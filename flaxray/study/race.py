"""A race over architectures: seeds are spent only where the choice is still open.

    from flaxray.study.race import race
    from flaxray.study.study import Study
    result = race(Study(archs=catalogue.DEFAULT_CATALOGUE, seeds=tuple(range(12)), epochs=5), "runs/race")
    result.decision["kind"]              # "winner", "tie" or "budget"

Round 1 trains every arch on the first `round_seeds` seeds of `study.seeds`; each later round trains
the archs still raced on the next block, so a raced arch's seeds are exactly a fixed study's first seeds.
Each block of each arch is its own unit (`OUT/groups/<arch>/seeds-<lo>-<hi>/`, `flaxray.study.units`), so
the same call again reads every finished round back and continues where a killed race stopped.

After each round (every arch still raced then has the same n seeds), two rules:

- Elimination: an arch `a` is out when, for some other arch still raced `b`, a one-sided exact
  Mann-Whitney test says a seed of `a` ends with a higher final val loss than a seed of `b`
  (P(a improves on b) < 0.5) at this look's level (`flaxray.analysis.sequential.spending`: each
  rival's alpha / (K - 1) spent over the looks whose exact p-value lattice can reach it). Valid
  because: take any arch `a` that no other arch is stochastically better than. It is eliminated only
  if one of its tests "a worse than b at look l" rejects; defined on the first n_l seeds of a and b,
  each rejects with probability at most its level (exact for any continuous distribution; ties count
  in a's favour, which only raises p), and the levels sum to alpha / (K - 1) per rival, so by the
  union bound a survives with probability >= 1 - alpha, whoever the leader is, however the looks
  depend on each other, and whichever looks the race actually reaches. Comparing against every arch
  still raced (not only the leader) is free under that bound. The test is distribution-free, which
  seeds need: their final losses are skewed and a diverged seed is +inf.
- Futility (non-binding): with pw[i, j] the predictive power of "i eliminated by j" by the last look
  (`sequential.predictive_power`, simulated from the seeds seen), an arch is needed while it may be
  eliminated (pw[i, j] >= `futility`, gamma, for some j), or while it is one of the `CHALLENGERS`
  strongest challengers j (largest pw[i, j], however small; equal ones to the anchor, then by
  `improvement`) of an arch i that may be; at the first look every such challenger (either way
  round: at 3 seeds the best arch, never likely to be eliminated, may trail a lucky one). Any other
  arch leaves into the declared tie: trained no further, never eliminated. One rival suffices to
  throw a worse arch out; the other tied archs that could are redundant. The arch the others are
  raced against (the anchor: the highest mean P(improvement), `sequential.improvement`) stays. Why
  this cannot raise the false-elimination rate: the bound above counts every test at every planned
  look as if all were taken; a futility exit only removes tests (those of the arch that left, and
  against it) and never lowers a level, so the set of ways an arch can be eliminated only shrinks,
  whichever archs leave and by whatever rule: the guarantee holds whether it is followed or not.

It stops when one arch is left and none left by futility ("winner"); when at most the anchor is
still raced, or no pair still raced could be told apart even at `max_seeds` with every further seed
as extreme as possible, or `max_seeds` is reached ("tie": the archs still raced and those that left by
futility); or when the next round would exceed `budget` seed-epochs ("budget").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from flaxray import results
from flaxray.analysis import diagnose, ranking, stats
from flaxray.analysis.sequential import improvement, looks, needed, predictive_power, spending, worse_p
from flaxray.analysis.study import analyse
from flaxray.errors import FlaxrayError
from flaxray.report.race import write_report
from flaxray.runtime.checkpoint import DEFAULT_EVERY
from flaxray.study import units
from flaxray.study.study import prepare

RACE_JSON = "race.json"
FUTILITY = 0.1  # gamma (0: off): an arch needed neither to be eliminated nor to eliminate leaves into the tie
CHALLENGERS = 2  # after the first look, the strongest challengers each arch that may still be eliminated keeps


def decide(values: Mapping[str, np.ndarray], levels: Mapping[int, float], planned: Sequence[int], *,
           futility: float = FUTILITY) -> dict:
    """One look. `values[a]`: (n,) final val losses of each arch still raced; `levels`: `spending`'s.
    Returns {eliminated: {arch: (by, p)}, p_min: {arch: (by, p)}, level, power: {arch: (by, power)},
    anchor, futile: {arch: (by, power)}, separable: whether any pair still raced after this look could
    be told apart at a later planned look}."""
    archs = list(values)
    v = np.stack([stats.as_scores(values[a]) for a in archs])
    n = v.shape[1]
    level = levels.get(n, 0.0)  # a look that cannot reject has level 0: no p reaches it
    p = worse_p(v[:, None, :], v[None, :, :])
    np.fill_diagonal(p, np.inf)
    by = p.argmin(axis=1)
    p_min = {a: (archs[by[i]], float(p[i, by[i]])) for i, a in enumerate(archs)}
    out = {a: bp for a, bp in p_min.items() if bp[1] <= level}
    if len(out) == len(archs):  # a cycle of significant losses, never seen in practice: keep one
        out.pop(min(archs, key=lambda a: p_min[a][1]))
    names = [a for a in archs if a not in out]
    rest = v[[archs.index(a) for a in names]]
    later = [m for m in planned if m > n]
    power, anchor, futile = {}, None, {}
    if later and len(names) > 1:
        imp = improvement(rest)
        anchor = names[int(np.argmax(imp))]
        if futility > 0:
            pw = predictive_power(rest, levels)  # [i, j]: P(i eliminated by j)
            either = np.maximum(pw, pw.T)
            power = {a: (names[int(either[i].argmax())], float(either[i].max())) for i, a in enumerate(names)}
            order = sorted(range(len(names)), key=lambda i: (names[i] != anchor, -imp[i], i))  # anchor, then the best
            keep = needed(pw, futility, order, top=None if n == planned[0] else CHALLENGERS)
            own = pw - np.eye(len(pw))  # its own elimination: by whom most likely (never itself), how likely
            futile = {a: (names[int(own[i].argmax())], float(pw[i].max()))
                      for i, a in enumerate(names) if a != anchor and not keep[i]}
    raced = rest[[names.index(a) for a in names if a not in futile]]

    def separable(m):  # at look m, in the most extreme continuation: every new seed of a worst, of b best
        x = np.concatenate([raced, np.full((len(raced), m - n), np.inf)], axis=1)
        y = np.concatenate([raced, np.full((len(raced), m - n), -np.inf)], axis=1)
        q = worse_p(x[:, None, :], y[None, :, :])
        np.fill_diagonal(q, np.inf)
        return bool((q <= levels.get(m, 0.0)).any())

    return {"eliminated": out, "p_min": p_min, "level": level, "power": power, "anchor": anchor, "futile": futile,
            "separable": any(separable(m) for m in later[::-1])}  # the last look first: it separates the most


def run_rounds(values_of: Callable[[str, Sequence[int]], np.ndarray], archs: Sequence[str], seeds: Sequence[int], *,
               round_seeds: int, epochs: int = 1, budget: float | None = None, alpha: float = 0.05,
               futility: float = FUTILITY, on_round: Callable[[dict], None] | None = None) -> dict:
    """The race itself, given `values_of(arch, seed_block)`, the final val losses of those seeds (trained,
    read back, or looked up in a finished study). Returns {rounds: [...], decision, seed_epochs, levels};
    each round: seeds (per arch), survivors (the archs raced in it), values (so far), eliminated, futile,
    p_min, power, anchor, level. `futility` 0 turns the futility exit off."""
    archs, seeds = list(archs), list(seeds)
    planned = looks(len(seeds), round_seeds)
    levels = spending(len(archs), planned, alpha)
    survivors, got, rounds, spent, lo, left = list(archs), {a: np.empty(0) for a in archs}, [], 0, 0, {}
    while True:
        hi = planned[len(rounds)]
        for a in survivors:
            got[a] = np.concatenate([got[a], np.ravel(values_of(a, seeds[lo:hi])).astype(float)])
        spent += len(survivors) * (hi - lo) * epochs
        look = decide({a: got[a] for a in survivors}, levels, planned, futility=futility)
        rounds.append({"round": len(rounds) + 1, "seeds": hi, "survivors": list(survivors),
                       "values": {a: got[a].copy() for a in survivors}, "seed_epochs": spent, **look})
        left.update({a: hi for a in look["futile"]})
        survivors = [a for a in survivors if a not in look["eliminated"] and a not in look["futile"]]
        if on_round:
            on_round(rounds[-1])
        nxt = planned[len(rounds)] - hi if hi < planned[-1] else 0
        if len(survivors) == 1 and not left:
            kind = "winner"
        elif len(survivors) == 1 or not nxt or not look["separable"]:
            kind = "tie"
        elif budget is not None and spent + len(survivors) * nxt * epochs > budget:
            kind = "budget"
        else:
            lo = hi
            continue
        return {"rounds": rounds, "seed_epochs": spent, "fixed_seed_epochs": len(archs) * len(seeds) * epochs,
                "max_seeds": len(seeds), "levels": {str(n): lv for n, lv in levels.items()}, "futility": futility,
                "challengers": CHALLENGERS,
                "decision": {"kind": kind, "survivors": [a for a in archs if a in survivors or a in left],
                             "seeds": hi, "futile": left}}


def finalists(race_record: dict) -> dict[str, np.ndarray]:
    """The archs raced to the end, with their seeds (all as many): the leader is ranked among these, as
    without futility exits. One that left has fewer seeds, and the ranking's interval of a few is too
    narrow to compare it fairly (a percentile bootstrap of 3 seeds spans about their range)."""
    d, last = race_record["decision"], race_record["rounds"][-1]
    return {a: np.asarray(last["values"][a], float) for a in d["survivors"] if a not in d["futile"]}


def tie_values(race_record: dict) -> dict[str, np.ndarray]:
    """Every arch of the decision (raced to the end or left by futility) with all the seeds it got."""
    return {a: np.asarray(next(r["values"][a] for r in race_record["rounds"][::-1] if a in r["values"]), float)
            for a in race_record["decision"]["survivors"]}


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
    d["leader"] = leader(finalists(race_record), confidence)[0]
    spent, fixed = race_record["seed_epochs"], race_record["fixed_seed_epochs"]
    cost = f"{spent} seed-epochs, {spent / fixed:.0%} of the fixed design's {fixed} (every arch x every seed)"
    bold = lambda archs: ", ".join(f"**{a}**" for a in archs)  # noqa: E731
    raced = [a for a in d["survivors"] if a not in d["futile"]]
    gone = "".join(f"; **{a}** left by futility at {n} seeds" for a, n in d["futile"].items())
    if gone:  # why they left, once
        gone += (f" (each was unlikely to be eliminated, a predictive power below {race_record['futility']:g} by "
                 f"{race_record['max_seeds']} seeds, and not needed to eliminate another)")
    why = (f"no arch is left to race **{raced[0]}** against at {d['seeds']} seeds per arch" if len(raced) == 1 else
           f"at {d['seeds']} seeds per arch, the most allowed, the race's test does not tell {bold(raced)} apart"
           if d["seeds"] == race_record["max_seeds"] else
           f"at {d['seeds']} seeds per arch no further seed up to {race_record['max_seeds']} could tell "
           f"{bold(raced)} apart")
    lead = f"leader by the ranking{' among the archs raced to the end' if gone else ''}: **{d['leader']}**"
    d["text"] = {
        "winner": f"**{d['leader']}** wins the race: every other arch was eliminated by round {last['round']}",
        "tie": f"a tie between {bold(d['survivors'])}: {why}{gone} ({lead})",
        "budget": f"budget spent with {bold(raced)} still in the race{gone} ({lead})",
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


def race(study, out, *, round_seeds: int = 3, budget: float | None = None, futility: float = FUTILITY, progress: bool = True,
         checkpoint_every: int | str = DEFAULT_EVERY, chunk: int | None = None, cache_dir=None, info: Mapping | None = None,
         prepared: Any = None, on_round: Callable[[dict], None] | None = None, strategy=None) -> RaceResult:
    """Race `study.archs` over the seeds `study.seeds` (in order, `round_seeds` a round) into `out`:
    trains (or reads back) each round's units, writes race.json after every round, then the report.

    Args:
      study: the archs, the seeds (at most), the settings; alpha = 1 - study.confidence.
      out: the race's folder.
      round_seeds: seeds each arch still raced gets per round.
      budget: seed-epochs at most (None: the fixed design's).
      futility: gamma of the futility exit (0: off); see the module's docstring.
      on_round: called with each round's record as it ends.
      progress, checkpoint_every, chunk, cache_dir, strategy, info, prepared: as `flaxray.run`'s.
    Returns:
      A `RaceResult`: its folder, race.json's record, each arch's units and what was reused.
    """
    check(study, round_seeds, budget, futility)
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
            tie = f"; into the tie by futility: {', '.join(r['futile'])}" if r["futile"] else ""
            print(f"round {r['round']}: {len(r['survivors'])} archs at {r['seeds']} seeds, out: {gone}{tie}", flush=True)
        if on_round:
            on_round(r)

    rounds_so_far: list = []
    out.mkdir(parents=True, exist_ok=True)
    record = evidence(run_rounds(values_of, study.archs, study.seeds, round_seeds=round_seeds, epochs=study.epochs,
                                 budget=budget, alpha=1 - study.confidence, futility=futility, on_round=record_round),
                      study.confidence)
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


def check(study, round_seeds: int, budget: float | None, futility: float = FUTILITY) -> None:
    """The race's own refusals, one line each, before anything is trained."""
    if study.decompose or study.test or study.n_settings > 1:
        raise FlaxrayError("--race compares archs at one setting (one value of each of --lr, --dropout, "
                           "--weight-decay, --momentum, --early-stopping), without --decompose")
    if len(study.archs) < 2:
        raise FlaxrayError("--race needs at least two archs")
    if not 1 <= round_seeds <= len(study.seeds):
        raise FlaxrayError(f"--round-seeds must be between 1 and --max-seeds ({len(study.seeds)}), got {round_seeds}")
    if not 0 <= futility < 1:
        raise FlaxrayError(f"--futility must be at least 0 (0: off) and below 1, got {futility:g}")
    first = len(study.archs) * round_seeds * study.epochs
    if budget is not None and budget < first:
        raise FlaxrayError(f"--budget {budget:g} seed-epochs does not cover round 1: {len(study.archs)} archs x "
                           f"{round_seeds} seeds x {study.epochs} epochs = {first}")
