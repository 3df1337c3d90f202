import dataclasses
import warnings

import numpy as np
import pytest

from flaxray.analysis import metrics, ranking, stats
from flaxray.analysis.probs import counts_from_probs
from flaxray.report import table

METRICS = ("loss", "accuracy", "precision", "recall", "auc")


def _history(val_loss, val_acc=None):
    """A full Keras-named history from hand-written val_loss / val_accuracy curves."""
    val_loss = np.asarray(val_loss, dtype=float)
    val_acc = 1.0 - val_loss / 4 if val_acc is None else np.asarray(val_acc, dtype=float)
    h = {"val_loss": val_loss, "val_accuracy": val_acc}
    for m in ("precision", "recall", "auc"):
        h[f"val_{m}"] = val_acc.copy()
    for m in METRICS:
        h[m] = h[f"val_{m}"] * 0.9
    return h


# ------------------------------------------------------------------ bootstrap_ci


def test_bootstrap_ci_coverage_of_known_mean():
    # 200 simulated studies of 20 seeds: the 95 % CI must catch the true mean about 95 % of
    # the time (percentile bootstrap runs a little under nominal at n=20).
    rng = np.random.default_rng(123)
    draws = rng.normal(loc=3.0, scale=2.0, size=(20, 200))  # columns are independent studies
    low, high = stats.bootstrap_ci(draws, n_resamples=1000, seed=1)
    coverage = np.mean((low <= 3.0) & (3.0 <= high))
    assert 0.88 <= coverage <= 0.99, coverage


def test_bootstrap_ci_lower_confidence_gives_narrower_and_lower_coverage():
    rng = np.random.default_rng(5)
    draws = rng.normal(size=(20, 200))
    lo95, hi95 = stats.bootstrap_ci(draws, n_resamples=1000)
    lo50, hi50 = stats.bootstrap_ci(draws, n_resamples=1000, confidence=0.5)
    assert np.all(hi50 - lo50 < hi95 - lo95)
    assert 0.35 <= np.mean((lo50 <= 0) & (0 <= hi50)) <= 0.65


def test_bootstrap_ci_shrinks_as_n_grows():
    rng = np.random.default_rng(0)
    widths = []
    for n in (5, 20, 80, 320):
        low, high = stats.bootstrap_ci(rng.normal(size=(n, 50)), n_resamples=500)
        widths.append(np.mean(high - low))  # averaged over 50 studies: one draw is too noisy
    assert all(a > b for a, b in zip(widths, widths[1:])), widths
    # Roughly 1/sqrt(n): 64x the seeds, ~8x narrower.
    assert 4 < widths[0] / widths[-1] < 16


def test_bootstrap_ci_deterministic_in_seed():
    x = np.random.default_rng(1).normal(size=(10, 4))
    a = stats.bootstrap_ci(x, seed=7)
    b = stats.bootstrap_ci(x, seed=7)
    c = stats.bootstrap_ci(x, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_bootstrap_ci_vectorised_shapes_and_axis():
    x = np.random.default_rng(2).normal(size=(6, 5, 3))
    low, high = stats.bootstrap_ci(x)
    assert low.shape == high.shape == (5, 3)
    assert np.all(low < high)
    low_t, high_t = stats.bootstrap_ci(np.moveaxis(x, 0, 2), axis=2)
    assert low_t.shape == (5, 3)
    # Each column equals the 1-D answer (up to its own random stream: same distribution).
    lo1, hi1 = stats.bootstrap_ci(x[:, 0, 0])
    assert isinstance(lo1, float) and lo1 < x[:, 0, 0].mean() < hi1


def test_bootstrap_ci_other_statistic():
    x = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 100.0, 0.0, 0.0])
    lo_med, hi_med = stats.bootstrap_ci(x, statistic=np.median)
    lo_mean, hi_mean = stats.bootstrap_ci(x)
    assert hi_med < hi_mean  # the median ignores the 100


def test_bootstrap_ci_too_few_values_gives_nan():
    for x in ([], [1.0], [np.nan, 2.0, np.inf]):
        low, high = stats.bootstrap_ci(np.asarray(x, dtype=float))
        assert np.isnan(low) and np.isnan(high)


def test_bootstrap_ci_degenerate_is_exact_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = stats.bootstrap_ci(np.full(7, 0.1))
        assert low == high == 0.1
        low, high = stats.bootstrap_ci(np.full(7, 0.1), method="BCa")
        assert low == high == 0.1


def test_bootstrap_ci_nan_seed_is_dropped_per_column():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 4))
    x[2, 2:] = np.nan  # seed 2 diverged at epoch 3
    low, high = stats.bootstrap_ci(x)
    assert np.all(np.isfinite(low)) and np.all(np.isfinite(high))
    lo_ref, hi_ref = stats.bootstrap_ci(np.delete(x[:, 3], 2))
    assert low[3] < np.delete(x[:, 3], 2).mean() < high[3]
    assert abs((high[3] - low[3]) - (hi_ref - lo_ref)) < 0.5 * (hi_ref - lo_ref)


# ------------------------------------------------------------------ describe / band


def test_describe_basic_and_nonfinite():
    d = stats.describe([1.0, 2.0, 3.0, np.nan, np.inf])
    assert d["n"] == 3 and d["n_nonfinite"] == 2
    assert d["mean"] == pytest.approx(2.0)
    assert d["std"] == pytest.approx(1.0)  # ddof=1
    assert d["min"] == 1.0 and d["max"] == 3.0 and d["median"] == 2.0
    assert d["ci_low"] <= 2.0 <= d["ci_high"]


def test_describe_with_a_direction_counts_a_nonfinite_seed_as_the_worst():
    v = [0.30, 0.31, 0.29, 0.32, 0.28, 0.30, 0.33, np.nan]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = stats.describe(v, lower_is_better=True)
    assert d["n"] == 7 and d["n_nonfinite"] == 1
    assert d["mean"] == pytest.approx(np.nanmean(v)) and d["max"] == 0.33  # plain stats: finite seeds
    assert d["worst"] == np.inf and d["best"] == 0.28
    assert d["median"] == pytest.approx(np.median(np.where(np.isnan(v), np.inf, v)))
    assert d["iqm"] == pytest.approx(stats.iqm(np.where(np.isnan(v), np.inf, v)))
    assert d["iqm_ci_low"] <= d["iqm"] <= d["iqm_ci_high"]
    score = stats.describe(v, lower_is_better=False)
    assert score["worst"] == -np.inf and score["best"] == 0.33
    plain = stats.describe(v)  # no direction: dropped everywhere, no worst
    assert plain["median"] == pytest.approx(np.nanmedian(v)) and np.isnan(plain["worst"])


def test_describe_single_and_empty():
    d = stats.describe([0.5])
    assert d["n"] == 1 and d["mean"] == 0.5 and d["min"] == d["max"] == 0.5
    assert np.isnan(d["std"]) and np.isnan(d["ci_low"]) and np.isnan(d["ci_high"])
    e = stats.describe([np.nan, np.nan])
    assert e["n"] == 0 and e["n_nonfinite"] == 2 and np.isnan(e["mean"])


def test_band_identical_seeds_zero_width():
    curve = np.linspace(2.0, 0.3, 12)
    mean, low, high = stats.band(np.tile(curve, (5, 1)))
    np.testing.assert_allclose(mean, curve)
    np.testing.assert_array_equal(low, high)
    np.testing.assert_allclose(low, curve)


def test_band_contains_mean_and_handles_nan_and_single_seed():
    rng = np.random.default_rng(4)
    c = rng.normal(size=(6, 10)) + np.linspace(3, 1, 10)
    c[1, 7:] = np.nan
    mean, low, high = stats.band(c)
    assert mean.shape == low.shape == high.shape == (10,)
    assert np.all((low <= mean) & (mean <= high))
    np.testing.assert_allclose(mean[8], np.delete(c[:, 8], 1).mean())

    mean1, low1, high1 = stats.band(c[:1, :7])
    np.testing.assert_allclose(mean1, c[0, :7])
    assert np.all(np.isnan(low1)) and np.all(np.isnan(high1))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        all_nan = np.full((3, 4), np.nan)
        m, lo, hi = stats.band(all_nan)
        assert np.all(np.isnan(m)) and np.all(np.isnan(lo))


# ------------------------------------------------------------------ summarize


def test_summarize_best_final_and_best_epoch():
    val_loss = np.array(
        [
            [1.0, 0.5, 0.7, 0.8],  # best at epoch 2
            [1.0, 0.9, 0.3, 0.6],  # best at epoch 3
        ]
    )
    val_acc = np.array(
        [
            [0.1, 0.9, 0.8, 0.7],
            [0.2, 0.3, 0.95, 0.6],
        ]
    )
    s = ranking.summarize(_history(val_loss, val_acc))
    assert list(s) == [f"{kind}_val_{m}" for m in METRICS for kind in ("final", "best")] + ["best_epoch"]
    assert s["final_val_loss"]["mean"] == pytest.approx(0.7)
    assert (s["final_val_loss"]["min"], s["final_val_loss"]["max"]) == (0.6, 0.8)
    assert (s["best_val_loss"]["min"], s["best_val_loss"]["max"]) == (0.3, 0.5)  # min over epochs
    assert (s["best_val_accuracy"]["min"], s["best_val_accuracy"]["max"]) == (0.9, 0.95)  # max
    assert s["best_val_accuracy"]["worst"] == 0.9 and s["best_val_loss"]["worst"] == 0.5  # directions
    assert s["final_val_accuracy"]["mean"] == pytest.approx(0.65)
    assert (s["best_epoch"]["min"], s["best_epoch"]["max"]) == (2, 3)  # 1-based
    assert s["best_epoch"]["n"] == 2
    for d in s.values():
        assert {"n", "n_nonfinite", "mean", "std", "ci_low", "ci_high", "median", "iqm", "iqm_ci_low",
                "iqm_ci_high", "worst", "best", "min", "max"} <= set(d)


def test_summarize_nan_seed_and_diverged_mask():
    val_loss = np.array(
        [
            [1.0, 0.5, 0.4],
            [1.0, 0.6, 0.45],
            [0.9, np.nan, np.nan],  # diverged after epoch 1
            [np.nan, np.nan, np.nan],  # never finite
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = ranking.summarize(_history(val_loss))
    assert s["final_val_loss"]["n"] == 2 and s["final_val_loss"]["n_nonfinite"] == 2
    assert s["final_val_loss"]["worst"] == np.inf  # robust stats: a diverged seed is the worst
    assert s["best_val_loss"]["n"] == 3  # the diverged seed's best is its epoch-1 value
    assert s["best_val_loss"]["max"] == 0.9
    assert s["best_epoch"]["n"] == 3 and s["best_epoch"]["n_nonfinite"] == 1
    assert s["best_epoch"]["min"] == 1 and s["best_epoch"]["max"] == 3
    # `diverged` makes a seed non-finite on every metric, its finite accuracy included
    m = ranking.summarize(_history(val_loss), diverged=[False, False, True, True])
    assert m["best_val_loss"]["n"] == 2 and m["final_val_accuracy"]["n"] == 2
    assert m["final_val_accuracy"]["worst"] == -np.inf and m["best_epoch"]["n"] == 2


def test_summarize_single_seed_and_missing_metrics():
    s = ranking.summarize({"val_loss": np.array([[0.9, 0.4, 0.5]])})
    assert set(s) == {"final_val_loss", "best_val_loss", "best_epoch"}
    assert s["best_val_loss"]["mean"] == 0.4 and s["best_epoch"]["mean"] == 2
    assert np.isnan(s["final_val_loss"]["ci_low"])


def test_summarize_multiclass_history_per_class_recall():
    rng = np.random.default_rng(0)
    h = {f"val_{k}": rng.uniform(0.2, 0.9, (5, 3)) for k in metrics.curve_keys(("cat", "dog", "eel"))
         if not k.startswith("val_")}
    s = ranking.summarize(h)
    assert "final_val_recall_dog" in s and "best_val_auc" in s and "final_val_precision" not in s
    assert ranking.metric_label("final_val_recall_dog") == "final val recall dog"
    assert s["best_val_recall_eel"]["max"] == pytest.approx(h["val_recall_eel"].max(1).max())


# ------------------------------------------------------------------ rank / table


def _summaries():
    rng = np.random.default_rng(9)
    out = {}
    for name, level in (("wide", 0.30), ("base", 0.50), ("deep", 0.503), ("tiny", 0.90)):
        vl = level + 0.01 * rng.normal(size=(10, 5)) + np.linspace(0.5, 0, 5)
        out[name] = ranking.summarize(_history(vl))
    return out


def test_rank_orders_by_the_upper_ci_end_of_the_iqm():
    rows = ranking.rank(_summaries())
    assert [r["arch"] for r in rows] == ["wide", "base", "deep", "tiny"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["criterion"] == r["iqm_ci_high"] and r["iqm_ci_low"] <= r["iqm"] <= r["iqm_ci_high"]
        assert r["key"] == ranking.RANK_KEY and r["lower_is_better"] is True
    assert ranking.RANK_CRITERION == "upper end of the 95 % CI of the IQM of final val loss"


def test_rank_higher_is_better_and_missing_last():
    summ = _summaries()
    summ["broken"] = ranking.summarize(_history(np.full((3, 5), np.nan)))
    summ["empty"] = {}
    rows = ranking.rank(summ, key="final_val_accuracy")  # a score: the lower CI end, higher first
    assert [r["arch"] for r in rows] == ["wide", "base", "deep", "tiny", "broken", "empty"]
    assert rows[0]["criterion"] == rows[0]["iqm_ci_low"] and rows[0]["lower_is_better"] is False
    assert ranking.criterion("final_val_accuracy") == "lower end of the 95 % CI of the IQM of final val accuracy"


def test_format_summary_table_contents():
    summ = _summaries()
    text = table.format_summary_table(summ)
    for arch in summ:
        assert arch in text
    for m in ("loss", "accuracy", "precision", "recall (sensitivity)", "AUC"):
        assert f"final val {m}" in text and f"best val {m}" in text
    assert "10 seeds" in text
    assert f"Ranking by the {ranking.RANK_CRITERION} (lower is better" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_format_summary_table_single_arch_single_seed_and_custom_ranking():
    one = {"solo": ranking.summarize(_history(np.array([[0.9, 0.5]])))}
    text = table.format_summary_table(one)
    assert "solo" in text and "1 seed)" in text and "Ranking" not in text
    assert "n/a" in text  # std and CI are undefined with one seed

    summ = _summaries()
    text = table.format_summary_table(summ, ranking.rank(summ, key="best_val_auc"))
    assert "Ranking by the lower end of the 95 % CI of the IQM of best val AUC (higher is better" in text


def test_format_summary_table_warns_about_few_seeds():
    rng = np.random.default_rng(0)
    few = {"a": ranking.summarize(_history(rng.normal(0.5, 0.1, (4, 3))))}
    many = {"a": ranking.summarize(_history(rng.normal(0.5, 0.1, (12, 3))))}
    assert "with 4 seeds" in table.format_summary_table(few)
    assert "note:" not in table.format_summary_table(many)


def test_a_metric_added_to_the_registry_reaches_the_summary_and_the_table(monkeypatch):
    # The one place a metric is defined: a new registry entry needs no other edit to be summarised and shown.
    def balanced_error(c):
        return 1.0 - 0.5 * (metrics.find("recall").metric.compute(c) + metrics.find("specificity").metric.compute(c))

    new = metrics.Metric("balanced_error", "balanced error rate", True, balanced_error, classes="binary")
    monkeypatch.setattr(metrics, "REGISTRY", metrics.REGISTRY + (new,))
    assert "val_balanced_error" in metrics.curve_keys(metrics.BINARY)
    counts = counts_from_probs(np.array([[0.9, 0.2, 0.7, 0.4]]), np.array([1, 0, 0, 1]), class_names=metrics.BINARY)
    assert metrics.compute(counts, metrics.BINARY)["balanced_error"] == pytest.approx([0.5])
    h = _history(np.array([[0.9, 0.5], [0.8, 0.6]]))
    h["val_balanced_error"] = np.array([[0.3, 0.2], [0.4, 0.1]])
    s = ranking.summarize(h)
    assert s["best_val_balanced_error"]["min"] == 0.1 and s["best_val_balanced_error"]["worst"] == 0.2  # lower wins
    assert list(s)[-3:] == ["final_val_balanced_error", "best_val_balanced_error", "best_epoch"]  # registry order
    text = table.format_summary_table({"a": s, "b": s})
    assert "final val balanced error rate" in text and "best val balanced error rate" in text
    assert ranking.rank({"a": s}, key="final_val_balanced_error")[0]["lower_is_better"] is True
    with pytest.raises(ValueError, match="same label"):  # one name, one meaning
        metrics._check_registry(metrics.REGISTRY + (dataclasses.replace(new, label="other"),))
