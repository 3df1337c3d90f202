"""What a Keras model brings to its own training: a compile (its loss, regularisers, loss scaling and
optimizer, stepped as `JAXTrainer.train_step` steps them), or, uncompiled, its weights' regularisers.

    compiled(template, inputs, squeeze, binary)   # a Compiled: opt_init, step, losses, learning_rate
    penalty(template, inputs, name)               # params -> the regularisers' sum, or None

`flaxray.models.keras_kind` puts these behind the one model interface (`Model.compiled`, `Model.penalty`).
"""

from __future__ import annotations

import contextlib
import random
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flaxray.errors import FlaxrayError


@contextlib.contextmanager
def random_state_kept():
    """`keras.utils.set_random_seed` seeds Python's and NumPy's global generators: put them back after."""
    py, npy = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def values(variables) -> list:
    return [np.array(v.value) for v in variables]  # copies: fit and stateless calls may donate the buffers


@contextlib.contextmanager
def seeded(name: str):
    """A model that draws `keras.random` without a SeedGenerator has no per-seed state to vary or vmap:
    Keras refuses it when traced; said in one line."""
    try:
        yield
    except ValueError as e:
        if "SeedGenerator" in str(e):
            raise FlaxrayError(f"{name}: the model draws keras.random without a SeedGenerator; create one in "
                               "the layer's __init__ (keras.random.SeedGenerator) and pass it as seed=") from None
        raise


class Compiled(NamedTuple):
    """A compiled model's own training: its loss, regularisers, loss scaling and optimizer."""

    opt_init: Callable  # lr -> the optimizer's initial variables, its constant rate set to lr
    step: Callable  # (params, state, opt_state, x, y, sample weights or None) -> (params, state, opt_state, outputs, loss)
    losses: Callable  # (variables, x, y, outputs) -> per-sample losses, as `evaluate` adds them up
    learning_rate: float | None  # the compile's rate, None where it is a schedule


def penalty(template, inputs, name: str) -> Callable | None:
    """An uncompiled model's weight regularisers as a function of its trainable values (what fit adds to
    each batch's loss), or None. Losses made while calling (activity regularisers, `add_loss`) depend on
    the batch and are the compile's business: refused in one line (a compiled model's step has them)."""
    regularised = [(i, v.regularizer) for i, v in enumerate(template.trainable_variables) if v.regularizer is not None]
    x = np.zeros((2, *template.input_shape[1:]), np.float32)
    with seeded(name), random_state_kept():
        *_, made = template.stateless_call(values(template.trainable_variables), values(template.non_trainable_variables),
                                           inputs(x), training=True, return_losses=True)
    if len(made) > len(regularised):
        raise FlaxrayError(f"{name}: the model adds losses as it runs (an activity_regularizer or add_loss), "
                           "which only its compile's loss trains with; compile the model, or drop them")
    if not regularised:
        return None
    return lambda params: sum(regularizer(params[i]) for i, regularizer in regularised)


def compiled(template, inputs, squeeze, binary) -> Compiled:
    from keras.src.backend.jax.trainer import JAXTrainer

    if type(template).train_step is not JAXTrainer.train_step:
        raise FlaxrayError(f"{template.name}: the model overrides train_step, which flaxray does not run (it steps "
                           "with the compile's loss and optimizer as Keras's own train_step does); leave it uncompiled "
                           "to train with flaxray's recipe, or drop the override")
    optimizer = template.optimizer
    with random_state_kept():
        if not optimizer.built:
            optimizer.build(template.trainable_variables)
        # Builds the compile's loss and metrics as fit's first batch would (evaluate draws no data order),
        # then empties the loss tracker that batch filled.
        template.evaluate(np.zeros((1, *template.input_shape[1:]), np.float32), np.zeros((1,), np.float32), verbose=0)
        template.reset_metrics()
    opt_values, metric_values = values(optimizer.variables), values(template.metrics_variables)
    rate = optimizer.get_config()["learning_rate"]  # a float, or a serialised schedule
    learning_rate = float(rate) if isinstance(rate, (int, float, np.floating)) else None
    # A constant rate is one of the optimizer's variables: the lane's --lr is written there, so one
    # program crosses rates for a compiled model as for any other.
    at = [i for i, v in enumerate(optimizer.variables) if v.path.endswith("learning_rate")]
    at = at[0] if learning_rate is not None and at else None

    def opt_init(lr):
        values = [jnp.asarray(v) for v in opt_values]
        if at is not None:
            values[at] = jnp.asarray(lr, values[at].dtype)
        return values

    def labels(y):
        return y if binary else y.astype(jnp.int32)

    def step(params, state, opt_state, x, y, weights=None):
        grad = jax.value_and_grad(template.compute_loss_and_updates, has_aux=True)
        with seeded(template.name):
            (_, (loss, outputs, state, _)), grads = grad(list(params), list(state), metric_values, inputs(x),
                                                         labels(y), weights, training=True,
                                                         optimizer_variables=list(opt_state))
        params, opt_state = optimizer.stateless_apply(list(opt_state), grads, list(params))
        return params, state, opt_state, squeeze(outputs), loss

    def losses(variables, x, y, outputs):
        """Each sample's compile loss plus the regularisers (Keras's evaluate: a batch's mean plus them)."""
        del x  # a compile loss of the outputs and labels alone

        def one(yi, pi):
            loss, _ = template.stateless_compute_loss(list(variables.params), list(variables.state), metric_values,
                                                      y=yi[None], y_pred=pi[None], training=False)
            return loss

        preds = outputs.reshape(-1, 1) if binary else outputs
        return jax.vmap(one)(labels(y), preds)

    return Compiled(opt_init, step, losses, learning_rate)
