"""Every model flaxray trains, by arch: a name, a spec string or a registered module; all Flax NNX.

    model = build_model("cnn_sep", (28, 28, 1), key=0)                  # uint8 (N, 28, 28, 1) -> logits (N,)
    model = build_model("resnet18", (28, 28, 3), num_classes=9)         # -> logits (N, 9)
    register("mine", MyModule)                                          # then arch="mine" anywhere

An arch is one of
    - a sequential name (the notes' dense stacks, the CNNs, each also `NAME_plain`) or a spec string
      such as `conv:32,pool,gap,dense:128@0.5`: `flaxray.models.spec` (the names and the grammar),
      built by `flaxray.models.layers.Sequential` with Keras's defaults;
    - a registered module: `flaxray.models.registry` (the factory contract), among them flaxray's
      own `resnet18` (`flaxray.models.resnet`, MedMNIST v2's ResNet-18, PyTorch's defaults).
Every model maps uint8 images (N, H, W, C) to float32 logits: (N,), one logit, for two classes
(sigmoid cross-entropy, the notes' head), (N, C) for C >= 3 classes (softmax cross-entropy). The
trainer splits a model into `nnx.Param`s and `nnx.BatchStat`s and calls it as
`model(x, train=..., dropout_key=...)`, whatever the arch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxray.errors import FlaxrayError
from flaxray.models import spec
from flaxray.models.conv import neighbourhoods
from flaxray.models.layers import (BatchNorm, Conv2D, DenseBlock, Dropout, Flatten, GlobalAveragePooling2D,
                                   MaxPool2D, SeparableConv2D, Sequential, build_layer, glorot_uniform,
                                   keras_batch_norm)
from flaxray.models.registry import Registered, factory_of, register, registered_names, unregister
from flaxray.models.resnet import ResNet18
from flaxray.models.spec import (CNN_SPECS, ENDS_MAP, NEEDS_MAP, NOTES_STACKS, USAGE, Layer, dense, known_archs,
                                 min_image_size, output_shape, parse_spec, plain)

register("resnet18", ResNet18, _builtin=True)


def parse_arch(arch: str) -> tuple[Layer, ...]:
    """Architecture name or spec string -> its layers; a one-line FlaxrayError for anything else (a
    registered module has no layers: `check_arch` validates any arch)."""
    return spec.parse_arch(arch, registered=registered_names())


def is_registered(arch: str) -> bool:
    """Whether `arch` names a registered module (not a stack of `Layer`s: no `parse_arch`)."""
    return factory_of(arch) is not None


def check_arch(arch: str) -> str:
    """`arch` itself when it is a sequential name, a spec string or a registered name; else a one-line
    FlaxrayError (unknown names list every known one). Nothing is built."""
    if not isinstance(arch, str) or not arch.strip():
        raise FlaxrayError(f"arch must be a model name or a spec string, got {arch!r}")
    if not is_registered(arch):
        parse_arch(arch)
    return arch


def check_dropout(arch: str) -> None:
    """A one-line error unless `arch` has a layer whose dropout rate `--dropout` replaces: a sequential
    arch's Dropout layers and dense:N@R blocks (a registered module's own dropout is its own)."""
    if is_registered(arch):
        raise FlaxrayError(f"--dropout sets the rate of a sequential arch's Dropout layers; {arch!r} is a registered "
                           "module, whose dropout is its own")
    if not any(layer.kind == "dropout" or layer.kind == "dense" and layer.rate is not None for layer in parse_arch(arch)):
        raise FlaxrayError(f"--dropout: {arch!r} has no Dropout layer (nor a dense:N@R block) whose rate it could set")


def num_outputs(num_classes: int) -> int:
    """The head's width for `num_classes` classes: 1 (a sigmoid logit) for two, C for C >= 3."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise FlaxrayError(f"num_classes must be an integer of at least 2, got {num_classes!r}")
    return 1 if num_classes == 2 else int(num_classes)


def build_model(arch: str, input_shape: tuple[int, ...], *, key: jax.Array | int = 0, dtype: str = "float32",
                num_classes: int = 2) -> nnx.Module:
    """The model of `arch` on images of `input_shape` (H, W, C) for `num_classes` classes, its parameters
    drawn from `key`, computing in `dtype` ("float32" or "bfloat16"; parameters are float32 either way).
    Binary models are exactly those of before num_classes existed (same parameters for the same key)."""
    outputs, shape = num_outputs(num_classes), tuple(input_shape)
    rngs = nnx.Rngs(params=key)
    if is_registered(arch):
        if len(shape) != 3:
            raise FlaxrayError(f"{arch!r} needs images of shape (height, width, channels), got {shape}")
        return Registered(arch, shape, outputs, rngs=rngs, dtype=jnp.dtype(dtype))
    layers = parse_arch(arch)
    if any(layer.kind in NEEDS_MAP for layer in layers):
        if len(shape) != 3:
            raise FlaxrayError(f"{arch!r} needs images of shape (height, width, channels), got {shape}")
        need = min_image_size(layers)
        if min(shape[:2]) < need:
            raise FlaxrayError(f"{arch!r} needs images of at least {need}x{need} (each 'pool' halves a side, "
                               f"rounding down); got {shape[0]}x{shape[1]}")
    return Sequential(shape, layers, rngs=rngs, dtype=jnp.dtype(dtype), num_outputs=outputs)


def graphdef(arch: str, input_shape: tuple[int, ...], dtype: str = "float32", num_classes: int = 2):
    """The model's structure without its arrays (nothing is initialised), to `nnx.merge` with a seed's
    pure params and batch statistics; one per arch, shape, dtype, class count (and registered factory)."""
    return _graphdef(arch, tuple(input_shape), dtype, num_classes, factory_of(arch))


@functools.lru_cache(maxsize=64)
def _graphdef(arch, input_shape, dtype, num_classes, factory):
    # `factory` is in the key so that re-registering a name (a notebook cell run again) is not served
    # the old module's structure.
    return nnx.graphdef(nnx.eval_shape(lambda: build_model(arch, input_shape, dtype=dtype, num_classes=num_classes)))


def count_params(model: nnx.Module) -> dict[str, int]:
    """Parameter counts as Keras's `model.summary()` reports them (BatchNorm's moving stats are non-trainable)."""

    def size(state):
        return int(sum(np.prod(np.shape(v)) for v in jax.tree.leaves(state)))

    trainable, non_trainable = size(nnx.state(model, nnx.Param)), size(nnx.state(model, nnx.BatchStat))
    return {"trainable": trainable, "non_trainable": non_trainable, "total": trainable + non_trainable}


__all__ = [
    "CNN_SPECS", "ENDS_MAP", "NEEDS_MAP", "NOTES_STACKS", "USAGE", "BatchNorm", "Conv2D", "DenseBlock", "Dropout",
    "Flatten", "GlobalAveragePooling2D", "Layer", "MaxPool2D", "Registered", "ResNet18", "SeparableConv2D",
    "Sequential", "build_layer", "build_model", "check_arch", "check_dropout", "count_params", "dense", "factory_of", "glorot_uniform",
    "graphdef", "is_registered", "keras_batch_norm", "known_archs", "min_image_size", "neighbourhoods", "num_outputs",
    "output_shape", "parse_arch", "parse_spec", "plain", "register", "registered_names", "unregister",
]
