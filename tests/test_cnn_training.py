"""CNNs run through the same trainer and study as the dense stacks, unchanged."""

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from flaxray.runtime.runner import train_seeds
from flaxray.core.config import TrainConfig, device_data
from flaxray.core.train import make_train


# Every kind of layer with state or randomness: convolutions, BatchNorm (batch stats), Dropout, both pools.
CNN = "conv:4,bn,pool,sep:8,bn,pool:same,dropout:0.2,gap,dense:8@0.5"
CONFIG = dict(arch=CNN, epochs=2, batch_size=16, eval_batch_size=16)


def spot_images(n, size=8, seed=0):
    """Noise with a bright 2x2 spot, top half for class 1, bottom half for class 0: a local pattern."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 != 0).astype(np.int32)
    x = rng.integers(0, 120, (n, size, size, 1))
    for i, label in enumerate(y):
        row = rng.integers(0, size // 2 - 1) + (0 if label else size // 2)
        col = rng.integers(0, size - 1)
        x[i, row:row + 2, col:col + 2] = 255
    return SimpleNamespace(x=x.astype(np.uint8), y=y)


@pytest.fixture(scope="module")
def data():
    return device_data(SimpleNamespace(train=spot_images(96), val=spot_images(40, seed=1)), eval_batch_size=16)


def test_cnn_batch_statistics_are_per_seed(data):
    """The seed-in-batch = seed-alone property for CNNs is in test_train.py; here the BatchNorm state."""
    states, history = train_seeds(TrainConfig(**CONFIG), data, [0, 1, 2], progress=False)
    moving_mean = np.asarray(states.model_state["blocks"][1]["norm"]["mean"])  # of conv:4's channels
    assert moving_mean.shape == (3, 4) and np.all(moving_mean != 0)  # moved away from its initial zeros
    assert not np.allclose(moving_mean[0], moving_mean[1])
    assert np.isfinite(history["val_loss"]).all() and history["val_loss"].shape == (3, 2)


def test_cnn_learns_a_local_pattern():
    data = device_data(SimpleNamespace(train=spot_images(320), val=spot_images(64, seed=1)), eval_batch_size=16)
    # flatten, not gap: the class is where the spot is, which global average pooling would throw away.
    config = TrainConfig(arch="conv:8,pool,conv:8,pool:same,flatten,dense:8", epochs=4, batch_size=16,
                         eval_batch_size=16)
    _, history = train_seeds(config, data, [0, 1], progress=False)
    assert np.all(history["loss"][:, -1] < 0.85 * history["loss"][:, 0])
    assert np.all(history["val_auc"][:, -1] > 0.95)


def test_cnn_pure_train_runs_vmapped(data):
    config = TrainConfig(**{**CONFIG, "epochs": 1})
    import jax

    states, counts = jax.jit(jax.vmap(make_train(config).train, in_axes=(0, None)))(jnp.arange(2), data)
    assert counts["val"].count.shape == (2, 1) and np.all(np.asarray(counts["val"].count) == 40)
    assert states.params["blocks"][3]["depthwise_kernel"].shape == (2, 3, 3, 4, 1)


def test_cnn_study_on_the_embedded_data_and_too_small_images(tmp_path, capsys):
    """A CNN through `studies.seed_variance` on the embedded 28x28 default, and a stack whose 'valid'
    pools do not fit 28x28 images: one line naming the size it needs (test_study checks in a real
    process that no traceback reaches the terminal)."""
    from studies import seed_variance

    common = ["--seeds", "2", "--epochs", "1", "--channels", "1", "--batch-size", "256", "--no-progress"]
    assert seed_variance.main([*common, "--arch", "conv:4,pool,sep:8,pool,pool,flatten,dense:8@0.5",
                               "--out", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "curves.csv").exists()
    capsys.readouterr()
    assert seed_variance.main([*common, "--arch", "conv:4,pool,pool,pool,pool,pool,flatten",
                               "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "at least 32x32" in errors[0] and "28x28" in errors[0], err
