"""Keras-style binary metrics from per-epoch sufficient statistics (plain numpy).

The trainer does not keep every prediction: per epoch and split it accumulates the loss sum, the
sample count and two histograms of predicted probabilities, one for each true class, over
`NUM_BINS` equal bins of [0, 1]. Accuracy, precision and recall at threshold 0.5 and the AUC all
follow from those, for any number of leading (seed, epoch) axes.
"""

from __future__ import annotations

import numpy as np

NUM_BINS = 200  # Keras's AUC uses 200 thresholds by default; 0.5 is a bin edge.
METRICS = ("loss", "accuracy", "precision", "recall", "auc")


def binary_metrics(loss_sum, count, pos_hist, neg_hist) -> dict[str, np.ndarray]:
    """loss, accuracy, precision, recall (threshold 0.5) and AUC from accumulated counts.

    `pos_hist[..., b]` counts positives whose predicted probability fell in bin b, `neg_hist` the
    negatives. Precision and recall are 0 when undefined (as Keras reports them); AUC is NaN when a
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
            "auc": np.where((n_pos > 0) & (n_neg > 0), ordered_pairs / (n_pos * n_neg), np.nan),
        }


def history_from_counts(counts: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """{"train": counts, "val": counts} with (seed, epoch) leading axes -> a Keras-style History dict.

    Keys as Keras names them: `loss`, `accuracy`, ... for train and `val_loss`, `val_accuracy`, ...
    """
    history = {}
    for split, prefix in (("train", ""), ("val", "val_")):
        c = counts[split]
        for name, values in binary_metrics(c["loss_sum"], c["count"], c["pos_hist"], c["neg_hist"]).items():
            history[prefix + name] = values
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
