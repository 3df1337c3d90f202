"""Diagnose each seed from its loss curves: good, overfit, underfit, unstable or diverged.

The notes judged curves by eye with rules of thumb; here they are measurements, and every number
that decides a label lives in `Thresholds` below (the one place to read or change them):

- **diverged**: a train or val loss that is not finite (NaN or inf) at any epoch.
- **unstable**: spikes in the val loss that do not shrink. A spike is how far an epoch sits from
  the running median of itself and its two neighbours, relative to that median.
  Spikes that get smaller over epochs are fine (the notes: "acceptable"); a late half whose
  largest spike is big and no smaller than `spike_shrink` times the early half's is not.
- **overfit**: the val loss rose from its (smoothed) minimum while the train loss fell, or the
  gap between them grew to a large part of the val loss.
- **underfit**: the train loss stays high, relative to what always predicting the class prior
  scores (`baseline_loss`), and is not below the val loss (the notes' 0.5-dropout hourglass).
- **good**: none of the above.

When several apply, the first in that order wins (a curve that is NaN is not also "overfit").
"Late" values are means over the last `late_fraction` of epochs, so one last noisy epoch does
not decide; measurements use the running median of 3 to ignore single-epoch spikes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import scipy.ndimage

LABELS: tuple[str, ...] = ("good", "overfit", "underfit", "unstable", "diverged")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Every number the diagnosis uses. Relative quantities are fractions, not percent."""

    # Share of the last epochs averaged into a "late" value (at least one epoch).
    late_fraction: float = 0.2
    # unstable: the late half's largest spike, as a fraction of the running median there, above this ...
    spike_height: float = 0.5
    # ... and no smaller than this times the early half's largest spike (spikes did not shrink).
    spike_shrink: float = 0.5
    # unstable needs this many epochs: fewer leave no early and late half to compare.
    spike_min_epochs: int = 6
    # overfit (rise): late val loss above its smoothed minimum by this fraction of that minimum,
    # while the late train loss is below the train loss at that minimum.
    overfit_rise: float = 0.2
    # overfit (gap): late (val - train) loss above this fraction of the late val loss, and larger
    # than the gap over the first epochs (it grew).
    overfit_gap: float = 0.5
    # underfit: late train loss at least this fraction of `baseline_loss` ...
    underfit_loss: float = 0.5
    # ... and not below the late val loss by more than this fraction of it.
    underfit_margin: float = 0.1


THRESHOLDS = Thresholds()


def baseline_loss(labels, class_weight=None, *, n_classes: int | None = None) -> float:
    """The loss of the best constant prediction (the class prior): what "learned nothing" scores.

    Binary cross-entropy of predicting p* for every image, with Keras-style class weights
    (w0, w1): p* = w1 pi / (w1 pi + w0 (1 - pi)). Unweighted, it is the entropy of the prior
    (0.57 for the 74 % pneumonia of the training split); balanced, ln 2. With C >= 3 classes
    (`n_classes`, default: the largest label + 1, at least 2) the categorical cross-entropy of the
    same constant, p*_k proportional to w_k pi_k, with one weight per class.
    """
    labels = np.asarray(labels)
    n_classes = n_classes or max(2, int(labels.max()) + 1 if labels.size else 2)
    if n_classes > 2:
        pi = np.bincount(labels.astype(np.int64).ravel(), minlength=n_classes) / max(labels.size, 1)
        w = np.asarray(class_weight if class_weight is not None else np.ones(n_classes), dtype=float)
        p = w * pi / np.sum(w * pi)
        present = pi > 0  # an absent class adds nothing (0 log 0 = 0)
        return float(-np.sum(w[present] * pi[present] * np.log(p[present])))
    pi = float(np.mean(labels == 1))
    w0, w1 = class_weight or (1.0, 1.0)
    if pi in (0.0, 1.0):
        return 0.0
    p = w1 * pi / (w1 * pi + w0 * (1 - pi))
    return float(-w1 * pi * math.log(p) - w0 * (1 - pi) * math.log(1 - p))


def _late(curves: np.ndarray, fraction: float) -> np.ndarray:
    k = max(1, math.ceil(fraction * curves.shape[1]))
    return curves[:, -k:].mean(axis=1)


def measure(history: Mapping[str, np.ndarray], *, baseline: float = math.log(2),
            thresholds: Thresholds = THRESHOLDS) -> dict[str, np.ndarray]:
    """The numbers behind the labels, one per seed, from `loss` and `val_loss` of shape (S, E)."""
    t = thresholds
    train = np.atleast_2d(np.asarray(history["loss"], dtype=float))
    val = np.atleast_2d(np.asarray(history["val_loss"], dtype=float))
    n_seeds, n_epochs = val.shape
    nonfinite = ~(np.isfinite(train).all(axis=1) & np.isfinite(val).all(axis=1))
    # Measurements below run on finite copies; diverged seeds are labelled before they are read.
    train, val = np.nan_to_num(train, posinf=1e30, neginf=-1e30), np.nan_to_num(val, posinf=1e30, neginf=-1e30)
    smooth_val = scipy.ndimage.median_filter(val, size=(1, 3), mode="nearest")
    smooth_train = scipy.ndimage.median_filter(train, size=(1, 3), mode="nearest")

    spikes = np.abs(val - smooth_val) / np.maximum(smooth_val, 1e-12)  # relative to the local trend
    half = n_epochs // 2
    if n_epochs >= t.spike_min_epochs:
        early_spike, late_spike = spikes[:, 1:half].max(axis=1), spikes[:, half:-1].max(axis=1)
    else:
        early_spike = late_spike = np.zeros(n_seeds)

    late_val, late_train = _late(val, t.late_fraction), _late(train, t.late_fraction)
    best = np.argmin(smooth_val, axis=1)
    min_val = smooth_val[np.arange(n_seeds), best]
    rise = (_late(smooth_val, t.late_fraction) - min_val) / np.maximum(min_val, 1e-12)
    train_fell = _late(smooth_train, t.late_fraction) < smooth_train[np.arange(n_seeds), best]
    gap = late_val - late_train
    early_gap = (val - train)[:, : max(1, math.ceil(t.late_fraction * n_epochs))].mean(axis=1)
    return {
        "nonfinite": nonfinite,
        "early_spike": early_spike,
        "late_spike": late_spike,
        "val_rise": rise,
        "train_fell": train_fell,
        "gap": gap / np.maximum(late_val, 1e-12),
        "gap_grew": gap > early_gap,
        "train_vs_baseline": late_train / baseline if baseline > 0 else np.full(n_seeds, np.inf),
        "train_vs_val": (late_train - late_val) / np.maximum(late_val, 1e-12),
    }


def label(m: Mapping[str, np.ndarray], thresholds: Thresholds = THRESHOLDS) -> np.ndarray:
    """Labels (S,) from `measure`'s numbers: diverged, else unstable, else overfit, else underfit, else good."""
    t = thresholds
    unstable = (m["late_spike"] > t.spike_height) & (m["late_spike"] >= t.spike_shrink * m["early_spike"])
    overfit = ((m["val_rise"] > t.overfit_rise) & m["train_fell"]) | ((m["gap"] > t.overfit_gap) & m["gap_grew"])
    underfit = (m["train_vs_baseline"] >= t.underfit_loss) & (m["train_vs_val"] >= -t.underfit_margin)
    return np.select([m["nonfinite"], unstable, overfit, underfit], ["diverged", "unstable", "overfit", "underfit"],
                     default="good").astype(object)


def diagnose(history: Mapping[str, np.ndarray], *, baseline: float = math.log(2),
             thresholds: Thresholds = THRESHOLDS) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Label every seed of a Keras-style history: (labels (S,) of `LABELS`, the measurements).

    `baseline` is the loss of predicting the class prior (`baseline_loss(train labels)`); the
    default ln 2 is a coin flip's.
    """
    m = measure(history, baseline=baseline, thresholds=thresholds)
    return label(m, thresholds), m


def fractions(labels) -> dict[str, float]:
    """Share of seeds in each class, every class of `LABELS` present (0.0 when none)."""
    labels = np.asarray(labels, dtype=object)
    n = max(1, labels.size)
    return {name: float(np.sum(labels == name)) / n for name in LABELS}
