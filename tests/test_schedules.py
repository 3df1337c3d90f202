"""Learning-rate schedules (`flaxray.core.schedules`): exact per-epoch factors, Keras's CosineDecay and
ExponentialDecay step by step, the warm-up, and every refusal.

Expected bits: a step schedule's factor after k milestones is `jnp.float32(decay) ** k` (k a Python int, JAX's
integer power); exponential's is `jnp.power(jnp.float32(decay), jnp.float32(epoch))`, the expression of
Keras's ExponentialDecay (staircase); both are asserted bit for bit, eagerly and jitted. Cosine and the
warm-up are held to Keras's schedule objects within 1e-6 (absolute, factors in [0, 1]) when jitted, where XLA
rewrites a division by a constant (the warm-up's W, cosine's decay steps) as a product with its reciprocal, an
ulp or so off; eagerly they are Keras's float32 operations, and equal to Keras's factors bit for bit.
"""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxray.core import schedules
from flaxray.core.schedules import Schedule, factor
from flaxray.errors import FlaxrayError

keras = pytest.importorskip("keras")

SPE, EPOCHS = 3, 5


def factors(schedule, spe=SPE, epochs=EPOCHS, jit=False):
    """The factor at every step of the run, as float32."""
    fn = lambda s: factor(schedule, s, spe, epochs)  # noqa: E731
    fn = jax.jit(fn) if jit else fn
    return np.array([np.asarray(fn(jnp.int32(s))) for s in range(spe * epochs)], np.float32)


def per_epoch(values, spe=SPE):
    """One factor per epoch, asserting it is constant within the epoch."""
    rows = values.reshape(-1, spe)
    assert (rows == rows[:, :1]).all(), rows
    return rows[:, 0]


@pytest.mark.parametrize("jit", [False, True])
def test_constant_is_exactly_one(jit):
    assert Schedule().is_default() and schedules.is_default(Schedule())
    values = factors(Schedule(), jit=jit)
    np.testing.assert_array_equal(values, np.ones(SPE * EPOCHS, np.float32))
    assert factor(Schedule(), jnp.int32(7), SPE, EPOCHS).dtype == jnp.float32


@pytest.mark.parametrize("jit", [False, True])
def test_step_multiplies_after_each_milestone(jit):
    """Milestones 2 3, decay 0.1, 5 epochs: lr in epochs 1-2, lr*G in 3, lr*G**2 in 4 and 5 (1-based)."""
    g = jnp.float32(0.1)
    expected = np.array([1, 1, g ** 1, g ** 2, g ** 2], np.float32)
    assert expected[2] == np.float32(0.1) and expected[3] == np.float32(jnp.float32(0.1) * jnp.float32(0.1))
    got = per_epoch(factors(Schedule("step", milestones=(2, 3), decay=0.1), jit=jit))
    np.testing.assert_array_equal(got, expected)
    # Four milestones: G**4 is JAX's integer power, (G*G)*(G*G), not a running product.
    got = per_epoch(factors(Schedule("step", milestones=[1, 2, 3, 4], decay=0.3), jit=jit))
    np.testing.assert_array_equal(got, np.array([jnp.float32(0.3) ** k for k in range(5)], np.float32))


@pytest.mark.parametrize("jit", [False, True])
def test_exponential_is_keras_exponential_decay_per_epoch(jit):
    schedule = Schedule("exponential", decay=0.5)
    got = factors(schedule, jit=jit)
    expected = [jnp.power(jnp.float32(0.5), jnp.float32(s // SPE)) for s in range(SPE * EPOCHS)]
    np.testing.assert_array_equal(got, np.array(expected, np.float32))
    np.testing.assert_array_equal(per_epoch(got), np.float32([1, 0.5, 0.25, 0.125, 0.0625]))
    keras_decay = keras.optimizers.schedules.ExponentialDecay(1.0, SPE, 0.5, staircase=True)
    np.testing.assert_array_equal(got, np.array([keras_decay(s) for s in range(SPE * EPOCHS)], np.float32))
    grows = per_epoch(factors(Schedule("exponential", decay=2.0), jit=jit))  # (0, inf): a growing rate is allowed
    np.testing.assert_array_equal(grows, np.float32([1, 2, 4, 8, 16]))


@pytest.mark.parametrize("jit", [False, True])
def test_cosine_is_keras_cosine_decay(jit):
    keras_cosine = keras.optimizers.schedules.CosineDecay(1.0, SPE * EPOCHS)
    expected = np.array([keras_cosine(s) for s in range(SPE * EPOCHS)], np.float32)
    got = factors(Schedule("cosine"), jit=jit)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    if not jit:
        np.testing.assert_array_equal(got, expected)
    assert got[0] == 1.0 and 0 < got[-1] < got[-2]


@pytest.mark.parametrize("jit", [False, True])
def test_warmup_is_keras_linear_warmup(jit):
    """2 of 5 epochs of warm-up (W = 6 steps): step / W from 0 at the first update, then the schedule over
    the remaining 3 epochs' steps."""
    warmup, total = 2 * SPE, SPE * EPOCHS
    keras_cosine = keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=1.0, warmup_steps=warmup)
    expected = np.array([keras_cosine(s) for s in range(total)], np.float32)
    got = factors(Schedule("cosine", warmup_epochs=2), jit=jit)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    if not jit:
        np.testing.assert_array_equal(got, expected)
    assert got[0] == 0.0 and got[warmup] == 1.0
    ramp = np.float32([s / warmup for s in range(warmup)])  # s / W rounded once, as Keras's eager division
    if jit:  # XLA turns the division by the constant W into a product with its reciprocal: an ulp off at most
        np.testing.assert_allclose(got[:warmup], ramp, rtol=1.2e-7, atol=0)
    else:
        np.testing.assert_array_equal(got[:warmup], ramp)
    # Milestones and exponential epochs count after the warm-up; constant rises to 1 and stays.
    stepped = factors(Schedule("step", milestones=(1,), decay=0.1, warmup_epochs=2), jit=jit)
    np.testing.assert_array_equal(stepped[:warmup], got[:warmup])
    np.testing.assert_array_equal(per_epoch(stepped[warmup:]), np.float32([1, 0.1, 0.1]))
    expo = factors(Schedule("exponential", decay=0.5, warmup_epochs=2), jit=jit)
    np.testing.assert_array_equal(per_epoch(expo[warmup:]), np.float32([1, 0.5, 0.25]))
    flat = Schedule(warmup_epochs=1)
    assert not flat.is_default()
    np.testing.assert_allclose(factors(flat, jit=jit), np.float32([0, 1 / 3, 2 / 3] + [1] * (total - SPE)),
                               rtol=1.2e-7 if jit else 0)


def test_a_callable_schedule_is_called():
    fn = optax.linear_schedule(1.0, 0.0, 10)
    np.testing.assert_array_equal(factor(fn, jnp.int32(5), SPE, EPOCHS), np.float32(0.5))
    assert float(jax.jit(lambda s: factor(fn, s, SPE, EPOCHS))(jnp.int32(10))) == pytest.approx(0.0, abs=1e-7)
    assert schedules.record(fn) == {"kind": "callable", "repr": repr(fn)}
    assert not schedules.is_default(fn)
    schedules.check(fn, EPOCHS)
    with pytest.raises(FlaxrayError, match="^--schedule"):
        schedules.check("cosine", EPOCHS)


def test_record_is_json():
    schedule = Schedule("step", milestones=[2, 3], decay=0.5, warmup_epochs=1)
    assert schedule.milestones == (2, 3) and hash(schedule)
    record = schedules.record(schedule)
    assert json.loads(json.dumps(record)) == {"kind": "step", "milestones": [2, 3], "decay": 0.5, "warmup_epochs": 1}
    assert record == schedule.record()


REFUSALS = [
    (Schedule("linear"), "--schedule", "choose from constant, step, exponential, cosine"),
    (Schedule("step", milestones=(3, 2)), "--milestones", "strictly increasing"),
    (Schedule("step", milestones=(2, 2)), "--milestones", "strictly increasing"),
    (Schedule("step", milestones=(0, 2)), "--milestones", "positive"),
    (Schedule("step", milestones=(1.5,)), "--milestones", "whole"),
    (Schedule("step", milestones=(True,)), "--milestones", "whole"),
    (Schedule("step", milestones=(5,)), "--milestones", "at or past the last epoch"),
    (Schedule("step", milestones=(3,), warmup_epochs=2), "--milestones", "at or past the last epoch"),
    (Schedule("step"), "--milestones", "at least one"),
    (Schedule("cosine", milestones=(2,)), "--milestones", "only for --schedule step"),
    (Schedule("exponential", milestones=(2,)), "--milestones", "only for --schedule step"),
    (Schedule("step", milestones=(2,), decay=0.0), "--decay", "(0, 1]"),
    (Schedule("step", milestones=(2,), decay=1.5), "--decay", "(0, 1]"),
    (Schedule("step", milestones=(2,), decay=float("nan")), "--decay", "(0, 1]"),
    (Schedule("exponential", decay=-0.5), "--decay", "> 0"),
    (Schedule("exponential", decay=float("inf")), "--decay", "> 0"),
    (Schedule("exponential", decay=0.0), "--decay", "> 0"),
    (Schedule("cosine", decay=0.5), "--decay", "only for --schedule step or exponential"),
    (Schedule(warmup_epochs=-1), "--warmup-epochs", "from 0 to 4"),
    (Schedule(warmup_epochs=5), "--warmup-epochs", "from 0 to 4"),
    (Schedule("cosine", warmup_epochs=1.5), "--warmup-epochs", "whole"),
]


@pytest.mark.parametrize("schedule,flag,words", REFUSALS, ids=[f"{i}-{f}" for i, (_, f, _) in enumerate(REFUSALS)])
def test_refusals_are_one_line_naming_the_flag(schedule, flag, words):
    with pytest.raises(FlaxrayError) as err:
        schedule.check(EPOCHS)
    message = str(err.value)
    assert message.startswith(flag + ":") and words in message and "\n" not in message, message


def test_what_is_accepted():
    for schedule in [Schedule(), Schedule("step", milestones=(1, 4)), Schedule("step", milestones=(2,), decay=1.0),
                     Schedule("exponential", decay=3.0), Schedule("cosine", warmup_epochs=4),
                     Schedule("step", milestones=(2,), warmup_epochs=2)]:
        schedule.check(EPOCHS)
