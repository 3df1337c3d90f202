"""CNNs run through the same trainer and study as the dense stacks, unchanged."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from flaxray.train import TrainConfig, device_data, make_train, train_seeds

ROOT = Path(__file__).resolve().parents[1]

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


def test_cnn_seed_in_batch_equals_seed_alone(data):
    states, batch = train_seeds(TrainConfig(**CONFIG), data, [3, 4, 5, 6], progress=False)
    _, alone = train_seeds(TrainConfig(**CONFIG), data, [5], progress=False)
    for key in batch:
        np.testing.assert_allclose(batch[key][2], alone[key][0], rtol=1e-4, atol=1e-6, err_msg=key)
    assert not np.allclose(batch["loss"][0], batch["loss"][2])  # and different seeds do differ
    # The BatchNorm moving statistics are per seed and moved away from their initial 0 / 1.
    moving_mean = np.asarray(states.batch_stats["blocks"][1]["norm"]["mean"])
    assert moving_mean.shape == (4, 4) and np.all(moving_mean != 0)
    assert not np.allclose(moving_mean[0], moving_mean[1])


def test_cnn_pure_train_runs_vmapped(data):
    config = TrainConfig(**{**CONFIG, "epochs": 1})
    import jax

    states, counts = jax.jit(jax.vmap(make_train(config).train, in_axes=(0, None)))(jnp.arange(2), data)
    assert counts["val"].count.shape == (2, 1) and np.all(np.asarray(counts["val"].count) == 40)
    assert states.params["blocks"][3]["depthwise_kernel"].shape == (2, 3, 3, 4, 1)


def test_cnn_study_on_the_embedded_data_and_too_small_images(tmp_path):
    """A CNN through `studies.seed_variance` on the embedded 28x28 default, and a stack whose 'valid'
    pools do not fit 28x28 images: one line naming the size it needs, no traceback."""
    common = [sys.executable, "-m", "studies.seed_variance", "--seeds", "2", "--epochs", "1", "--channels", "1",
              "--batch-size", "256", "--no-progress"]
    run = subprocess.run([*common, "--arch", "conv:4,pool,sep:8,pool,pool,flatten,dense:8@0.5",
                          "--out", str(tmp_path / "ok")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "ok" / "curves.csv").exists()
    run = subprocess.run([*common, "--arch", "conv:4,pool,pool,pool,pool,pool,flatten", "--out", str(tmp_path / "no")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "at least 32x32" in errors[0] and "28x28" in errors[0], run.stderr
