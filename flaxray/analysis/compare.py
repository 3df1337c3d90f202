"""Two models on the held-out test set, over seeds: the statistics of `studies.cnn_vs_ann` (its report:
`flaxray.report.compare`).

Plain numpy and scipy, no jax: everything starts from per-seed test counts and probabilities
(`flaxray.runtime.runner.evaluate_seeds` and `predict`). The test split is only ever evaluated, after
training; nothing is chosen on it.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import scipy.stats

from flaxray.analysis import metrics, ranking, stats
from flaxray.analysis.probs import counts_from_probs
from flaxray.analysis.text import num, prob_ci


def metrics_from_counts(counts: Mapping[str, np.ndarray], class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """`metrics.test_metrics(class_names)` from test counts with any leading (seed) axes."""
    return metrics.compute(counts, class_names, test=True)


def metrics_from_probs(probs, labels, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The test metrics of probabilities ((..., N) binary, (..., N, C) otherwise) against labels (N,),
    binned as the trainer bins them."""
    return metrics_from_counts(counts_from_probs(probs, labels, class_names=class_names), class_names)


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
            class_names: Sequence[str], confidence: float = 0.95) -> dict:
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
            f"**{prob_ci(p, low, high)}**; {settled} (Welch's t-test p = {num(c['welch_p'])}).")
