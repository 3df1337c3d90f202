"""Keras's cross-entropies, per sample: what the trainer minimises and every split's loss logs.

    per_sample(outputs, y, LOGITS, num_classes=2, smoothing=0.0)   # (N,) losses

Two classes: one output, sigmoid binary cross-entropy; three or more: C outputs, softmax
cross-entropy. Outputs that are already probabilities (a model whose last layer squashes) are clipped
to [eps, 1 - eps] first, as Keras clips them; `smoothing` is Keras's `label_smoothing`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from flaxray.models import LOGITS, PROBABILITIES

EPSILON = 1e-7  # Keras's backend.epsilon(): how close to 0 and 1 a probability is clipped in its loss


def per_sample(outputs, y, output=LOGITS, *, num_classes: int, smoothing: float = 0.0):
    """Each sample's loss of `outputs` (LOGITS or PROBABILITIES) against integer labels `y`."""
    binary = num_classes == 2
    if smoothing:  # Keras's label_smoothing, in the loss it logs for train and val alike
        return smoothed(outputs, y, output, num_classes=num_classes, smoothing=smoothing)
    if output == PROBABILITIES:  # Keras's cross-entropy of probabilities, clipped to [eps, 1 - eps]
        if binary:
            p = jnp.clip(outputs, EPSILON, 1 - EPSILON)
            return -(y * jnp.log(p) + (1 - y) * jnp.log(1 - p))
        p = jnp.clip(outputs / jnp.sum(outputs, axis=-1, keepdims=True), EPSILON, 1 - EPSILON)
        return -jnp.log(jnp.take_along_axis(p, y.astype(jnp.int32)[:, None], axis=-1)[:, 0])
    if binary:
        return optax.sigmoid_binary_cross_entropy(outputs, y)
    return optax.softmax_cross_entropy_with_integer_labels(outputs, y.astype(jnp.int32))


def smoothed(outputs, y, output, *, num_classes: int, smoothing: float):
    """Cross-entropy against labels moved towards uniform: y (1 - e) + e / 2 (binary), one-hot (1 - e) + e / C."""
    if num_classes == 2:
        target = y * (1 - smoothing) + 0.5 * smoothing
        if output == PROBABILITIES:
            p = jnp.clip(outputs, EPSILON, 1 - EPSILON)
            return -(target * jnp.log(p) + (1 - target) * jnp.log(1 - p))
        return optax.sigmoid_binary_cross_entropy(outputs, target)
    target = jax.nn.one_hot(y.astype(jnp.int32), num_classes) * (1 - smoothing) + smoothing / num_classes
    if output == PROBABILITIES:
        p = jnp.clip(outputs / jnp.sum(outputs, axis=-1, keepdims=True), EPSILON, 1 - EPSILON)
        return -jnp.sum(target * jnp.log(p), axis=-1)
    return optax.softmax_cross_entropy(outputs, target)
