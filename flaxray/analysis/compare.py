"""Two models on the held-out test set, over seeds: the statistics and the report of `studies.cnn_vs_ann`.

Plain numpy and scipy, no jax: everything starts from per-seed test counts and probabilities
(`flaxray.runtime.runner.evaluate_seeds` and `predict`). The test split is only ever evaluated here, after
training; nothing is chosen on it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import scipy.stats

from flaxray import results
from flaxray.report import document, estimate_plots, search as report
from flaxray.analysis import metrics, ranking, stats
from flaxray.analysis.metrics import CHEST

ENSEMBLE = "{name} ensemble"


def metrics_from_counts(counts: Mapping[str, np.ndarray], class_names=CHEST) -> dict[str, np.ndarray]:
    """`metrics.test_metrics(class_names)` from test counts with any leading (seed) axes."""
    return metrics.compute(counts, class_names, test=True)


def metrics_from_probs(probs, labels, class_names=CHEST) -> dict[str, np.ndarray]:
    """The test metrics of probabilities ((..., N) binary, (..., N, C) otherwise) against labels (N,),
    binned as the trainer bins them."""
    return metrics_from_counts(metrics.counts_from_probs(probs, labels, class_names=class_names), class_names)


def ensemble(probs) -> np.ndarray:
    """The seed ensemble: the mean of the seeds' predicted probabilities, (S, N[, C]) -> (N[, C])."""
    return np.mean(np.asarray(probs, np.float64), axis=0)


def summarize(per_seed: Mapping[str, np.ndarray], *, confidence: float = 0.95) -> dict[str, dict]:
    """`stats.describe` of each metric's per-seed values, with the metric's direction (mean, std, CIs, ...)."""
    return {k: stats.describe(v, lower_is_better=metrics.lower_is_better(k), confidence=confidence)
            for k, v in per_seed.items()}


def two_sample(a, b, metric: str, *, confidence: float = 0.95) -> dict:
    """Does model A beat model B on `metric`, seeds of each independent?

    p_improve: P(a random seed of A beats a random seed of B) with its stratified bootstrap CI
    (`ranking.prob_improvement`, rliable's definition); welch_*: Welch's two-sample t-test of the
    means (unequal variances); mannwhitney_p: the Mann-Whitney U test (two-sided) that goes with
    p_improve. NaN where a side has fewer than 2 seeds or no spread.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    p, low, high = ranking.prob_improvement(a, b, lower_is_better=metrics.lower_is_better(metric), confidence=confidence)
    nan = float("nan")
    welch_t = welch_p = mw_p = nan
    if min(a.size, b.size) >= 2 and np.isfinite(a).all() and np.isfinite(b).all():
        with warnings.catch_warnings():  # identical seeds: scipy warns, the p-value is still what it is
            warnings.simplefilter("ignore", RuntimeWarning)
            res = scipy.stats.ttest_ind(a, b, equal_var=False)
        welch_t, welch_p = float(res.statistic), float(res.pvalue)
        mw_p = float(scipy.stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return {"p_improve": p, "p_improve_low": low, "p_improve_high": high, "mean_difference": float(a.mean() - b.mean()),
            "welch_t": welch_t, "welch_p": welch_p, "mannwhitney_p": mw_p}


def analyse(models: Mapping[str, Mapping], labels, *, challenger: str, baseline: str,
            confidence: float = 0.95, class_names=CHEST) -> dict:
    """The comparison `studies.cnn_vs_ann` reports, for any class count.

    `models[name]`: {"counts": per-seed test counts (`runner.evaluate_seeds`), "probs": (S, N)
    test probabilities, (S, N, C) for C >= 3 classes (`runner.predict`), "params": int, "seconds":
    training time, "seed_epochs": seeds x epochs}; `labels` (N,) the test labels. Returns per model
    the per-seed metrics, their summary and the seed ensemble's metrics, and `challenger` against
    `baseline` per metric (`metrics.test_metrics(class_names)`, listed under "metrics").
    """
    names = metrics.test_metrics(class_names)
    for name in (challenger, baseline):
        if name not in models:
            raise ValueError(f"{name!r} is not one of the models {list(models)}")
    out = {"confidence": confidence, "challenger": challenger, "baseline": baseline,
           "class_names": list(class_names), "metrics": list(names), "models": {}}
    for name, m in models.items():
        per_seed = metrics_from_counts(m["counts"], class_names)
        seconds = m.get("seconds")
        out["models"][name] = {
            "params": m.get("params"), "seconds": seconds, "seed_epochs": m.get("seed_epochs"),
            "seed_epochs_per_s": m["seed_epochs"] / seconds if seconds and m.get("seed_epochs") else None,
            "values": per_seed, "summary": summarize(per_seed, confidence=confidence),
            "ensemble": {k: float(v) for k, v in
                         metrics_from_probs(ensemble(m["probs"]), labels, class_names).items()},
        }
    a, b = out["models"][challenger]["values"], out["models"][baseline]["values"]
    out["comparison"] = {k: two_sample(a[k], b[k], k, confidence=confidence) for k in names}
    out["verdict"] = verdict(out)
    return out


def verdict(analysis: Mapping, metric: str = "accuracy") -> str:
    """One sentence on `metric`: who wins a random pair of seeds, and whether the CI says so."""
    c = analysis["comparison"][metric]
    a, b = analysis["challenger"], analysis["baseline"]
    conf = f"{100 * analysis['confidence']:g} %"
    p, low, high = c["p_improve"], c["p_improve_low"], c["p_improve_high"]
    if not np.isfinite([low, high]).all():
        settled = "with too few seeds for a CI"
    elif low > 0.5:
        settled = f"its {conf} CI excludes 0.5: `{a}` is better on this test set"
    elif high < 0.5:
        settled = f"its {conf} CI excludes 0.5: `{b}` is better on this test set"
    else:
        settled = f"its {conf} CI includes 0.5: the seeds cannot tell the two apart"
    n = min(m["summary"][metric]["n"] for m in analysis["models"].values())
    if np.isfinite([low, high]).all() and n < 5:
        settled += f" (only {n} seeds: a bootstrap CI is rough, read the t-test too)"
    return (f"Test {metrics.label(metric)}: a random seed of `{a}` beats a random seed of `{b}` with probability "
            f"**{document.prob_ci(p, low, high)}**; {settled} (Welch's t-test p = {document.num(c['welch_p'])}).")


def _cell(d: Mapping) -> str:
    return f"{document.num(d['mean'])} ± {document.num(d['std'])} {document.ci(d['ci_low'], d['ci_high'])}"


def interval_summaries(analysis: Mapping) -> tuple[dict, dict]:
    """Summaries and per-seed values for `estimate_plots.plot_intervals`, each model followed by its ensemble (a single
    value: a tick without a bar)."""
    summaries, values = {}, {}
    for name, m in analysis["models"].items():
        summaries[name], values[name] = m["summary"], m["values"]
        summaries[ENSEMBLE.format(name=name)] = summarize({k: [v] for k, v in m["ensemble"].items()},
                                                          confidence=analysis["confidence"])
    return summaries, values


def _names(analysis: Mapping) -> list[str]:
    return analysis.get("metrics") or list(metrics.test_metrics(analysis.get("class_names", CHEST)))


def build(analysis: Mapping, figures: Mapping[str, Path], *, info: Mapping) -> document.Document:
    """The report as a `document.Document`: verdict, models, test metrics, comparison, ensemble, figures."""
    doc = document.Document()
    conf = f"{100 * analysis['confidence']:g} %"
    a, b = analysis["challenger"], analysis["baseline"]
    names = list(analysis["models"])
    doc.heading(1, f"CNN vs ANN on the test set: `{a}` vs `{b}`")
    doc.para(analysis["verdict"])
    report.run_info(doc, info)

    doc.heading(2, "Models")
    doc.para("Same data, same patient split, same seeds, same epochs. Parameters: Keras's total (BatchNorm's "
             "moving statistics included). Training time: the vmapped program of all seeds, wall clock "
             "(compilation included).")
    doc.table(["model", "parameters", "training time (s)", "seed-epochs/s"],
              [[f"`{n}`", f"{m['params']:,}" if m["params"] is not None else "n/a", document.num(m["seconds"]),
                document.num(m["seed_epochs_per_s"])] for n, m in analysis["models"].items()])

    doc.heading(2, "Test metrics")
    rule = "threshold 0.5" if len(analysis.get("class_names", CHEST)) == 2 else "predicted class: the most probable"
    doc.para(f"Held-out test split, evaluated once after training (never used to choose anything), {rule}. "
             f"Per model: mean ± std over seeds [{conf} bootstrap CI of the mean]. Ensemble: the mean of the "
             "seeds' predicted probabilities, evaluated as one model.")
    header = ["metric"]
    for n in names:
        header += [f"`{n}` seeds", f"`{n}` ensemble"]
    doc.table(header, [[metrics.label(k)] + [cell for n in names for cell in
                                      (_cell(analysis["models"][n]["summary"][k]),
                                       document.num(analysis["models"][n]["ensemble"][k]))]
                       for k in _names(analysis)])
    doc.image(figures["intervals"], "test metrics per model")

    doc.heading(2, f"`{a}` against `{b}`")
    doc.para(f"P(better): the chance a random seed of `{a}` beats a random seed of `{b}` on the metric (lower loss, "
             f"higher otherwise), ties half, with its {conf} CI from a stratified bootstrap over seeds (rliable). "
             "Two-sample tests of the difference, seeds independent: Welch's t-test (means, unequal variances) "
             "and the Mann-Whitney U test (two-sided).")
    doc.table(["metric", "P(better)", f"mean difference ({a} − {b})", "Welch t", "Welch p", "Mann-Whitney p"],
              [[metrics.label(k), document.prob_ci(c["p_improve"], c["p_improve_low"], c["p_improve_high"]),
                document.num(c["mean_difference"]), document.num(c["welch_t"]), document.num(c["welch_p"]),
                document.num(c["mannwhitney_p"])] for k, c in analysis["comparison"].items()])

    doc.heading(2, "What the seed ensemble buys")
    rows = []
    for n, m in analysis["models"].items():
        for k in [k for k in m["summary"] if metrics.find(k).metric.headline]:  # the registry's headline metrics
            d = m["summary"][k]
            rows.append([f"`{n}`", metrics.label(k), document.num(d["mean"]), document.num(d["best"]),
                         document.num(m["ensemble"][k])])
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
    intervals = estimate_plots.plot_intervals(
        summaries, out / "intervals.png", metrics=tuple((k, metrics.label(k)) for k in _names(analysis)), values=values,
        stat="mean", ncols=3, confidence=analysis["confidence"],
        title=f"Test metrics · {info.get('title', '')} · ensemble: the seeds' mean probability as one model (no bar)")
    doc = build(analysis, {"intervals": Path(intervals), "bands": Path(bands)}, info=info)
    md, page = out / "report.md", out / "report.html"
    results.write_text(md, doc.markdown())
    results.write_text(page, doc.html("CNN vs ANN report"))
    return md, page
