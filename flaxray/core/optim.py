"""Keras's optimizers (Adam by default) and its weight decay, with rates that are state, so they can differ per
vmapped seed.

`keras_adam(lr)` is the optimizer of every run, its learning rate a leaf of its state. Weight decay
is Keras 3's decoupled decay (its `AdamW`, or any Keras optimizer given `weight_decay`): before each
update Keras does `var.assign(var - var * wd * lr)` on every trainable variable (biases and
BatchNorm's scale and offset too; the moving statistics are not trainable), `lr` the current
learning rate, then Adam's step, which does not read the weights. `keras_weight_decay` is that first
assignment, in that order; the trainer keeps each seed's rates in `SeedState.settings`.

`keras_optimizer(name)` is Keras 3's optimizer of that name (`OPTIMIZERS`) at Keras's defaults, its
learning rate (and for `HAS_MOMENTUM`, its momentum) a traced leaf of the state that the trainer
overwrites before every step (`with_hyperparams`). Where optax's rule rounds differently from Keras's
(epsilon placement, the order of products, constants rounded in float64 or float32), the rule is
written out below in Keras's own operation order, so that it is Keras's to the last bit in eager mode;
jitted, XLA's fusion (FMA, x / sqrt(y) as x * rsqrt(y)) may move a last bit or two, as in Keras's own jit.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from flaxray.errors import FlaxrayError


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


def with_hyperparams(opt_state, **values):
    """`keras_optimizer`'s state with other hyperparameters (`learning_rate=`, `momentum=`); a None is left
    as it was, so a caller can pass its optional settings through unconditionally."""
    given = {k: v for k, v in values.items() if v is not None}
    return opt_state._replace(hyperparams={**opt_state.hyperparams, **given}) if given else opt_state


# Keras 3's names. "adamw" is Adam: its decoupled decay is `keras_weight_decay`, which the trainer applies
# for every optimizer (Keras does the same for any optimizer given `weight_decay`), at `--weight-decay`,
# whose default stays 0: Keras's AdamW default of 0.004 is deliberately not taken, so that choosing the name
# alone changes nothing.
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "nadam", "adamax", "adagrad", "lion")
HAS_MOMENTUM = {"sgd", "rmsprop"}
F32 = jnp.float32


def check_optimizer(name: str, nesterov: bool = False, momentum_given: bool = False) -> None:
    """A one-line `FlaxrayError` naming the flag when the optimizer's flags do not go together."""
    if name not in OPTIMIZERS:
        raise FlaxrayError(f"--optimizer: unknown {name!r} (choose from {', '.join(OPTIMIZERS)})")
    if nesterov and name != "sgd":
        raise FlaxrayError(f"--nesterov: only --optimizer sgd has Nesterov momentum, not {name}")
    if momentum_given and name not in HAS_MOMENTUM:
        raise FlaxrayError(f"--momentum: only --optimizer {' or '.join(sorted(HAS_MOMENTUM))} have one, not {name}")


def keras_optimizer(name: str, *, nesterov: bool = False) -> optax.GradientTransformation:
    """Keras 3's optimizer `name` with its own defaults, `learning_rate` (and `momentum`, 0 as in Keras, for
    `HAS_MOMENTUM`) float32 leaves of `opt_state.hyperparams`. The initial rate is Keras's default; the
    trainer overwrites it before every step, so a lane's rate may change from step to step.

    Weight decay is not here: the trainer applies `keras_weight_decay` before the step, as Keras does.
    A lane stopped by rate 0 and zero gradients keeps its weights bit for bit, except that SGD's and
    RMSprop's momentum still carries a non-zero velocity on: such a lane needs momentum 0 as well.
    """
    check_optimizer(name, nesterov, False)
    if name in ("adam", "adamw"):
        return keras_adam()
    factory, lr = {"sgd": (_sgd, 0.01), "rmsprop": (_rmsprop, 1e-3), "nadam": (_nadam, 1e-3),
                   "adamax": (_adamax, 1e-3), "adagrad": (_adagrad, 1e-3), "lion": (_lion, 1e-3)}[name]
    # Only the rate and momentum are state: the other constants stay Python floats, rounded as Keras's are.
    static = set(inspect.signature(factory).parameters) - {"learning_rate", "momentum"}
    inject = optax.inject_hyperparams(factory, static_args=static, hyperparam_dtype=F32)
    if name == "sgd":
        return inject(learning_rate=lr, momentum=0.0, nesterov=nesterov)
    return inject(learning_rate=lr, momentum=0.0) if name in HAS_MOMENTUM else inject(learning_rate=lr)


# The rules. Each mirrors Keras's `update_step` expression for expression: a Python constant such as
# `1 - rho` is rounded to float32 once from float64, as Keras's ops do, while Nadam's and Lion's `1 - beta`
# is float32 arithmetic on an already-cast beta, as theirs is. The updates are what Keras subtracts, negated
# (p + (-x) is p - x exactly); every state is float32 whatever the parameters' dtype.
class Slots(NamedTuple):
    """One or two per-parameter accumulators and, where the rule needs it, Keras's `iterations`."""
    count: Any
    a: Any
    b: Any = ()
    u_product: Any = ()


def _full(params, value=0.0):
    return jax.tree.map(lambda p: jnp.full(jnp.shape(p), value, F32), params)


def _map(fn, grads, *slots):
    """fn(g, *slot leaves) -> (update, *new slot leaves), leaf by leaf, unzipped into one tree each."""
    treedef = jax.tree.structure(grads)
    out = treedef.flatten_up_to(jax.tree.map(lambda g, *s: fn(g.astype(F32), *s), grads, *slots))
    return [treedef.unflatten(column) for column in zip(*out)] if out else [grads] * (1 + len(slots))


def _rule(init, step):
    return optax.GradientTransformation(init, lambda grads, state, params=None: step(grads, state))


def _sgd(learning_rate, momentum, nesterov=False):
    """Keras keeps the rate inside the velocity (v = m*v - lr*g; p += v), unlike optax.sgd's trace of
    gradients scaled afterwards: the two differ once the rate changes between steps. Momentum 0 is Keras's
    plain p -= lr*g exactly (0*v - lr*g is -(lr*g))."""
    def step(grads, s):
        def leaf(g, v):
            v = v * momentum - g * learning_rate
            return (v * momentum - g * learning_rate if nesterov else v), v
        updates, v = _map(leaf, grads, s.a)
        return updates, Slots(s.count + 1, v)
    return _rule(lambda params: Slots(jnp.zeros([], jnp.int32), _full(params)), step)


def _rmsprop(learning_rate, momentum, rho=0.9, eps=1e-7):
    """Keras: v = rho*v + (1-rho)*g²; inc = lr*g / sqrt(v + eps), epsilon inside the root and the rate in the
    numerator (optax divides by sqrt(v) + eps and scales afterwards); not centered."""
    def step(grads, s):
        def leaf(g, v, mom):
            v = rho * v + (1 - rho) * jnp.square(g)
            mom = momentum * mom + (learning_rate * g) / jnp.sqrt(v + eps)
            return -mom, v, mom
        updates, v, mom = _map(leaf, grads, s.a, s.b)
        return updates, Slots(s.count + 1, v, mom)
    return _rule(lambda params: Slots(jnp.zeros([], jnp.int32), _full(params), _full(params)), step)


def _nadam(learning_rate, b1=0.9, b2=0.999, eps=1e-7):
    """Keras 3's Nadam: the momentum schedule u_t = b1*(1 - 0.5*0.96**t) and the running product of the u_t
    as state (optax.nadam has neither). Keras 3 raises 0.96 to t itself, not to 0.004*t as Dozat's paper and
    Keras 2 did; this follows Keras 3's code, so its u_t is within 1 % of b1 after ~100 steps (0.96**100 = 0.017)."""
    def step(grads, s):
        t, t_next, decay = (s.count + 1).astype(F32), (s.count + 2).astype(F32), F32(0.96)
        u_product = s.u_product * b1 * (1.0 - 0.5 * jnp.power(decay, t))  # Keras updates it first
        beta_1, beta_2 = F32(b1), F32(b2)
        u_t = beta_1 * (1.0 - 0.5 * jnp.power(decay, t))
        u_t_1 = beta_1 * (1.0 - 0.5 * jnp.power(decay, t_next))
        u_product_t_1 = u_product * u_t_1
        beta_2_power = jnp.power(beta_2, t)

        def leaf(g, m, v):
            m = m + (g - m) * (1 - beta_1)
            v = v + (jnp.square(g) - v) * (1 - beta_2)
            m_hat = (u_t_1 * m) / (1 - u_product_t_1) + ((1 - u_t) * g) / (1 - u_product)
            v_hat = v / (1 - beta_2_power)
            return -((m_hat * learning_rate) / (jnp.sqrt(v_hat) + eps)), m, v
        updates, m, v = _map(leaf, grads, s.a, s.b)
        return updates, Slots(s.count + 1, m, v, u_product)
    return _rule(lambda params: Slots(jnp.zeros([], jnp.int32), _full(params), _full(params), jnp.ones([], F32)), step)


def _adamax(learning_rate, b1=0.9, b2=0.999, eps=1e-7):
    """Keras: p -= lr*m / ((1 - b1**t) * (u + eps)), epsilon added to u before the bias correction's product
    (optax adds it after dividing)."""
    def step(grads, s):
        beta_1_power = jnp.power(F32(b1), (s.count + 1).astype(F32))

        def leaf(g, m, u):
            m = m + (g - m) * (1 - b1)
            u = jnp.maximum(b2 * u, jnp.abs(g))
            return -((learning_rate * m) / ((1 - beta_1_power) * (u + eps))), m, u
        updates, m, u = _map(leaf, grads, s.a, s.b)
        return updates, Slots(s.count + 1, m, u)
    return _rule(lambda params: Slots(jnp.zeros([], jnp.int32), _full(params), _full(params)), step)


def _adagrad(learning_rate, initial_accumulator_value=0.1, eps=1e-7):
    """Keras: p -= lr*g / sqrt(acc + eps) after acc += g², the accumulator starting at 0.1 (optax multiplies
    by rsqrt, which rounds differently)."""
    def step(grads, s):
        def leaf(g, acc):
            acc = acc + jnp.square(g)
            return -((learning_rate * g) / jnp.sqrt(acc + eps)), acc
        updates, acc = _map(leaf, grads, s.a)
        return updates, Slots(s.count + 1, acc)
    return _rule(lambda params: Slots(jnp.zeros([], jnp.int32), _full(params, initial_accumulator_value)), step)


def _lion(learning_rate, b1=0.9, b2=0.99):
    """Keras: p -= lr*sign(b1*m + (1-b1)*g), then m = b2*m + (1-b2)*g, its `1 - beta` in float32 (optax's is a
    float64 constant, one ulp away, which can flip a sign near 0)."""
    def step(grads, s):
        beta_1, beta_2 = F32(b1), F32(b2)

        def leaf(g, m):
            update = -(learning_rate * jnp.sign(m * beta_1 + g * (1.0 - beta_1)))
            return update, m * beta_2 + g * (1.0 - beta_2)
        updates, m = _map(leaf, grads, s.a)
        return updates, Slots(s.count + 1, m)
    return _rule(lambda params: Slots(jnp.zeros([], jnp.int32), _full(params)), step)
