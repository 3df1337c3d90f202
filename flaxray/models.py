"""The notes' dense stacks and the CNNs a student would compare, as Flax NNX modules, by name or spec string.

Every model maps uint8 images (N, H, W, C) to one logit per image: rescale by 1/255, its layers in
order, then Dense(1) (the sigmoid is in the loss). Every default matches Keras, so parameter counts
and early curves compare with the notes: glorot-uniform kernels, zero biases, 3x3 convolutions with
'same' padding and relu, BatchNorm momentum 0.99 and epsilon 1e-3, inverted dropout, NHWC.

Names
    Dense stacks (the notes' phase 2): `pyramid`, `pyramid_d02`, `inverted`, `inverted_d02`,
    `hourglass`, `hourglass_d02`, `mixed`, `final`.
    CNNs (phase 1, `CNN_SPECS`): `cnn_conv` (Conv2D-pool blocks, then a dense head), `cnn_sep` (the
    SeparableConv2D stack of keras.io's "Pneumonia Classification on TPU", widths 16 -> 256) and
    `cnn_sep_wide` (the same with every width doubled, 32 -> 512).
    Each also as `NAME_plain`: the same layers without any BatchNorm or Dropout.

Spec strings: any other model, as comma-separated layers in order, e.g.
`conv:32,pool,sep:64,pool,gap,dense:128@0.5` or `dense:1024@0.5,512@0.2`.

    conv:N       Conv2D(N, 3, padding='same', activation='relu')
    sep:N        SeparableConv2D(N, 3, padding='same', activation='relu')
    pool         MaxPool2D(): 2x2, stride 2, Keras's default padding 'valid' (a side n becomes n // 2)
    pool:same    MaxPool2D(padding='same'): a side n becomes ceil(n / 2), so 1x1 stays 1x1
    bn           BatchNormalization() over the channels (or features)
    dropout:R    Dropout(R), 0 <= R < 1
    gap          GlobalAveragePooling2D()
    flatten      Flatten()
    dense:N      Dense(N, activation='relu'); flattens a feature map first, as the dense stacks do
    dense:N@R    the notes' dense_block: Dense(N, relu) -> BatchNormalization -> Dropout(R)

An item without a kind repeats the previous kind: `conv:16,16` is two Conv2D(16), and
`dense:1024@0.5,512@0.2` two dense blocks. conv, sep, pool, gap and flatten need a feature map,
so they cannot follow gap, flatten or dense. A spec with `pool` needs images of at least 2^k x 2^k
for k such pools (`min_image_size`); smaller images are a one-line error, not a shape crash. The
registry's CNNs pool with 'same' padding so that every one of them runs on the 28x28 default.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxray.errors import FlaxrayError

glorot_uniform = nnx.initializers.glorot_uniform()


@dataclasses.dataclass(frozen=True)
class Layer:
    """One item of a spec string; `str(layer)` writes it back."""

    kind: str  # one of USAGE
    units: int | None = None  # filters of conv and sep, units of dense
    rate: float | None = None  # dropout's rate; dense's block rate (None: a plain Dense(relu))
    padding: str = "valid"  # pool only

    def __str__(self):
        if self.kind in ("conv", "sep"):
            return f"{self.kind}:{self.units}"
        if self.kind == "dense":
            return f"dense:{self.units}" + ("" if self.rate is None else f"@{self.rate:g}")
        if self.kind == "dropout":
            return f"dropout:{self.rate:g}"
        return "pool:same" if self.kind == "pool" and self.padding == "same" else self.kind


USAGE = {
    "conv": "conv:FILTERS",
    "sep": "sep:FILTERS",
    "pool": "pool or pool:same",
    "bn": "bn",
    "dropout": "dropout:RATE (0 <= rate < 1)",
    "gap": "gap",
    "flatten": "flatten",
    "dense": "dense:UNITS or dense:UNITS@RATE (units >= 1, 0 <= rate < 1)",
}
NEEDS_MAP = ("conv", "sep", "pool", "gap", "flatten")  # layers that work on an (H, W, C) feature map
ENDS_MAP = ("gap", "flatten", "dense")  # layers after which there is no feature map any more


def dense(units: int, rate: float | None = None) -> Layer:
    return Layer("dense", units, rate)


def _stack(units, rate):
    return tuple(dense(u, rate) for u in units)


_UP = (32, 64, 128, 256, 512, 1024)
_DOWN = (1024, 512, 256, 128, 64)

# The notes' architectures (phase 2). `mixed` reads literally as "32 … 1024 at 0.2, then 1024 … 64 at 0.5".
NOTES_STACKS: dict[str, tuple[Layer, ...]] = {
    "pyramid": _stack(_DOWN, 0.5),
    "pyramid_d02": _stack(_DOWN, 0.2),
    "inverted": _stack(_UP[:-1], 0.5),
    "inverted_d02": _stack(_UP, 0.2),
    "hourglass": _stack(_UP + _DOWN[1:], 0.5),
    "hourglass_d02": _stack(_UP + _DOWN[1:], 0.2),
    "mixed": _stack(_UP, 0.2) + _stack(_DOWN, 0.5),
    "final": _stack((32, 64, 64, 128, 128, 256, 256, 512, 512, 1024), 0.5),
}


def _keras_io_stack(a, b, c, d, e):
    """keras.io's "Pneumonia Classification on TPU" (Amy Jang, 2020), a 180x180 model whose dense_block is the
    notes' dense_block: two Conv2D(a) and a pool, four blocks SeparableConv2D x2 -> BatchNorm -> MaxPool (Dropout 0.2
    after the last two), Flatten, dense blocks 512@0.7, 128@0.5, 64@0.3. Its pools are 'valid' there; here
    'same', because five 'valid' pools need 32x32 images and the embedded default is 28x28."""
    return (f"conv:{a},{a},pool:same,sep:{b},{b},bn,pool:same,sep:{c},{c},bn,pool:same,"
            f"sep:{d},{d},bn,pool:same,dropout:0.2,sep:{e},{e},bn,pool:same,dropout:0.2,"
            "flatten,dense:512@0.7,128@0.5,64@0.3")


# The CNNs (phase 1), as spec strings.
CNN_SPECS: dict[str, str] = {
    # The classic conv-pool stack (as in Chollet's Deep Learning with Python), BatchNorm after each conv.
    "cnn_conv": "conv:32,bn,pool:same,conv:64,bn,pool:same,conv:128,bn,pool:same,conv:128,bn,pool:same,"
                "flatten,dense:512@0.5",
    "cnn_sep": _keras_io_stack(16, 32, 64, 128, 256),
    "cnn_sep_wide": _keras_io_stack(32, 64, 128, 256, 512),
}


def known_archs() -> list[str]:
    """Every architecture name the registry accepts (spec strings aside)."""
    dense_names, cnn_names = sorted(NOTES_STACKS), sorted(CNN_SPECS)
    return (dense_names + sorted(f"{n}_plain" for n in dense_names)
            + cnn_names + sorted(f"{n}_plain" for n in cnn_names))


def plain(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    """The same layers without BatchNorm and Dropout (dense blocks become plain Dense(relu))."""
    return tuple(dataclasses.replace(l, rate=None) if l.kind == "dense" else l
                 for l in layers if l.kind not in ("bn", "dropout"))


_UNITS = re.compile(r"^[1-9]\d*$")
_RATE = re.compile(r"^[0-9]*\.?[0-9]+$")
_DENSE = re.compile(r"^([1-9]\d*)(?:@([0-9]*\.?[0-9]+))?$")


def _parse_item(kind: str, args: str | None) -> Layer | None:
    """One spec item's kind and arguments -> its Layer, or None when the arguments do not fit the kind."""
    if kind in ("conv", "sep"):
        return Layer(kind, int(args)) if args and _UNITS.match(args) else None
    if kind == "dense":
        m = _DENSE.match(args or "")
        if not m or (m.group(2) and not float(m.group(2)) < 1):
            return None
        return dense(int(m.group(1)), None if m.group(2) is None else float(m.group(2)))
    if kind == "dropout":
        return Layer("dropout", rate=float(args)) if args and _RATE.match(args) and float(args) < 1 else None
    if kind == "pool":
        return Layer("pool", padding=args or "valid") if args in (None, "same") else None
    return Layer(kind) if args is None else None  # bn, gap, flatten take no arguments


def parse_spec(spec: str) -> tuple[Layer, ...]:
    """A spec string (grammar in the module docstring) -> its layers. Raises a one-line FlaxrayError."""

    def bad(item, why):
        return FlaxrayError(f"bad spec string {spec!r}: item {item!r} {why}, "
                            "e.g. 'conv:32,pool,sep:64,pool,gap,dense:128@0.5' or 'dense:1024@0.5,512@0.2'")

    layers, kind, map_ended_by = [], None, None
    for item in (s.strip() for s in spec.split(",")):
        head, _, args = item.partition(":")
        if head in USAGE:
            kind, args = head, (args if ":" in item else None)
        elif kind in ("conv", "sep", "dense", "dropout") and re.match(r"[\d.]", item):
            args = item  # a bare item repeats the previous kind
        else:
            raise bad(item, f"is not a layer ({', '.join(USAGE.values())})")
        layer = _parse_item(kind, args)
        if layer is None:
            raise bad(item, f"is not {USAGE[kind]}")
        if kind in NEEDS_MAP and map_ended_by:
            raise bad(item, f"needs a feature map, but {map_ended_by!r} came before it")
        if kind in ENDS_MAP:
            map_ended_by = map_ended_by or str(layer)
        layers.append(layer)
    return tuple(layers)


def parse_arch(arch: str) -> tuple[Layer, ...]:
    """Architecture name or spec string -> its layers. Raises FlaxrayError on bad input."""
    name = arch.removesuffix("_plain")
    if name in NOTES_STACKS:
        layers = NOTES_STACKS[name]
    elif name in CNN_SPECS:
        layers = parse_spec(CNN_SPECS[name])
    elif re.split("[:,]", arch, maxsplit=1)[0].strip() in USAGE:  # a spec string starts with a layer
        return parse_spec(arch)
    else:
        raise FlaxrayError(
            f"unknown arch {arch!r}; known: {', '.join(known_archs())}, or a spec string like "
            "'conv:32,pool,sep:64,pool,gap,dense:128@0.5' or 'dense:1024@0.5,512@0.2'"
        )
    return plain(layers) if name != arch else layers


def min_image_size(layers: tuple[Layer, ...]) -> int:
    """The smallest image side the layers accept: each 'valid' pool needs a side of at least 2."""
    side = 1
    for layer in reversed(layers):
        if layer.kind == "pool":
            # The smallest n with n // 2 >= side is 2 * side; with ceil(n / 2) >= side, 2 * side - 1.
            side = 2 * side if layer.padding == "valid" else 2 * side - 1
    return side


def keras_batch_norm(features: int, rngs: nnx.Rngs, dtype=None) -> nnx.BatchNorm:
    # Keras defaults, not Flax's (epsilon 1e-5). Normalizes over every axis but the last (channels).
    # `dtype` is the compute dtype; the statistics are reduced and kept in float32 either way.
    return nnx.BatchNorm(features, momentum=0.99, epsilon=1e-3, dtype=dtype, rngs=rngs)


# Every layer below is called as `layer(x, train=..., dropout_key=...)`, whether it uses them or not,
# so `Sequential` runs any list of them.


class DenseBlock(nnx.Module):
    """Dense(relu) -> BatchNorm -> Dropout(rate); Dense(relu) alone when rate is None."""

    def __init__(self, in_features: int, block: Layer, *, rngs: nnx.Rngs, dtype=None):
        self.dense = nnx.Linear(in_features, block.units, kernel_init=glorot_uniform, dtype=dtype, rngs=rngs)
        self.plain = block.rate is None
        if not self.plain:
            self.norm = keras_batch_norm(block.units, rngs, dtype)
            self.dropout = nnx.Dropout(block.rate)

    def __call__(self, x, *, train: bool, dropout_key: jax.Array | None):
        x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
        if self.plain:
            return x
        x = self.norm(x, use_running_average=not train)
        return self.dropout(x, deterministic=not train, rngs=dropout_key)


def neighbourhoods(x):
    """The 3x3 neighbourhood of every pixel of NHWC maps, zero-padded ('same'): 9 shifted copies of x.

    Copy (i, j) holds x[y + i - 1, x + j - 1] at (y, x), in the row-major order of a Keras 3x3 kernel,
    so a 3x3 convolution (a cross-correlation, as in Keras) is the sum over copies of copy @ kernel[i, j].
    We convolve this way rather than with `lax.conv`: XLA:CPU runs convolutions (and max-pool gradients)
    inside a loop, such as the trainer's `lax.scan` over steps, 10-50x slower than outside one
    (jax-ml/jax#12868), and slower still when `vmap` over seeds makes them grouped convolutions.
    """
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]


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


class Dropout(nnx.Module):
    """Keras's Dropout(rate): inverted (kept values scaled by 1/(1-rate) in training), identity at inference."""

    def __init__(self, rate: float):
        self.dropout = nnx.Dropout(rate)

    def __call__(self, x, *, train: bool, dropout_key: jax.Array | None):
        return self.dropout(x, deterministic=not train, rngs=dropout_key)


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


def output_shape(layer: Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape (without batch) `layer` makes of an input of `shape`."""
    match layer.kind:
        case "conv" | "sep":
            return (*shape[:2], layer.units)
        case "pool" if layer.padding == "same":
            return (-(-shape[0] // 2), -(-shape[1] // 2), shape[2])
        case "pool":
            return (shape[0] // 2, shape[1] // 2, shape[2])
        case "gap":
            return shape[-1:]
        case "flatten":
            return (math.prod(shape),)
        case "dense":
            return (layer.units,)
    return shape  # bn, dropout


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
    """uint8 image -> rescale 1/255 -> layers -> flatten -> Dense(1): one logit (sigmoid applied in the loss).

    `dtype` is the compute dtype (e.g. bfloat16: activations and matmuls); parameters, BatchNorm
    statistics and the logit stay float32, so the optimizer and the loss see float32 either way.
    """

    def __init__(self, input_shape: tuple[int, ...], layers: tuple[Layer, ...], *, rngs: nnx.Rngs,
                 dtype=jnp.float32, outputs: int = 1):
        shape, blocks = tuple(input_shape), []
        for layer in layers:
            blocks.append(build_layer(layer, shape, rngs, dtype))
            shape = output_shape(layer, shape)
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(math.prod(shape), outputs, kernel_init=glorot_uniform, dtype=dtype, rngs=rngs)
        self.dtype = jnp.dtype(dtype).name  # a string: a static attribute of the graph

    def __call__(self, images, *, train: bool = False, dropout_key: jax.Array | None = None):
        x = images.astype(self.dtype) / 255.0
        for i, block in enumerate(self.blocks):
            # One independent dropout key per layer, derived so a step's key fixes all masks.
            key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
            x = block(x, train=train, dropout_key=key)
        out = self.head(x.reshape(x.shape[0], -1)).astype(jnp.float32)
        return out[:, 0] if out.shape[1] == 1 else out


def check_arch(arch: str):  # TEMP until the models branch lands
    return parse_arch(arch)


def build_model(arch: str, input_shape: tuple[int, ...], *, key: jax.Array | int = 0,
                dtype: str = "float32", num_classes: int = 2) -> nnx.Module:
    """The model for an architecture name or spec string, on images of `input_shape` (H, W, C),
    computing in `dtype` ("float32" or "bfloat16"; parameters are float32 either way)."""
    layers = parse_arch(arch)
    if any(layer.kind in NEEDS_MAP for layer in layers):
        if len(input_shape) != 3:
            raise FlaxrayError(f"{arch!r} needs images of shape (height, width, channels), got {tuple(input_shape)}")
        need = min_image_size(layers)
        if min(input_shape[:2]) < need:
            raise FlaxrayError(f"{arch!r} needs images of at least {need}x{need} (each 'pool' halves a side, "
                               f"rounding down); got {input_shape[0]}x{input_shape[1]}")
    return Sequential(tuple(input_shape), layers, rngs=nnx.Rngs(params=key), dtype=jnp.dtype(dtype), outputs=1 if num_classes == 2 else num_classes)


@functools.lru_cache(maxsize=64)
def graphdef(arch: str, input_shape: tuple[int, ...], dtype: str = "float32", num_classes: int = 2):
    """The model's structure without its arrays (nothing is initialised), to `nnx.merge` with a seed's
    pure params and batch statistics; one per arch, shape and dtype."""
    return nnx.graphdef(nnx.eval_shape(lambda: build_model(arch, tuple(input_shape), dtype=dtype, num_classes=num_classes)))


def count_params(model: nnx.Module) -> dict[str, int]:
    """Parameter counts as Keras's `model.summary()` reports them (BatchNorm's moving stats are non-trainable)."""

    def size(state):
        return int(sum(np.prod(np.shape(v)) for v in jax.tree.leaves(state)))

    trainable, non_trainable = size(nnx.state(model, nnx.Param)), size(nnx.state(model, nnx.BatchStat))
    return {"trainable": trainable, "non_trainable": non_trainable, "total": trainable + non_trainable}
