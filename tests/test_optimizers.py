"""Keras-named optimizers (`flaxray.core.optim.keras_optimizer`) against Keras 3's own, step by step.

Five steps on a (3, 4) kernel and a (4,) bias, fixed random gradients and a rate that changes every step
(0 included), through the rate (and momentum) written into the state as the trainer writes it. Tolerances:
  - the hand-written rules follow Keras's operations one for one, so run eagerly they are Keras's weights
    bit for bit (`assert_array_equal`); jitted, XLA fuses the elementwise chain and may round differently by
    an ulp or two, so jitted runs are held to rtol 1e-6 of the weights (8 float32 ulps);
  - "adam"/"adamw" is the existing `keras_adam` (optax's Adam, unchanged so that the default run stays bit
    for bit): its b1 and b2 are float32 leaves of the state, so `1 - b2` is float32 arithmetic (1.0000467e-3,
    not Keras's 1e-3 rounded once), which scales v by ~5e-5 and the step by ~2e-5. It is held to 3e-5 of the
    largest displacement, and rtol 1e-5 of the weights.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxray.core.optim import (
    HAS_MOMENTUM, OPTIMIZERS, check_optimizer, keras_adam, keras_optimizer, keras_weight_decay, with_hyperparams,
)
from flaxray.errors import FlaxrayError

keras = pytest.importorskip("keras")

KERAS_CLASS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop", "nadam": "Nadam",
               "adamax": "Adamax", "adagrad": "Adagrad", "lion": "Lion"}
LRS = [1e-2, 5e-3, 2e-2, 0.0, 1e-3]
_rng = np.random.default_rng(0)
P0 = {"kernel": _rng.normal(size=(3, 4)).astype(np.float32), "bias": _rng.normal(size=4).astype(np.float32)}
GRADS = [jax.tree.map(lambda p: _rng.normal(size=p.shape).astype(np.float32), P0) for _ in LRS]
# (name, momentum or None, nesterov)
CASES = [(n, None, False) for n in OPTIMIZERS] + [("sgd", 0.9, False), ("sgd", 0.9, True), ("rmsprop", 0.5, False)]
IDS = [f"{n}-m{m}{'-nesterov' if nv else ''}" for n, m, nv in CASES]


def keras_run(name, momentum, nesterov, weight_decay=None):
    """Keras's weights after the steps, its rate assigned to its variable before each one."""
    kwargs = {} if momentum is None else {"momentum": momentum}
    if nesterov:
        kwargs["nesterov"] = True
    opt = getattr(keras.optimizers, KERAS_CLASS[name])(learning_rate=0.5, weight_decay=weight_decay, **kwargs)
    variables = {k: keras.Variable(v) for k, v in P0.items()}
    for lr, grads in zip(LRS, GRADS):
        opt.learning_rate = lr
        opt.apply_gradients([(grads[k], variables[k]) for k in variables])
    return {k: np.asarray(v.value) for k, v in variables.items()}


def one_step(tx, momentum=None, weight_decay=None):
    def step(params, state, grads, lr):
        state = with_hyperparams(state, learning_rate=lr, momentum=momentum)
        updates, state = tx.update(grads, state, params)
        if weight_decay is not None:  # as the trainer does: Keras's decay before the step
            params = keras_weight_decay(params, jnp.float32(weight_decay), lr)
        return optax.apply_updates(params, updates), state
    return step


def our_run(name, momentum, nesterov, jit=False, weight_decay=None):
    tx = keras_optimizer(name, nesterov=nesterov)
    step = one_step(tx, None if momentum is None else jnp.float32(momentum), weight_decay)
    step = jax.jit(step) if jit else step
    params = jax.tree.map(jnp.asarray, P0)
    state = tx.init(params)
    for lr, grads in zip(LRS, GRADS):
        params, state = step(params, state, grads, jnp.float32(lr))
    return jax.tree.map(np.asarray, params)


def assert_keras(ours, theirs, name, exact):
    for k in theirs:
        if name in ("adam", "adamw"):
            scale = np.abs(theirs[k] - P0[k]).max()
            np.testing.assert_allclose(ours[k] - P0[k], theirs[k] - P0[k], rtol=0, atol=3e-5 * scale)
            np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5)
        elif exact:
            np.testing.assert_array_equal(ours[k], theirs[k])
        else:
            np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6, atol=0)


@pytest.mark.parametrize("name,momentum,nesterov", CASES, ids=IDS)
def test_matches_keras(name, momentum, nesterov):
    theirs = keras_run(name, momentum, nesterov, weight_decay=0.0 if name == "adamw" else None)
    assert_keras(our_run(name, momentum, nesterov), theirs, name, exact=True)
    assert_keras(our_run(name, momentum, nesterov, jit=True), theirs, name, exact=False)


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "nadam", "adamw"])
def test_weight_decay_is_keras_for_any_optimizer(name):
    """Keras decays var -= var*wd*lr before any optimizer's step; the trainer's `keras_weight_decay` too."""
    momentum = 0.9 if name in HAS_MOMENTUM else None
    theirs = keras_run(name, momentum, False, weight_decay=0.1)
    assert_keras(our_run(name, momentum, False, weight_decay=0.1), theirs, name, exact=True)


def test_adam_is_keras_adam():
    """"adam" and "adamw" are today's optimizer: the same state and the same updates, bit for bit."""
    params = jax.tree.map(jnp.asarray, P0)
    for name in ("adam", "adamw"):
        ours, base = keras_optimizer(name), keras_adam()
        s1, s2 = ours.init(params), base.init(params)
        assert jax.tree.structure(s1) == jax.tree.structure(s2)
        for grads in GRADS:
            u1, s1 = ours.update(grads, s1, params)
            u2, s2 = base.update(grads, s2, params)
            jax.tree.map(np.testing.assert_array_equal, (u1, s1), (u2, s2))


def test_hyperparameters_are_float32_state_leaves():
    params = jax.tree.map(jnp.asarray, P0)
    for name in OPTIMIZERS:
        hp = keras_optimizer(name).init(params).hyperparams
        wanted = {"learning_rate", "momentum"} if name in HAS_MOMENTUM else {"learning_rate"}
        assert wanted <= set(hp), name
        assert all(hp[k].dtype == jnp.float32 and hp[k].shape == () for k in wanted), name
        if name in HAS_MOMENTUM:
            assert float(hp["momentum"]) == 0.0  # Keras's default
    state = keras_optimizer("sgd").init(params)
    assert with_hyperparams(state, learning_rate=None, momentum=None) is state
    assert float(with_hyperparams(state, momentum=jnp.float32(0.5)).hyperparams["momentum"]) == 0.5


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_rate_zero_and_zero_gradients_change_nothing(name):
    """A stopped lane (rate 0, zero gradients) keeps its weights bit for bit, fresh or after steps that left
    moments behind; for SGD and RMSprop only with momentum 0 too, since their velocity carries on."""
    tx = keras_optimizer(name)
    momentum = jnp.float32(0.9) if name in HAS_MOMENTUM else None
    step = jax.jit(one_step(tx, momentum))
    params = jax.tree.map(jnp.asarray, P0)
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = tx.init(params)
    after, _ = step(params, state, zeros, jnp.float32(0.0))
    jax.tree.map(np.testing.assert_array_equal, after, params)
    for lr, grads in zip(LRS[:3], GRADS):
        params, state = step(params, state, grads, jnp.float32(lr))
    stopped = one_step(tx, None if momentum is None else jnp.float32(0.0))
    after, _ = jax.jit(stopped)(params, state, zeros, jnp.float32(0.0))
    jax.tree.map(np.testing.assert_array_equal, after, params)
    if name in HAS_MOMENTUM:  # Keras's rule: at rate 0 the velocity still moves the weights
        moved, _ = step(params, state, zeros, jnp.float32(0.0))
        assert not np.array_equal(moved["kernel"], params["kernel"])


@pytest.mark.parametrize("name", OPTIMIZERS + ("nesterov",))
def test_vmapped_lanes_are_their_own_runs(name):
    """Two lanes with their own rates, momenta and gradients (as the trainer's seeds have) in one vmapped
    program. Op by op (eagerly), each lane is its single-lane run bit for bit: nothing in a rule mixes lanes.
    Jitted, a lane is the same bits whatever the other lane holds (the project's identity: a lane's
    arithmetic is a function of its inputs and of the program's shape); against the unbatched program it
    is only close, since XLA may fuse (FMA) and rewrite (x/sqrt(y) as x*rsqrt(y)) the two shapes differently."""
    nesterov, name = name == "nesterov", "sgd" if name == "nesterov" else name
    tx = keras_optimizer(name, nesterov=nesterov)
    stack = lambda *trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)  # noqa: E731
    rng = np.random.default_rng(1)
    other = [jax.tree.map(lambda g: rng.normal(size=g.shape).astype(np.float32), g) for g in GRADS]
    lanes = [(jnp.float32(1e-2), jnp.float32(0.9), stack(*GRADS)), (jnp.float32(3e-3), jnp.float32(0.5), stack(*other))]

    def run(lr, momentum, grads):
        params = jax.tree.map(jnp.asarray, P0)
        state = tx.init(params)
        step = one_step(tx, momentum if name in HAS_MOMENTUM else None)
        for i in range(len(LRS)):  # the rate written before every step: 0 at every third
            params, state = step(params, state, jax.tree.map(lambda g: g[i], grads), lr * (i % 3))
        return params, state

    lane = lambda tree, i: jax.tree.map(lambda a: a[i], tree)  # noqa: E731
    both = jax.vmap(run)(*stack(*lanes))
    for i, one in enumerate(lanes):
        jax.tree.map(np.testing.assert_array_equal, lane(both, i), run(*one))
    program = jax.jit(jax.vmap(run))
    both = program(*stack(*lanes))
    swapped = program(*stack(lanes[0], (jnp.float32(7e-2), jnp.float32(0.1), lanes[0][2])))
    jax.tree.map(np.testing.assert_array_equal, lane(both, 0), lane(swapped, 0))
    assert not np.array_equal(both[0]["kernel"][1], swapped[0]["kernel"][1])
    for i, one in enumerate(lanes):
        params, _ = jax.jit(run)(*one)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), lane(both[0], i), params)


def test_check_optimizer_names_the_flag():
    for name in OPTIMIZERS:
        check_optimizer(name, False, False)
    check_optimizer("sgd", True, True)
    check_optimizer("rmsprop", False, True)
    cases = {("adamm", False, False): "--optimizer", ("adam", True, False): "--nesterov",
             ("rmsprop", True, True): "--nesterov", ("adam", False, True): "--momentum",
             ("lion", False, True): "--momentum"}
    for args, flag in cases.items():
        with pytest.raises(FlaxrayError) as err:
            check_optimizer(*args)
        message = str(err.value)
        assert message.startswith(flag) and "\n" not in message, message
    with pytest.raises(FlaxrayError, match="adam, adamw, sgd, rmsprop, nadam, adamax, adagrad, lion"):
        check_optimizer("adamm", False, False)
    with pytest.raises(FlaxrayError, match="--nesterov"):
        keras_optimizer("adam", nesterov=True)
