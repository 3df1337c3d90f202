"""Keras's Adam and AdamW as optax transformations whose rates are state, so they can differ per seed.

`keras_adam(lr)` is the optimizer of every run; `keras_adam(lr, weight_decay=wd)` adds Keras 3's
decoupled weight decay (its `AdamW`, or any Keras optimizer given `weight_decay`): before each
update Keras does `var.assign(var - var * wd * lr)` on every trainable variable (biases and
BatchNorm's scale and offset too; its moving statistics are not trainable), with `lr` the current
learning rate. Here that is one more term of the update, `- param * wd * lr`, added to Adam's; the
same arithmetic up to the order of two roundings. Both rates are leaves of the optimizer state
(`optax.inject_hyperparams`), so one compiled program serves every rate, per vmapped seed; a rate of
0 adds exactly zero, so a seed with `weight_decay=0` trains bit for bit as one without decay.
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


def keras_weight_decay(learning_rate, weight_decay) -> optax.GradientTransformation:
    """Adds Keras's decoupled decay `- param * wd * lr` to the updates (chain it after the optimizer)."""

    def update(updates, state, params):
        return jax.tree.map(lambda u, p: u - p * weight_decay * learning_rate, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _adamw(learning_rate, weight_decay, b1, b2, eps):
    return optax.chain(optax.adam(learning_rate, b1, b2, eps), keras_weight_decay(learning_rate, weight_decay))


def keras_adam(learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7,
               weight_decay: float | None = None):
    """Adam as Keras computes it; with `weight_decay`, Keras's AdamW (module docstring).

    Keras adds `eps` to sqrt(v) *before* bias correction, which is optax's Adam with
    eps_t = eps / sqrt(1 - b2**t): larger than optax's placement in the first steps.
    `inject_hyperparams` keeps the learning rate (and the decay) in the optimizer state, per seed.
    Without `weight_decay` the state and the arithmetic are those of plain Adam, as before decay existed.
    """
    kwargs = dict(learning_rate=learning_rate, b1=b1, b2=b2, eps=lambda count: eps / jnp.sqrt(1.0 - b2 ** (count + 1)))
    if weight_decay is None:
        return optax.inject_hyperparams(optax.adam)(**kwargs)
    return optax.inject_hyperparams(_adamw)(weight_decay=weight_decay, **kwargs)


def with_hparams(opt_state, **values):
    """`keras_adam`'s state with other rates (learning_rate=..., weight_decay=...)."""
    return opt_state._replace(hyperparams={**opt_state.hyperparams, **values})


def with_lr(opt_state, lr):
    return with_hparams(opt_state, learning_rate=lr)
