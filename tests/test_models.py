"""The registry, spec strings, Keras-matching defaults and parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flaxray.errors import FlaxrayError
from flaxray.models import CNN_SPECS, NOTES_STACKS, build_model, count_params, known_archs, min_image_size, parse_arch
from flaxray.core.optim import keras_adam


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


# CNNs. Keras's model.summary(), worked out by hand: Conv2D(3x3) = 9*in*out + out; SeparableConv2D(3x3) =
# 9*in (depthwise, no bias) + in*out (pointwise) + out (one bias); BatchNormalization = 4 per channel
# (2 trainable); pools, Dropout, Flatten and GlobalAveragePooling2D have none.
def conv(n_in, n_out):
    return 9 * n_in * n_out + n_out


def sep(n_in, n_out):
    return 9 * n_in + n_in * n_out + n_out


def bn(n):
    return 4 * n


def keras_io_stack(channels, flat, w=(16, 32, 64, 128, 256)):
    """cnn_sep's layers for `channels` input channels and `flat` features after Flatten."""
    a, b, c, d, e = w
    return (conv(channels, a) + conv(a, a) + sep(a, b) + sep(b, b) + bn(b) + sep(b, c) + sep(c, c) + bn(c)
            + sep(c, d) + sep(d, d) + bn(d) + sep(d, e) + sep(e, e) + bn(e)
            + dense(flat, 512) + bn(512) + dense(512, 128) + bn(128) + dense(128, 64) + bn(64) + dense(64, 1))


def conv_stack(channels, flat):
    return (conv(channels, 32) + bn(32) + conv(32, 64) + bn(64) + conv(64, 128) + bn(128) + conv(128, 128)
            + bn(128) + dense(flat, 512) + bn(512) + dense(512, 1))


# 'same' pools: 180 -> 90 -> 45 -> 23 -> 12 -> 6 and 28 -> 14 -> 7 -> 4 -> 2 -> 1.
KERAS_CNN_TOTALS = {
    ("cnn_sep", (180, 180, 3)): keras_io_stack(3, 6 * 6 * 256),
    ("cnn_sep", (28, 28, 1)): keras_io_stack(1, 256),
    ("cnn_sep_wide", (180, 180, 3)): keras_io_stack(3, 6 * 6 * 512, (32, 64, 128, 256, 512)),
    ("cnn_sep_wide", (28, 28, 1)): keras_io_stack(1, 512, (32, 64, 128, 256, 512)),
    ("cnn_conv", (180, 180, 3)): conv_stack(3, 12 * 12 * 128),
    ("cnn_conv", (28, 28, 1)): conv_stack(1, 2 * 2 * 128),
    ("cnn_conv_plain", (28, 28, 1)): conv(1, 32) + conv(32, 64) + conv(64, 128) + conv(128, 128)
    + dense(2 * 2 * 128, 512) + dense(512, 1),
    # keras.io's model exactly as Keras builds it, with MaxPool2D()'s 'valid' pools: 180 -> 90 -> 45 -> 22 -> 11 -> 5.
    ("conv:16,16,pool,sep:32,32,bn,pool,sep:64,64,bn,pool,sep:128,128,bn,pool,dropout:0.2,"
     "sep:256,256,bn,pool,dropout:0.2,flatten,dense:512@0.7,128@0.5,64@0.3", (180, 180, 3)): keras_io_stack(3, 5 * 5 * 256),
    ("conv:32,pool,sep:64,pool,gap,dense:128@0.5", (28, 28, 1)): conv(1, 32) + sep(32, 64) + dense(64, 128) + bn(128)
    + dense(128, 1),
}


@pytest.mark.parametrize("arch,shape", sorted(KERAS_CNN_TOTALS, key=str))
def test_cnn_parameter_counts_equal_keras(arch, shape):
    counts = count_params(nnx.eval_shape(lambda: build_model(arch, shape)))
    assert counts["total"] == KERAS_CNN_TOTALS[arch, shape]
    assert counts["total"] == counts["trainable"] + counts["non_trainable"]


def test_cnn_counts_split_like_keras():
    # BatchNorm's moving mean and variance are non-trainable: 2 per channel of every bn and dense block.
    counts = count_params(nnx.eval_shape(lambda: build_model("cnn_sep", (28, 28, 1))))
    assert counts["non_trainable"] == 2 * (32 + 64 + 128 + 256 + 512 + 128 + 64)
    assert count_params(nnx.eval_shape(lambda: build_model("cnn_sep_plain", (28, 28, 1))))["non_trainable"] == 0


def test_grey_images_save_first_layer_weights():
    for arch, first_filters in (("cnn_sep", 16), ("cnn_conv", 32), ("cnn_sep_wide", 32)):
        rgb = count_params(nnx.eval_shape(lambda: build_model(arch, (180, 180, 3))))["total"]
        grey = count_params(nnx.eval_shape(lambda: build_model(arch, (180, 180, 1))))["total"]
        assert rgb - grey == 9 * 2 * first_filters  # only the first kernel sees the channels


def test_cnn_registry_and_plain_variants():
    layers = parse_arch("cnn_sep")
    assert [l.units for l in layers if l.kind == "sep"] == [32, 32, 64, 64, 128, 128, 256, 256]
    assert [str(l) for l in layers if l.kind == "dense"] == ["dense:512@0.7", "dense:128@0.5", "dense:64@0.3"]
    assert sum(l.kind == "pool" for l in layers) == 5 and {l.padding for l in layers if l.kind == "pool"} == {"same"}
    assert [l.units for l in parse_arch("cnn_sep_wide") if l.kind == "sep"] == [64, 64, 128, 128, 256, 256, 512, 512]
    for name in CNN_SPECS:
        stripped = parse_arch(f"{name}_plain")
        assert not any(l.kind in ("bn", "dropout") or l.rate is not None for l in stripped)
        assert [l for l in parse_arch(name) if l.kind in ("conv", "sep", "pool", "flatten")] == \
            [l for l in stripped if l.kind in ("conv", "sep", "pool", "flatten")]
    assert {f"{n}_plain" for n in CNN_SPECS} | set(CNN_SPECS) <= set(known_archs())


def test_cnn_spec_string():
    layers = parse_arch("conv:8, 16,pool,sep:32,bn,pool:same,dropout:0.25,.5,gap,dense:64@0.5,32")
    assert ",".join(map(str, layers)) == "conv:8,conv:16,pool,sep:32,bn,pool:same,dropout:0.25,dropout:0.5,gap," \
                                         "dense:64@0.5,dense:32"
    assert parse_arch(",".join(map(str, layers))) == layers  # str() writes a spec string back
    model = build_model("conv:4,pool,sep:6,flatten,dense:5", (6, 6, 2))
    assert model(jnp.zeros((3, 6, 6, 2), jnp.uint8)).shape == (3,)
    assert count_params(model)["total"] == conv(2, 4) + sep(4, 6) + dense(3 * 3 * 6, 5) + dense(5, 1)


@pytest.mark.parametrize("bad", ["conv:", "conv:0", "conv:8,pool:valid,flatten", "sep:3.5", "bn:2", "dropout:1",
                                 "dropout:", "conv:8,,pool", "conv:8,maxpool", "conv:8,gap,conv:8",
                                 "dense:8,pool", "flatten,flatten", "gap:2"])
def test_bad_cnn_spec_is_a_one_line_error_naming_the_item(bad):
    with pytest.raises(FlaxrayError) as err:
        parse_arch(bad)
    message = str(err.value)
    assert "\n" not in message and "item" in message


def test_too_small_images_are_a_one_line_error_naming_the_minimum():
    arch = "conv:8,pool,pool,pool:same,pool,pool,flatten"  # 'valid' pools need 2x, a 'same' pool 2x - 1
    assert min_image_size(parse_arch(arch)) == 2 * (2 * (2 * (2 * 2) - 1)) == 28  # 28 -> 14 -> 7 -> 4 -> 2 -> 1
    build_model(arch, (28, 28, 1))
    with pytest.raises(FlaxrayError, match="at least 28x28") as err:
        build_model(arch, (27, 28, 1))  # 27 -> 13 -> 6 -> 3 -> 1 -> 0
    assert "\n" not in str(err.value)
    assert min_image_size(parse_arch("cnn_sep")) == 1  # 'same' pools: the registry runs on any image
    for name in CNN_SPECS:  # shapes only (abstract evaluation): every registry CNN runs on the 28x28 default
        logits = jax.eval_shape(lambda: build_model(name, (28, 28, 1))(jnp.zeros((2, 28, 28, 1), jnp.uint8)))
        assert logits.shape == (2,)


def test_convolutions_and_pools_equal_the_lax_reference():
    """Our 3x3 convolutions (shifted copies + matmul) and pools (reshape + argmax) compute what
    lax.conv_general_dilated and lax.reduce_window compute, as Keras's layers do."""
    x = jax.random.normal(jax.random.key(1), (2, 7, 5, 3))
    layers = build_model("conv:4,sep:6,pool:same,pool,flatten", (7, 5, 3), key=2).blocks
    layers[0].bias[...] = jnp.arange(4.0)
    layers[1].bias[...] = jnp.arange(6.0)
    dn = ("NHWC", "HWIO", "NHWC")

    def lax_conv(x, kernel, groups=1):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dn,
                                            feature_group_count=groups)

    call = dict(train=False, dropout_key=None)
    y = layers[0](x, **call)
    np.testing.assert_allclose(y, jax.nn.relu(lax_conv(x, layers[0].kernel[...]) + jnp.arange(4.0)), atol=1e-5)
    # Depthwise: Keras's (3, 3, C, 1) kernel is lax's (3, 3, 1, C) with one group per channel.
    depthwise = lax_conv(y, layers[1].depthwise_kernel[...].reshape(3, 3, 1, 4), groups=4)
    expected = jax.nn.relu(lax_conv(depthwise, layers[1].pointwise_kernel[...]) + jnp.arange(6.0))
    y = layers[1](y, **call)
    np.testing.assert_allclose(y, expected, atol=1e-5)
    for layer, padding, shape in ((layers[2], "SAME", (2, 4, 3, 6)), (layers[3], "VALID", (2, 2, 1, 6))):
        def reference(y):
            return nnx.max_pool(y, (2, 2), strides=(2, 2), padding=padding)

        def ours(y):
            return layer(y, **call)

        # Same values, and the same gradient: all of it to the window's maximum.
        weights = jax.random.normal(jax.random.key(3), shape)
        np.testing.assert_array_equal(jax.grad(lambda y: jnp.sum(ours(y) * weights))(y),
                                      jax.grad(lambda y: jnp.sum(reference(y) * weights))(y))
        expected, y = reference(y), ours(y)
        assert y.shape == shape
        np.testing.assert_array_equal(y, expected)


def test_cnn_keras_defaults():
    model = build_model("conv:64,sep:96,bn", (8, 8, 32), key=5)
    conv_layer, sep_layer, norm = model.blocks
    # Keras's weight shapes, glorot-uniform limits sqrt(6 / (fan_in + fan_out)) with Keras's fans
    # (receptive field times the last two axes), zero biases; one bias in the separable conv.
    for kernel, limit in ((conv_layer.kernel, np.sqrt(6 / (9 * 32 + 9 * 64))),
                          (sep_layer.depthwise_kernel, np.sqrt(6 / (9 * 64 + 9 * 1))),
                          (sep_layer.pointwise_kernel, np.sqrt(6 / (64 + 96)))):
        k = np.asarray(kernel[...])
        assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit
        assert np.isclose(k.std(), limit / np.sqrt(3), rtol=0.15)
    assert sep_layer.depthwise_kernel.shape == (3, 3, 64, 1) and sep_layer.pointwise_kernel.shape == (1, 1, 64, 96)
    assert conv_layer.kernel.shape == (3, 3, 32, 64)
    assert not np.any(conv_layer.bias[...]) and sep_layer.bias.shape == (96,) and not np.any(sep_layer.bias[...])
    assert norm.norm.momentum == 0.99 and norm.norm.epsilon == 1e-3
    # Rescaled by 1/255: an all-255 image is an all-ones input.
    ones = build_model("flatten", (2, 2, 1))
    ones.head.kernel[...] = jnp.ones((4, 1))
    assert float(ones(jnp.full((1, 2, 2, 1), 255, jnp.uint8))[0]) == pytest.approx(4.0)


# sha256 (first 16 hex digits) of every param and batch-stat array (with its path), recorded from
# flaxray/models.py before num_classes and the registry existed (commit 3893228): the binary models are
# initialised bit for bit as before. Initialisation is integer RNG and exact float steps, the same on any
# CPU (checked under XLA_FLAGS=--xla_cpu_max_isa=AVX2 too); logits are not hashed, since XLA computes them
# with each CPU's own kernels (the forward pass is covered by the byte-identical curves.csv of issue 12).
BEFORE_NUM_CLASSES = {
    ("pyramid_d02", (8, 8, 3), 0): "9ac1d17f55978770",
    ("conv:4,pool,sep:8,bn,gap,dense:6@0.5,3", (9, 9, 2), 5): "fceef786dca3c098",
}


@pytest.mark.parametrize("arch,shape,key", sorted(BEFORE_NUM_CLASSES))
def test_binary_models_are_bit_identical_to_before_num_classes(arch, shape, key):
    import hashlib

    model = build_model(arch, shape, key=key, num_classes=2)
    _, params, stats = nnx.as_pure(nnx.split(model, nnx.Param, nnx.BatchStat))
    digest = hashlib.sha256()
    for path, array in jax.tree.leaves_with_path((params, stats)):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.asarray(array).tobytes())
    assert digest.hexdigest()[:16] == BEFORE_NUM_CLASSES[(arch, shape, key)]
    x = np.random.default_rng(0).integers(0, 256, (2, *shape)).astype(np.uint8)
    assert model(x, train=True, dropout_key=jax.random.key(1)).shape == (2,)  # one logit per image


def test_multi_class_head_is_dense_c_on_the_same_features():
    arch = "conv:4,pool,dense:6@0.5"
    binary, multi = build_model(arch, (6, 6, 1)), build_model(arch, (6, 6, 1), num_classes=4)
    assert count_params(multi)["total"] - count_params(binary)["total"] == 3 * (6 + 1)
    x = np.random.default_rng(0).integers(0, 256, (3, 6, 6, 1)).astype(np.uint8)
    assert binary(x).shape == (3,) and multi(x).shape == (3, 4) and multi(x).dtype == jnp.float32
