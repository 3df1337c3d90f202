"""A race's report: trace.png, report.md and report.html (its curves.csv and race.json: `flaxray.study.race`).

The report says the decision, the test and its level, the elimination trace (figure and table, round
by round), the seed-epochs spent against the fixed design, and the one ranking over the seeds each
arch got. No jax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from flaxray import results
from flaxray.analysis import stats
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
    doc.para(f"After each round an arch is eliminated when, against some other survivor, a one-sided exact "
             f"Mann-Whitney test says its seeds end with a higher final val loss (P(it improves on that arch) "
             f"< 0.5) at p ≤ {record['rounds'][0]['level']:.3g}: α = {record['alpha']:g} split (Bonferroni) over "
             f"the {len(groups) - 1} rivals of an arch × the planned looks at which a test can reject at all "
             f"(looks at {', '.join(map(str, record['planned_looks']))} seeds; with n seeds the smallest p is "
             "1 / C(2n, n)). So an arch that no other arch is better than survives the whole race with "
             f"probability ≥ {1 - record['alpha']:g}, whatever the leader and the looks; ties count in the tested "
             "arch's favour, a diverged seed is the worst. The race stops with one arch left, when no further "
             "seed could separate any two survivors (a tie), or when the next round would exceed the budget.")

    doc.heading(2, "Compute")
    spent, fixed = record["seed_epochs"], record["fixed_seed_epochs"]
    doc.table(["", "seed-epochs", "share of the fixed design"],
              [["race", str(spent), f"{spent / fixed:.0%}"],
               [f"fixed design ({len(groups)} archs × {len(study.seeds)} seeds × {study.epochs} epochs)",
                str(fixed), "100 %"],
               ["budget", "none" if record["budget"] is None else f"{record['budget']:g}", ""]])

    doc.heading(2, "Elimination trace")
    doc.para(f"Per round, each arch still raced: its IQM of final val loss over the seeds so far with the "
             f"{100 * conf:g} % bootstrap CI; × marks the round it was eliminated in.")
    doc.image(out / "trace.png", "elimination trace")
    rows = []
    for r in rounds:
        gone = ", ".join(f"`{a}` (p = {p:.2g} against `{b}`)" for a, (b, p) in r["eliminated"].items()) or "none"
        rows.append([str(r["round"]), str(r["seeds"]), str(len(r["survivors"])), f"`{r['leader']}`", gone,
                     str(r["seed_epochs"])])
    doc.table(["round", "seeds per arch", "archs raced", "leader", "eliminated", "seed-epochs so far"], rows)

    last = rounds[-1]
    doc.heading(2, "The survivors at the end")
    doc.para(f"P(the leader `{d['leader']}` improves on each), with its {100 * conf:g} % CI, and each arch's "
             f"smallest elimination p against any survivor (the level is {last['level']:.3g}).")
    rows = []
    for a in d["survivors"]:
        iqm, low, high = last["intervals"][a]
        p = last["p_leader"].get(a)
        by, pm = last["p_min"][a]
        rows.append([f"`{a}`", f"{num(iqm)} {ci(low, high)}", prob_ci(*p) if p else "leader",
                     f"{pm:.3g} (against `{by}`)"])
    doc.table(["arch", "IQM final val loss [CI]", "P(leader improves on it) [CI]", "smallest p"], rows)

    doc.heading(2, "Ranking over the seeds each arch got")
    doc.para(f"The architecture search's ranking ({analysis['criterion']}) of every arch on the seeds the race "
             "trained for it: eliminated archs have fewer seeds, so their intervals are wider.")
    doc.table(*report.ranking_table(analysis))

    md, page = out / "report.md", out / "report.html"
    results.write_text(md, doc.markdown())
    results.write_text(page, doc.html("Architecture race report"))
    return md, page
