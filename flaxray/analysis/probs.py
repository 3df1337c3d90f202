"""The statistics the trainer accumulates on the device (`flaxray.core.counts`), from probabilities on the
host: how a test evaluation or a saved prediction becomes the metrics' sufficient statistics."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from flaxray.analysis.metrics import NUM_BINS
from flaxray.errors import FlaxrayError


def counts_from_probs(probs, labels, losses=None, *, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The statistics the trainer accumulates, from probabilities and int labels (N,) in [0, C).

    Binary: `probs` (..., N) are P(class 1); C >= 3: (..., N, C) softmax probabilities, argmax the
    prediction. Binned exactly as on the device (float32 probability x NUM_BINS, truncated). `losses`
    (..., N) defaults to the cross-entropy of the probabilities clipped to [1e-7, 1 - 1e-7], as Keras.
    """
    n_classes = len(class_names)
    probs, y = np.asarray(probs, np.float64), np.asarray(labels)
    if n_classes == 2:
        labels = y.astype(np.float64)
        if losses is None:
            p = np.clip(probs, 1e-7, 1 - 1e-7)
            losses = -(labels * np.log(p) + (1 - labels) * np.log1p(-p))
        # float32, as on the device, so a probability on a bin edge lands in the same bin
        bins = np.clip((probs.astype(np.float32) * np.float32(NUM_BINS)).astype(np.int64), 0, NUM_BINS - 1)
        onehot = bins[..., None] == np.arange(NUM_BINS)
        return {"loss_sum": np.sum(losses, -1), "count": np.full(probs.shape[:-1], labels.size, np.float64),
                "pos_hist": np.sum(onehot * labels[:, None], -2),
                "neg_hist": np.sum(onehot * (1 - labels)[:, None], -2)}
    if probs.shape[-2:] != (y.size, n_classes):
        raise FlaxrayError(f"probabilities of shape {probs.shape} do not match {y.size} labels of {n_classes} classes")
    y = y.astype(np.int64)
    if losses is None:
        own = np.take_along_axis(probs, np.broadcast_to(y[:, None], probs.shape[:-1] + (1,)), -1)[..., 0]
        losses = -np.log(np.clip(own, 1e-7, 1 - 1e-7))
    lead = probs.shape[:-2]
    flat = probs.reshape(-1, y.size, n_classes)  # (L, N, C)
    n_lead = flat.shape[0]
    bins = np.clip((flat.astype(np.float32) * np.float32(NUM_BINS)).astype(np.int64), 0, NUM_BINS - 1)
    # One bincount over (lead, k, true class, bin) instead of an (L, N, C, NUM_BINS) one-hot array.
    lead_i = np.arange(n_lead)[:, None, None]
    k_i = np.arange(n_classes)[None, None, :]
    index = ((lead_i * n_classes + k_i) * n_classes + y[None, :, None]) * NUM_BINS + bins
    hist = np.bincount(index.ravel(), minlength=n_lead * n_classes * n_classes * NUM_BINS).astype(np.float64)
    pred = np.argmax(flat, -1)  # (L, N)
    cell = (np.arange(n_lead)[:, None] * n_classes + y[None, :]) * n_classes + pred
    confusion = np.bincount(cell.ravel(), minlength=n_lead * n_classes * n_classes).astype(np.float64)
    return {"loss_sum": np.sum(losses, -1), "count": np.full(lead, y.size, np.float64),
            "hist": hist.reshape(lead + (n_classes, n_classes, NUM_BINS)),
            "confusion": confusion.reshape(lead + (n_classes, n_classes))}
