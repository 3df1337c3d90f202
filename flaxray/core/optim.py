"""Keras's Adam and AdamW's weight decay, with rates that are state, so they can differ per vmapped seed.

`keras_adam(lr)` is the optimizer of every run, its learning rate a leaf of its state. Weight decay
is Keras 3's decoupled decay (its `AdamW`, or any Keras optimizer given `weight_decay`): before each
update Keras does `var.assign(var - var * wd * lr)` on every trainable variable (biases and
BatchNorm's scale and offset too; the moving statistics are not trainable), `lr` the current
learning rate, then Adam's step, which does not read the weights. `keras_weight_decay` is that first
assignment, in that order; the trainer keeps each seed's rate in `SeedState.hparams`.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import optax

from flaxray.errors import FlaxrayError


def check_rate(value, flag: str, *, low: float = 0.0, high: float | None = None, low_ok: bool = True) -> None:
    """One-line error naming `flag` unless `value` is a finite real in [low, high) (or (low, ...))."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)  # numpy too
    ok = ok and (value >= low if low_ok else value > low) and (high is None or value < high)
    if not ok:
        where = ("[" if low_ok else "(") + f"{low:g}, " + ("inf)" if high is None else f"{high:g})")
        raise FlaxrayError(f"{flag} must be a finite number in {where}, got {value!r}")


def check_lr(lr) -> None:
    check_rate(lr, "learning rate", low_ok=False)


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
