"""Statistics that compare architectures, against answers known in closed form or by simulation."""

import math
import warnings

import numpy as np
import pytest
import scipy.stats

from flaxray.analysis import ranking, stats


# ------------------------------------------------------------------ IQM and describe (with a direction)


def test_iqm_is_the_mean_of_the_middle_half():
    assert stats.iqm(np.arange(1.0, 9.0)) == pytest.approx(np.mean([3, 4, 5, 6]))
    assert stats.iqm(np.array([0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 99.0])) == pytest.approx(0.2)  # one wild seed
    x = np.random.default_rng(0).normal(size=(12, 3))
    np.testing.assert_allclose(stats.iqm(x), [np.sort(c)[3:9].mean() for c in x.T])


def test_describe_known_values_and_ci_contains_estimate():
    v = np.array([0.30, 0.31, 0.29, 0.32, 0.28, 0.30, 0.33, 0.27])
    d = stats.describe(v, lower_is_better=True)
    assert d["n"] == 8 and d["n_nonfinite"] == 0
    assert d["mean"] == pytest.approx(v.mean()) and d["median"] == pytest.approx(np.median(v))
    assert d["std"] == pytest.approx(v.std(ddof=1))
    assert d["worst"] == 0.33 and d["best"] == 0.27
    assert d["ci_low"] <= d["mean"] <= d["ci_high"] and d["iqm_ci_low"] <= d["iqm"] <= d["iqm_ci_high"]
    higher = stats.describe(v, lower_is_better=False)
    assert higher["worst"] == 0.27 and higher["best"] == 0.33


def test_describe_diverged_seed_counts_as_worst_in_the_robust_stats():
    v = np.array([0.30, 0.31, 0.29, 0.32, 0.28, 0.30, 0.33, np.nan])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = stats.describe(v, lower_is_better=True)
    assert d["n"] == 7 and d["n_nonfinite"] == 1  # n: the finite seeds
    assert d["worst"] == np.inf and d["mean"] == pytest.approx(v[:-1].mean())  # the mean: finite seeds
    assert np.isfinite(d["iqm"]) and d["median"] == pytest.approx(np.median(np.where(np.isnan(v), np.inf, v)))
    assert d["std"] == pytest.approx(v[:-1].std(ddof=1))  # finite seeds only
    # For a score the diverged seed is -inf, the worst there too.
    assert stats.describe(v, lower_is_better=False)["worst"] == -np.inf


def test_iqm_ci_coverage_of_known_centre():
    # The IQM of a symmetric distribution is its centre: 200 simulated studies of 20 seeds.
    rng = np.random.default_rng(11)
    draws = rng.normal(loc=0.25, scale=0.05, size=(20, 200))
    low, high = stats.bootstrap_ci(draws, statistic=stats.iqm, n_resamples=1000, seed=2)
    coverage = np.mean((low <= 0.25) & (0.25 <= high))
    assert 0.86 <= coverage <= 0.99, coverage


# ------------------------------------------------------------------ probability of improvement


def test_prob_improvement_of_identical_samples_is_half():
    x = np.random.default_rng(1).normal(size=10)
    p, low, high = ranking.prob_improvement(x, x.copy())
    assert p == 0.5 and low < 0.5 < high
    assert ranking.prob_improvement(np.full(5, 0.3), np.full(7, 0.3))[0] == 0.5  # all tied


def test_prob_improvement_counts_pairs_and_ties_half():
    x, y = np.array([0.1, 0.2, 0.3]), np.array([0.2, 0.4])
    # Lower loss improves: pairs x<y: (0.1,0.2) (0.1,0.4) (0.2,0.4) (0.3,0.4) = 4, tie (0.2,0.2) = 0.5 -> 4.5/6.
    assert ranking.prob_improvement(x, y)[0] == pytest.approx(4.5 / 6)
    assert ranking.prob_improvement(x, y, lower_is_better=False)[0] == pytest.approx(1.5 / 6)
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=9), rng.normal(size=6)
    assert ranking.prob_improvement(a, b)[0] + ranking.prob_improvement(b, a)[0] == pytest.approx(1.0)


def test_prob_improvement_matches_normal_closed_form():
    # X ~ N(0, 1), Y ~ N(0.5, 1): P(X < Y) = Phi(0.5 / sqrt 2).
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=3000), rng.normal(0.5, 1.0, size=3000)
    p, low, high = ranking.prob_improvement(x, y, n_resamples=200)
    truth = scipy.stats.norm.cdf(0.5 / math.sqrt(2))
    assert p == pytest.approx(truth, abs=0.015)
    assert low < truth < high


def test_prob_improvement_ci_coverage():
    # 150 simulated comparisons of 12 vs 12 seeds: the 95 % CI covers the true P about 95 % of the time.
    rng = np.random.default_rng(4)
    truth = scipy.stats.norm.cdf(0.4 / math.sqrt(2))
    hits = []
    for i in range(150):
        x, y = rng.normal(size=12), rng.normal(0.4, 1.0, size=12)
        _, low, high = ranking.prob_improvement(x, y, n_resamples=500, seed=i)
        hits.append(low <= truth <= high)
    assert 0.85 <= np.mean(hits) <= 0.995, np.mean(hits)


def test_prob_improvement_diverged_seed_loses_every_pair():
    x, y = np.array([np.nan, 0.5]), np.array([0.9, 1.0])
    assert ranking.prob_improvement(x, y)[0] == pytest.approx(0.5)  # nan loses both, 0.5 wins both
    assert ranking.prob_improvement(np.array([0.1]), y)[1:] != (0.0, 0.0)
    assert np.isnan(ranking.prob_improvement(np.array([0.1]), y)[1])  # one seed: no CI


def test_improvement_matrix_shape_diagonal_and_complement():
    rng = np.random.default_rng(5)
    scores = {"a": rng.normal(0.2, 0.02, 8), "b": rng.normal(0.3, 0.02, 8), "c": rng.normal(0.25, 0.05, 8)}
    m = ranking.improvement_matrix(scores, n_resamples=300)
    assert m["archs"] == ["a", "b", "c"] and m["p"].shape == (3, 3)
    np.testing.assert_array_equal(np.diag(m["p"]), 0.5)
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_allclose((m["p"] + m["p"].T)[off], 1.0)
    assert m["p"][0, 1] == 1.0 and m["low"][0, 1] == 1.0  # a is clearly better than b


# ------------------------------------------------------------------ one seed per arch


def test_one_seed_win_probability_known_answers():
    rng = np.random.default_rng(6)
    x = rng.normal(size=7)
    # k archs with identical seeds: each wins 1/k (ties split evenly), whatever the values.
    same = ranking.one_seed_win_probability({"a": x, "b": x.copy(), "c": x.copy()})
    assert all(v == pytest.approx(1 / 3) for v in same.values())
    # Two archs: the win probability is P(improvement).
    y = rng.normal(0.3, 1.0, size=5)
    two = ranking.one_seed_win_probability({"x": x, "y": y})
    assert two["x"] == pytest.approx(ranking.prob_improvement(x, y)[0])
    # A dominating arch always wins; the probabilities sum to 1.
    three = ranking.one_seed_win_probability({"best": x - 100, "y": y, "z": rng.normal(size=4)})
    assert three["best"] == 1.0 and sum(three.values()) == pytest.approx(1.0)


def test_one_seed_win_probability_matches_simulation():
    rng = np.random.default_rng(7)
    scores = {"a": rng.normal(0.30, 0.05, 8), "b": rng.normal(0.32, 0.05, 8), "c": rng.normal(0.31, 0.08, 8)}
    exact = ranking.one_seed_win_probability(scores)
    draws = np.stack([rng.choice(v, 40_000) for v in scores.values()])  # one random seed per arch, many times
    simulated = np.bincount(np.argmin(draws, axis=0), minlength=3) / draws.shape[1]
    np.testing.assert_allclose(list(exact.values()), simulated, atol=0.01)
    assert sum(exact.values()) == pytest.approx(1.0)


def test_winner_of_mean():
    scores = {"a": np.array([0.3, 0.3]), "b": np.array([0.1, 0.2]), "c": np.array([0.0, np.nan])}
    assert ranking.winner_of_mean(scores) == "b"  # c has a diverged seed: its mean is inf
    assert ranking.winner_of_mean(scores, lower_is_better=False) == "a"


# ------------------------------------------------------------------ robust ranking


def _summ(values):
    return {ranking.RANK_KEY: stats.describe(np.asarray(values, dtype=float), lower_is_better=True)}


def test_rank_prefers_the_arch_that_holds_over_a_lucky_one():
    rng = np.random.default_rng(8)
    steady = 0.31 + 0.005 * rng.standard_normal(10)
    lucky = np.array([0.12, 0.15, 0.20, 0.25, 0.28, 0.33, 0.38, 0.40, 0.42, 0.45])  # lower mean, wide spread
    assert lucky.mean() < steady.mean()
    rows = ranking.rank({"lucky": _summ(lucky), "steady": _summ(steady)})
    assert [r["arch"] for r in rows] == ["steady", "lucky"]
    assert [r["rank"] for r in rows] == [1, 2]
    assert rows[0]["criterion"] == rows[0]["iqm_ci_high"] < rows[1]["criterion"]


def test_rank_diverged_archs_last_ties_broken_by_iqm():
    ok = _summ([0.5, 0.51, 0.52, 0.5])
    bad1 = _summ([0.1, 0.1, np.nan, 0.1])  # a quarter diverged: the IQM's CI reaches inf
    bad2 = _summ([0.2, np.nan, 0.2, 0.2])
    rows = ranking.rank({"bad2": bad2, "ok": ok, "bad1": bad1})
    assert [r["arch"] for r in rows] == ["ok", "bad1", "bad2"]
    assert rows[1]["criterion"] == np.inf and rows[1]["iqm"] == pytest.approx(0.1)
    half = _summ([0.1, np.nan, np.nan, 0.1])  # IQM inf too: more diverged seeds rank lower
    rows = ranking.rank({"half": half, "bad2": bad2})
    assert [r["arch"] for r in rows] == ["bad2", "half"]


# ------------------------------------------------------------------ variance decomposition


def test_variance_shares_recover_known_sources():
    # final = base + init + dropout + order effects, independent: shares 0.5, 0.3, 0.2.
    rng = np.random.default_rng(9)
    n, sd = 4000, {"init": math.sqrt(0.5), "dropout": math.sqrt(0.3), "order": math.sqrt(0.2)}
    finals = {s: 1.0 + rng.normal(0, v, n) for s, v in sd.items()}
    finals["all"] = 1.0 + sum(rng.normal(0, v, n) for v in sd.values())
    out = stats.variance_shares(finals, n_resamples=200)
    for s, want in (("init", 0.5), ("dropout", 0.3), ("order", 0.2)):
        assert out[s]["share"] == pytest.approx(want, abs=0.05)
        assert out[s]["share_ci_low"] < want < out[s]["share_ci_high"]
    assert out["all"]["share"] == 1.0 and abs(out["all"]["remainder"]) < 0.1


def test_variance_shares_zero_source_and_nonfinite():
    finals = {"dropout": np.full(6, 0.4), "init": np.array([0.1, 0.2, 0.3, np.nan, 0.2, 0.1]),
              "all": np.array([0.1, 0.3, 0.5, 0.2, 0.4, 0.3])}
    out = stats.variance_shares(finals, n_resamples=200)
    assert out["dropout"]["share"] == 0.0 and out["dropout"]["share_ci_high"] == 0.0
    assert out["init"]["n"] == 5  # the non-finite seed is left out
    assert out["init"]["share"] == pytest.approx(np.var([0.1, 0.2, 0.3, 0.2, 0.1], ddof=1) / np.var(finals["all"], ddof=1))


# ------------------------------------------------------------------ compare.analyse for C >= 3 classes


def test_compare_analyse_and_report_for_three_classes(tmp_path):
    from flaxray.analysis import compare, metrics
    from flaxray.analysis.probs import counts_from_probs
    from flaxray.report import compare as compare_report, plots

    classes = ("a", "b", "c")
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 90)

    def model(sharpness):
        logits = rng.normal(size=(4, 90, 3)) + sharpness * np.eye(3)[y]
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        return {"counts": counts_from_probs(probs, y, class_names=classes), "probs": probs,
                "params": 10, "seconds": 1.0, "seed_epochs": 8}

    models = {"good": model(3.0), "weak": model(0.3)}
    analysis = compare.analyse(models, y, challenger="good", baseline="weak", class_names=classes)
    assert analysis["metrics"] == list(metrics.test_metrics(classes))
    assert set(analysis["comparison"]) == {"loss", "accuracy", "auc", "recall_a", "recall_b", "recall_c"}
    assert analysis["comparison"]["accuracy"]["p_improve"] == 1.0  # 4 seeds each, far apart
    good = analysis["models"]["good"]
    direct = np.mean(models["good"]["probs"].mean(0).argmax(-1) == y)
    assert good["ensemble"]["accuracy"] == pytest.approx(direct)
    assert good["summary"]["auc"]["n"] == 4 and "better on this test set" in analysis["verdict"]

    bands = plots.save(plots.plot_bands({"good": {"loss": rng.uniform(size=(2, 3)),
                                                  "val_loss": rng.uniform(size=(2, 3))}}), tmp_path / "bands.png")
    md, _ = compare_report.write_report(tmp_path, analysis, info={"title": "3 classes"}, bands=bands)
    text = md.read_text()
    assert "recall b" in text and "predicted class: the most probable" in text and "specificity" not in text
