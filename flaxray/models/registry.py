"""Models a user writes: any Flax NNX module, registered by name, usable wherever an arch name is.

    from flax import nnx
    from flaxray import models

    class Tiny(nnx.Module):
        def __init__(self, input_shape, num_outputs, *, rngs, dtype):
            h, w, c = input_shape
            self.conv = nnx.Conv(c, 8, (3, 3), dtype=dtype, rngs=rngs)
            self.norm = nnx.BatchNorm(8, dtype=dtype, rngs=rngs)
            self.drop = nnx.Dropout(0.3)  # no rngs here: the key comes with each call
            self.head = nnx.Linear(8, num_outputs, dtype=dtype, rngs=rngs)

        def __call__(self, x, *, train, dropout_key):
            x = nnx.relu(self.norm(self.conv(x), use_running_average=not train))
            x = self.drop(x.mean(axis=(1, 2)), deterministic=not train, rngs=dropout_key)
            return self.head(x)

    models.register("tiny", Tiny)      # then TrainConfig(arch="tiny"), --arch tiny, build_model("tiny", ...)

The contract
    `factory(input_shape, num_outputs, *, rngs, dtype) -> nnx.Module` (a class is a factory).
    `input_shape` is (H, W, C); `num_outputs` is 1 for two classes and C for C >= 3 classes;
    `rngs` is `nnx.Rngs(params=init_key)` (draw initial values from `rngs.params()`, as nnx's
    layers do); `dtype` is the compute dtype (float32 or bfloat16): keep the parameters float32
    (nnx layers do, given `dtype=` only) and compute in `dtype`.
    The module is called as `module(x, *, train: bool, dropout_key)`: `x` is the batch (N, H, W, C)
    already rescaled to [0, 1] (the uint8 pixels times 1/255, as the sequential models and Keras's
    Rescaling(1/255) do) in the compute dtype; it returns logits (N, num_outputs), no sigmoid or
    softmax (flaxray's loss applies it, and squeezes the binary (N, 1) to (N,)). `train` selects
    batch statistics and dropout; `dropout_key` is a jax key in training (None at inference).
    State: trainable arrays must be `nnx.Param`, BatchNorm statistics `nnx.BatchStat` (nnx's layers
    make exactly these), and nothing else: the trainer splits a model into (params, batch_stats),
    vmaps them over seeds and merges them back. In particular the module must not keep an
    `nnx.Rngs` (e.g. `nnx.Dropout(rate, rngs=rngs)`): stateful keys would not be pure per seed.
    Pass `dropout_key` to dropout instead (`rngs=dropout_key`); use `jax.random.fold_in(dropout_key, i)`
    for independent masks in several layers. A module breaking this is refused with a one-line error
    when it is built.

The wrapper `Registered` does the rescaling, checks the logits' shape and casts them to float32; its
params are the module's under `net`.
"""

from __future__ import annotations

import inspect
import re
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from flaxray.errors import FlaxrayError
from flaxray.models.spec import USAGE, known_archs

_FACTORIES: dict[str, Callable] = {}
_BUILTIN: set[str] = set()  # registered by flaxray itself (resnet18): not replaceable
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")  # also a safe folder name


def register(name: str, factory: Callable | None = None, *, _builtin: bool = False):
    """Register `factory` (contract in the module docstring) as arch `name`; re-registering a user's
    name replaces it (a notebook cell run twice). Also a decorator: `@register("tiny")`. Returns the factory."""
    if factory is None:
        return lambda f: register(name, f, _builtin=_builtin)
    if not isinstance(name, str) or not _NAME.match(name):
        raise FlaxrayError(f"cannot register {name!r}: a model name is a letter, then letters, digits, '_', '.' "
                           "or '-'")
    if name in known_archs() or name.removesuffix("_plain") in known_archs() or name in USAGE:
        raise FlaxrayError(f"cannot register {name!r}: it is a built-in sequential arch or layer name")
    if name in _BUILTIN and not _builtin:
        raise FlaxrayError(f"cannot register {name!r}: flaxray's own {name!r} has that name; pick another")
    if not callable(factory):
        raise FlaxrayError(f"cannot register {name!r}: the factory must be callable "
                           f"(input_shape, num_outputs, *, rngs, dtype) -> nnx.Module, got {type(factory).__name__}")
    _FACTORIES[name] = factory
    if _builtin:
        _BUILTIN.add(name)
    return factory


def unregister(name: str) -> None:
    """Forget a user's registered name (flaxray's own stay)."""
    if name in _BUILTIN:
        raise FlaxrayError(f"cannot unregister flaxray's own {name!r}")
    _FACTORIES.pop(name, None)


def registered_names() -> list[str]:
    return sorted(_FACTORIES)


def builtin_names() -> list[str]:
    return sorted(_BUILTIN)


def factory_of(arch: str) -> Callable | None:
    """The factory registered as `arch` or named by it (`FILE.py:NAME`: `flaxray.models.user`; an NNX factory
    or a Keras builder), or None (a sequential name or spec string)."""
    from flaxray.models import user

    if user.is_route(arch):
        return user.load(arch)
    return _FACTORIES.get(arch)


def _check_state(name: str, net) -> None:
    """Refuse state the trainer cannot split into (params, batch_stats), naming where it is."""
    if not isinstance(net, nnx.Module):
        raise FlaxrayError(f"registered model {name!r}: its factory returned a {type(net).__name__}, "
                           "not a flax.nnx.Module")
    try:
        params = inspect.signature(net.__call__).parameters
    except (TypeError, ValueError):  # no signature to read (a C callable): left to the call
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()) and not (
            {"train", "dropout_key"} <= set(params)):
        raise FlaxrayError(f"registered model {name!r}: its module must be called as module(x, *, train, dropout_key); "
                           f"{type(net).__name__}.__call__ takes ({', '.join(params)})")
    *_, rest = nnx.split(net, nnx.Param, nnx.BatchStat, ...)
    leaves = jax.tree.leaves_with_path(rest)
    if leaves:
        where = ", ".join(".".join(str(getattr(k, "key", k)) for k in path) for path, _ in leaves[:3])
        raise FlaxrayError(
            f"registered model {name!r} holds state that is neither nnx.Param nor nnx.BatchStat (at {where}); "
            "keep no nnx.Rngs in the module (e.g. nnx.Dropout(rate) without rngs) and pass the dropout_key "
            "it is called with")


class Registered(nnx.Module):
    """A registered module behind flaxray's model interface: uint8 images in, float32 logits out
    ((N,) for one output, (N, C) otherwise), the module's arrays under `net`."""

    def __init__(self, name: str, input_shape: tuple[int, ...], num_outputs: int, *, rngs: nnx.Rngs,
                 dtype=jnp.float32):
        self.name, self.num_outputs = name, num_outputs  # static attributes of the graph
        self.dtype = jnp.dtype(dtype).name
        self.net = factory_of(name)(tuple(input_shape), num_outputs, rngs=rngs, dtype=jnp.dtype(dtype))
        _check_state(name, self.net)

    def __call__(self, images, *, train: bool = False, dropout_key: jax.Array | None = None):
        x = images.astype(self.dtype) / 255.0
        logits = self.net(x, train=train, dropout_key=dropout_key)
        expected = (images.shape[0], self.num_outputs)
        if tuple(getattr(logits, "shape", ())) != expected:  # shapes are static: checked once, at tracing
            raise FlaxrayError(f"registered model {self.name!r} returned logits of shape "
                               f"{tuple(getattr(logits, 'shape', ()))}, expected (batch, num_outputs) = {expected}")
        logits = logits.astype(jnp.float32)
        return logits[:, 0] if self.num_outputs == 1 else logits
