"""The metric registry: binary numbers as before, multi-class ones against brute-force counts."""

import numpy as np
import pytest

from flaxray.analysis import metrics
from flaxray.analysis.probs import counts_from_probs
from flaxray.errors import FlaxrayError
from flaxray.analysis.metrics import NUM_BINS

CLASSES = ("cat", "dog", "eel", "fox")


def random_probs(rng, seeds, n, c):
    logits = rng.normal(size=(seeds, n, c)) * 2
    p = np.exp(logits)
    return p / p.sum(-1, keepdims=True)


def test_keys_binary_exactly_today_and_multiclass_from_the_class_list():
    assert metrics.curve_keys(metrics.BINARY) == ("loss", "accuracy", "precision", "recall", "auc",
                                    "val_loss", "val_accuracy", "val_precision", "val_recall", "val_auc")
    assert metrics.test_metrics(metrics.BINARY) == ("loss", "accuracy", "precision", "recall", "specificity", "auc")
    names = ("loss", "accuracy", "auc", "recall_cat", "recall_dog", "recall_eel", "recall_fox")
    assert metrics.curve_keys(CLASSES) == names + tuple(f"val_{n}" for n in names)
    assert metrics.test_metrics(CLASSES) == names
    assert metrics.label("recall") == "recall (sensitivity)" and metrics.label("auc") == "AUC"
    assert metrics.lower_is_better("loss") and not metrics.lower_is_better("recall_dog")
    with pytest.raises(FlaxrayError, match="2 or more classes"):
        metrics.curve_keys(("only",))


def test_binary_metrics_are_the_registry_and_unchanged_on_a_hand_example():
    # 4 negatives at 0.1, 0.2, 0.3, 0.9; 2 positives at 0.8, 0.7.
    c = counts_from_probs(np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.7]), np.array([0, 0, 0, 0, 1, 1]),
                              class_names=metrics.BINARY)
    m = metrics.binary_metrics(c["loss_sum"], c["count"], c["pos_hist"], c["neg_hist"])
    assert m == pytest.approx({"loss": c["loss_sum"] / 6, "accuracy": 5 / 6, "precision": 2 / 3, "recall": 1.0,
                               "specificity": 3 / 4, "auc": 6 / 8})  # 6 of 8 pairs ordered
    assert list(m) == list(metrics.test_metrics(metrics.BINARY))


def test_multiclass_counts_are_binned_as_the_device_bins_them():
    rng = np.random.default_rng(0)
    probs, y = random_probs(rng, 2, 50, 4), rng.integers(0, 4, 50)
    probs[0, 0] = [0.5, 0.25, 0.125, 0.125]  # bin edges: float32 x 200, truncated
    c = counts_from_probs(probs, y, class_names=CLASSES)
    assert c["hist"].shape == (2, 4, 4, NUM_BINS) and c["confusion"].shape == (2, 4, 4)
    bins = np.clip((probs.astype(np.float32) * np.float32(NUM_BINS)).astype(int), 0, NUM_BINS - 1)
    for s in range(2):
        for k in range(4):
            for cls in range(4):
                want = np.bincount(bins[s, y == cls, k], minlength=NUM_BINS)
                np.testing.assert_array_equal(c["hist"][s, k, cls], want)
        np.testing.assert_array_equal(c["confusion"][s].sum(1), np.bincount(y, minlength=4))
    assert c["hist"][0, 0, y[0], 100] >= 1  # 0.5 lands in bin 100
    np.testing.assert_allclose(c["loss_sum"], -np.log(np.clip(probs[:, np.arange(50), y], 1e-7, 1)).sum(1))


def test_multiclass_metrics_against_brute_force():
    rng = np.random.default_rng(1)
    n = 120
    y = rng.integers(0, 4, n)
    probs = random_probs(rng, 3, n, 4)
    m = metrics.compute(counts_from_probs(probs, y, class_names=CLASSES), CLASSES, test=True)
    bins = np.clip((probs.astype(np.float32) * np.float32(NUM_BINS)).astype(int), 0, NUM_BINS - 1)
    for s in range(3):
        pred = probs[s].argmax(-1)
        assert m["accuracy"][s] == pytest.approx(np.mean(pred == y))
        for k, name in enumerate(CLASSES):
            assert m[f"recall_{name}"][s] == pytest.approx(np.sum((pred == k) & (y == k)) / np.sum(y == k))
        # OvR AUC by counting every (class-k, other) pair on the binned P(k), ties half
        aucs = []
        for k in range(4):
            pos, neg = bins[s, y == k, k][:, None], bins[s, y != k, k][None, :]
            aucs.append(np.mean((pos > neg) + 0.5 * (pos == neg)))
        assert m["auc"][s] == pytest.approx(np.mean(aucs), rel=1e-12)
        assert m["loss"][s] == pytest.approx(-np.mean(np.log(probs[s, np.arange(n), y])))


def test_multiclass_undefined_cases_and_a_perfect_model():
    y = np.array([0, 0, 1, 1, 2, 2])
    perfect = np.eye(3)[y] * 0.98 + 0.01
    m = metrics.compute(counts_from_probs(perfect, y, class_names=("a", "b", "c")), ("a", "b", "c"))
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0 and m["recall_b"] == 1.0
    # a class absent from the split: its recall is 0 (as Keras reports an undefined recall), the AUC NaN
    m = metrics.compute(counts_from_probs(perfect[:4], y[:4], class_names=("a", "b", "c")), ("a", "b", "c"))
    assert m["recall_c"] == 0.0 and np.isnan(m["auc"])


def test_history_from_counts_both_kinds_and_wrong_statistics():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 40)
    per = [counts_from_probs(random_probs(rng, 2, 40, 3), y, class_names=("a", "b", "c")) for _ in range(5)]
    split = {k: np.stack([p[k] for p in per], axis=1) for k in per[0]}  # (seed, epoch, ...)
    h = metrics.history_from_counts({"train": split, "val": split}, ("a", "b", "c"))
    assert tuple(h) == metrics.curve_keys(("a", "b", "c")) and h["val_recall_c"].shape == (2, 5)
    with pytest.raises(FlaxrayError, match="pos_hist"):
        metrics.history_from_counts({"train": split, "val": split}, metrics.BINARY)  # multi-class counts, binary class list
