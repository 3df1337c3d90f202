"""A user's Keras 3 model (JAX backend) behind the one model interface, unchanged.

    def pyramid():                      # any function returning a keras.Model, compiled or not
        ...
        return model
    m = keras_kind.model(pyramid, (180, 180, 3))
    variables = m.host_init(init_seed=3, dropout_seed=3)     # what keras.utils.set_random_seed(3) + build give

Seed k's lane is `model.fit` for seed k, in one vmapped program over the seeds:

- its initial weights, and each Dropout's `SeedGenerator` state (a non-trainable `[seed, counter]`
  variable, which is how a Keras model keeps its randomness), are those of `set_random_seed(k)` and a
  build, made on the host (`host_init`); the process's Python and NumPy random states are restored;
- its data order is fit's: NumPy's permutations after `set_random_seed(k)`, the first drawn by fit's
  symbolic build and one per epoch after it, the partial last batch included (`fit_order`);
- a compiled model steps with its compile's loss (regularisers and loss scaling included) and
  optimizer, as `JAXTrainer.train_step` does (`keras_training.Compiled`); an uncompiled one takes flaxray's recipe,
  its weights' regularisers added to the loss as fit adds them (`keras_training`).

The model's layers are called with `stateless_call`, so the variables are plain lists of arrays that
cross jit, vmap and grad. Images reach it as float32 in [0, 1], as flaxray's own models get them,
unless its first layer is a `Rescaling`, which then gets the raw 0-255 values.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flaxray.errors import FlaxrayError
from flaxray.models.keras_training import compiled as compiled_training
from flaxray.models.keras_training import penalty, random_state_kept, seeded, values
from flaxray.models.kind import LOGITS, PROBABILITIES, Model, Pieces, Variables, num_outputs


def prefer_jax() -> None:
    """Where Keras is not loaded yet and no backend is asked for, ask for JAX's: flaxray is a JAX program,
    and a user's file that imports keras then gets the backend flaxray can train."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "jax")


def keras():
    """The keras module on its JAX backend, or a one-line error saying what to install or set."""
    prefer_jax()
    try:
        import keras as module
    except ImportError as e:
        if os.environ.get("KERAS_BACKEND", "jax") != "jax":
            raise FlaxrayError(f"KERAS_BACKEND is {os.environ['KERAS_BACKEND']!r}; flaxray trains Keras models on "
                               "its JAX backend: set KERAS_BACKEND=jax before Python starts") from e
        raise FlaxrayError("a Keras model needs Keras 3: pip install 'flaxray[keras]'") from e
    if module.backend.backend() != "jax":
        raise FlaxrayError(f"Keras runs on its {module.backend.backend()!r} backend (KERAS_BACKEND or ~/.keras/keras.json);"
                           " flaxray trains Keras models on its JAX backend: set KERAS_BACKEND=jax before Python starts")
    if module.config.is_nnx_enabled():
        raise FlaxrayError("Keras's NNX mode is on (KERAS_NNX_ENABLED); flaxray calls Keras models as pure "
                           "functions: unset KERAS_NNX_ENABLED")
    return module


def is_keras(obj) -> bool:
    """Whether `obj` is a keras.Model (without importing keras where it is not loaded)."""
    return "keras" in sys.modules and isinstance(obj, sys.modules["keras"].Model)


def wanted_arguments(builder: Callable, input_shape, num_classes: int) -> dict:
    """What a builder takes of the data: `input_shape` (H, W, C) and `num_classes` where it names them, so
    one builder fits any image size; a builder of no arguments fixes its own."""
    import inspect

    try:
        names = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return {}
    given = {"input_shape": tuple(input_shape), "num_classes": int(num_classes)}
    return {k: v for k, v in given.items() if k in names}


def build(builder: Callable, input_shape: tuple[int, ...], num_classes: int, name: str, seed: int | None = None):
    """`builder()`'s model, built for images of `input_shape` after `set_random_seed(seed)`; one-line errors
    for a builder that returns something else, a model that cannot take these images, or gives another
    number of outputs."""
    k = keras()
    with random_state_kept():
        if seed is not None:
            k.utils.set_random_seed(int(seed))
        model = builder(**wanted_arguments(builder, input_shape, num_classes))
        if not isinstance(model, k.Model):
            raise FlaxrayError(f"{name}: the builder returned a {type(model).__name__}, not a keras.Model")
        try:
            if not model.built:
                model.build((None, *input_shape))
            out = k.ops.shape(model.compute_output_spec(k.KerasTensor((2, *input_shape))))
        except Exception as e:  # Keras's own message says which layer refused the shape
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FlaxrayError(f"{name}: cannot build the model on images of shape {input_shape}: {first}") from None
    want = num_outputs(num_classes)
    if tuple(out[1:]) not in ((want,), () if want == 1 else (want,)):
        raise FlaxrayError(f"{name}: the model gives outputs of shape {tuple(out)}; {num_classes} classes need "
                           f"(batch, {want})")
    return model


def _output(model) -> str:
    """PROBABILITIES when the last layer squashes (sigmoid or softmax), else LOGITS."""
    k = keras()
    last = model.layers[-1]
    squash = {k.activations.sigmoid, k.activations.softmax}
    return PROBABILITIES if getattr(last, "activation", None) in squash or isinstance(last, k.layers.Softmax) else LOGITS


def _layers(model) -> list:
    """The model's layers, its `InputLayer` left out."""
    return [layer for layer in model.layers if not isinstance(layer, keras().layers.InputLayer)]


def rescales(model) -> bool:
    """Whether the model's first layer is a Rescaling (it then takes the raw 0-255 pixels)."""
    layers = _layers(model)
    return bool(layers) and isinstance(layers[0], keras().layers.Rescaling)


def chain(model) -> list | None:
    """The model's layers in order when each takes the previous one's output alone (a Sequential, or a
    functional model without branches, shared layers or several inputs or outputs: each layer's input
    is the one before's output, as the model's graph records it), else None. Only a chain is cut into
    blocks for the inspection (feature maps, Grad-CAM)."""
    layers = _layers(model)
    if isinstance(model, keras().Sequential):
        return layers
    try:
        inputs, outputs = model.inputs, model.outputs
        if len(inputs) != 1 or len(outputs) != 1:
            return None
        x = inputs[0]
        for layer in layers:
            if layer.input is not x:
                return None
            x = layer.output
        return layers if x is outputs[0] else None
    except (AttributeError, ValueError, TypeError):  # a subclassed model has no graph to follow
        return None


def is_conv(layer) -> bool:
    """A 2-D convolution whose output is a feature map (N, h, w, c)."""
    k = keras()
    return (isinstance(layer, (k.layers.Conv2D, k.layers.SeparableConv2D, k.layers.DepthwiseConv2D))
            and getattr(layer, "data_format", "channels_last") == "channels_last")


def _is_seed_state(variable) -> bool:
    return variable.path.endswith("seed_generator_state")


@functools.lru_cache(maxsize=32)
def _template(builder, input_shape, num_classes, name):
    return build(builder, input_shape, num_classes, name, seed=0)


def model(builder: Callable, input_shape: tuple[int, ...], *, name: str, dtype: str = "float32",
          num_classes: int = 2) -> Model:
    """The Keras model `builder()` returns, as the pure functions of `flaxray.models.kind.Model`; made once
    per builder, shape and classes, outside any trace (Keras creates its variables eagerly)."""
    if dtype != "float32":
        raise FlaxrayError(f"{name}: --dtype {dtype} is not for a Keras model, whose dtype is its own "
                           "(keras.mixed_precision); leave --dtype at float32")
    with jax.ensure_compile_time_eval():
        return _model(builder, tuple(int(d) for d in input_shape), name, num_classes)


@functools.lru_cache(maxsize=32)
def _model(builder, input_shape, name, num_classes) -> Model:
    template = _template(builder, input_shape, num_classes, name)
    output, raw = _output(template), rescales(template)
    binary = num_outputs(num_classes) == 1

    def host_init(init_seed: int, dropout_seed: int) -> Variables:
        built = build(builder, input_shape, num_classes, name, seed=init_seed)
        state = values(built.non_trainable_variables)
        if dropout_seed != init_seed:  # the seed generators' states of the dropout seed's build, the weights of init's
            other = build(builder, input_shape, num_classes, name, seed=dropout_seed).non_trainable_variables
            state = [np.array(o.value) if _is_seed_state(o) else s for s, o in zip(state, other)]
        return Variables(values(built.trainable_variables), state)

    def inputs(images):
        x = images.astype(jnp.float32)
        return x if raw else x / 255.0

    def squeeze(outputs):
        outputs = outputs.astype(jnp.float32)
        return outputs.reshape(outputs.shape[0]) if binary else outputs

    def apply(variables, images, *, train: bool, key=None, dropout=None):
        del key, dropout  # the model's randomness is its seed generators' state; its rates are its own
        with seeded(name):
            outputs, state = template.stateless_call(list(variables.params), list(variables.state), inputs(images),
                                                     training=train)
        return squeeze(outputs), state

    def init(key) -> Variables:  # shapes only (load_trained, param counts): a seed's values come from host_init
        del key
        return Variables(values(template.trainable_variables), values(template.non_trainable_variables))

    def call(variables, x):  # x in [0, 1]: what saliency differentiates
        outputs, _ = template.stateless_call(list(variables.params), list(variables.state), x * 255.0 if raw else x,
                                             training=False)
        return squeeze(outputs)

    layers = chain(template)

    def pieces(variables) -> Pieces:  # the chain's layers called with this seed's values, inference mode
        mapping = [*zip(template.trainable_variables, variables.params),
                   *zip(template.non_trainable_variables, variables.state)]

        def blocks(x, start=0, stop=None):
            x = x * 255.0 if raw and start == 0 else x
            with keras().StatelessScope(state_mapping=mapping):
                for layer in layers[start:stop]:
                    x = layer(x, training=False)
            return x

        return Pieces(blocks, squeeze, len(layers), convs=tuple(i for i, layer in enumerate(layers) if is_conv(layer)),
                      labels=tuple(f"{type(layer).__name__} {layer.name}" for layer in layers))

    compiled = compiled_training(template, inputs, squeeze, binary) if template.compiled else None
    return Model(init, apply, output, pieces=None if layers is None else pieces, call=call, host_init=host_init,
                 compiled=compiled, order=fit_order, rescales=raw,
                 penalty=None if compiled else penalty(template, inputs, name))


def describe(builder: Callable, input_shape, num_classes: int, name: str) -> dict:
    """The compile a Keras model trains with (its loss and optimizer), or that it is not compiled."""
    template = _template(builder, tuple(input_shape), num_classes, name)
    if not template.compiled:
        return {"compiled": False}
    loss = template.loss
    return {"compiled": True, "loss": loss if isinstance(loss, str) else type(loss).__name__,
            "optimizer": {k: v for k, v in template.optimizer.get_config().items() if v is not None}}


_ORDERS: dict = {}  # (seed, n) -> (the draw it is at, its generator): a study asks epoch after epoch


def fit_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order `fit` takes seed `seed`'s `n` training images in, in epoch `epoch` (0-based): after
    `set_random_seed(seed)`, NumPy's global generator gives one permutation to fit's symbolic build and
    one to each epoch (a builder that draws from NumPy itself would move these: flaxray assumes it does not).
    Each seed's generator is kept where the last call left it, so a study's epochs cost one draw each."""
    at, rng = _ORDERS.pop((int(seed), int(n)), (None, None))
    if at is None or at > epoch:
        at, rng = -1, np.random.RandomState(int(seed))  # draw -1: the build's
    for _ in range(epoch - at):
        rng.permutation(n)
    order = rng.permutation(n).astype(np.int32)
    _ORDERS[int(seed), int(n)] = (epoch + 1, rng)
    if len(_ORDERS) > 1024:  # the oldest first: a dict keeps insertion order
        _ORDERS.pop(next(iter(_ORDERS)))
    return order


def to_keras(builder: Callable, input_shape, num_classes: int, name: str, variables: Variables):
    """A keras.Model holding one seed's `variables` (predict and `.keras` saving work)."""
    model_ = build(builder, tuple(input_shape), num_classes, name, seed=0)
    for v, value in zip(model_.trainable_variables, variables.params):
        v.assign(np.asarray(value))
    for v, value in zip(model_.non_trainable_variables, variables.state):
        v.assign(np.asarray(value))
    if model_.compiled and not model_.optimizer.built:  # a fresh optimizer, so a saved .keras loads without warnings
        model_.optimizer.build(model_.trainable_variables)
    return model_


__all__ = ["build", "describe", "fit_order", "is_keras", "keras", "model", "rescales", "to_keras"]
