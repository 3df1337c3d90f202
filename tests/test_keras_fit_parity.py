"""The Keras fit parity benchmark runs end to end at its smallest setting (its values are measured, not asserted)."""

import json
import math

import pytest

from benchmarks import keras_fit_parity

BUILDER = '''
import keras
from keras import layers


def small(input_shape=(28, 28, 3), num_classes=2):
    inputs = keras.Input(input_shape)
    x = layers.Flatten()(layers.Rescaling(1 / 255)(inputs))
    x = layers.Dropout(0.5)(layers.BatchNormalization()(layers.Dense(8, activation="relu")(x)))
    model = keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return model


def uncompiled(input_shape=(28, 28, 3)):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, layers.Dense(1)(layers.Flatten()(inputs)))
'''
STATS = ("flaxray_mean", "flaxray_std", "keras_mean", "keras_std", "mannwhitney_p", "ks_p")


def finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def test_smallest_setting_writes_every_field(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    pytest.importorskip("keras", reason="the [keras] extra is not installed")
    (tmp_path / "models.py").write_text(BUILDER)
    path = tmp_path / "parity.json"
    argv = ["--file", str(tmp_path / "models.py"), "--models", "small", "--seeds", "2", "--epochs", "1",
            "--images", "40", "--batch-size", "16", "--json", str(path)]
    assert keras_fit_parity.main(argv) == 0
    report = json.loads(path.read_text())
    assert report["command"] and report["environment"]["versions"]["keras"] and report["environment"]["device"]
    assert report["config"]["seeds"] == 2 and report["data"]["train"] == 40 and report["data"]["steps_per_epoch"] == 3
    (row,) = report["models"].values()
    for tool in ("flaxray", "keras", "map"):
        assert len(row[tool]["loss"]) == 2 and all(len(c) == 1 and finite(c) for c in row[tool]["loss"]), tool
        assert len(row[tool]["val_loss"]) == 2 and row[tool]["seconds"] > 0, tool
    for key in ("epoch1_loss", "epoch1_loss_map"):
        assert len(row[key]["per_seed"]) == 2 and finite([*row[key]["per_seed"], row[key]["median"], row[key]["max"]])
    assert all(key in row["val_loss"] for key in STATS)
    printed = capsys.readouterr().out
    assert "| model | epoch-1 loss Δ vmap" in printed and "| small |" in printed and "seed  1  fit" in printed


def test_an_uncompiled_model_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    pytest.importorskip("keras", reason="the [keras] extra is not installed")
    (tmp_path / "models.py").write_text(BUILDER)
    argv = ["--file", str(tmp_path / "models.py"), "--models", "uncompiled", "--images", "8",
            "--json", str(tmp_path / "p.json")]
    assert keras_fit_parity.main(argv) == 2
    assert "not compiled" in capsys.readouterr().err
