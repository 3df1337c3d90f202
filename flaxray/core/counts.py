"""A split's metrics inside the compiled program, as sufficient statistics summed batch by batch:
`BinaryCounts` for two classes, `ClassCounts` for three or more. They are all a program hands the host
per epoch; `flaxray.analysis.metrics` turns them into numbers (loss, accuracy, AUC, ...), binned the same way."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from flaxray.analysis.metrics import NUM_BINS


class BinaryCounts(NamedTuple):
    """Sufficient statistics of one split's binary metrics: the loss sum, the count and, over
    `NUM_BINS` bins of P(class 1), a histogram of the positives and one of the negatives."""

    loss_sum: jax.Array
    count: jax.Array
    pos_hist: jax.Array
    neg_hist: jax.Array

    @classmethod
    def zeros(cls, num_classes: int = 2):
        return cls(jnp.float32(0), jnp.float32(0), jnp.zeros(NUM_BINS), jnp.zeros(NUM_BINS))

    def add(self, losses, outputs, labels, mask, *, probabilities: bool = False):
        """`outputs`: logits, or (`probabilities`) P(class 1) already."""
        probs = outputs if probabilities else jax.nn.sigmoid(outputs)
        bins = jnp.clip((probs * NUM_BINS).astype(jnp.int32), 0, NUM_BINS - 1)
        return BinaryCounts(
            self.loss_sum + jnp.sum(mask * losses),
            self.count + jnp.sum(mask),
            self.pos_hist.at[bins].add(mask * labels),
            self.neg_hist.at[bins].add(mask * (1 - labels)),
        )


class ClassCounts(NamedTuple):
    """Sufficient statistics of one split's metrics for C >= 3 classes: the loss sum, the count,
    `hist[k, c, b]` = samples of true class c whose softmax probability of class k falls in bin b
    (one-vs-rest AUC per class), and `confusion[c, p]` = samples of class c predicted as p."""

    loss_sum: jax.Array
    count: jax.Array
    hist: jax.Array
    confusion: jax.Array

    @classmethod
    def zeros(cls, num_classes: int):
        c = num_classes
        return cls(jnp.float32(0), jnp.float32(0), jnp.zeros((c, c, NUM_BINS)), jnp.zeros((c, c)))

    def add(self, losses, outputs, labels, mask, *, probabilities: bool = False):
        """`outputs`: logits, or (`probabilities`) the class probabilities already."""
        c = outputs.shape[-1]
        probs = outputs if probabilities else jax.nn.softmax(outputs)
        bins = jnp.clip((probs * NUM_BINS).astype(jnp.int32), 0, NUM_BINS - 1)  # (N, C)
        labels = labels.astype(jnp.int32)
        k = jnp.broadcast_to(jnp.arange(c), bins.shape)
        true = jnp.broadcast_to(labels[:, None], bins.shape)
        return ClassCounts(
            self.loss_sum + jnp.sum(mask * losses),
            self.count + jnp.sum(mask),
            self.hist.at[k, true, bins].add(jnp.broadcast_to(mask[:, None], bins.shape)),
            self.confusion.at[labels, jnp.argmax(outputs, -1)].add(mask),
        )


def counts_type(num_classes: int):
    return BinaryCounts if num_classes == 2 else ClassCounts
