"""The sequential models' layers as Flax NNX modules, and `Sequential`, which runs a tuple of them.

Every layer is called as `layer(x, train=..., dropout_key=...)`, whether it uses them or not, so
`Sequential` runs any list of them. Defaults are Keras's (see `flaxray.models.spec`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

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


def neighbourhoods(x, stride: int = 1):
    """The 3x3 neighbourhood of every pixel of NHWC maps, zero-padded ('same'): 9 shifted copies of x.

    Copy (i, j) holds x[y + i - 1, x + j - 1] at (y, x), in the row-major order of a Keras 3x3 kernel,
    so a 3x3 convolution (a cross-correlation, as in Keras) is the sum over copies of copy @ kernel[i, j].
    With `stride` s, copy (i, j) holds x[s*y + i - 1, s*x + j - 1]: PyTorch's Conv2d(3, stride=s, padding=1),
    whose output side is (n - 1) // s + 1.
    We convolve this way rather than with `lax.conv`: XLA:CPU runs convolutions (and max-pool gradients)
    inside a loop, such as the trainer's `lax.scan` over steps, 10-50x slower than outside one
    (jax-ml/jax#12868), and slower still when `vmap` over seeds makes them grouped convolutions.
    """
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [padded[:, i:i + h:stride, j:j + w:stride] for i in range(3) for j in range(3)]


class Conv2D(nnx.Module):
    """Keras's Conv2D(filters, 3, padding='same', activation='relu'), with Keras's weight shapes."""

    def __init__(self, in_channels: int, filters: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(glorot_uniform(rngs.params(), (3, 3, in_channels, filters)))
        self.bias = nnx.Param(jnp.zeros((filters,)))

    def __call__(self, x, *, train: bool, dropout_key: jax.Array | None):
        # All nine neighbours side by side in the channel axis, then one matmul with the kernel read as
        # (9 * in_channels, filters): row (3i + j) * in_channels + c is kernel[i, j, c].
        patches = jnp.concatenate(neighbourhoods(x), axis=-1)
        kernel = self.kernel[...].reshape(-1, self.kernel.shape[-1]).astype(x.dtype)  # compute in x's dtype
        return nnx.relu(patches @ kernel + self.bias[...].astype(x.dtype))


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
        depthwise = self.depthwise_kernel[...].reshape(9, channels).astype(x.dtype)  # compute in x's dtype
        pointwise = self.pointwise_kernel[...].reshape(channels, -1).astype(x.dtype)
        x = sum(shifted * weight for shifted, weight in zip(neighbourhoods(x), depthwise))
        return nnx.relu(x @ pointwise + self.bias[...].astype(x.dtype))


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
    pools them alone. Windows by a reshape rather than `lax.reduce_window`, whose gradient is slow in a
    loop on XLA:CPU (see `neighbourhoods`)."""

    def __init__(self, padding: str):
        self.padding = padding

    def __call__(self, x, *, train: bool, dropout_key: jax.Array | None):
        n, h, w, c = x.shape
        if self.padding == "same":
            x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
        else:
            x = x[:, : h - h % 2, : w - w % 2]
        h, w = x.shape[1] // 2, x.shape[2] // 2  # the output's size
        windows = x.reshape(n, h, 2, w, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h, w, c, 4)
        # The gradient goes to the first maximum of each window, as in Keras. Not `windows.max(-1)`: its
        # gradient compares the input with the maximum again, and when XLA recomputes the two in
        # different fusions, last-bit differences move or drop the gradient, so that a seed's curves
        # depended on how many seeds were trained with it (caught by the seed-in-batch test).
        first_max = jnp.argmax(windows, axis=-1, keepdims=True)
        return jnp.take_along_axis(windows, first_max, axis=-1)[..., 0]


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
