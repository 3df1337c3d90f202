"""The registry, spec strings, Keras-matching defaults and parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flaxray.errors import FlaxrayError
from flaxray.models import NOTES_STACKS, build_model, count_params, known_archs, parse_arch
from flaxray.train import keras_adam


def dense(n_in, n_out):
    return n_in * n_out + n_out


# Keras's model.summary() totals, worked out by hand: Dense = in*out + out; BatchNorm = 4 per unit
# (gamma, beta trainable; moving mean, moving variance not); the head is Dense(1).
KERAS_TOTALS_180x180x3 = {
    "pyramid": dense(97200, 1024) + dense(1024, 512) + dense(512, 256) + dense(256, 128) + dense(128, 64)
    + 4 * (1024 + 512 + 256 + 128 + 64) + dense(64, 1),
    "pyramid_plain": dense(97200, 1024) + dense(1024, 512) + dense(512, 256) + dense(256, 128) + dense(128, 64)
    + dense(64, 1),
    "final": dense(97200, 32) + dense(32, 64) + dense(64, 64) + dense(64, 128) + dense(128, 128) + dense(128, 256)
    + dense(256, 256) + dense(256, 512) + dense(512, 512) + dense(512, 1024)
    + 4 * (32 + 64 + 64 + 128 + 128 + 256 + 256 + 512 + 512 + 1024) + dense(1024, 1),
    "inverted": dense(97200, 32) + dense(32, 64) + dense(64, 128) + dense(128, 256) + dense(256, 512)
    + 4 * (32 + 64 + 128 + 256 + 512) + dense(512, 1),
}


@pytest.mark.parametrize("arch", sorted(KERAS_TOTALS_180x180x3))
def test_parameter_counts_equal_keras(arch):
    model = nnx.eval_shape(lambda: build_model(arch, (180, 180, 3)))
    counts = count_params(model)
    assert counts["total"] == KERAS_TOTALS_180x180x3[arch]
    assert counts["total"] == counts["trainable"] + counts["non_trainable"]


def test_pyramid_counts_split_like_keras():
    # Keras: BatchNorm's gamma and beta are trainable, its moving mean and variance are not.
    counts = count_params(nnx.eval_shape(lambda: build_model("pyramid", (180, 180, 3))))
    assert counts["non_trainable"] == 2 * (1024 + 512 + 256 + 128 + 64)
    assert counts["trainable"] == KERAS_TOTALS_180x180x3["pyramid"] - 2 * (1024 + 512 + 256 + 128 + 64)


def test_notes_stacks():
    widths = {name: [b.units for b in blocks] for name, blocks in NOTES_STACKS.items()}
    assert widths["pyramid"] == [1024, 512, 256, 128, 64]
    assert widths["inverted"] == [32, 64, 128, 256, 512]
    assert widths["inverted_d02"] == [32, 64, 128, 256, 512, 1024]
    assert widths["hourglass"] == [32, 64, 128, 256, 512, 1024, 512, 256, 128, 64]
    assert widths["final"] == [32, 64, 64, 128, 128, 256, 256, 512, 512, 1024]
    assert [b.rate for b in NOTES_STACKS["mixed"]] == [0.2] * 6 + [0.5] * 5
    assert {b.rate for b in NOTES_STACKS["hourglass_d02"]} == {0.2}
    assert all(b.rate is None for b in parse_arch("final_plain"))
    for name in known_archs():
        parse_arch(name)


def test_spec_string():
    blocks = parse_arch("dense:1024@0.5, 512@0.2,64")
    assert [(b.units, b.rate) for b in blocks] == [(1024, 0.5), (512, 0.2), (64, None)]
    model = build_model("dense:16@0.5,8", (4, 4, 1))
    assert count_params(model)["total"] == dense(16, 16) + 4 * 16 + dense(16, 8) + dense(8, 1)


@pytest.mark.parametrize("bad", ["dense:", "dense:abc", "dense:16@1.5", "dense:0@0.5", "dense:16@", "resnet"])
def test_bad_arch_is_a_one_line_error(bad):
    with pytest.raises(FlaxrayError) as err:
        parse_arch(bad)
    assert "\n" not in str(err.value)


def test_unknown_arch_lists_known_names():
    with pytest.raises(FlaxrayError, match="pyramid_plain"):
        parse_arch("pyramidd")


def test_keras_defaults():
    model = build_model("dense:64@0.5", (10, 10, 1), key=3)
    block = model.blocks[0]
    assert block.norm.momentum == 0.99 and block.norm.epsilon == 1e-3
    kernel = np.asarray(block.dense.kernel[...])
    limit = np.sqrt(6 / (100 + 64))  # glorot uniform
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
    assert np.isclose(kernel.std(), limit / np.sqrt(3), rtol=0.1)
    assert not np.any(block.dense.bias[...])


def test_forward_rescales_and_dropout_is_inverted():
    model = build_model("dense:8@0.5", (2, 2, 1))
    x = jnp.full((4, 2, 2, 1), 255, jnp.uint8)
    assert model(x, train=False).shape == (4,)
    # Inverted dropout: kept units scaled by 1/(1-rate) in training, identity at inference.
    y = jnp.ones((1000, 8))
    dropped = model.blocks[0].dropout(y, deterministic=False, rngs=jax.random.key(0))
    assert set(np.unique(np.asarray(dropped))) == {0.0, 2.0}


def test_keras_adam_matches_keras_update_rule():
    """Keras: alpha = lr*sqrt(1-b2^t)/(1-b1^t); w -= alpha*m/(sqrt(v)+eps) with eps outside the correction."""
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-7
    w = jnp.array([0.5, -1.0, 2.0])
    grads = [jnp.array([1e-6, -2e-6, 3e-7]), jnp.array([0.1, 0.2, -0.3]), jnp.array([1e-5, 0.0, 1.0])]
    tx = keras_adam(lr)
    state = tx.init(w)
    m = v = np.zeros(3)
    ref = np.asarray(w, np.float64)
    for t, g in enumerate(grads, start=1):
        updates, state = tx.update(g, state, w)
        w = optax.apply_updates(w, updates)
        g = np.asarray(g, np.float64)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        ref = ref - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        np.testing.assert_allclose(np.asarray(w), ref, rtol=1e-6)
    # And it is not optax's default placement, which differs when gradients are tiny.
    w2, s2 = jnp.array([0.5, -1.0, 2.0]), optax.adam(lr, eps=eps).init(jnp.zeros(3))
    u2, _ = optax.adam(lr, eps=eps).update(grads[0], s2, w2)
    u1, _ = keras_adam(lr).update(grads[0], keras_adam(lr).init(w2), w2)
    assert not np.allclose(np.asarray(u1), np.asarray(u2), rtol=1e-3)
