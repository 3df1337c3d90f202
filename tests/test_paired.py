"""Paired seeds compared seed by seed, practical equivalence (--rope) and when the ranking settles (issue 30,
items 3, 5 and 7): known answers against scipy and brute force, then a tiny study end to end."""

import itertools
import json

import numpy as np
import pytest
import scipy.stats

from flaxray.analysis import paired, pairs, settled
from flaxray.analysis.study import analyse, seeds_to_settle
from studies import seed_variance


def test_null_distributions_are_the_enumerated_ones():
    for n in (1, 4, 7):
        sums = [sum(r for r, s in zip(range(1, n + 1), signs) if s) for signs in itertools.product((0, 1), repeat=n)]
        assert paired.signed_rank_null(n) == pytest.approx(np.bincount(sums) / 2**n, abs=1e-15)
    for m, n in ((1, 1), (2, 3), (4, 3), (5, 5)):
        # U = how many (x, y) pairs have x above y, over every way of placing m x's among m + n ranks.
        us = [sum(sum(1 for j in range(m + n) if j not in xs and j < i) for i in xs)
              for xs in itertools.combinations(range(m + n), m)]
        assert paired.rank_sum_null(m, n) == pytest.approx(np.bincount(us, minlength=m * n + 1) / len(us), abs=1e-15)


def test_wilcoxon_and_sign_flip_against_scipy_and_enumeration():
    rng = np.random.default_rng(0)
    assert paired.wilcoxon_p(-np.arange(1.0, 9.0)) == pytest.approx(2 / 2**8)  # every seed lower: 2 of 256 signings
    assert np.isnan(paired.wilcoxon_p([0.0, 0.0, 0.3]))  # one seed moved: nothing to test
    for n in (5, 9, 14):
        d = rng.normal(0.4, 1, n)
        assert paired.wilcoxon_p(d) == scipy.stats.wilcoxon(d, method="exact").pvalue
        # The exact null here gives scipy's exact p: 2 min(P(T <= t), P(T >= t)).
        t = int(scipy.stats.wilcoxon(d, alternative="greater").statistic)
        cdf = np.cumsum(paired.signed_rank_null(n))
        assert min(1, 2 * min(cdf[t], 1 - (cdf[t - 1] if t else 0))) == pytest.approx(scipy.stats.wilcoxon(d).pvalue)
        flips = np.array(list(itertools.product((1, -1), repeat=n))) * d
        means = flips.mean(1)
        exact = min(1, 2 * min(np.mean(means <= d.mean() + 1e-12), np.mean(means >= d.mean() - 1e-12)))
        assert paired.signflip_p(d) == pytest.approx(exact)
        assert paired.signflip_p(d) == pytest.approx(scipy.stats.permutation_test(
            (d,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue)
    d = rng.normal(0.3, 1, 30)  # above 16 seeds: 65536 random flips, close to scipy's own random ones
    assert paired.signflip_p(d) == pytest.approx(scipy.stats.permutation_test(
        (d,), np.mean, permutation_type="samples", n_resamples=2**16, rng=1).pvalue, abs=0.01)
    assert np.isnan(paired.signflip_p([1.0, np.inf, -0.5]))  # a diverged seed: no mean to flip


@pytest.mark.parametrize("n", [6, 8, 11, 20])
def test_hodges_lehmann_paired_ci_is_the_wilcoxon_test_inverted(n):
    d = np.random.default_rng(n).normal(0.3, 1, n)
    hl = paired.hodges_lehmann(d)
    w = np.sort([(d[i] + d[j]) / 2 for i in range(n) for j in range(i, n)])
    assert hl["shift"] == pytest.approx(np.median(w))
    # A shift is inside the CI exactly when the exact signed-rank test of d - shift does not reject at 0.05.
    for shift in (w[1:] + w[:-1]) / 2:
        inside = hl["low"] < shift < hl["high"]
        assert inside == (scipy.stats.wilcoxon(d - shift, method="exact").pvalue > 0.05), shift
    assert 0.95 <= hl["achieved"] < 1
    assert paired.hodges_lehmann(d[:5])["low"] == -np.inf  # 5 seeds: the smallest p is 1/16, no 95 % interval


@pytest.mark.parametrize("m, n", [(4, 4), (5, 8), (9, 7)])
def test_hodges_lehmann_two_sample_ci_is_the_mann_whitney_test_inverted(m, n):
    rng = np.random.default_rng(m * n)
    a, b = rng.normal(0.5, 1, m), rng.normal(0, 1, n)
    hl = paired.hodges_lehmann(a, b)
    diffs = np.sort(np.subtract.outer(a, b).ravel())
    assert hl["shift"] == pytest.approx(np.median(diffs))
    for shift in (diffs[1:] + diffs[:-1]) / 2:
        inside = hl["low"] < shift < hl["high"]
        assert inside == (scipy.stats.mannwhitneyu(a - shift, b, method="exact").pvalue > 0.05), shift


def test_the_normal_count_is_within_one_order_statistic_of_the_exact_one():
    for m, n in ((30, 30), (60, 90), (100, 100)):
        exact = paired._lower_count(np.cumsum(paired.rank_sum_null(m, n)), 0.05)
        assert abs(paired._normal_count(m * n / 2, m * n * (m + n + 1) / 12, 0.05) - exact) <= 1


def test_tost_is_two_one_sided_wilcoxon_tests():
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(60):
        d = rng.normal(rng.uniform(-0.3, 0.3), rng.uniform(0.05, 0.3), 12)
        c = paired.compare(d, np.zeros(12), paired=True, rope=0.2)
        below = scipy.stats.wilcoxon(d - 0.2, alternative="less", method="exact").pvalue <= 0.05
        above = scipy.stats.wilcoxon(d + 0.2, alternative="greater", method="exact").pvalue <= 0.05
        assert (c["decision"] == "equivalent") == (below and above)
        assert (c["decision"] == "better") == (scipy.stats.wilcoxon(d + 0.2, alternative="less",
                                                                     method="exact").pvalue <= 0.05)
        seen.add(c["decision"])
    assert {"equivalent", "better", "undecided"} <= seen
    assert [paired.decide(*ci, 0.1) for ci in ((-0.3, -0.2), (0.2, 0.3), (-0.05, 0.08), (-0.2, 0.05), (-np.inf, 0))] \
        == ["better", "worse", "equivalent", "undecided", "undecided"]
    # A score (higher is better): the same shift the other way round.
    assert paired.compare(np.ones(8) + np.arange(8) / 100, np.zeros(8), paired=False, lower_is_better=False,
                          rope=0.5)["decision"] == "better"


def test_paired_compare_counts_a_diverged_seed_as_the_worst():
    c = paired.compare([0.1, 0.2, np.nan, np.nan, 0.3], [0.2, 0.3, 0.4, np.nan, 0.1], paired=True)
    assert c["n"] == 5 and c["wins"] == 2 and c["ties"] == 1  # seed 2 diverged in a only, seed 3 in both
    assert c["p_improve"] == pytest.approx(2.5 / 5) and np.isnan(c["signflip_p"]) and np.isfinite(c["wilcoxon_p"])


def test_kendall_tau_is_scipys_and_the_settled_epoch_is_known():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, (50, 6)).astype(float), rng.integers(0, 4, (50, 6)).astype(float)
    want = [scipy.stats.kendalltau(a, b).statistic for a, b in zip(x, y)]
    assert settled.kendall_tau(x, y) == pytest.approx(want, nan_ok=True)
    # Three groups whose order is reversed for 3 epochs, then right: tau -1 then 1, settled at epoch 4.
    base = np.array([[3, 3, 3, 1, 1, 1], [2, 2, 2, 2, 2, 2], [1, 1, 1, 3, 3, 3]], float)
    curves = {g: base[i] + rng.normal(0, 1e-3, (6, 6)) for i, g in enumerate("abc")}
    s = settled.analyse(curves, list("abc"), n_resamples=200)
    assert s["tau"].tolist() == [-1, -1, -1, 1, 1, 1] and s["top"] == ["c", "c", "c", "a", "a", "a"]
    assert s["settled_epoch"] == 4 and s["settled_low"] == s["settled_high"] == 4
    assert s["tau_low"].tolist() == s["tau_high"].tolist() == [-1, -1, -1, 1, 1, 1]
    # Groups of other seed counts (a race) resample on their own.
    assert settled.analyse({"a": base[0][None].repeat(3, 0), "b": base[2][None].repeat(5, 0)}, ["a", "b"],
                           n_resamples=50)["settled_epoch"] == 4


def test_which_groups_are_paired():
    settings = {arch: {"varies": "the setting (the learning rate, weight decay)", "groups": [f"{arch}@{lv}" for lv in
                                                                                              ("a", "b", "c", "d")],
                       "levels": {f"{arch}@{lv}": {"lr": lr, "wd": wd} for lv, lr, wd in
                                  (("a", 1, 0), ("b", 1, 1), ("c", 2, 0), ("d", 2, 1))}} for arch in ("p", "q")}
    order = [f"{arch}@{lv}" for lv in "abcd" for arch in "pq"]
    found = pairs.groups(order, settings)
    paired_pairs = {(p["a"], p["b"], p["varies"]) for p in found if p["paired"]}
    assert paired_pairs == {(f"{x}@{u}", f"{x}@{v}", k) for x in "pq" for u, v, k in
                            (("a", "b", "wd"), ("a", "c", "lr"), ("b", "d", "lr"), ("c", "d", "wd"))}
    assert {(p["a"], p["b"]) for p in found if not p["paired"]} == {(f"p@{lv}", f"q@{lv}") for lv in "abcd"}
    assert all(not p["paired"] for p in pairs.groups(["x", "y", "z"], {}))
    assert len(pairs.groups(["x", "y", "z"], {})) == 3


def test_paired_seeds_settle_sooner_when_the_seed_moves_both_settings():
    rng = np.random.default_rng(0)
    seed = rng.normal(0, 1, 16)  # each seed's own luck, shared by both settings
    a, b = seed + rng.normal(0, 0.1, 16), seed + 0.3 + rng.normal(0, 0.1, 16)
    assert seeds_to_settle(a, b, paired=True) <= 6 < 48 <= (seeds_to_settle(a, b) or 1000)


def _histories(rng, shift, seeds=8, epochs=5):
    loss = 0.5 + shift + rng.normal(0, 0.05, (seeds, epochs))
    return {"loss": loss, "val_loss": loss, "accuracy": 1 - loss, "val_accuracy": 1 - loss}


def test_analysis_without_rope_or_settings_has_no_pairs_and_with_rope_says_it_in_words():
    rng = np.random.default_rng(1)
    histories = {"p": _histories(rng, 0.0), "q": _histories(rng, 0.001)}
    plain = analyse(histories)
    assert "paired" not in plain and "rope" not in plain and "settled" in plain
    roped = analyse(histories, rope=0.2)
    assert plain["verdict"] in roped["verdict"]  # the verdict as before, with the margin's sentence after it
    assert roped["rope"]["pairs"][0]["decision"] == "equivalent"
    assert "are equivalent within ±0.2 final val loss" in roped["verdict"]


def test_a_settings_crossing_reports_paired_and_archs_alone_do_not(tmp_path, capsys):
    common = ["--seeds", "3", "--epochs", "2", "--batch-size", "256", "--channels", "1", "--no-progress",
              "--checkpoint-every", "0"]
    out = tmp_path / "lr"
    assert seed_variance.main(["--arch", "dense:8@0.5", "dense:4", "--lr", "1e-3", "3e-3", "--rope", "0.05",
                               "--out", str(out), *common]) == 0
    printed = capsys.readouterr().out
    assert "the same 3 seeds paired" in printed and "Hodges-Lehmann shift" in printed
    assert "paired, " in printed and "unpaired" in printed and "±0.05 final val loss" in printed
    report = (out / "report.md").read_text()
    assert "## Settings compared seed by seed" in report and "## Practical equivalence within ±0.05" in report
    assert "## When is the choice settled?" in report and (out / "settled.png").exists()
    analysis = json.loads((out / "study.json").read_text())["analysis"]
    assert {(p["a"].split("@lr")[0], p["varies"]) for p in analysis["paired"]} == {
        ("dense:8@0.5", "the learning rate"), ("dense:4", "the learning rate")}
    assert {p["paired"] for p in analysis["rope"]["pairs"]} == {True, False}

    out = tmp_path / "archs"
    assert seed_variance.main(["--arch", "dense:8@0.5", "dense:4", "--out", str(out), *common]) == 0
    printed = capsys.readouterr().out
    assert "paired" not in printed and "final val loss (shift" not in printed
    report = (out / "report.md").read_text()
    assert "Settings compared seed by seed" not in report and "Practical equivalence" not in report
    assert "## When is the choice settled?" in report


@pytest.mark.parametrize("argv, needle", [
    (["--rope", "-1"], "--rope takes a margin > 0"),
    (["--rope", "0.1", "--race"], "drop --rope"),
])
def test_a_bad_or_raced_rope_is_one_line_before_anything_is_written(tmp_path, capsys, argv, needle):
    from studies import architecture_search

    assert architecture_search.main(["--arch", "pyramid", "final", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and not (tmp_path / "out").exists()
