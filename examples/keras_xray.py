"""The notes' models written in Keras 3, as a user writes them, for `--arch examples/keras_xray.py:NAME`.

flaxray trains each as `model.fit` would for each seed (`flaxray.models.keras_kind`), many seeds in one
jitted program. A builder may name `input_shape` and `num_classes`: flaxray passes the data's, so the
same builder fits the embedded 28x28 images and the 180x180 originals.
"""

import keras
from keras import layers


def dense_block(x, units, rate):
    """The notes' block: Dense(relu) -> BatchNorm -> Dropout(rate)."""
    x = layers.Dense(units, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    return layers.Dropout(rate)(x)


def head(x, num_classes):
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid")(x)
    return layers.Dense(num_classes, activation="softmax")(x)


def compiled(model, num_classes):
    loss = "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    return model


def pyramid(input_shape=(180, 180, 3), num_classes=2):
    """The notes' `pyramid` stack (1024 ... 64 units, dropout 0.5; flaxray's own `pyramid`), compiled as the
    notes compiled it."""
    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Flatten()(x)
    for units in (1024, 512, 256, 128, 64):
        x = dense_block(x, units, 0.5)
    return compiled(keras.Model(inputs, head(x, num_classes), name="pyramid"), num_classes)


def small_cnn(input_shape=(180, 180, 3), num_classes=2):
    """A small CNN: Conv2D, SeparableConv2D, BatchNorm, Dropout, pooling."""
    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D()(x)
    x = layers.SeparableConv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    return compiled(keras.Model(inputs, head(x, num_classes), name="small_cnn"), num_classes)


def tiny(input_shape=(28, 28, 3), num_classes=2):
    """Not compiled: flaxray's recipe trains it (--optimizer, --schedule, ... apply). Logits out."""
    inputs = keras.Input(input_shape)
    x = layers.Flatten()(inputs)
    x = dense_block(x, 32, 0.2)
    return keras.Model(inputs, layers.Dense(1 if num_classes == 2 else num_classes)(x), name="tiny")
