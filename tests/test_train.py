"""The trainer: reproducible, seed-in-batch equals seed-alone, `vary` does what it says, it learns."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxray.errors import FlaxrayError
from flaxray.analysis.metrics import binary_metrics, NUM_BINS
from flaxray.runtime.runner import counts_to_numpy, train_seeds
from flaxray.core import settings
from flaxray.core.config import TrainConfig, device_data
from flaxray.core.settings import Settings
from flaxray.core.train import make_train
from tests.samples import assert_one_distribution


def tiny_dataset(n_train=96, n_val=40, size=6, seed=0):
    """Two classes whose mean brightness differs: learnable in a few steps, not trivially."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = (np.arange(n) % 3 != 0).astype(np.int32)  # ~2/3 positive, like the real imbalance
        x = rng.integers(0, 160, (n, size, size, 1)) + 60 * y[:, None, None, None]
        return SimpleNamespace(x=x.astype(np.uint8), y=y)

    return SimpleNamespace(train=split(n_train), val=split(n_val))


CONFIG = dict(arch="dense:16@0.5,8@0.2", epochs=2, batch_size=16, eval_batch_size=16)


@pytest.fixture(scope="module")
def data():
    return device_data(tiny_dataset(), eval_batch_size=16)


def test_same_seed_same_curves(data):
    _, first = train_seeds(TrainConfig(**CONFIG), data, [7], progress=False)
    _, again = train_seeds(TrainConfig(**CONFIG), data, [7], progress=False)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])


# A CNN with every kind of layer that has state or randomness: BatchNorm, Dropout, both pools.
@pytest.mark.numeric
@pytest.mark.parametrize("arch", [CONFIG["arch"], "conv:4,bn,pool,sep:8,bn,pool:same,dropout:0.2,gap,dense:8@0.5"])
def test_a_seeds_lane_depends_on_its_own_inputs_only(data, arch):
    """Seed 5 in lane 2 of a 4-lane program: the same bits whatever seeds the other lanes hold. An
    identity (a lane's arithmetic is a function of its inputs and of the program's shape), so any seed
    of a study can be trained again exactly in its recorded program shape (`flaxray.study.replay`)."""
    config = TrainConfig(**{**CONFIG, "arch": arch})
    states, batch = train_seeds(config, data, [3, 4, 5, 6], progress=False)
    others, again = train_seeds(config, data, [9, 9, 5, 9], progress=False)
    for key in batch:
        np.testing.assert_array_equal(batch[key][2], again[key][2], err_msg=key)
    for a, b in zip(jax.tree.leaves(states.params), jax.tree.leaves(others.params)):
        np.testing.assert_array_equal(np.asarray(a)[2], np.asarray(b)[2])
    assert not np.allclose(batch["loss"][0], batch["loss"][2])  # and different seeds do differ


SEEDS = range(8)  # enough for a rank test at ALPHA to be able to fail (tests/samples.py)


@pytest.mark.numeric
def test_seeds_alone_and_in_a_batch_are_one_distribution(data):
    """Seed k alone (the one-seed program, no vmap) and in a batch of 8 are different programs, so
    different numbers after a few steps; they must be samples of one distribution."""
    config = TrainConfig(**CONFIG)
    _, batch = train_seeds(config, data, SEEDS, progress=False)
    alone = [train_seeds(config, data, [k], progress=False)[1]["val_loss"][0, -1] for k in SEEDS]
    assert_one_distribution(batch["val_loss"][:, -1], alone, "final val loss, batched vs alone")


@pytest.mark.numeric
def test_pure_train_and_epoch_loop_are_one_distribution(data):
    """`jax.jit(jax.vmap(train))` in one call (a scan over epochs) and `train_seeds`, one call per
    epoch, are two programs of the same functions: the same History keys, one distribution."""
    config = TrainConfig(**CONFIG)
    _, loop = train_seeds(config, data, SEEDS, progress=False)
    _, counts = jax.jit(jax.vmap(make_train(config).train, in_axes=(0, None)))(jnp.arange(len(SEEDS)), data)
    from flaxray.analysis.metrics import history_from_counts

    pure = history_from_counts(counts_to_numpy(counts), ("0", "1"))  # train_seeds' class names by default
    assert set(pure) == set(loop) and pure["val_loss"].shape == loop["val_loss"].shape
    assert_one_distribution(pure["val_loss"][:, -1], loop["val_loss"][:, -1], "final val loss, pure vs loop")


def initial_kernels(config, seeds, data):
    states = jax.vmap(make_train(config).init, in_axes=(0, None))(jnp.asarray(seeds), data)
    return np.asarray(states.params["blocks"][0]["dense"]["kernel"])


@pytest.mark.numeric
def test_vary_chooses_the_sources_of_randomness(data):
    kernels = initial_kernels(TrainConfig(**CONFIG, vary=("dropout", "order")), [0, 1], data)
    np.testing.assert_array_equal(kernels[0], kernels[1])
    kernels = initial_kernels(TrainConfig(**CONFIG, vary=("init",)), [0, 1], data)
    assert not np.array_equal(kernels[0], kernels[1])
    # Nothing varies: every seed is the same run.
    _, history = train_seeds(TrainConfig(**CONFIG, vary=()), data, [0, 1, 2], progress=False)
    np.testing.assert_array_equal(history["val_loss"][0], history["val_loss"][2])
    # Only the data order varies: same init, different curves.
    _, history = train_seeds(TrainConfig(**CONFIG, vary=("order",)), data, [0, 1], progress=False)
    assert not np.allclose(history["loss"][0], history["loss"][1])


def test_it_learns():
    data = device_data(tiny_dataset(n_train=320, n_val=64), eval_batch_size=16)
    config = TrainConfig(arch="dense:32@0.2", epochs=4, batch_size=16, eval_batch_size=16)
    _, history = train_seeds(config, data, [0, 1], progress=False)
    assert history["val_loss"].shape == (2, 4)
    assert np.all(history["loss"][:, -1] < 0.7 * history["loss"][:, 0])
    # Val *loss* lags: Keras's BatchNorm momentum 0.99 needs a few hundred steps before its moving
    # statistics fit the data, so with 80 steps the ranking (AUC) is right before the loss is.
    assert np.all(history["val_auc"][:, -1] > 0.9)


def test_class_weight_scales_the_train_loss(data):
    plain = TrainConfig(**CONFIG)
    weighted = TrainConfig(**CONFIG, class_weight=(3.0, 3.0))
    _, a = train_seeds(plain, data, [0], progress=False)
    _, b = train_seeds(weighted, data, [0], progress=False)
    assert not np.allclose(a["loss"], b["loss"])
    assert np.isfinite(b["loss"]).all()


def test_val_padding_does_not_count(data):
    """40 val images in eval batches of 16: 8 padded rows must not enter the metrics."""
    _, history = train_seeds(TrainConfig(**CONFIG), data, [0], progress=False)
    assert data.x_val.shape[0] == 48 and float(data.val_mask.sum()) == 40
    # Accuracy is a multiple of 1/40.
    acc = history["val_accuracy"][0] * 40
    np.testing.assert_allclose(acc, np.round(acc), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs", [dict(arch="nope"), dict(vary=("init", "colour")), dict(epochs=0), dict(batch_size=0)]
)
def test_bad_config_is_a_flaxray_error(kwargs):
    with pytest.raises(FlaxrayError):
        TrainConfig(**{**CONFIG, **kwargs})


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), float("inf")])
def test_a_bad_learning_rate_is_a_flaxray_error(data, lr):
    """The learning rate is a lane's setting now (not the config's): refused wherever a lane is given."""
    with pytest.raises(FlaxrayError, match="--lr"):
        settings.normalize({"lr": (lr,)})
    with pytest.raises(FlaxrayError, match="--lr"):
        settings.check_lanes([Settings(lr=lr)])
    with pytest.raises(FlaxrayError, match="--lr"):
        train_seeds(TrainConfig(**CONFIG), data, [0, 1], [Settings(), Settings(lr=lr)], progress=False)


def test_binary_metrics_against_direct_computation():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 0.9999)
    bins = (p * NUM_BINS).astype(int)
    pos, neg = np.bincount(bins[y == 1], minlength=NUM_BINS), np.bincount(bins[y == 0], minlength=NUM_BINS)
    m = binary_metrics(12.5, 500, pos, neg)
    pred = bins >= NUM_BINS // 2
    tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
    assert np.isclose(m["loss"], 12.5 / 500)
    assert np.isclose(m["accuracy"], np.mean(pred == y))
    assert np.isclose(m["precision"], tp / (tp + fp)) and np.isclose(m["recall"], tp / np.sum(y == 1))
    # AUC: probability a positive outranks a negative, ties (same bin) counted half.
    bp, bn = bins[y == 1][:, None], bins[y == 0][None, :]
    assert np.isclose(m["auc"], np.mean((bp > bn) + 0.5 * (bp == bn)))
    assert np.isnan(binary_metrics(1.0, 3, [0] * NUM_BINS, [3] + [0] * (NUM_BINS - 1))["auc"])


@pytest.mark.numeric
def test_a_diverging_seed_stops_alone_and_per_seed_lr_is_its_own_run(data):
    """lr=1e30 blows seeds 1 and 3 up; seeds 0 and 2 must train exactly as in the same program whose
    lanes 1 and 3 are healthy, and a seed's own learning rate must give exactly what a config with
    that rate gives."""
    config, seeds = TrainConfig(**CONFIG), [0, 1, 2, 3, 2]
    lanes = lambda lrs: [Settings(lr=lr) for lr in lrs]  # noqa: E731
    states, mixed = train_seeds(config, data, seeds, lanes([1e-3, 1e30, 1e-3, 1e30, 3e-3]), progress=False)
    _, healthy = train_seeds(config, data, seeds, lanes([1e-3, 1e-3, 1e-3, 1e-3, 3e-3]), progress=False)
    _, other_lr = train_seeds(config, data, seeds, lanes([3e-3] * 5), progress=False)  # every lane at that rate
    diverged = np.asarray(states.diverged)
    assert diverged[0] == diverged[2] == diverged[4] == 0 and diverged[1] >= 1 and diverged[3] >= 1
    for key in mixed:
        np.testing.assert_array_equal(mixed[key][[0, 2]], healthy[key][[0, 2]], err_msg=key)
        np.testing.assert_array_equal(mixed[key][4], other_lr[key][4], err_msg=key)  # same batch: same bits
        for s in (1, 3):  # NaN from the epoch it diverged in, and only from then
            epochs = np.arange(1, config.epochs + 1)
            assert np.array_equal(np.isnan(mixed[key][s]), epochs >= diverged[s]), (key, s)
    # It stopped on a finite state (its state at the start of the epoch it diverged in), not carrying NaN or inf along.
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves((states.params, states.model_state)))
    lrs = np.asarray(states.settings.lr)
    np.testing.assert_array_equal(lrs, np.float32([1e-3, 1e30, 1e-3, 1e30, 3e-3]))


def test_a_seed_that_diverges_ends_the_epoch_as_it_began_it(data):
    """Divergence is judged at the epoch's end: the seed that blew up mid-epoch gets its state of the
    epoch's start back, bit for bit (params, batch statistics, optimizer state), and stays there."""
    trainer = make_train(TrainConfig(**CONFIG))
    init = jax.jit(jax.vmap(trainer.init, in_axes=(0, None, 0)))
    run_epoch = jax.jit(jax.vmap(trainer.run_epoch, in_axes=(0, None)))
    start = init(jnp.arange(2), data, Settings(lr=jnp.float32([1e-3, 1e30])))
    after, _ = run_epoch(start, data)
    assert np.asarray(after.diverged).tolist() == [0, 1]
    for old, new in zip(jax.tree.leaves((start.params, start.model_state, start.opt_state)),
                        jax.tree.leaves((after.params, after.model_state, after.opt_state))):
        np.testing.assert_array_equal(np.asarray(new)[1], np.asarray(old)[1])
    assert not np.array_equal(np.asarray(jax.tree.leaves(after.params)[0])[0],
                              np.asarray(jax.tree.leaves(start.params)[0])[0])  # the healthy one trained
    later, _ = run_epoch(after, data)  # stopped: nothing moves in the epochs after
    for old, new in zip(jax.tree.leaves((after.params, after.model_state)), jax.tree.leaves((later.params, later.model_state))):
        np.testing.assert_array_equal(np.asarray(new)[1], np.asarray(old)[1])
    assert np.asarray(later.diverged).tolist() == [0, 1]
