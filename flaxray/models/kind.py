"""The one model interface: an arch on one input shape, dtype and class count, as pure functions.

    model = flaxray.models.model("pyramid", (28, 28, 3))
    variables = model.init(jax.random.key(0))                       # Variables(params, state)
    logits, state = model.apply(variables, images, train=True, key=dropout_key)

Everything outside `flaxray.models` sees a model only through this: the trainer, the memory plan, the
saved parameters and the inspection. A kind of model (Flax NNX today: `flaxray.models.flax_nnx`) is one
module that turns an arch into a `Model`. What a kind supplies:

- `init(key) -> Variables`: the initial variables as a pure function of a key, so `jax.vmap` over the
  seeds' keys initialises every seed in the program. A kind that can only initialise on the host, seed
  by seed (a Keras model is built after `keras.utils.set_random_seed(k)`), hands the trainer its
  variables instead: `Trainer.init(seed, data, settings, variables=...)` takes them as they are.
- `apply(variables, images, *, train, key=None, dropout=None) -> (outputs, new_state)`: uint8 images
  (N, H, W, C) in; `key` draws the training-mode randomness (dropout), `dropout` (a traced rate, or
  None for the model's own rates) replaces every dropout rate where the kind knows its dropout layers.
  A kind that keeps its randomness as state in its variables ignores `key`.
- `output`: what `apply` returns, `LOGITS` ((N,) for two classes, (N, C) for more; the trainer's loss
  applies the sigmoid or softmax) or `PROBABILITIES` (the same shapes, already squashed).
- `penalty(params)`, optional: the model's own regularisation of its weights, added to the training
  loss (a Keras model's kernel and bias regularisers).
- `pieces(variables)`, optional: the layers a kind knows (`Pieces`), for the inspection's feature maps
  and Grad-CAM; None where the model is opaque.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from flaxray.errors import FlaxrayError

LOGITS, PROBABILITIES = "logits", "probabilities"


class Variables(NamedTuple):
    """A model's arrays: what the optimizer updates, and the rest."""

    params: Any  # trainable
    state: Any  # not trainable, updated by a training-mode forward pass (BatchNorm's moving statistics)


class Pieces(NamedTuple):
    """A sequential model cut into its layers, inference mode, on images already rescaled to [0, 1]."""

    blocks: Callable  # (x, start, stop) -> the output of layers [start, stop)
    head: Callable  # features -> outputs
    depth: int  # the number of layers before the head
    # Where flaxray's arch spec does not describe the layers (a Keras model): the blocks that are 2-D
    # convolutions, whose outputs are feature maps (N, h, w, c), and each block in words.
    convs: tuple[int, ...] = ()
    labels: tuple[str, ...] = ()


class Model(NamedTuple):
    """One arch, bound to its input shape, compute dtype and class count."""

    init: Callable[[Any], Variables]  # key -> initial variables
    apply: Callable  # (variables, images, *, train, key=None, dropout=None) -> (outputs, new state)
    output: str = LOGITS  # LOGITS or PROBABILITIES
    pieces: Callable[[Variables], Pieces] | None = None  # the layers, where the kind knows them
    call: Callable | None = None  # (variables, x in [0, 1]) -> outputs, inference mode: what saliency differentiates
    # A kind that can only initialise on the host, seed by seed (a Keras model), gives
    # (init_seed, dropout_seed) -> Variables here; its `init` then gives the shapes alone.
    host_init: Callable | None = None
    compiled: Any = None  # a model that brings its own loss and optimizer (`keras_training.Compiled`), else None
    # A kind whose training takes the images in its own order (a Keras model: fit's) gives
    # (seed, epoch, n) -> that epoch's permutation here (the host writes it into `SeedState.order`); it
    # also trains the partial last batch, as fit does.
    order: Callable | None = None
    rescales: bool = False  # its first layer rescales the raw 0-255 pixels itself (recorded)
    # The model's own regularisation of its weights (a Keras model's kernel and bias regularisers):
    # params -> a scalar the trainer adds to the batch's loss, as Keras's fit would; None where it has none.
    penalty: Callable | None = None


def num_outputs(num_classes: int) -> int:
    """The head's width for `num_classes` classes: 1 (a sigmoid output) for two, C for C >= 3."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise FlaxrayError(f"num_classes must be an integer of at least 2, got {num_classes!r}")
    return 1 if num_classes == 2 else int(num_classes)
