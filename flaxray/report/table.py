"""What a study prints: the summary table for the terminal and the analysis' lines in words (the share of
the settings against the seeds, the noise floor, each arch's luckiest seed)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from flaxray.analysis.ranking import RANK_KEY, criterion, metric_label, rank
from flaxray.analysis.study import FLOOR
from flaxray.analysis.text import fmt


def format_summary_table(summaries: Mapping[str, Mapping[str, dict]], ranking: list[dict] | None = None) -> str:
    """Plain-text table for the terminal (fits 100 columns).

    One block per architecture: a row per summary key (final/best val of every registry metric,
    the best epoch); columns mean ± std, 95 % CI of the mean, IQM, min..max over seeds. With
    several architectures the ranking follows (`rank` when not given), its criterion named.
    """
    lines: list[str] = []
    for arch, summ in summaries.items():
        n_seeds = max((d["n"] + d["n_nonfinite"] for d in summ.values()), default=0)
        head = f"{arch}  ({n_seeds} seed{'s' if n_seeds != 1 else ''})"
        lines += [head, "-" * len(head)]
        table = [("metric", "mean ± std", "95% CI of mean", "IQM", "min..max", "")]
        for key, d in summ.items():
            note = f"{d['n_nonfinite']} non-finite" if d["n_nonfinite"] else ""
            table.append((metric_label(key), f"{fmt(d['mean'])} ± {fmt(d['std'])}",
                          f"[{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]", fmt(d["iqm"]),
                          f"{fmt(d['min'])}..{fmt(d['max'])}", note))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        lines.append("")

    if len(summaries) > 1:
        ranking = rank(summaries) if ranking is None else ranking
        if ranking:
            key = ranking[0].get("key", RANK_KEY)
            better = "lower" if ranking[0].get("lower_is_better", True) else "higher"
            lines.append(f"Ranking by the {criterion(key)} ({better} is better)")
            lines.append("  (a diverged seed counts as the worst; the IQM leaves out the best and the worst quarter of seeds)")
            name_w = max(len(str(r["arch"])) for r in ranking)
            for r in ranking:
                ci = f"[{fmt(r['iqm_ci_low'])}, {fmt(r['iqm_ci_high'])}]"
                bad = f"{r['n_nonfinite']} diverged" if r["n_nonfinite"] else ""
                lines.append(f"  {r['rank']:>2}. {str(r['arch']).ljust(name_w)}  {fmt(r['criterion']):>9}  "
                             f"IQM {fmt(r['iqm'])} {ci:<22}  worst {fmt(r['worst'])}  {bad}".rstrip())
    fewest = min((d["n"] for summ in summaries.values() for d in summ.values()), default=0)
    if 2 <= fewest < 10:
        # Measured: a percentile bootstrap of the mean covers ~74 % at 3 seeds, ~88 % at 8, ~93 % at 20.
        lines.append(f"note: with {fewest} seeds a 95% bootstrap CI covers the true mean less often than 95% "
                     "(about 88% at 8 seeds); use more seeds for claims")
    return "\n".join(lines).rstrip() + "\n"


def setting_sentence(arch: str, varies: str, d: Mapping) -> str:
    """Whether the settings of `arch` move final val loss more than its seeds do, in words."""
    if not np.isfinite(d["share"]):
        return f"{arch}: too few seeds to split the variance between {varies} and the seed"
    low, high = d["share_ci_low"], d["share_ci_high"]
    if low > 0.5:
        how = f"{varies} moves final val loss more than the seed does"
    elif high < 0.5:
        how = f"the seed moves final val loss more than {varies} does"
    else:
        how = f"{varies} and the seed are not told apart as the larger source"
    return (f"{arch}: {how}: {varies}'s share of the variance {d['share']:.2f} ({low:.2f}–{high:.2f}), the seeds' "
            f"{1 - d['share']:.2f}; F-test of no {varies} effect p = {d['p']:.2g} ({d['settings']} settings x "
            f"{d['n']} seeds)")


def variance_lines(analysis: Mapping) -> list[str]:
    """The settings' share against the seeds' per arch, and the noise floor per decomposed arch."""
    lines = [setting_sentence(a, d["varies"], d) for a, d in analysis.get("settings", {}).items()]
    for arch, dec in analysis.get("decomposition", {}).items():
        if FLOOR in dec:
            f = dec[FLOOR]
            above = ", ".join(f"{s} {d['above_floor']:+.2f} ({d['above_floor_ci_low']:+.2f}–{d['above_floor_ci_high']:+.2f})"
                              for s, d in dec.items() if "above_floor" in d)
            lines.append(f"{arch}: numerical-noise floor (only a one-ulp nudge of the initial parameters) = "
                         f"{f['share']:.2f} ({f['share_ci_low']:.2f}–{f['share_ci_high']:.2f}) of the variance with "
                         f"every source varied; each source's share above it: {above}")
    return lines


def luck_lines(analysis: Mapping) -> list[str]:
    """Per arch, its luckiest seed and where it sits among the arch's seeds (none with one seed)."""
    lines = []
    for arch, pcts in analysis.get("luck", {}).items():
        finite = {s: p for s, p in pcts.items() if np.isfinite(p)}
        if len(finite) >= 3:
            best = max(finite, key=finite.get)
            lines.append(f"seed {best} of {arch} sits at the {finite[best]:.0f}th percentile of its {len(pcts)} seeds "
                         "(final val loss): a pick made from it alone would be lucky")
    return lines
