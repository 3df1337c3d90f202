"""A race's report: trace.png, report.md and report.html (its curves.csv and race.json: `flaxray.study.race`).

The report says the decision, the test and its levels, the futility exit, the elimination trace
(figure and table, round by round: who was eliminated, who left by futility into the tie), the
seed-epochs spent against the fixed design, every arch not eliminated with the seeds it got, and the
one ranking over the seeds each arch got. No jax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from flaxray import results
from flaxray.analysis.ranking import prob_improvement
from flaxray.analysis.text import ci, num, prob_ci
from flaxray.report import document, estimate_plots, plots, search as report
from flaxray.report.study import header


def write_report(out, record: dict, analysis: Mapping, study, dataset) -> tuple[Path, Path]:
    """trace.png, report.md and report.html of a race (`record`: race.json's; `analysis`: the ranking's
    analysis of every seed each arch got)."""
    out = Path(out)
    groups = analysis["summary"]
    conf, rounds, d = study.confidence, record["rounds"], record["decision"]
    plots.save(estimate_plots.plot_race(rounds, confidence=conf, title=f"Race over {len(groups)} archs: {d['kind']}"),
               out / "trace.png")
    info = header(study, dataset, record, record["environment"])
    info["seeds"] = f"up to {len(study.seeds)} per arch ({study.seeds[0]}..{study.seeds[-1]}), {record['round_seeds']} a round"

    doc = document.Document()
    doc.heading(1, "Architecture race: which architecture holds, for the fewest seeds")
    doc.para(d["text"][0].upper() + d["text"][1:])
    report.run_info(doc, info)

    doc.heading(2, "The test")
    levels = {int(n): lv for n, lv in record["levels"].items()}
    spent = ", ".join(f"{lv:.3g} at {n} seeds" for n, lv in levels.items()) or "nowhere (no look can reject)"
    doc.para(f"After each round an arch is eliminated when, against some other arch still raced, a one-sided exact "
             f"Mann-Whitney test says its seeds end with a higher final val loss (P(it improves on that arch) "
             f"< 0.5) at that look's level. α = {record['alpha']:g} is split (Bonferroni) over the "
             f"{len(groups) - 1} rivals of an arch, and each rival's share is spent over the planned looks "
             f"({', '.join(map(str, record['planned_looks']))} seeds) where the exact p-values can reach it "
             "(with n seeds against n every p is a multiple of 1 / C(2n, n)), by a Pocock-type spending function: "
             f"{spent}. So an arch that no other arch is better than survives the whole race with probability "
             f"≥ {1 - record['alpha']:g}, whatever the leader and the looks; ties count in the tested arch's "
             "favour, a diverged seed is the worst.")
    if record.get("futility"):
        doc.para(f"Futility: an arch leaves the race into the declared tie (trained no further, never eliminated) "
                 f"when it is unlikely to be eliminated (a predictive power below {record['futility']:g} by "
                 f"{record['max_seeds']} seeds, simulated by drawing its further seeds, and theirs, from the seeds seen) "
                 "and not needed to eliminate another: after the first look, an arch that may still be eliminated keeps "
                 f"only its {record.get('challengers', 2)} strongest challengers (at the first look, every arch able to "
                 "eliminate it with that power). The arch the others are raced against (the highest mean P(improvement) over them) "
                 "stays. This cannot raise the chance that an arch no other arch is better than is eliminated: the bound "
                 "above counts every test at every planned look, and leaving only removes tests (non-binding: the "
                 "bound holds whether or not an arch leaves).")
    doc.para("The race stops with one arch left, when no further seed could separate any two archs still raced "
             "(a tie), or when the next round would exceed the budget.")

    doc.heading(2, "Compute")
    spent, fixed = record["seed_epochs"], record["fixed_seed_epochs"]
    doc.table(["", "seed-epochs", "share of the fixed design"],
              [["race", str(spent), f"{spent / fixed:.0%}"],
               [f"fixed design ({len(groups)} archs × {len(study.seeds)} seeds × {study.epochs} epochs)",
                str(fixed), "100 %"],
               ["budget", "none" if record["budget"] is None else f"{record['budget']:g}", ""]])

    doc.heading(2, "Elimination trace")
    doc.para(f"Per round, each arch still raced: its IQM of final val loss over the seeds so far with the "
             f"{100 * conf:g} % bootstrap CI; × marks the round it was eliminated in, ▶ the round it left by futility.")
    doc.image(out / "trace.png", "elimination trace")
    rows = []
    for r in rounds:
        gone = ", ".join(f"`{a}` (p = {p:.2g} against `{b}`)" for a, (b, p) in r["eliminated"].items()) or "none"
        left = ", ".join(f"`{a}` (power {pw:.2f} against `{b}`)" for a, (b, pw) in r["futile"].items()) or "none"
        rows.append([str(r["round"]), str(r["seeds"]), str(len(r["survivors"])), f"`{r['leader']}`", gone, left,
                     str(r["seed_epochs"])])
    doc.table(["round", "seeds per arch", "archs raced", "leader", "eliminated", "left by futility into the tie",
               "seed-epochs so far"], rows)

    doc.heading(2, "The survivors at the end")
    values = {a: np.asarray(next(r["values"][a] for r in rounds[::-1] if a in r["values"]), float)
              for a in d["survivors"]}  # flaxray.analysis.race.tie_values (flaxray.study.race imports this module)
    doc.para(f"Every arch not eliminated, with all the seeds it got: P(the leader `{d['leader']}`, first by the ranking "
             "among the archs raced to the end, improves on each), "
             f"with its {100 * conf:g} % CI, its smallest elimination p against any arch raced with it (at the look "
             "it was last raced in, whose level is given) and how it ended.")
    rows = []
    for a in d["survivors"]:
        r = next(r for r in rounds[::-1] if a in r["values"])
        iqm, low, high = r["intervals"][a]
        p = prob_improvement(values[d["leader"]], values[a], confidence=conf) if a != d["leader"] else None
        by, pm = r["p_min"][a]
        how = (f"left by futility at {r['seeds']} seeds (power {r['futile'][a][1]:.2f} against `{r['futile'][a][0]}`)"
               if a in d["futile"] else f"raced to {r['seeds']} seeds")
        rows.append([f"`{a}`", str(len(values[a])), f"{num(iqm)} {ci(low, high)}", prob_ci(*p) if p else "leader",
                     f"{pm:.3g} (against `{by}`; "
                     + (f"level {r['level']:.3g})" if r["level"] else "a look that cannot reject)"), how])
    doc.table(["arch", "seeds", "IQM final val loss [CI]", "P(leader improves on it) [CI]", "smallest p", "ended"], rows)

    doc.heading(2, "Ranking over the seeds each arch got")
    doc.para(f"The architecture search's ranking ({analysis['criterion']}) of every arch on the seeds the race "
             "trained for it: eliminated archs, and those that left by futility, have fewer seeds, so their intervals "
             "are wider.")
    doc.table(*report.ranking_table(analysis))

    md, page = out / "report.md", out / "report.html"
    results.write_text(md, doc.markdown())
    results.write_text(page, doc.html("Architecture race report"))
    return md, page
