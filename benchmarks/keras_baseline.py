"""The Keras baseline of `benchmarks.throughput`: the same dense stack in Keras 3, `model.fit` seed after seed.

    model = keras_model("pyramid", (28, 28, 3))     # the notes' Sequential, layer for layer
    measure_keras(config, dataset, seeds=4, epochs=1)  # {"seconds", "compile_s"}, as a user re-running a notebook

Keras runs on the backend that KERAS_BACKEND names (jax by default here; tensorflow needs the [baseline-tf]
extra), installed with the [baseline] extra.
"""

from __future__ import annotations

import os
import time

import numpy as np

from flaxray.errors import FlaxrayError

KERAS_VERSION = "3.15.1"  # pinned in pyproject.toml's [baseline] extra


def keras_model(arch: str, input_shape, first=()):
    """The dense stack as the notes build it in Keras: Rescaling, Flatten, Dense(relu) -> BatchNormalization
    -> Dropout blocks, Dense(1, sigmoid). `first`: layers before the Rescaling (augmentation layers, which
    then see the images in [0, 255] as flaxray's `--augment` does)."""
    import keras

    from flaxray.models import parse_arch

    layers = [keras.Input(tuple(input_shape)), *first, keras.layers.Rescaling(1 / 255), keras.layers.Flatten()]
    for layer in parse_arch(arch):
        if layer.kind != "dense":
            raise FlaxrayError(f"--methods keras builds dense stacks only; {arch!r} has a {layer.kind!r} layer")
        layers.append(keras.layers.Dense(layer.units, activation="relu"))
        if layer.rate is not None:
            layers += [keras.layers.BatchNormalization(), keras.layers.Dropout(layer.rate)]
    return keras.Sequential(layers + [keras.layers.Dense(1, activation="sigmoid")])


def measure_keras(config, dataset, seeds: int, epochs: int) -> dict:
    """`model.fit` seed after seed, each seed a new model (as a user re-runs the notebook): the first
    epoch of each compiles, the next `epochs` are timed. Validation and metrics as the notes use them."""
    import keras

    from flaxray.core.settings import Settings

    lr = Settings().lr  # the rate flaxray's methods train at (`train_seeds`' default lanes)
    x, y = dataset.train.x, dataset.train.y.astype(np.float32)
    steps = len(y) // config.batch_size  # the last partial batch dropped, as flaxray does
    x, y = x[: steps * config.batch_size], y[: steps * config.batch_size]
    val = (dataset.val.x, dataset.val.y.astype(np.float32))
    seconds = compile_s = 0.0
    for seed in range(seeds):
        keras.utils.set_random_seed(seed)
        model = keras_model(config.arch, x.shape[1:])
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy",
                      metrics=["accuracy", keras.metrics.Precision(), keras.metrics.Recall(), keras.metrics.AUC()])
        fit = dict(batch_size=config.batch_size, validation_data=val, validation_batch_size=config.eval_batch_size,
                   verbose=0)
        start = time.perf_counter()
        model.fit(x, y, epochs=1, **fit)
        middle = time.perf_counter()
        model.fit(x, y, epochs=epochs, **fit)
        first, run = middle - start, time.perf_counter() - middle
        seconds += run
        compile_s += max(0.0, first - run / epochs)
    return {"seconds": seconds, "compile_s": compile_s}


def keras_status(backend: str) -> str | None:
    """None when Keras can run here, else why not."""
    os.environ.setdefault("KERAS_BACKEND", backend)
    if os.environ["KERAS_BACKEND"] != backend:
        return f"KERAS_BACKEND is {os.environ['KERAS_BACKEND']!r} but --keras-backend {backend!r} was asked"
    try:
        import keras  # noqa: F401
    except Exception as err:  # noqa: BLE001 - not only ImportError: a Keras built for another jax can fail otherwise
        return f"keras is not importable ({err}); pip install -e \".[baseline]\" (keras=={KERAS_VERSION})"
    return None
