"""Flax NNX models behind the one interface (`flaxray.models.kind`): the sequential archs and registered modules.

    model = build_model("cnn_sep", (28, 28, 1), key=0)       # an nnx.Module: uint8 (N, 28, 28, 1) -> logits (N,)
    model = flaxray.models.model("cnn_sep", (28, 28, 1))    # the same as pure functions: init, apply, ...

A module is split into pure arrays, `nnx.Param`s (the params) and `nnx.BatchStat`s (the state), and
merged back with its structure (`graphdef`, built once per arch and shape) for each call, so its
arrays cross jit, vmap and grad as plain pytrees.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxray.errors import FlaxrayError
from flaxray.models import spec
from flaxray.models.kind import Model, Pieces, Variables, num_outputs
from flaxray.models.layers import Sequential
from flaxray.models.registry import Registered, factory_of, registered_names


def parse_arch(arch: str):
    return spec.parse_arch(arch, registered=registered_names())


def build_model(arch: str, input_shape: tuple[int, ...], *, key: jax.Array | int = 0, dtype: str = "float32",
                num_classes: int = 2) -> nnx.Module:
    """The module of `arch` on images of `input_shape` (H, W, C) for `num_classes` classes, its parameters
    drawn from `key`, computing in `dtype` ("float32" or "bfloat16"; parameters are float32 either way)."""
    outputs, shape = num_outputs(num_classes), tuple(input_shape)
    rngs = nnx.Rngs(params=key)
    if factory_of(arch) is not None:
        if len(shape) != 3:
            raise FlaxrayError(f"{arch!r} needs images of shape (height, width, channels), got {shape}")
        return Registered(arch, shape, outputs, rngs=rngs, dtype=jnp.dtype(dtype))
    layers = parse_arch(arch)
    if any(layer.kind in spec.NEEDS_MAP for layer in layers):
        if len(shape) != 3:
            raise FlaxrayError(f"{arch!r} needs images of shape (height, width, channels), got {shape}")
        need = spec.min_image_size(layers)
        if min(shape[:2]) < need:
            raise FlaxrayError(f"{arch!r} needs images of at least {need}x{need} (each 'pool' halves a side, "
                               f"rounding down); got {shape[0]}x{shape[1]}")
    return Sequential(shape, layers, rngs=rngs, dtype=jnp.dtype(dtype), num_outputs=outputs)


def graphdef(arch: str, input_shape: tuple[int, ...], dtype: str = "float32", num_classes: int = 2):
    """The module's structure without its arrays (nothing is initialised), to `nnx.merge` with a seed's
    params and state; one per arch, shape, dtype, class count (and registered factory)."""
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


def model(arch: str, input_shape: tuple[int, ...], *, dtype: str = "float32", num_classes: int = 2) -> Model:
    """`arch` as the pure functions of `flaxray.models.kind.Model`."""
    input_shape = tuple(input_shape)
    structure = graphdef(arch, input_shape, dtype, num_classes)

    def init(key) -> Variables:
        module = build_model(arch, input_shape, key=key, dtype=dtype, num_classes=num_classes)
        # Pure arrays, not Variables: the state crosses jit, vmap and grad as a plain pytree.
        _, params, state = nnx.as_pure(nnx.split(module, nnx.Param, nnx.BatchStat))
        return Variables(params, state)

    def merged(variables):
        return nnx.merge(structure, variables.params, variables.state)

    def apply(variables, images, *, train: bool, key=None, dropout=None):
        module = merged(variables)
        outputs = module(images, train=train, dropout_key=key, **({} if dropout is None else {"dropout_rate": dropout}))
        return outputs, nnx.as_pure(nnx.state(module, nnx.BatchStat))

    def call(variables, x):
        module = merged(variables)
        if isinstance(module, Registered):
            return module.net(x, train=False, dropout_key=None)
        cut = pieces(variables)
        return cut.head(cut.blocks(x))

    def pieces(variables) -> Pieces:
        module = merged(variables)

        def blocks(x, start=0, stop=None):
            for block in list(module.blocks)[start:stop]:
                x = block(x, train=False, dropout_key=None)
            return x

        return Pieces(blocks, lambda x: module.head(x.reshape(x.shape[0], -1)), len(module.blocks))

    registered = factory_of(arch) is not None
    return Model(init, apply, pieces=None if registered else pieces, call=call)
