"""The sequential models' layers as Flax NNX modules, and `Sequential`, which runs a tuple of them.

Every layer is called as `layer(x, train=..., dropout_key=...)`, whether it uses them or not, so
`Sequential` runs any list of them. Defaults are Keras's (see `flaxray.models.spec`). Convolutions and
pools run in the form `conv.form()` chooses for the backend (FLAXRAY_LAYERS overrides it): native
`lax` convolutions on GPU and TPU, shifted copies and a matmul on CPU, with the same parameters.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from flaxray.models.conv import conv3x3, depthwise3x3, form, max_pool  # noqa: F401 (form: `layers.form()` too)
from flaxray.models.spec import Layer, output_shape

glorot_uniform = nnx.initializers.glorot_uniform()


def keras_batch_norm(features: int, rngs: nnx.Rngs, dtype=None) -> nnx.BatchNorm:
    # Keras defaults, not Flax's (epsilon 1e-5). Normalizes over every axis but the last (channels).
    # `dtype` is the compute dtype; the statistics are reduced and kept in float32 either way.
    return nnx.BatchNorm(features, momentum=0.99, epsilon=1e-3, dtype=dtype, rngs=rngs)


class DenseBlock(nnx.Module):
    """Dense(relu) -> BatchNorm -> Dropout(rate); Dense(relu) alone when rate is None."""

    def __init__(self, in_features: int, block: Layer, *, rngs: nnx.Rngs, dtype=None):
        self.dense = nnx.Linear(in_features, block.units, kernel_init=glorot_uniform, dtype=dtype, rngs=rngs)
        self.plain = block.rate is None
        if not self.plain:
            self.norm = keras_batch_norm(block.units, rngs, dtype)
            self.dropout = nnx.Dropout(block.rate)

    def __call__(self, x, *, train: bool, dropout_key: jax.Array | None, dropout_rate=None):
        x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
        if self.plain:
            return x
        x = self.norm(x, use_running_average=not train)
        return dropout(self.dropout, x, train=train, dropout_key=dropout_key, dropout_rate=dropout_rate)


class Conv2D(nnx.Module):
    """Keras's Conv2D(filters, 3, padding='same', activation='relu'), with Keras's weight shapes."""

    def __init__(self, in_channels: int, filters: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(glorot_uniform(rngs.params(), (3, 3, in_channels, filters)))
        self.bias = nnx.Param(jnp.zeros((filters,)))

    def __call__(self, x, *, train: bool, dropout_key: jax.Array | None):
        kernel = self.kernel[...].astype(x.dtype)  # compute in x's dtype
        return nnx.relu(conv3x3(x, kernel) + self.bias[...].astype(x.dtype))


class SeparableConv2D(nnx.Module):
    """Keras's SeparableConv2D(filters, 3, padding='same', activation='relu'), with Keras's weight shapes.

    A 3x3 depthwise convolution (one 3x3 filter per input channel, no bias), then a 1x1 pointwise
    convolution mixing the channels, then the layer's one bias. Keras initializes both kernels
    glorot-uniform from their shapes: the depthwise kernel (3, 3, C, 1) has fan_in 9C and fan_out 9.
    """

    def __init__(self, in_channels: int, filters: int, *, rngs: nnx.Rngs):
        self.depthwise_kernel = nnx.Param(glorot_uniform(rngs.params(), (3, 3, in_channels, 1)))
        self.pointwise_kernel = nnx.Param(glorot_uniform(rngs.params(), (1, 1, in_channels, filters)))
        self.bias = nnx.Param(jnp.zeros((filters,)))

    def __call__(self, x, *, train: bool, dropout_key: jax.Array | None):
        channels = x.shape[-1]
        depthwise = self.depthwise_kernel[...].astype(x.dtype)  # compute in x's dtype
        pointwise = self.pointwise_kernel[...].reshape(channels, -1).astype(x.dtype)  # 1x1: a matmul in either form
        return nnx.relu(depthwise3x3(x, depthwise) @ pointwise + self.bias[...].astype(x.dtype))


class BatchNorm(nnx.Module):
    """Keras's BatchNormalization(): batch statistics in training, moving averages at inference."""

    def __init__(self, features: int, *, rngs: nnx.Rngs, dtype=None):
        self.norm = keras_batch_norm(features, rngs, dtype)

    def __call__(self, x, *, train: bool, dropout_key: jax.Array | None):
        return self.norm(x, use_running_average=not train)


def dropout(layer: nnx.Dropout, x, *, train: bool, dropout_key, dropout_rate=None):
    """`layer` on `x`, or, with `dropout_rate`, the same inverted dropout at that rate instead: a traced
    value (one per vmapped seed, `TrainConfig.dropout`), which `nnx.Dropout` cannot take (it branches
    on its rate in Python). The same arithmetic: keep with probability 1 - rate, scale by 1 / (1 - rate)."""
    if dropout_rate is None or not train:
        return layer(x, deterministic=not train, rngs=dropout_key)
    keep = 1.0 - jnp.asarray(dropout_rate, jnp.float32)
    mask = jax.random.bernoulli(dropout_key, keep, x.shape)
    return jax.lax.select(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


class Dropout(nnx.Module):
    """Keras's Dropout(rate): inverted (kept values scaled by 1/(1-rate) in training), identity at inference."""

    def __init__(self, rate: float):
        self.dropout = nnx.Dropout(rate)

    def __call__(self, x, *, train: bool, dropout_key: jax.Array | None, dropout_rate=None):
        return dropout(self.dropout, x, train=train, dropout_key=dropout_key, dropout_rate=dropout_rate)


class MaxPool2D(nnx.Module):
    """Keras's MaxPool2D(): 2x2 windows, stride 2; padding 'valid' drops an odd last row and column, 'same'
    pools them alone (`conv.max_pool`)."""

    def __init__(self, padding: str):
        self.padding = padding

    def __call__(self, x, *, train: bool, dropout_key: jax.Array | None):
        return max_pool(x, self.padding)


class GlobalAveragePooling2D(nnx.Module):
    def __call__(self, x, *, train: bool, dropout_key: jax.Array | None):
        return jnp.mean(x, axis=(1, 2))


class Flatten(nnx.Module):
    def __call__(self, x, *, train: bool, dropout_key: jax.Array | None):
        return x.reshape(x.shape[0], -1)



def build_layer(layer: Layer, shape: tuple[int, ...], rngs: nnx.Rngs, dtype=None) -> nnx.Module:
    """The module of `layer` for an input of `shape` (without batch), computing in `dtype` (None: float32)."""
    match layer.kind:
        case "conv":
            return Conv2D(shape[-1], layer.units, rngs=rngs)
        case "sep":
            return SeparableConv2D(shape[-1], layer.units, rngs=rngs)
        case "pool":
            return MaxPool2D(layer.padding)
        case "bn":
            return BatchNorm(shape[-1], rngs=rngs, dtype=dtype)
        case "dropout":
            return Dropout(layer.rate)
        case "gap":
            return GlobalAveragePooling2D()
        case "flatten":
            return Flatten()
        case "dense":
            return DenseBlock(math.prod(shape), layer, rngs=rngs, dtype=dtype)
    raise ValueError(f"unknown layer kind {layer.kind!r}")


class Sequential(nnx.Module):
    """uint8 image -> rescale 1/255 -> layers -> flatten -> the head (the sigmoid or softmax is in the loss).

    The head is Dense(num_outputs): one logit per image, shape (N,), for two classes (num_outputs 1, the
    notes' sigmoid unit), or (N, C) logits for C >= 3 classes. `dtype` is the compute dtype (e.g.
    bfloat16: activations and matmuls); parameters, BatchNorm statistics and the logits stay float32,
    so the optimizer and the loss see float32 either way.
    """

    def __init__(self, input_shape: tuple[int, ...], layers: tuple[Layer, ...], *, rngs: nnx.Rngs,
                 dtype=jnp.float32, num_outputs: int = 1):
        shape, blocks = tuple(input_shape), []
        for layer in layers:
            blocks.append(build_layer(layer, shape, rngs, dtype))
            shape = output_shape(layer, shape)
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(math.prod(shape), num_outputs, kernel_init=glorot_uniform, dtype=dtype, rngs=rngs)
        self.dtype = jnp.dtype(dtype).name  # a string: a static attribute of the graph
        self.num_outputs = num_outputs

    def __call__(self, images, *, train: bool = False, dropout_key: jax.Array | None = None, dropout_rate=None):
        """`dropout_rate` (None: each layer's own) replaces the rate of every Dropout layer and dense block."""
        x = images.astype(self.dtype) / 255.0
        for i, block in enumerate(self.blocks):
            # One independent dropout key per layer, derived so a step's key fixes all masks.
            key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
            drops = dropout_rate is not None and isinstance(block, (Dropout, DenseBlock))
            x = block(x, train=train, dropout_key=key, **({"dropout_rate": dropout_rate} if drops else {}))
        logits = self.head(x.reshape(x.shape[0], -1)).astype(jnp.float32)
        return logits[:, 0] if self.num_outputs == 1 else logits
