"""Early stopping in the analysis: when seeds stopped, and whether stopping changes which arch looks best.

    epochs(stopped)                        # the stop epochs' distribution of one group
    effect(values, arch_of, patience_of, order)   # per arch, "none" against each patience, seeds paired

Groups that differ only in their patience (`--early-stopping none 3`) trained the same seeds (the same
initialisation, dropout masks and data order) in one program, so each seed is its own control: the
comparison is of per-seed differences (Wilcoxon's signed-rank test, the median difference), not of two
independent samples (`flaxray.analysis.paired`, which also compares every other setting so). Plain numpy and
scipy.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from flaxray.analysis import paired


def epochs(stopped, total: int, kept=None) -> dict:
    """How many of the seeds stopped early (`stopped` (S,): the epoch each stopped after, 0: it ran all
    `total`), the distribution of the epochs every seed trained and, with model selection, of the
    epochs whose model each seed kept (`kept` (S,), 1-based)."""
    stopped = np.asarray(stopped, int)
    ran = np.where(stopped > 0, stopped, total)
    out = {"stopped": int(np.count_nonzero(stopped)), "seeds": int(len(stopped)), "median": float(np.median(ran)),
           "low": int(ran.min()), "high": int(ran.max()), "epochs": ran.tolist()}
    if kept is not None:
        kept = np.asarray(kept, int)
        out["kept"] = {"median": float(np.median(kept)), "low": int(kept.min()), "high": int(kept.max()),
                       "epochs": kept.tolist()}
    return out


def label(patience: float) -> str:
    return "none" if patience == math.inf else f"{int(patience)}"


def effect(values: Mapping[str, np.ndarray], arch_of: Mapping[str, str], patience_of: Mapping[str, float],
           order: Sequence[str], *, key: str = "final val loss") -> dict:
    """Per arch whose groups differ in patience: each patience against "none" (or the first) on the same seeds,
    and whether the ranking of the archs (`order`: the groups, best first) changes with the patience.

    Args:
      values: {group: per-seed values (S,), lower is better, a diverged seed NaN: the worst, as everywhere},
        the seeds in the same order in every group.
      arch_of, patience_of: each group's arch and patience (inf: none).
      order: the groups in ranking order.
    Returns:
      {"pairs": [{arch, baseline, patience, median_difference, wins, n, p}], "rankings": {patience: [archs]},
       "ranking_changes": bool, "key": key}; p is Wilcoxon's two-sided signed-rank p-value of the
      differences (`paired.wilcoxon_p`: NaN with fewer than 2 nonzero ones).
    """
    pairs = []
    by_arch: dict[str, dict[float, str]] = {}
    for group, arch in arch_of.items():
        by_arch.setdefault(arch, {})[patience_of[group]] = group
    for arch, groups in by_arch.items():
        levels = sorted(groups, key=lambda p: (p != math.inf, p))  # "none" first: the baseline
        base = groups[levels[0]]
        for level in levels[1:]:
            c = paired.compare(values[groups[level]], values[base], paired=True)
            pairs.append({"arch": arch, "baseline": label(levels[0]), "patience": label(level),
                          "median_difference": c["median_difference"], "wins": c["wins"], "n": c["n"],
                          "p": c["wilcoxon_p"]})
    rankings = {}
    for group in order:
        rankings.setdefault(label(patience_of[group]), []).append(arch_of[group])
    changes = len({tuple(r) for r in rankings.values()}) > 1
    return {"pairs": pairs, "rankings": rankings, "ranking_changes": changes, "key": key}


def lines(analysis: Mapping) -> list[str]:
    """The printed and reported sentences: each group's stop epochs, and early stopping's effect."""
    out = []
    for group, d in analysis.get("stopping", {}).items():
        if d["stopped"]:
            out.append(f"{group}: {d['stopped']} of {d['seeds']} seeds stopped early; epochs trained median "
                       f"{d['median']:g} (range {d['low']}-{d['high']})")
        if "kept" in d:
            k = d["kept"]
            out.append(f"{group}: each seed keeps its best epoch's model (--restore-best): epoch median {k['median']:g} "
                       f"(range {k['low']}-{k['high']}); its final values are that epoch's")
    e = analysis.get("early_stopping")
    if e:
        for p in e["pairs"]:
            out.append(f"{p['arch']}: early stopping (patience {p['patience']}) against {p['baseline']}, the same "
                       f"{p['n']} seeds paired: median change of {e['key']} {p['median_difference']:+.4g}, lower in "
                       f"{p['wins']} of {p['n']} " + (f"(Wilcoxon signed-rank p = {p['p']:.3g})" if np.isfinite(p["p"])
                                                      else "(fewer than 2 seeds moved: nothing to test)"))
        if len(next(iter(e["rankings"].values()))) > 1:
            orders = "; ".join(f"patience {k}: {', '.join(v)}" for k, v in e["rankings"].items()) + " (best first)"
            out.append(("early stopping changes the ranking of the archs: " if e["ranking_changes"] else
                        "early stopping leaves the ranking of the archs as it is: ") + orders)
    return out
