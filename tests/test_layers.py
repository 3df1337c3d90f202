"""The two forms of the convolutions and pools (`flaxray.models.conv`): chosen per backend or by
FLAXRAY_LAYERS when a program is traced, the same parameters, the same values and gradients."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flaxray.study import units as groups
from flaxray.runtime import programs
from flaxray.errors import FlaxrayError
from flaxray.models import build_model, conv, layers
from flaxray.models.resnet import Conv
from flaxray.core.config import TrainConfig

ARCH = "conv:4,bn,pool,sep:8,bn,pool:same,dropout:0.2,gap,dense:8@0.5"


def test_the_form_is_the_variables_else_the_backends(monkeypatch):
    monkeypatch.delenv(conv.ENV, raising=False)
    by_backend = "shifted" if jax.default_backend() == "cpu" else "native"
    assert layers.form() == by_backend
    for value, expected in (("auto", by_backend), ("", by_backend), ("native", "native"), ("shifted", "shifted")):
        monkeypatch.setenv(conv.ENV, value)
        assert conv.form() == expected
    monkeypatch.setenv(conv.ENV, "gpu")
    with pytest.raises(FlaxrayError, match="FLAXRAY_LAYERS='gpu'") as err:
        conv.form()
    assert "\n" not in str(err.value)
    monkeypatch.setenv(conv.ENV, "native")
    assert groups.program_shape(Path("/nonexistent"), 2)["layers"] == "native"


def test_the_form_is_read_when_a_program_is_traced(monkeypatch):
    model = build_model("conv:4,sep:4,pool", (6, 6, 2))
    images = jnp.zeros((1, 6, 6, 2), jnp.uint8)
    primitives = {}
    for form in conv.FORMS:
        monkeypatch.setenv(conv.ENV, form)
        text = str(jax.make_jaxpr(lambda x: model(x))(images))
        primitives[form] = {p for p in ("conv_general_dilated", "reduce_window_max", "argmax") if p in text}
    assert primitives == {"native": {"conv_general_dilated", "reduce_window_max"}, "shifted": {"argmax"}}
    # A compiled program keeps its form; the trainer's programs are kept per form.
    monkeypatch.setenv(conv.ENV, "shifted")
    config = TrainConfig(arch="conv:4,pool")
    shifted = programs.compiled(config)
    monkeypatch.setenv(conv.ENV, "native")
    assert programs.compiled(config) is not shifted
    monkeypatch.setenv(conv.ENV, "shifted")
    assert programs.compiled(config) is shifted
    # So are the inspection's programs and the memory plan's activation count.
    from flaxray.inspect import compute as inspect
    from flaxray.runtime import scale

    maps = inspect._vmapped(inspect.grad_cam, "conv:4,pool")
    count = scale.traced_activation_count("conv:4,pool", (6, 6, 2))
    monkeypatch.setenv(conv.ENV, "native")
    assert inspect._vmapped(inspect.grad_cam, "conv:4,pool") is not maps
    assert scale.traced_activation_count("conv:4,pool", (6, 6, 2)) != count  # the shifted form's copies count
    monkeypatch.setenv(conv.ENV, "shifted")
    assert inspect._vmapped(inspect.grad_cam, "conv:4,pool") is maps


def in_both_forms(monkeypatch, module, x, call):
    """{form: (output, gradient of sum(output * weights) w.r.t. the params and x)}, each form traced and
    compiled afresh (a new function object: no jit cache shared) from the same parameters."""
    graph, params = nnx.split(module)
    params = nnx.as_pure(params)
    weights = None
    results = {}
    for form in conv.FORMS:
        monkeypatch.setenv(conv.ENV, form)

        def forward(p, x):
            return call(nnx.merge(graph, p), x)

        if weights is None:
            weights = jax.random.normal(jax.random.key(7), jax.eval_shape(forward, params, x).shape)

        def loss(p, x):
            out = forward(p, x)
            return jnp.sum(out * weights), out

        (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
        results[form] = out, grads
    return results


# Not equal bit for bit by construction: lax's convolution sums the 9 * C products in another order than
# the matmul over the shifted copies (and XLA may block it otherwise), so float32 rounding differs in
# the last bits. The tolerance is that rounding on values of order 1, far below any real mistake
# (a shifted tap or a wrong padding changes outputs by order 1).
CLOSE = dict(rtol=1e-5, atol=1e-5)
# Through a model, BatchNorm divides by the batch deviation of few pixels and the gradient passes back
# through three normalizations: the rounding grows ~10x (measured: parameter gradients of order 1 differ
# by up to 2e-5), still far below the order-1 error of a wrong tap or padding.
MODEL_CLOSE = dict(rtol=1e-4, atol=1e-4)


@pytest.mark.numeric
@pytest.mark.parametrize("layer,side", [("conv", 7), ("conv", 6), ("sep", 7), ("sep", 8),
                                        ("torch3", 7), ("torch3s2", 7), ("torch3s2", 8), ("torch1s2", 7)])
def test_convolutions_agree_in_both_forms(monkeypatch, layer, side):
    rngs = nnx.Rngs(params=3)
    module = {"conv": lambda: layers.Conv2D(3, 5, rngs=rngs), "sep": lambda: layers.SeparableConv2D(3, 5, rngs=rngs),
              "torch3": lambda: Conv(3, 5, 3, 1, rngs=rngs), "torch3s2": lambda: Conv(3, 5, 3, 2, rngs=rngs),
              "torch1s2": lambda: Conv(3, 5, 1, 2, rngs=rngs)}[layer]()
    if hasattr(module, "bias"):
        module.bias[...] = jnp.linspace(-0.5, 0.5, 5)  # a nonzero bias: relu cuts some outputs, not all
    x = jax.random.normal(jax.random.key(1), (2, side, side - 1, 3))
    call = (lambda m, x: m(x)) if isinstance(module, Conv) else (lambda m, x: m(x, train=False, dropout_key=None))
    results = in_both_forms(monkeypatch, module, x, call)
    (out, grads), (expected, expected_grads) = results["native"], results["shifted"]
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, **CLOSE)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads), strict=True):
        np.testing.assert_allclose(got, want, **CLOSE)


@pytest.mark.numeric
@pytest.mark.parametrize("padding,shape", [(p, s) for p in ("valid", "same")
                                           for s in ((2, 6, 8, 3), (2, 7, 5, 3), (1, 3, 2, 1))]
                         + [("same", (1, 1, 1, 2))])  # even and odd sides; 'same' alone pools 1x1
def test_pools_agree_bit_for_bit_ties_included(monkeypatch, padding, shape):
    """Both forms pick the same element of each window, so values and gradients are equal exactly: the
    gradient goes to the first maximum in row-major order (as Keras's does), also where several tie."""
    tied = jax.random.randint(jax.random.key(2), shape, 0, 3).astype(jnp.float32)  # 3 values: many ties
    for x in (tied, jax.random.normal(jax.random.key(4), shape)):
        results = in_both_forms(monkeypatch, layers.MaxPool2D(padding), x,
                                lambda m, x: m(x, train=False, dropout_key=None))
        (out, (_, grad)), (expected, (_, expected_grad)) = results["native"], results["shifted"]
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(grad, expected_grad)
        assert np.all(np.asarray(grad != 0).sum(axis=(1, 2)) == out.shape[1] * out.shape[2])  # one per window


@pytest.mark.numeric
def test_a_model_trains_the_same_in_both_forms(monkeypatch):
    """A CNN with both convolutions, BatchNorm, both pools and dropout, at 9x9 (odd sides): the same
    logits (training and inference mode), batch statistics and parameter gradients, up to rounding."""
    model = build_model(ARCH, (9, 9, 3), key=5)
    graph, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, stats = nnx.as_pure(params), nnx.as_pure(stats)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 9, 9, 3)), jnp.uint8)
    labels = jnp.asarray([0, 1] * 4, jnp.float32)
    got = {}
    for form in conv.FORMS:
        monkeypatch.setenv(conv.ENV, form)

        def loss(p):
            m = nnx.merge(graph, p, stats)
            logits = m(images, train=True, dropout_key=jax.random.key(9))
            new_stats = nnx.as_pure(nnx.state(m, nnx.BatchStat))
            return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels)), (logits, new_stats)

        def infer(p):
            return nnx.merge(graph, p, stats)(images, train=False)

        (value, (logits, new_stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        got[form] = (value, logits, new_stats, grads, jax.jit(infer)(params))
    for a, b in zip(jax.tree.leaves(got["native"]), jax.tree.leaves(got["shifted"]), strict=True):
        np.testing.assert_allclose(a, b, **MODEL_CLOSE)


@pytest.mark.numeric
def test_both_forms_compute_in_bfloat16():
    """The native layers keep the compute dtype (the pool's -inf included): bfloat16 logits of both forms
    agree to bfloat16's rounding (8 bits of mantissa: ~4e-3 relative per operation)."""
    model = build_model(ARCH, (9, 9, 3), key=5, dtype="bfloat16")
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 9, 9, 3)), jnp.uint8)
    logits = {}
    with pytest.MonkeyPatch.context() as patch:
        for form in conv.FORMS:
            patch.setenv(conv.ENV, form)
            text = str(jax.make_jaxpr(lambda x: model(x))(images))
            assert ("bf16[8,9,9,4] = conv_general_dilated" in text) == (form == "native")
            logits[form] = jax.jit(lambda x: model(x))(images)
    np.testing.assert_allclose(logits["native"], logits["shifted"], rtol=2e-2, atol=2e-2)
