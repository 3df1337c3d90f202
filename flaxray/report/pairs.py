"""The report's and the printout's pairs: settings compared seed by seed, every pair against a margin (`--rope`),
and when the choice of the top group settled; from `flaxray.analysis.study.analyse`'s dict (`paired`, `rope`,
`settled`)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from flaxray.analysis.pairs import decision_words, paired_words
from flaxray.analysis.text import ci, num, prob_ci
from flaxray.report.document import Document


def _settle(p: Mapping, way: str) -> str:
    n = p.get("settle", {}).get(way)
    return "> 512" if n is None else str(n)


def lines(analysis: Mapping) -> list[str]:
    """What the study prints: each paired comparison with the seeds it needs both ways, and with a margin each
    pair of the top group's verdict."""
    out = []
    for p in analysis.get("paired", []):
        out.append(paired_words(p) + f"; seeds a claim needs: {_settle(p, 'paired')} paired, "
                   f"{_settle(p, 'unpaired')} unpaired")
    rope = analysis.get("rope")
    if rope:
        top = analysis["ranking"][0]["arch"]
        out += [decision_words(p, rope["delta"], rope["key"]).replace("**", "")
                for p in rope["pairs"] if top in (p["a"], p["b"])]
    return out


def _tost(rope: Mapping) -> str:
    return f"{100 * (1 - 2 * (1 - rope['confidence'])):g} %"


def section(doc: Document, analysis: Mapping, figures: Mapping) -> None:
    """The report's sections on the pairs, each only where the analysis has it."""
    conf = f"{100 * analysis['confidence']:g} %"
    if analysis.get("paired"):
        doc.heading(2, "Settings compared seed by seed")
        doc.para("Groups of one arch that differ in one setting trained the same seeds in one program (the same "
                 "initialisation, dropout masks and data order), so each seed is its own control and the comparison "
                 "is of the per-seed differences of final val loss (first group minus second, best-ranked first). "
                 f"Shift: the Hodges-Lehmann estimate (the median of the Walsh averages) with its {conf} "
                 "distribution-free CI (the signed-rank test inverted; infinite where too few seeds reach that "
                 "level). P(improvement) on pairs: the share of seeds where the first group is lower, ties half, "
                 "with a bootstrap CI over seeds. Tests, two-sided: Wilcoxon's signed-rank and the exact sign-flip "
                 "permutation test of the mean difference. Seeds a claim needs: per group, for 80 % power at 0.05, "
                 "simulated from the observed seeds, paired (Wilcoxon) against unpaired (Mann-Whitney, what "
                 "two archs would need). Archs keep the unpaired statistics above: their initialisations differ.")
        doc.table(["first", "second", "setting", "seeds", f"shift [{conf} CI]", "lower in",
                   "P(improvement) on pairs [CI]", "Wilcoxon p", "sign-flip p", "seeds: paired", "unpaired"],
                  [[f"`{p['a']}`", f"`{p['b']}`", p["varies"], str(p["n"]),
                    f"{num(p['shift'])} {ci(p['shift_low'], p['shift_high'])}", f"{p['wins']} of {p['n']}",
                    prob_ci(p["p_improve"], p["p_improve_low"], p["p_improve_high"]), num(p["wilcoxon_p"]),
                    num(p["signflip_p"]), _settle(p, "paired"), _settle(p, "unpaired")] for p in analysis["paired"]])
    rope = analysis.get("rope")
    if rope:
        doc.heading(2, f"Practical equivalence within ±{rope['delta']:g} {rope['key']}")
        doc.para(f"Each pair (first minus second, best-ranked first; groups of one arch paired seed by seed, archs "
                 f"as independent samples) by the {_tost(rope)} CI of its Hodges-Lehmann shift: **better** or "
                 f"**worse** by more than the margin when the CI lies beyond it, **equivalent** when it lies within "
                 f"±{rope['delta']:g} (TOST: two one-sided tests at {conf}), **undecided** otherwise.")
        doc.table(["first", "second", "paired", "shift", f"{_tost(rope)} CI", "verdict"],
                  [[f"`{p['a']}`", f"`{p['b']}`", "yes" if p["paired"] else "no", num(p["shift"]),
                    ci(p["rope_low"], p["rope_high"]), p["decision"]] for p in rope["pairs"]])
    s = analysis.get("settled")
    if s and "settled" in figures:
        doc.heading(2, "When is the choice settled?")
        doc.para(settled_words(s) + " Each epoch's groups are ranked by the IQM of their seeds' val loss at that "
                 "epoch and compared with the last epoch's by Kendall's τ (1: the same order), with a "
                 f"{100 * s['confidence']:g} % percentile bootstrap CI over seeds.")
        doc.image(figures["settled"], "Kendall's tau of each epoch's ranking against the last")


def settled_words(s: Mapping) -> str:
    """The settled epoch and the agreement halfway, in words."""
    e, k = s["epochs"], s["settled_epoch"]
    half = max(1, e // 2) - 1
    tau = f"τ = {num(s['tau'][half])} {ci(s['tau_low'][half], s['tau_high'][half])}"
    spread = (f"; over resampled seeds, epoch {s['settled_low']:g} to {s['settled_high']:g}"
              if np.isfinite([s["settled_low"], s["settled_high"]]).all() else "")
    return (f"The top group, `{s['top'][-1]}`, is on top at every epoch from epoch {k} of {e} on{spread}. "
            f"At epoch {half + 1} the ranking agrees with the last epoch's by {tau}.")
