"""The CNN vs ANN report: two models on the held-out test set, from `flaxray.analysis.compare.analyse`'s dict:
`report.md`, a self-contained `report.html` and `intervals.png`."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from flaxray import results
from flaxray.analysis import compare, metrics
from flaxray.analysis.text import ci, num, prob_ci
from flaxray.report import document, estimate_plots, plots, search

ENSEMBLE = "{name} ensemble"


def _cell(d: Mapping) -> str:
    return f"{num(d['mean'])} ± {num(d['std'])} {ci(d['ci_low'], d['ci_high'])}"


def interval_summaries(analysis: Mapping) -> tuple[dict, dict]:
    """Summaries and per-seed values for `estimate_plots.plot_intervals`, each model followed by its ensemble (a single
    value: a tick without a bar)."""
    summaries, values = {}, {}
    for name, m in analysis["models"].items():
        summaries[name], values[name] = m["summary"], m["values"]
        summaries[ENSEMBLE.format(name=name)] = compare.summarize({k: [v] for k, v in m["ensemble"].items()},
                                                          confidence=analysis["confidence"])
    return summaries, values


def _names(analysis: Mapping) -> list[str]:
    return analysis["metrics"]


def build(analysis: Mapping, figures: Mapping[str, Path], *, info: Mapping) -> document.Document:
    """The report as a `document.Document`: verdict, models, test metrics, comparison, ensemble, figures."""
    doc = document.Document()
    conf = f"{100 * analysis['confidence']:g} %"
    a, b = analysis["challenger"], analysis["baseline"]
    names = list(analysis["models"])
    doc.heading(1, f"CNN vs ANN on the test set: `{a}` vs `{b}`")
    doc.para(analysis["verdict"])
    search.run_info(doc, info)

    doc.heading(2, "Models")
    doc.para("Same data, same patient split, same seeds, same epochs. Parameters: Keras's total (BatchNorm's "
             "moving statistics included). Training time: the vmapped program of all seeds, wall clock "
             "(compilation included).")
    doc.table(["model", "parameters", "training time (s)", "seed-epochs/s"],
              [[f"`{n}`", f"{m['params']:,}" if m["params"] is not None else "n/a", num(m["seconds"]),
                num(m["seed_epochs_per_s"])] for n, m in analysis["models"].items()])

    doc.heading(2, "Test metrics")
    rule = "threshold 0.5" if len(analysis["class_names"]) == 2 else "predicted class: the most probable"
    doc.para(f"Held-out test split, evaluated once after training (never used to choose anything), {rule}. "
             f"Per model: mean ± std over seeds [{conf} bootstrap CI of the mean]. Ensemble: the mean of the "
             "seeds' predicted probabilities, evaluated as one model.")
    header = ["metric"]
    for n in names:
        header += [f"`{n}` seeds", f"`{n}` ensemble"]
    doc.table(header, [[metrics.label(k)] + [cell for n in names for cell in
                                      (_cell(analysis["models"][n]["summary"][k]),
                                       num(analysis["models"][n]["ensemble"][k]))]
                       for k in _names(analysis)])
    doc.image(figures["intervals"], "test metrics per model")

    doc.heading(2, f"`{a}` against `{b}`")
    doc.para(f"P(better): the chance a random seed of `{a}` beats a random seed of `{b}` on the metric (lower loss, "
             f"higher otherwise), ties half, with its {conf} CI from a stratified bootstrap over seeds (rliable). "
             "Two-sample tests of the difference, seeds independent: Welch's t-test (means, unequal variances) "
             "and the Mann-Whitney U test (two-sided).")
    doc.table(["metric", "P(better)", f"mean difference ({a} − {b})", "Welch t", "Welch p", "Mann-Whitney p"],
              [[metrics.label(k), prob_ci(c["p_improve"], c["p_improve_low"], c["p_improve_high"]),
                num(c["mean_difference"]), num(c["welch_t"]), num(c["welch_p"]),
                num(c["mannwhitney_p"])] for k, c in analysis["comparison"].items()])

    doc.heading(2, "What the seed ensemble buys")
    rows = []
    for n, m in analysis["models"].items():
        for k in [k for k in m["summary"] if metrics.find(k).metric.headline]:  # the registry's headline metrics
            d = m["summary"][k]
            rows.append([f"`{n}`", metrics.label(k), num(d["mean"]), num(d["best"]),
                         num(m["ensemble"][k])])
    doc.para("The ensemble of the S seeds against one seed: the mean seed and the best seed (chosen on the test "
             "set, so an optimistic bound no one could pick in advance).")
    doc.table(["model", "metric", "mean seed", "best seed", "ensemble"], rows)

    doc.heading(2, "Validation curves")
    doc.para(f"Both models on the same axes; line: mean over seeds, band: {conf} bootstrap CI of the mean, faint "
             "lines: individual seeds.")
    doc.image(figures["bands"], "validation curves of both models")
    return doc


def write_report(out, analysis: Mapping, *, info: Mapping, bands: Path) -> tuple[Path, Path]:
    """intervals.png, `report.md` and self-contained `report.html` into `out` (`bands`: the curves figure that
    `flaxray.report.study.write` drew); returns the two report paths."""
    out = Path(out)
    summaries, values = interval_summaries(analysis)
    intervals = plots.save(estimate_plots.plot_intervals(
        summaries, metrics=tuple((k, metrics.label(k)) for k in _names(analysis)), values=values,
        stat="mean", ncols=3, confidence=analysis["confidence"],
        title=f"Test metrics · {info.get('title', '')} · ensemble: the seeds' mean probability as one model (no bar)"),
        out / "intervals.png")
    doc = build(analysis, {"intervals": Path(intervals), "bands": Path(bands)}, info=info)
    md, page = out / "report.md", out / "report.html"
    results.write_text(md, doc.markdown())
    results.write_text(page, doc.html("CNN vs ANN report"))
    return md, page
