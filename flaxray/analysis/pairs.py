"""Which groups of a study are compared, and how: seed by seed where their seeds are paired, as independent
samples where not, and (with a margin) whether each pair is practically equivalent.

    analyse(scores, order, settings, rope=0.02)   # {"paired": [...], "rope": {...}}
    sentences(analysis)                           # what the verdict adds, in words

Groups of one arch at settings that differ in one setting (`--lr 1e-3 3e-3`) trained the same seeds in one
program, so they are paired (`flaxray.analysis.paired.compare(paired=True)`); groups of different archs at
the same settings have independent initialisations, so they are not, and keep the study's unpaired
statistics (P(improvement), Mann-Whitney), with only their Hodges-Lehmann shift added for the margin.
Every pair is oriented as the ranking: a is the group ranked first, so a negative shift favours a.
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

from flaxray.analysis import paired
from flaxray.analysis.ranking import RANK_KEY, metric_label

KEY = metric_label(RANK_KEY)  # "final val loss": the ranking's value, in whose units a margin is


def groups(order: Sequence[str], settings: Mapping[str, Mapping]) -> list[dict]:
    """The pairs compared, in ranking order: {a, b, paired, arch, varies}.

    Paired: two groups of one arch (`settings[arch]["groups"]`) whose `levels` ({group: {setting: value}})
    differ in one setting, `varies` naming it (without levels: every two groups of the arch, `varies` the
    arch's own words). Unpaired: two groups of different archs at the same levels (every two archs when no
    setting varies)."""
    arch_of = {g: arch for arch, d in settings.items() for g in d["groups"]}
    level_of = {g: dict(d.get("levels", {}).get(g, {})) for d in settings.values() for g in d["groups"]}
    out = []
    for a, b in itertools.combinations(order, 2):
        la, lb = level_of.get(a, {}), level_of.get(b, {})
        if a in arch_of and arch_of.get(b) == arch_of[a]:
            differ = [k for k in la if la[k] != lb.get(k)]
            if len(differ) == 1 or not la:
                varies = differ[0] if differ else settings[arch_of[a]]["varies"]
                out.append({"a": a, "b": b, "paired": True, "arch": arch_of[a], "varies": varies})
        elif la == lb:
            out.append({"a": a, "b": b, "paired": False, "arch": None, "varies": None})
    return out


def analyse(scores: Mapping[str, object], order: Sequence[str], settings: Mapping[str, Mapping] | None = None, *,
            confidence: float = 0.95, rope: float | None = None) -> dict:
    """The paired comparisons of the study's settings and, with `rope`, every pair's equivalence verdict.

    Args:
      scores: {group: per-seed values of the ranking's key (diverged seeds NaN)}, seeds in the same order
        in the groups of one arch.
      order: the groups, best-ranked first.
      settings: as `flaxray.analysis.study.analyse` takes it, with `levels` where known.
      rope: the margin, in the key's units (None: no equivalence verdicts).
    Returns:
      "paired": [pair + `paired.compare` (paired=True)] when some pair is paired; "rope": {delta, key,
      confidence (TOST's), pairs: [pair + `paired.compare`]} with `rope`. Nothing without either.
    """
    out: dict = {}
    found = groups(order, settings or {})
    compared = [{**p, **paired.compare(scores[p["a"]], scores[p["b"]], paired=p["paired"], confidence=confidence,
                                       rope=rope)} for p in found if p["paired"] or rope is not None]
    if any(p["paired"] for p in compared):
        out["paired"] = [p for p in compared if p["paired"]]
    if rope is not None:
        out["rope"] = {"delta": float(rope), "key": KEY, "confidence": confidence, "pairs": compared}
    return out


def decision_words(p: Mapping, delta: float, key: str = KEY) -> str:
    """One pair's equivalence verdict in words, with the interval it rests on."""
    a, b = f"**{p['a']}**", f"**{p['b']}**"
    words = {"better": f"{a} is better than {b} by more than {delta:g} {key}",
             "worse": f"{a} is worse than {b} by more than {delta:g} {key}",
             "equivalent": f"{a} and {b} are equivalent within ±{delta:g} {key}",
             "undecided": f"{a} against {b} is undecided at ±{delta:g} {key}"}[p["decision"]]
    return f"{words} (shift {_shift(p, 'rope_low', 'rope_high')})"


def _shift(p: Mapping, low: str = "shift_low", high: str = "shift_high") -> str:
    return f"{p['shift']:+.3g} [{p[low]:+.3g}, {p[high]:+.3g}]"


def paired_words(p: Mapping, key: str = KEY) -> str:
    """One paired comparison in words: the shift, how many seeds moved which way, the tests."""
    tests = (f"Wilcoxon signed-rank p = {p['wilcoxon_p']:.3g}, sign-flip p = {p['signflip_p']:.3g}"
             if p["wilcoxon_p"] == p["wilcoxon_p"] else "fewer than 2 seeds moved: nothing to test")
    return (f"{p['a']} against {p['b']} ({p['varies']}, the same {p['n']} seeds paired): Hodges-Lehmann shift of "
            f"{key} {_shift(p)}; lower in {p['wins']} of {p['n']} seeds, P(improvement) on pairs "
            f"{p['p_improve']:.2f} [{p['p_improve_low']:.2f}, {p['p_improve_high']:.2f}] ({tests})")


def sentences(analysis: Mapping) -> str:
    """What the verdict adds: the first two groups compared seed by seed when they are paired, and their
    equivalence verdict with a margin ('' when neither applies)."""
    ranked = analysis["ranking"]
    if len(ranked) < 2:
        return ""
    first, second = ranked[0]["arch"], ranked[1]["arch"]
    conf = f"{100 * analysis['confidence']:g} %"
    text = ""
    for p in analysis.get("paired", []):
        if (p["a"], p["b"]) == (first, second):
            text += (f" The two are one arch on the same seeds, so compared seed by seed: **{first}** is lower in "
                     f"{p['wins']} of {p['n']} seeds, Hodges-Lehmann shift {_shift(p)} ({conf} CI), Wilcoxon "
                     f"signed-rank p = {p['wilcoxon_p']:.3g}.")
    rope = analysis.get("rope")
    pair = next((p for p in rope["pairs"] if (p["a"], p["b"]) == (first, second)), None) if rope else None
    if pair is not None:
        tost = f"{100 * (1 - 2 * (1 - rope['confidence'])):g} %"
        text += (f" With a margin of ±{rope['delta']:g}: {decision_words(pair, rope['delta'])}, its {tost} CI; "
                 f"TOST at {conf}.")
    return text
