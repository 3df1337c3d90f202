"""The architecture comparison (`flaxray.analysis.study`) and its report, on synthetic histories of both kinds.

Moved from tests/test_search.py (the analysis half): synthetic_histories,
test_report_from_synthetic_histories_reads_well, test_single_arch_and_single_seed_do_not_crash.
"""

import numpy as np
import pytest

from flaxray.analysis import study as fa
from flaxray.analysis import metrics, ranking
from flaxray.report import search as report


def synthetic_histories(rng, archs=("steady", "lucky", "broken"), seeds=6, epochs=8):
    e = np.arange(1, epochs + 1)
    out = {}
    for i, arch in enumerate(archs):
        train = 0.2 + 0.5 * np.exp(-e / 3) + 0.01 * rng.normal(size=(seeds, epochs))
        val = train + 0.05 + (0.02 + 0.05 * i) * rng.normal(size=(seeds, 1))
        h = {"loss": train, "val_loss": val}
        for m in ("accuracy", "auc"):
            h[m] = h[f"val_{m}"] = np.clip(1 - val, 0, 1)
        out[arch] = h
    if "broken" in out:
        out["broken"]["val_loss"][0, 4:] = np.nan  # a diverged seed
    return out


def test_report_from_synthetic_histories_reads_well(tmp_path):
    histories = synthetic_histories(np.random.default_rng(0))
    analysis = fa.analyse(histories, baseline=0.57)
    assert analysis["criterion"] == ranking.RANK_CRITERION
    assert analysis["diagnosis"]["broken"]["labels"][0] == "diverged"
    assert analysis["summary"]["broken"]["final_val_loss"]["worst"] == np.inf
    assert analysis["summary"]["broken"]["final_val_accuracy"]["n_nonfinite"] == 1  # diverged: on every metric
    assert np.isnan(analysis["values"]["broken"]["final_val_accuracy"][0])
    assert analysis["ranking"][-1]["arch"] == "broken"  # its IQM CI reaches the diverged seed
    assert sum(analysis["one_seed"]["win_probability"].values()) == pytest.approx(1.0)
    md_path, html_path = report.write_report(tmp_path, analysis, histories,
                                             info={"command": "python -m studies.architecture_search", "seeds": 6})
    md = md_path.read_text()
    assert analysis["verdict"] in md and "∞" in md and "1 diverged" in md and "over 6 seeds" in md
    assert "final val AUC" in md and analysis["criterion"] in md
    assert "<b>" in html_path.read_text()  # markdown bold rendered as HTML
    header, rows = report.ranking_table(analysis)
    assert len(rows) == 3 and rows[0][1] == f"`{analysis['ranking'][0]['arch']}`"
    assert "| rank | arch |" in report.ranking_markdown(analysis)


def test_single_arch_and_single_seed_do_not_crash(tmp_path):
    histories = synthetic_histories(np.random.default_rng(1), archs=("solo",), seeds=1)
    analysis = fa.analyse(histories)
    assert "only architecture" in analysis["verdict"]
    report.write_report(tmp_path, analysis, histories, info={})
    assert (tmp_path / "report.html").exists()


def test_one_arch_report_is_its_seed_variance_with_nothing_ranked(tmp_path):
    histories = synthetic_histories(np.random.default_rng(3), archs=("solo",), seeds=4)
    md = report.write_report(tmp_path, fa.analyse(histories), histories, info={})[0].read_text()
    assert md.startswith("# Seed variance of `solo`")
    assert "Architecture search" not in md and "## Ranking" not in md and "## Probability of improvement" not in md
    assert "## Curves" in md and "## Statistics over seeds" in md and "## Diagnosis per seed" in md
    assert not (tmp_path / "improvement.png").exists()  # a 1x1 matrix says nothing
    assert "<title>Seed variance of solo" in (tmp_path / "report.html").read_text()


def test_decomposition_shares_and_no_architecture():
    rng = np.random.default_rng(2)
    histories = synthetic_histories(rng, archs=("a",), seeds=5)
    runs = {s: synthetic_histories(rng, archs=("a",), seeds=5)["a"] for s in ("init", "dropout", "order")}
    runs[fa.TOTAL] = histories["a"]
    analysis = fa.analyse(histories, decomposition={"a": runs})
    shares = analysis["decomposition"]["a"]
    assert shares[fa.TOTAL]["share"] == 1.0 and set(shares) == {"init", "dropout", "order", fa.TOTAL}
    with pytest.raises(Exception, match="no architecture"):
        fa.analyse({})


def test_a_three_class_comparison_ranks_and_reports(tmp_path):
    classes = ("cat", "dog", "eel")
    rng = np.random.default_rng(3)
    histories = {}
    for i, arch in enumerate(("sharp", "blunt")):
        h = {k: rng.uniform(0.6, 0.9, (5, 6)) for k in metrics.curve_keys(classes)}
        h["loss"] = 0.5 + 0.5 * np.exp(-np.arange(6) / 2) + 0.01 * rng.normal(size=(5, 6))
        h["val_loss"] = h["loss"] + 0.1 + 0.3 * i + 0.02 * rng.normal(size=(5, 1))
        histories[arch] = h
    analysis = fa.analyse(histories, baseline=float(np.log(3)))
    assert [r["arch"] for r in analysis["ranking"]] == ["sharp", "blunt"]
    assert "final_val_recall_dog" in analysis["summary"]["sharp"] and "final_val_auc" in analysis["values"]["blunt"]
    md, _ = report.write_report(tmp_path, analysis, histories, info={})
    assert "final val AUC" in md.read_text() and "holds best across seeds" in analysis["verdict"]


def test_seed_percentiles_and_seeds_to_settle():
    from flaxray.analysis.study import seed_percentiles, seeds_to_settle

    # Lower loss is better: the best seed beats the 3 others (100), a diverged one none (0), ties half.
    np.testing.assert_array_equal(seed_percentiles([0.1, 0.3, np.nan, 0.2]), [100, 100 / 3, 0, 200 / 3])
    np.testing.assert_array_equal(seed_percentiles([0.5, 0.5]), [50, 50])
    assert np.isnan(seed_percentiles([0.1])).all()
    rng = np.random.default_rng(0)
    far, near = rng.normal(0, 1, 8), rng.normal(0, 1, 8)
    assert seeds_to_settle(far, far + 3) <= 4  # told apart at once
    assert seeds_to_settle(near, near) is None  # the same distribution: no number of seeds settles it
    # A smaller difference needs more seeds.
    assert seeds_to_settle(far, far + 3) <= seeds_to_settle(far, far + 0.5) <= 512
