"""Keras-style binary metrics from per-epoch sufficient statistics (plain numpy).

The trainer does not keep every prediction: per epoch and split it accumulates the loss sum, the
sample count and two histograms of predicted probabilities, one for each true class, over
`NUM_BINS` equal bins of [0, 1]. Accuracy, precision and recall at threshold 0.5 and the AUC all
follow from those, for any number of leading (seed, epoch) axes.
"""

from __future__ import annotations

import numpy as np

NUM_BINS = 200  # Keras's AUC uses 200 thresholds by default; 0.5 is a bin edge.
METRICS = ("loss", "accuracy", "precision", "recall", "auc")  # the curves of a History
TEST_METRICS = ("loss", "accuracy", "precision", "recall", "specificity", "auc")  # a model's test-set evaluation


def counts_from_probs(probs, labels, losses=None) -> dict[str, np.ndarray]:
    """The sufficient statistics `binary_metrics` takes, from predicted probabilities (..., N) and labels (N,).

    Binned exactly as the trainer bins them on the device; `losses` (..., N) defaults to the binary
    cross-entropy of the probabilities, clipped to [1e-7, 1 - 1e-7] as Keras clips them.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
    if losses is None:
        p = np.clip(probs, 1e-7, 1 - 1e-7)
        losses = -(labels * np.log(p) + (1 - labels) * np.log1p(-p))
    # float32, as on the device, so a probability on a bin edge lands in the same bin
    bins = np.clip((probs.astype(np.float32) * np.float32(NUM_BINS)).astype(np.int64), 0, NUM_BINS - 1)
    onehot = bins[..., None] == np.arange(NUM_BINS)
    return {"loss_sum": np.sum(losses, -1), "count": np.full(probs.shape[:-1], labels.size, np.float64),
            "pos_hist": np.sum(onehot * labels[:, None], -2), "neg_hist": np.sum(onehot * (1 - labels)[:, None], -2)}


def binary_metrics(loss_sum, count, pos_hist, neg_hist) -> dict[str, np.ndarray]:
    """loss, accuracy, precision, recall (sensitivity), specificity (threshold 0.5) and AUC from accumulated counts.

    `pos_hist[..., b]` counts positives whose predicted probability fell in bin b, `neg_hist` the
    negatives. Specificity is tn / negatives. Precision, recall and specificity are 0 when undefined (as Keras reports them); AUC is NaN when a
    class is absent. AUC counts pairs in the same bin as half-ordered (Mann-Whitney with ties).
    """
    pos_hist, neg_hist = np.asarray(pos_hist, np.float64), np.asarray(neg_hist, np.float64)
    half = NUM_BINS // 2
    tp, fn = pos_hist[..., half:].sum(-1), pos_hist[..., :half].sum(-1)
    fp, tn = neg_hist[..., half:].sum(-1), neg_hist[..., :half].sum(-1)
    n_pos, n_neg = tp + fn, fp + tn
    neg_below = np.cumsum(neg_hist, axis=-1) - neg_hist
    ordered_pairs = (pos_hist * (neg_below + 0.5 * neg_hist)).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "loss": np.asarray(loss_sum, np.float64) / np.asarray(count, np.float64),
            "accuracy": (tp + tn) / (n_pos + n_neg),
            "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0),
            "recall": np.where(n_pos > 0, tp / np.maximum(n_pos, 1), 0.0),
            "specificity": np.where(n_neg > 0, tn / np.maximum(n_neg, 1), 0.0),
            "auc": np.where((n_pos > 0) & (n_neg > 0), ordered_pairs / (n_pos * n_neg), np.nan),
        }


def history_from_counts(counts: dict[str, dict[str, np.ndarray]], class_names=None) -> dict[str, np.ndarray]:  # TEMP sig
    """{"train": counts, "val": counts} with (seed, epoch) leading axes -> a Keras-style History dict.

    Keys as Keras names them: `loss`, `accuracy`, ... for train and `val_loss`, `val_accuracy`, ...
    (the `METRICS`; specificity is for the test split, `flaxray.compare`).
    """
    history = {}
    for split, prefix in (("train", ""), ("val", "val_")):
        c = counts[split]
        values = binary_metrics(c["loss_sum"], c["count"], c["pos_hist"], c["neg_hist"])
        for name in METRICS:
            history[prefix + name] = values[name]
    return history


def mask_diverged(history: dict[str, np.ndarray], diverged) -> dict[str, np.ndarray]:
    """NaN from the epoch each seed diverged in (`diverged[s]`, 1-based; 0 = never) onwards.

    A diverged seed stopped updating, so its later numbers describe a frozen model, not training:
    NaN keeps them out of means and bands (the stats count them as non-finite seeds).
    """
    diverged = np.asarray(diverged)
    out = {}
    for key, values in history.items():
        epochs = np.arange(1, values.shape[1] + 1)
        dead = (diverged[:, None] > 0) & (epochs[None, :] >= diverged[:, None])
        out[key] = np.where(dead, np.nan, values)
    return out
