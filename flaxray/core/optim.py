"""Keras's Adam and AdamW's weight decay, with rates that are state, so they can differ per vmapped seed.

`keras_adam(lr)` is the optimizer of every run, its learning rate a leaf of its state. Weight decay
is Keras 3's decoupled decay (its `AdamW`, or any Keras optimizer given `weight_decay`): before each
update Keras does `var.assign(var - var * wd * lr)` on every trainable variable (biases and
BatchNorm's scale and offset too; the moving statistics are not trainable), `lr` the current
learning rate, then Adam's step, which does not read the weights. `keras_weight_decay` is that first
assignment, in that order; the trainer keeps each seed's rates in `SeedState.settings`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def keras_weight_decay(params, weight_decay, learning_rate):
    """Keras's decoupled decay: every weight minus weight * wd * lr. Applied before Adam's step, as Keras
    does, so that at wd = 0 (or lr = 0, a stopped seed) the weights are exactly what they were and the
    step that follows is plain Adam's, bit for bit, even in a program that decays other seeds."""
    return jax.tree.map(lambda p: p - p * weight_decay * learning_rate, params)


def keras_adam(learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7):
    """Adam as Keras computes it.

    Keras adds `eps` to sqrt(v) *before* bias correction, which is optax's Adam with
    eps_t = eps / sqrt(1 - b2**t): larger than optax's placement in the first steps.
    `inject_hyperparams` also keeps the learning rate in the optimizer state, per seed.
    """
    return optax.inject_hyperparams(optax.adam)(
        learning_rate=learning_rate, b1=b1, b2=b2, eps=lambda count: eps / jnp.sqrt(1.0 - b2 ** (count + 1))
    )


def with_lr(opt_state, lr):
    """`keras_adam`'s state with another learning rate."""
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})
