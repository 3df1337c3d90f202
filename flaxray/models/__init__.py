"""Every model flaxray trains, by arch, behind one pure interface (`flaxray.models.kind`).

    m = model("cnn_sep", (28, 28, 1))                  # Model(init, apply, output, pieces, call)
    variables = m.init(jax.random.key(0))              # Variables(params, state)
    logits, state = m.apply(variables, images, train=True, key=dropout_key)
    register("mine", MyModule)                         # then arch="mine" anywhere

An arch is one of
    - a sequential name (the notes' dense stacks, the CNNs, each also `NAME_plain`) or a spec string
      such as `conv:32,pool,gap,dense:128@0.5`: `flaxray.models.spec` (the names and the grammar),
      built by `flaxray.models.layers.Sequential` with Keras's defaults;
    - a registered module: `flaxray.models.registry` (the factory contract), among them flaxray's
      own `resnet18` (`flaxray.models.resnet`, MedMNIST v2's ResNet-18, PyTorch's defaults);
    - a user's model by file, `FILE.py:NAME`, or as a Python object (`flaxray.models.user`): a Flax
      NNX factory, or a Keras 3 model trained as `fit` would (`flaxray.models.keras_kind`).
Every model maps uint8 images (N, H, W, C) to float32 outputs: (N,) for two classes (sigmoid
cross-entropy, the notes' head), (N, C) for C >= 3 classes (softmax cross-entropy); logits, or
probabilities where a Keras model's last layer squashes (`Model.output`). A kind of model is one
module: Flax NNX (`flaxray.models.flax_nnx`, which also builds the modules themselves: `build_model`)
and Keras 3 (`flaxray.models.keras_kind`); nothing outside this package imports `flax.nnx` or keras.
"""

from __future__ import annotations

import jax

from flaxray.errors import FlaxrayError
from flaxray.models import spec
from flaxray.models.conv import neighbourhoods
from flaxray.models.layers import (BatchNorm, Conv2D, DenseBlock, Dropout, Flatten, GlobalAveragePooling2D,
                                   MaxPool2D, SeparableConv2D, Sequential, build_layer, glorot_uniform,
                                   keras_batch_norm)
from flaxray.models import flax_nnx, keras_kind, user
from flaxray.models.flax_nnx import build_model, count_params, graphdef, parse_arch
from flaxray.models.kind import LOGITS, PROBABILITIES, Model, Pieces, Variables, num_outputs
from flaxray.models.registry import Registered, builtin_names, factory_of, register, registered_names, unregister
from flaxray.models.resnet import ResNet18
from flaxray.models.spec import (CNN_SPECS, ENDS_MAP, NEEDS_MAP, NOTES_STACKS, USAGE, Layer, dense, known_archs,
                                 min_image_size, output_shape, parse_spec, plain)

register("resnet18", ResNet18, _builtin=True)


def is_registered(arch: str) -> bool:
    """Whether `arch` names a registered module or a user's model (not a stack of `Layer`s: no `parse_arch`)."""
    return factory_of(arch) is not None


def is_keras(arch: str) -> bool:
    """Whether `arch` is a Keras model (a builder or instance, registered or `FILE.py:NAME`)."""
    factory = factory_of(arch)
    return factory is not None and user.kind(factory) == user.KERAS


def check_arch(arch: str) -> str:
    """`arch` itself when it is a sequential name, a spec string or a registered name; else a one-line
    FlaxrayError (unknown names list every known one). Nothing is built."""
    if not isinstance(arch, str) or not arch.strip():
        raise FlaxrayError(f"arch must be a model name, a spec string or FILE.py:NAME, got {arch!r}")
    if not is_registered(arch):
        parse_arch(arch)
    return arch


def check_dropout(arch: str) -> None:
    """A one-line error unless `arch` has a layer whose dropout rate `--dropout` replaces: a sequential
    arch's Dropout layers and dense:N@R blocks (a registered module's own dropout is its own)."""
    if is_registered(arch):
        raise FlaxrayError(f"--dropout sets the rate of a sequential arch's Dropout layers; {arch!r} is a "
                           f"{'Keras model' if is_keras(arch) else 'registered module'}, whose dropout is its own")
    if not any(layer.kind == "dropout" or layer.kind == "dense" and layer.rate is not None for layer in parse_arch(arch)):
        raise FlaxrayError(f"--dropout: {arch!r} has no Dropout layer (nor a dense:N@R block) whose rate it could set")


def model(arch: str, input_shape: tuple[int, ...], *, dtype: str = "float32", num_classes: int = 2) -> Model:
    """`arch` on images of `input_shape` (H, W, C) for `num_classes` classes, computing in `dtype`, as
    the one model interface (`flaxray.models.kind.Model`). Each kind of model is one module; today every
    arch is a Flax NNX module (`flaxray.models.flax_nnx`) or a Keras model (`flaxray.models.keras_kind`)."""
    if is_keras(check_arch(arch)):
        return keras_kind.model(factory_of(arch), input_shape, name=arch, dtype=dtype, num_classes=num_classes)
    return flax_nnx.model(arch, input_shape, dtype=dtype, num_classes=num_classes)


def name_of(obj) -> str:
    """The arch name a model given as a Python object is registered under: its `__name__` (a keras.Model's
    `.name`), with `_keras` or `_nnx` added where that is one of flaxray's own names."""
    import re

    factory = user.as_factory(obj, getattr(obj, "name", getattr(obj, "__name__", type(obj).__name__)))
    base = obj.name if keras_kind.is_keras(obj) else getattr(obj, "__name__", type(obj).__name__)
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip("_.-") or "model"
    if base in known_archs() or base.removesuffix("_plain") in known_archs() or base in USAGE or \
            base in builtin_names():
        base = f"{base}_{user.kind(factory)}"
    register(base, factory)
    return base


def describe(arch: str, input_shape: tuple[int, ...], num_classes: int = 2) -> dict | None:
    """What a user's model is, for records and fingerprints: its kind, its file's hash (`FILE.py:NAME`;
    a unit trained before the file changed is not reused), and for a Keras model whether it is compiled
    (and with what), whether its first layer rescales the raw pixels and what it outputs; None for
    flaxray's own archs and registered modules (their records are as they were)."""
    factory = factory_of(arch)
    if factory is None or not (user.is_route(arch) or is_keras(arch)):
        return None
    out = {"kind": user.kind(factory), **({"file_sha256": user.file_hash(arch)} if user.is_route(arch) else {})}
    if out["kind"] == user.KERAS:
        m = model(arch, tuple(input_shape), num_classes=num_classes)
        out.update(keras_kind.describe(factory, tuple(input_shape), num_classes, arch), outputs=m.output,
                   rescales=m.rescales)
    return out


def param_counts(arch: str, input_shape: tuple[int, ...], num_classes: int = 2) -> dict[str, int]:
    """{"trainable", "non_trainable", "total"} as Keras's `model.summary()` counts them, from the shapes of
    the initial variables alone (nothing is initialised)."""
    import math

    variables = jax.eval_shape(model(arch, tuple(input_shape), num_classes=num_classes).init, jax.random.key(0))
    trainable, rest = (sum(math.prod(a.shape) for a in jax.tree.leaves(part)) for part in variables)
    return {"trainable": int(trainable), "non_trainable": int(rest), "total": int(trainable + rest)}


__all__ = [
    "CNN_SPECS", "ENDS_MAP", "NEEDS_MAP", "NOTES_STACKS", "USAGE", "BatchNorm", "Conv2D", "DenseBlock", "Dropout",
    "Flatten", "GlobalAveragePooling2D", "Layer", "MaxPool2D", "Registered", "ResNet18", "SeparableConv2D",
    "Sequential", "build_layer", "build_model", "check_arch", "check_dropout", "count_params", "dense", "factory_of", "glorot_uniform",
    "describe", "graphdef", "is_keras", "name_of", "is_registered", "keras_batch_norm", "known_archs", "min_image_size", "model", "neighbourhoods",
    "num_outputs", "param_counts", "LOGITS", "PROBABILITIES", "Model", "Pieces", "Variables",
    "output_shape", "parse_arch", "parse_spec", "plain", "register", "registered_names", "unregister",
]
