"""The race's rules, as pure functions of per-seed final val losses (numpy and scipy only): which arch
is out after each look, which leave into the tie, and when the race ends.

    from flaxray.analysis.race import run_rounds
    record = run_rounds(values_of, archs, seeds=range(12), round_seeds=3)   # values_of(arch, seed_block)
    record["decision"]["kind"]           # "winner", "tie" or "budget"

`flaxray.study.race` trains each round's seeds as units and calls this; `benchmarks/race_accuracy.py`
replays it on recorded or simulated seeds.

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

from typing import Callable, Mapping, Sequence

import numpy as np

from flaxray.analysis import ranking, stats
from flaxray.analysis.sequential import improvement, looks, needed, predictive_power, spending, worse_p

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
