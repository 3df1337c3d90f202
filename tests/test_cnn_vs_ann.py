"""CNN vs ANN on the test set: specificity, the seed ensemble, the two-sample comparison, end to end."""

import dataclasses
import json
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest
import scipy.stats

from flaxray.analysis import compare
from flaxray.runtime import programs
from flaxray.analysis.metrics import BINARY, NUM_BINS, binary_metrics, test_metrics
from flaxray.analysis.probs import counts_from_probs

TEST_METRICS = test_metrics(BINARY)
from flaxray.runtime.runner import evaluate_seeds, predict, train_seeds
from flaxray.core.config import TrainConfig, device_data
from flaxray.core.settings import Settings
from studies import cnn_vs_ann


def test_specificity_on_a_hand_example():
    # 4 negatives: 3 below 0.5 (true negatives), 1 above; 2 positives, both above.
    probs, labels = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.7]), np.array([0, 0, 0, 0, 1, 1])
    m = compare.metrics_from_probs(probs, labels, BINARY)
    assert m["specificity"] == pytest.approx(3 / 4) and m["recall"] == 1.0
    assert m["precision"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(5 / 6)
    neg = np.zeros(NUM_BINS)
    neg[0] = 5
    assert binary_metrics(1.0, 5, np.zeros(NUM_BINS), neg)["specificity"] == 1.0  # all negatives right
    assert binary_metrics(1.0, 5, neg, np.zeros(NUM_BINS))["specificity"] == 0.0  # no negatives: 0, as Keras


def direct_metrics(p, y):
    """Every test metric straight from probabilities, no histograms."""
    pred, y = p >= 0.5, y.astype(bool)
    tp, fp, tn, fn = (np.sum(pred & y), np.sum(pred & ~y), np.sum(~pred & ~y), np.sum(~pred & y))
    q = np.clip(p, 1e-7, 1 - 1e-7)
    b = np.floor(p * NUM_BINS)  # AUC over the trainer's 200 bins, ties half (Keras-style)
    bp, bn = b[y][:, None], b[~y][None, :]
    return {"loss": -np.mean(y * np.log(q) + ~y * np.log(1 - q)), "accuracy": (tp + tn) / y.size,
            "precision": tp / (tp + fp), "recall": tp / (tp + fn), "specificity": tn / (tn + fp),
            "auc": np.mean((bp > bn) + 0.5 * (bp == bn))}


def test_ensemble_metrics_equal_a_direct_computation_on_averaged_probabilities():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    probs = np.clip(rng.normal(0.3 + 0.35 * y, 0.25, size=(5, 300)), 0.001, 0.999)  # 5 seeds
    m = compare.metrics_from_probs(compare.ensemble(probs), y, BINARY)
    want = direct_metrics(probs.mean(0), y)
    for k in TEST_METRICS:
        assert m[k] == pytest.approx(want[k], rel=1e-6), k
    # the ensemble is one model: not the mean of the seeds' metrics
    assert m["accuracy"] != pytest.approx(compare.metrics_from_probs(probs, y, BINARY)["accuracy"].mean())


def test_test_evaluation_on_the_device_matches_its_probabilities():
    rng = np.random.default_rng(0)
    y = (np.arange(150) % 3 != 0).astype(np.int32)
    x = (rng.integers(0, 160, (150, 6, 6, 1)) + 60 * y[:, None, None, None]).astype(np.uint8)
    ds = SimpleNamespace(train=SimpleNamespace(x=x[:96], y=y[:96]), val=SimpleNamespace(x=x[96:120], y=y[96:120]))
    config = TrainConfig(arch="dense:8", epochs=2, batch_size=16, eval_batch_size=16)
    states, _ = train_seeds(config, device_data(ds, 16), [0, 1, 2], progress=False)
    x_test, y_test = x[120:], y[120:]  # 30 images: not a whole number of eval batches
    counts = evaluate_seeds(config, states, x_test, y_test)
    probs = predict(config, states, x_test)
    assert probs.shape == (3, 30) and counts["count"].tolist() == [30, 30, 30]
    assert not np.allclose(probs[0], probs[1])  # different seeds, different models
    from_counts = compare.metrics_from_counts(counts, BINARY)
    from_probs = compare.metrics_from_probs(probs, y_test, BINARY)
    for k in TEST_METRICS:
        np.testing.assert_allclose(from_counts[k], from_probs[k], rtol=1e-4, err_msg=k)
    hist = counts_from_probs(probs, y_test, class_names=BINARY)
    np.testing.assert_array_equal(hist["pos_hist"], counts["pos_hist"])  # binned identically
    # Evaluated again (another config of the same program: the rates are the lanes' own, and a config's programs
    # are shared whatever its epochs), and models trained at another rate: nothing is compiled again.
    evaluate = programs.compiled(config).evaluate
    assert programs.compiled(dataclasses.replace(config, epochs=5)) is programs.compiled(config)
    again = evaluate_seeds(dataclasses.replace(config, epochs=5), states, x_test, y_test)
    np.testing.assert_array_equal(again["pos_hist"], counts["pos_hist"])
    other_rate, _ = train_seeds(config, device_data(ds, 16), [0, 1, 2], [Settings(lr=0.5)] * 3, progress=False)
    assert not np.array_equal(evaluate_seeds(config, other_rate, x_test, y_test)["pos_hist"], counts["pos_hist"])
    assert evaluate._cache_size() == 1


def test_two_sample_on_known_inputs():
    a, b = np.array([0.90, 0.91, 0.92, 0.93]), np.array([0.80, 0.81, 0.82, 0.95])
    c = compare.two_sample(a, b, "accuracy")
    assert c["p_improve"] == pytest.approx(12 / 16)  # a beats b in 12 of the 16 pairs
    assert c["mean_difference"] == pytest.approx(a.mean() - b.mean())
    assert c["welch_p"] == pytest.approx(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert c["mannwhitney_p"] == pytest.approx(scipy.stats.mannwhitneyu(a, b).pvalue)
    # for a loss, lower is better: the same numbers read the other way round
    assert compare.two_sample(a, b, "loss")["p_improve"] == pytest.approx(4 / 16)
    one = compare.two_sample(a[:1], b, "accuracy")
    assert np.isnan(one["welch_p"]) and np.isnan(one["p_improve_low"])


def models_for(rng, n_test, means):
    y = np.arange(n_test) % 2
    out = {}
    for name, mean in means.items():
        probs = np.clip(rng.normal(0.5 + mean * (2 * y - 1), 0.2, size=(4, n_test)), 0, 1)
        out[name] = {"counts": counts_from_probs(probs, y, class_names=BINARY), "probs": probs, "params": 100, "seconds": 2.0,
                     "seed_epochs": 8}
    return out, y


def test_analyse_prefers_the_clearly_better_model_and_reports_it(tmp_path):
    models, y = models_for(np.random.default_rng(1), 400, {"good": 0.3, "weak": 0.02})
    analysis = compare.analyse(models, y, challenger="good", baseline="weak", class_names=BINARY)
    assert analysis["comparison"]["accuracy"]["p_improve"] == 1.0
    assert "`good` is better" in analysis["verdict"]
    assert analysis["models"]["good"]["seed_epochs_per_s"] == 4.0
    reverse = compare.analyse(models, y, challenger="weak", baseline="good", class_names=BINARY)
    assert reverse["comparison"]["auc"]["p_improve"] == 0.0 and "`good` is better" in reverse["verdict"]
    with pytest.raises(ValueError):
        compare.analyse(models, y, challenger="good", baseline="missing", class_names=BINARY)


def test_end_to_end_on_the_embedded_default(tmp_path, capsys):
    out = tmp_path / "cva"
    argv = ["--cnn", "conv:4,pool,gap,dense:8", "--ann", "dense:8", "--seeds", "2", "--epochs", "1",
            "--batch-size", "256", "--channels", "1", "--no-progress", "--out", str(out)]
    assert cnn_vs_ann.main(argv) == 0
    printed = capsys.readouterr().out
    assert "a random seed of `conv:4,pool,gap,dense:8` beats" in printed
    for name in ("report.md", "report.html", "bands.png", "intervals.png", "curves.csv", "study.json"):
        assert (out / name).exists(), name
    md = (out / "report.md").read_text()
    assert "![test metrics per model](intervals.png)" in md and "(bands.png)" in md
    assert "| specificity |" in md and "| `dense:8` seeds | `dense:8` ensemble |" in md
    study = json.loads((out / "study.json").read_text())
    test = study["test"]
    assert study["data"]["image_size"] == 28 and study["seeds"] == [0, 1]
    assert set(test["models"]) == {"conv:4,pool,gap,dense:8", "dense:8"}
    for m in test["models"].values():
        assert len(m["values"]["specificity"]) == 2 and set(m["ensemble"]) == set(TEST_METRICS)
        assert m["params"] > 0 and m["seconds"] > 0
    assert test["models"]["dense:8"]["params"] == 28 * 28 * 8 + 8 + 8 + 1  # 1 channel, dense 8, head
    assert matplotlib.image.imread(out / "intervals.png").shape[0] > 200
    # The same command again trains nothing: both models are read back and evaluated to the same test numbers.
    assert cnn_vs_ann.main(argv) == 0
    assert "reused 2 finished arch(s)" in capsys.readouterr().out
    again = json.loads((out / "study.json").read_text())["test"]
    for name, m in again["models"].items():
        assert m["values"] == test["models"][name]["values"]


@pytest.mark.parametrize("extra, message", [
    (["--cnn", "dense:8", "--ann", "dense:8"], "both"),
    (["--lr", "0.01", "0.001"], "one learning rate"),
    (["--confidence", "1.5"], "--confidence"),
    (["--cnn", "conv:0"], ""),
])
def test_bad_input_is_one_line(tmp_path, capsys, extra, message):
    assert cnn_vs_ann.main([*extra, "--no-progress", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and message in err


def test_help_names_the_default_and_why(capsys):
    with pytest.raises(SystemExit):
        cnn_vs_ann.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: cnn_sep" in text and "default: final" in text and "keras.io" in text
