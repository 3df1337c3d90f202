"""The report of a study on several data sets (`flaxray.study.datasets`): OUT/report.md and report.html,
the comparison across data sets (`flaxray.analysis.tasks`) with its figures, and each data set's own
ranking linked to its own report in OUT/datasets/NAME/. Nothing here trains or evaluates.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flaxray import results
from flaxray.analysis import ranking
from flaxray.analysis.text import ci, num, prob_ci
from flaxray.report import estimate_plots, plots
from flaxray.report.document import Document
from flaxray.report.search import run_info
from flaxray.report.study import header

FIGURES = {"intervals": "datasets_intervals.png", "profiles": "datasets_profiles.png"}
LABELS = {"iqm": "IQM", "mean": "mean", "median": "median", "optimality_gap": "optimality gap"}


def table(analysis: Mapping) -> tuple[list[str], list[list[str]]]:
    """The archs across data sets, in the analysis's order: each aggregate with its CI, and P(improves on next)."""
    conf = f"{100 * analysis['confidence']:g} %"
    imp, rows = analysis["improvement"], []
    for i, arch in enumerate(analysis["order"]):
        agg = analysis["aggregates"][arch]
        cells = [f"{num(agg[k]['value'])} {ci(agg[k]['value_ci_low'], agg[k]['value_ci_high'])}" for k in LABELS]
        last = i + 1 == len(imp["archs"])
        nxt = "" if last else prob_ci(imp["p"][i, i + 1], imp["low"][i, i + 1], imp["high"][i, i + 1])
        rows.append([str(i + 1), f"`{arch}`", *cells, nxt])
    return ["", "arch", *[f"{v} [{conf} CI]" for v in LABELS.values()], "P(improves on next) [CI]"], rows


def summary_line(analysis: Mapping) -> str:
    """One sentence: which arch leads across the data sets, by the stated order."""
    order, agg = analysis["order"], analysis["aggregates"]
    first = agg[order[0]]["iqm"]
    text = (f"Across {len(analysis['tasks'])} data sets ({', '.join(analysis['tasks'])}), **{order[0]}** leads by the "
            f"lower end of the IQM's CI of the normalised score: IQM {num(first['value'])} "
            f"{ci(first['value_ci_low'], first['value_ci_high'])}")
    if len(order) > 1:
        p = analysis["improvement"]
        text += (f"; P({order[0]} improves on {order[1]}) = "
                 f"{prob_ci(p['p'][0, 1], p['low'][0, 1], p['high'][0, 1])}")
    return text + "."


def draw_figures(out: Path, analysis: Mapping) -> dict[str, Path]:
    order, conf = analysis["order"], analysis["confidence"]
    paths = {k: out / v for k, v in FIGURES.items()}
    caption = (f"black tick: the aggregate over every run of every data set · bar: its {100 * conf:g} % stratified "
               "bootstrap CI · normalised score: 1 the task's best run, 0 its worst (optimality gap: lower is better)")
    plots.save(estimate_plots.plot_intervals({a: analysis["aggregates"][a] for a in order},
                                             metrics=tuple(LABELS.items()), stat="value", confidence=conf,
                                             caption=caption), paths["intervals"])
    plots.save(estimate_plots.plot_profiles({"taus": analysis["profiles"]["taus"],
                                             **{a: analysis["profiles"][a] for a in order}}, confidence=conf),
               paths["profiles"])
    return paths


def build(result, figures: Mapping[str, Path]) -> Document:
    analysis, study = result.analysis, result.study
    first = next(iter(result.results.values()))
    info = {**header(study, first.dataset, result.info, result.record["environment"]),
            "data": "; ".join(f"{n}: {r.dataset.summary['source']}" for n, r in result.results.items())}
    doc = Document()
    doc.heading(1, f"Architectures across {len(result.results)} data sets")
    run_info(doc, info)
    doc.heading(2, "Across data sets")
    doc.para(summary_line(analysis))
    doc.para(f"Each seed's {ranking.metric_label(ranking.RANK_KEY)} on each data set, normalised per data set so "
             "that higher is better: (worst - value) / (worst - best) over every arch's seeds on it, so the data "
             "set's best run scores 1 and its worst 0 (a diverged seed 0). The scores depend on the archs compared. "
             "After rliable: the mean and median of the per-data-set means, the IQM (mean of the middle 50 % of "
             "all runs) and the optimality gap (1 - mean score, scores capped at 1; lower is better); CIs by the "
             "stratified bootstrap, seeds resampled within each data set "
             f"({analysis['reps']} resamples). P(improves on next): the chance a seed of this arch scores above a "
             "seed of the next one on the same data set, averaged over data sets. Listed by the lower end of the "
             "IQM's CI; each data set's own ranking below keeps its criterion, the "
             f"{ranking.RANK_CRITERION}.")
    doc.table(*table(analysis))
    doc.image(figures["intervals"], "aggregates across data sets")
    doc.para("Performance profiles: the fraction of an arch's runs, over every data set, whose normalised score "
             "is above τ; a curve above another everywhere is better at every threshold.")
    doc.image(figures["profiles"], "performance profiles")
    doc.heading(2, "Each data set")
    rows = []
    for name, r in result.results.items():
        best = r.analysis["ranking"][0]
        s = r.dataset.summary
        rows.append([f"[{name}]({(Path(result.record['datasets'][name]['folder']) / 'report.md').as_posix()})",
                     str(s.get("source")), f"{s.get('image_size')}×{s.get('image_size')}×{s.get('channels')}",
                     str(len(r.dataset.class_names)), f"`{best['arch']}`", num(best["criterion"])])
    doc.table(["data set", "source", "images", "classes", "best by its own ranking", "its criterion"], rows)
    return doc


def write(result) -> tuple[Path, Path] | None:
    """The figures, report.md and self-contained report.html into the study's folder (process 0's alone)."""
    if results.elsewhere():
        return None
    out = Path(result.out)
    doc = build(result, draw_figures(out, result.analysis))
    md, page = out / "report.md", out / "report.html"
    results.write_text(md, doc.markdown())
    results.write_text(page, doc.html(f"Architectures across {len(result.results)} data sets"))
    return md, page


def printout(result) -> str:
    """What a study on several data sets prints: each data set's best arch, the table across them, the files."""
    lines = [f"{name}: best by its own ranking {r.analysis['ranking'][0]['arch']} ({r.out / 'report.md'})"
             for name, r in result.results.items()]
    doc = Document()
    doc.table(*table(result.analysis))
    wrote = ", ".join(str(result.out / f) for f in ("report.md", "report.html", "datasets.json"))
    return "\n".join(["", *lines, "", doc.markdown().rstrip(), summary_line(result.analysis).replace("**", ""),
                      f"\nwrote {wrote}"])
