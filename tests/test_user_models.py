"""A model a user writes, registered by name, in a whole study: docs/python_api.md's example."""

import numpy as np
import pytest
from flax import nnx

from flaxray import models
from flaxray.data import from_arrays
from flaxray.study.study import Study, run
from flaxray.study.trained import load_trained


@pytest.fixture
def tiny():
    @models.register("tiny")
    class Tiny(nnx.Module):
        def __init__(self, input_shape, num_outputs, *, rngs, dtype):
            self.conv = nnx.Conv(input_shape[-1], 8, (3, 3), dtype=dtype, rngs=rngs)
            self.norm = nnx.BatchNorm(8, dtype=dtype, rngs=rngs)
            self.head = nnx.Linear(8, num_outputs, dtype=dtype, rngs=rngs)

        def __call__(self, x, *, train, dropout_key):  # x: the images rescaled to [0, 1]
            x = nnx.relu(self.norm(self.conv(x), use_running_average=not train))
            return self.head(x.mean(axis=(1, 2)))  # logits (N, num_outputs)

    yield "tiny"
    models.unregister("tiny")


def toy(n=240, classes=3, seed=0):
    """Images whose mean brightness says the class: learnable by a conv net in a few steps."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 120, (n, 8, 8, 1)) + 60 * y[:, None, None, None]
    return x.astype(np.uint8), y


@pytest.mark.parametrize("classes", [2, 3])
def test_a_registered_module_trains_in_a_study_beside_a_spec_string(tiny, tmp_path, classes):
    x, y = toy(classes=classes)
    data = from_arrays(x[:180], y[:180], x_test=x[180:], y_test=y[180:])
    spec = Study(archs=(tiny, "dense:8"), data=data, seeds=(0, 1), epochs=2, batch_size=30, settings={"lr": (1e-2,)},
                 test=True)
    result = run(spec, tmp_path / "run", progress=False)
    history = result.groups[tiny].history
    assert history["val_loss"].shape == (2, 2) and np.isfinite(history["val_loss"]).all()
    assert not np.allclose(history["loss"][0], history["loss"][1])  # two seeds, two models
    assert set(result.test["models"]) == {tiny, "dense:8"}
    saved = load_trained(tmp_path / "run")[tiny]
    assert saved.params["net"]["conv"]["kernel"].shape == (2, 3, 3, 1, 8)  # every seed's own kernel


def test_resnet18_is_a_registered_name():
    assert models.check_arch("resnet18") == "resnet18"
    assert "resnet18" in models.registered_names()
