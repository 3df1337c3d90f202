"""resnet18: MedMNIST v2's ResNet-18 (MedMNIST/experiments MedMNIST2D/models.py): its parameter count by
hand, its stages' shapes, PyTorch's initialisation, its convolutions against lax.conv, and a training step."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flaxray.models import build_model, count_params, graphdef
from flaxray.models.resnet import Conv


def conv(k, cin, cout):
    return k * k * cin * cout  # bias=False everywhere


def resnet18_counts(channels, outputs):
    """(trainable, non-trainable) of the CIFAR-style ResNet-18, by hand. BatchNorm: gamma and beta trainable,
    running mean and variance not. A stage's first block has a 1x1 projection (+ BatchNorm) where the
    stride or the width changes: stages 2-4, not stage 1 (64 -> 64, stride 1)."""
    trainable, bn = conv(3, channels, 64), [64]
    width = 64
    for out in (64, 128, 256, 512):
        for block in range(2):
            cin = width if block == 0 else out
            trainable += conv(3, cin, out) + conv(3, out, out)
            bn += [out, out]
            if cin != out:
                trainable += conv(1, cin, out)
                bn.append(out)
        width = out
    trainable += 2 * sum(bn) + 512 * outputs + outputs  # BatchNorm's gamma, beta; the Linear head
    return trainable, 2 * sum(bn)


@pytest.mark.parametrize("channels,classes,outputs", [(1, 2, 1), (3, 2, 1), (3, 9, 9), (1, 11, 11)])
def test_parameter_count_equals_the_hand_count(channels, classes, outputs):
    counts = count_params(nnx.eval_shape(lambda: build_model("resnet18", (28, 28, channels), num_classes=classes)))
    assert (counts["trainable"], counts["non_trainable"]) == resnet18_counts(channels, outputs)
    # kuangliu/pytorch-cifar's ResNet18 (which MedMNIST adapts), RGB, 10 classes: 11,173,962 parameters.
    assert resnet18_counts(3, 10)[0] == 11_173_962


def test_stages_and_shortcuts_are_medmnists():
    model = nnx.eval_shape(lambda: build_model("resnet18", (28, 28, 1), num_classes=3))
    net = model.net
    assert net.stem.kernel.shape == (3, 3, 1, 64) and net.stem.stride == 1  # 3x3 stride-1 stem, no max-pool
    assert [b.conv1.stride for b in net.blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert [b.projection for b in net.blocks] == [False, False, True, False, True, False, True, False]
    assert net.head.kernel.shape == (512, 3)
    norm = net.stem_bn
    assert (norm.momentum, norm.epsilon) == (0.9, 1e-5)  # PyTorch's momentum 0.1, eps 1e-5
    # 28 -> 28 -> 14 -> 7 -> 4, then global average pooling.
    sides = []

    def trace(x):  # the model built inside: abstract arrays, nothing computed
        net = build_model("resnet18", (28, 28, 1), num_classes=3).net
        x = net.stem(x)
        for b in net.blocks:
            x = b(x, train=False)
            sides.append(x.shape[1:])
        return x

    jax.eval_shape(trace, jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32))
    assert sides[1::2] == [(28, 28, 64), (14, 14, 128), (7, 7, 256), (4, 4, 512)]


@pytest.mark.parametrize("size,stride,side", [(3, 1, 7), (3, 2, 7), (3, 2, 8), (1, 2, 7), (1, 1, 5)])
def test_convolutions_equal_lax_conv_with_pytorchs_padding(size, stride, side):
    layer = Conv(3, 5, size, stride, rngs=nnx.Rngs(params=0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, side, side, 3)), jnp.float32)
    pad = size // 2
    expected = jax.lax.conv_general_dilated(x, layer.kernel[...], (stride, stride), ((pad, pad), (pad, pad)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert layer(x).shape == expected.shape == (2, (side - 1) // stride + 1, (side - 1) // stride + 1, 5)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_initialisation_is_pytorchs_default():
    # kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)), fan_in = 3 * 3 * 64; a uniform's std is bound / sqrt(3).
    kernel = np.asarray(Conv(64, 64, 3, 1, rngs=nnx.Rngs(params=1)).kernel[...])
    bound = 1 / np.sqrt(9 * 64)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
    # 36,864 draws: the std's standard error is 0.23 %, so 2 % is ~9 standard errors (false failure < 1e-15).
    assert abs(kernel.std() / (bound / np.sqrt(3)) - 1) < 0.02


def test_a_training_step_of_a_batch_of_8_runs_in_seconds():
    shape, classes = (28, 28, 1), 3
    structure = graphdef("resnet18", shape, num_classes=classes)
    # Parameters filled from numpy (shapes from eval_shape): compiling the random initialiser of 62 arrays
    # takes longer on the CPU than the step itself, and the initialiser is tested above.
    abstract = nnx.eval_shape(lambda: build_model("resnet18", shape, num_classes=classes))
    _, params, stats = nnx.as_pure(nnx.split(abstract, nnx.Param, nnx.BatchStat))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(rng.uniform(-0.05, 0.05, a.shape), jnp.float32), params)
    stats = jax.tree.map(lambda a: jnp.ones(a.shape, jnp.float32), stats)
    x = jnp.asarray(rng.integers(0, 256, (8, *shape)), jnp.uint8)
    y = jnp.arange(8) % classes

    def loss(params, stats):
        model = nnx.merge(structure, params, stats)
        logits = model(x, train=True, dropout_key=jax.random.key(0))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), nnx.as_pure(
            nnx.state(model, nnx.BatchStat))

    start = time.perf_counter()
    grads, new_stats = jax.jit(jax.grad(loss, has_aux=True))(params, stats)
    jax.block_until_ready(grads)
    assert time.perf_counter() - start < 60  # ~5 s compile + 0.5 s step on 2 busy cores
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert np.abs(grads["net"]["stem"]["kernel"]).max() > 0  # the gradient reaches the stem
    assert not np.allclose(new_stats["net"]["stem_bn"]["mean"], 1.0)  # training mode updates the statistics
