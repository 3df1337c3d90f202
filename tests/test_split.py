"""The data split as a source (`--vary split`, issue 30 item 4): each seed's own train/val split of
train+val, grouped by patient and class-stratified as the fixed split, every lane one size; shared where
`split` is not varied, refused for data whose val is given without groups, off by default."""

import json

import numpy as np
import pytest

from flaxray.core.config import TrainConfig, device_data
from flaxray.core.randomness import SOURCES, SPLIT
from flaxray.core.resample import Resample
from flaxray.core.settings import Settings
from flaxray.data import from_arrays, load_dataset
from flaxray.errors import FlaxrayError
from flaxray.runtime import programs
from flaxray.study.spec import Study

CONFIG = dict(arch="dense:4", epochs=1, batch_size=64, eval_batch_size=64)
ALL = (*SOURCES[:3], SPLIT)


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(channels=1)  # the embedded 28x28 X-rays: several images per patient


def test_each_seeds_split_keeps_patients_apart_is_reproducible_and_of_one_size(dataset):
    pool = Resample.of(dataset)
    train_size, val_size = pool.sizes
    fixed = len(dataset.val.y) / (len(dataset.train.y) + len(dataset.val.y))
    assert abs(val_size / (train_size + val_size) - fixed) < 0.01  # the fixed split's val fraction
    assert train_size + val_size > 0.98 * len(pool.labels)  # trimming costs a few images only
    draws = [pool.draw(seed) for seed in range(6)]
    per_class = set()
    for train, val in draws:
        assert (len(train), len(val)) == (train_size, val_size)
        assert not set(pool.groups[train]) & set(pool.groups[val])  # no patient on both sides
        per_class.add(tuple(np.bincount(pool.labels[val], minlength=2)))  # stratified: one count per class
    assert len(per_class) == 1
    assert not np.array_equal(draws[0][1], draws[1][1])  # seeds draw different splits
    # The same seed, the same split: from a pool loaded again, with another fixed split (the pool's order is
    # the images' ids, not the fixed split's).
    again = Resample.of(load_dataset(channels=1, split_seed=7))
    assert again == pool and all(np.array_equal(a, b) for a, b in zip(again.draw(3), draws[3]))


def test_every_draw_meets_the_common_sizes_on_awkward_pools():
    """The sizes are bounds of `patient_split`'s greedy over every order of the patients: random pools with
    large and single-image patients, mixed-label patients, 2 and 3 classes, small fractions."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        k, n_patients = int(rng.integers(2, 4)), int(rng.integers(2, 30))
        sizes = rng.geometric(rng.uniform(0.1, 0.9), n_patients)
        groups = np.repeat(np.arange(n_patients), sizes).astype(str)
        labels = rng.integers(0, k, n_patients)[np.repeat(np.arange(n_patients), sizes)]
        labels = np.where(rng.random(len(labels)) < 0.1, rng.integers(0, k, len(labels)), labels)
        pool = Resample(labels.astype(np.int64), groups, float(rng.uniform(0.05, 0.6)), k)
        for seed in range(8):
            train, val = pool.draw(seed)
            assert (len(train), len(val)) == pool.sizes
            assert not set(groups[train]) & set(groups[val])


def test_lanes_draw_their_own_splits_only_with_split_in_vary(dataset):
    data = device_data(dataset, CONFIG["eval_batch_size"], resample=True)
    lanes = Settings(lr=np.float32([1e-3] * 3))
    varied = programs.initial_states(TrainConfig(**CONFIG, vary=ALL), data, [1, 2, 1], lanes, None).split
    assert not np.array_equal(varied.val[0], varied.val[1]) and np.array_equal(varied.val[0], varied.val[2])
    shared = programs.initial_states(TrainConfig(**CONFIG, vary=ALL[:3], resample=True), data, [1, 2, 3], lanes,
                                     None).split  # a --decompose unit of such a study: the shared seed's split
    assert all(np.array_equal(shared.train[0], shared.train[i]) for i in (1, 2))
    assert np.asarray(varied.val_mask).sum(axis=1).tolist() == [Resample.of(dataset).sizes[1]] * 3


def test_the_default_keeps_the_fixed_split(dataset):
    assert SPLIT not in TrainConfig().vary and SPLIT not in Study().vary
    config = TrainConfig(**CONFIG)
    assert not config.resample and "resample" not in config.record() and SPLIT not in config.drawn
    data = device_data(dataset, CONFIG["eval_batch_size"])
    assert data.resample is None and data.x_train.shape[0] == len(dataset.train.y)
    state = programs.initial_states(config, data, [0], Settings(lr=np.float32([1e-3])), None)
    assert state.split is None
    with pytest.raises(FlaxrayError, match="resample=True"):  # a split config with the fixed split's data
        from flaxray.runtime.runner import train_seeds

        train_seeds(TrainConfig(**CONFIG, vary=ALL), data, [0], progress=False)


def test_a_val_given_without_groups_cannot_vary_its_split(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (40, 8, 8), dtype=np.uint8), np.arange(40) % 2
    given = from_arrays(x[:30], y[:30], x[30:], y[30:])
    with pytest.raises(FlaxrayError, match="brings its own val split"):
        device_data(given, 16, resample=True)
    groups = np.arange(40) // 2  # groups for train and val: resampled by them
    pool = device_data(from_arrays(x[:30], y[:30], x[30:], y[30:], groups=groups), 16, resample=True).resample
    assert pool.sizes[1] > 0 and abs(pool.val_fraction - 0.25) < 1e-9
    np.savez(tmp_path / "given.npz", x_train=x[:30], y_train=y[:30], x_val=x[30:], y_val=y[30:])
    from studies import seed_variance

    assert seed_variance.main(["--data", str(tmp_path / "given.npz"), "--arch", "dense:4", "--seeds", "2",
                               "--epochs", "1", "--batch-size", "8", "--vary", "init,split", "--no-progress",
                               "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "brings its own val split" in err[0]


def test_a_study_varying_the_split_decomposes_into_only_split_and_replays(tmp_path, capsys):
    from studies import architecture_search

    out = tmp_path / "split"
    argv = ["--arch", "dense:4", "--seeds", "2", "--epochs", "1", "--batch-size", "256", "--channels", "1",
            "--vary", "init,dropout,order,split", "--decompose", "--no-progress", "--checkpoint-every", "0"]
    assert architecture_search.main([*argv, "--out", str(out)]) == 0
    assert (out / "groups" / "dense_4" / "only-split" / "group.json").exists()
    record = json.loads((out / "study.json").read_text())
    assert "split" in record["analysis"]["decomposition"]["dense:4"] and record["spec"]["vary"][-1] == "split"
    assert record["split"]["train"] + record["split"]["val"] <= record["split"]["pool"]
    assert record["data"]["val_fraction"] == 0.2  # the fixed split, recorded as without split
    capsys.readouterr()
    assert architecture_search.main(["--replay", str(out), "--seed", "1", "--no-progress"]) == 0
    assert "identical, bit for bit" in capsys.readouterr().out


def test_a_stopped_split_study_resumes_to_the_same_curves(tmp_path, monkeypatch):
    """Each lane's split is in its checkpointed state and drawn again alike: a Ctrl-C after epoch 1 and
    --resume give the uninterrupted run's curves, byte for byte."""
    from studies import seed_variance
    from tests.test_resume import ctrl_c_in_epoch

    study = ["--arch", "dense:4", "--channels", "1", "--seeds", "2", "--epochs", "2", "--batch-size", "256",
             "--vary", "init,split", "--no-progress"]
    clean, out = tmp_path / "clean", tmp_path / "stopped"
    assert seed_variance.main([*study, "--out", str(clean)]) == 0
    ctrl_c_in_epoch(monkeypatch, 1)
    assert seed_variance.main([*study, "--checkpoint-every", "1", "--out", str(out)]) == 130
    monkeypatch.undo()
    assert seed_variance.main([*study, "--out", str(out), "--resume", str(out)]) == 0
    assert (out / "curves.csv").read_bytes() == (clean / "curves.csv").read_bytes()


def test_several_data_sets_each_draw_their_own_splits(tmp_path):
    # Each data set goes to the device as a pool of its own when the lanes resample (a study per data set).
    import flaxray
    from flaxray.study import DataSpec

    spec = Study(archs=("dense:4",), seeds=(0, 1), epochs=1, batch_size=256, vary=ALL,
                 data={"a": DataSpec(path=None, channels=1), "b": DataSpec(path=None, channels=1, val_fraction=0.3)})
    got = flaxray.run(spec, tmp_path / "out", progress=False)
    sizes = {name: (r.record["split"]["train"], r.record["split"]["val"]) for name, r in got.results.items()}
    assert sizes["a"] != sizes["b"] and all(sum(s) <= 5206 for s in sizes.values())
