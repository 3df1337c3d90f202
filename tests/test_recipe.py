"""Any training recipe (issue 28): early stopping and model selection per seed, schedules and optimizers in
the trainer, frozen lanes, recipes by name, and the refusals. Identities that hold bit for bit by
construction, and Keras's own EarlyStopping callback driven on recorded values."""

import json
import math
import os

import jax
import numpy as np
import pytest

from flaxray.core.config import TrainConfig, device_data
from flaxray.core.recipe import Recipe, preset
from flaxray.core.schedules import Schedule
from flaxray.core.settings import Settings
from flaxray.errors import FlaxrayError
from flaxray.runtime import stopping
from flaxray.runtime.runner import train_seeds
from studies import seed_variance
from tests.test_train import CONFIG, tiny_dataset


@pytest.fixture(scope="module")
def data():
    return device_data(tiny_dataset(), eval_batch_size=16)


def keras_stops(values, patience, min_delta, mode):
    """Keras 3's own EarlyStopping callback on `values` (one curve): (stopped after, best epoch), 1-based."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")

    class Model:  # what the callback reads: stop_training and, for restore_best_weights, weights
        stop_training = False
        weights = [np.zeros(1)]

        def get_weights(self):
            return [w.copy() for w in self.weights]

        def set_weights(self, weights):
            self.weights = weights

    callback = keras.callbacks.EarlyStopping(monitor="m", patience=patience, min_delta=min_delta, mode=mode,
                                             restore_best_weights=True)
    model = Model()
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, value in enumerate(values):
        model.weights = [np.full(1, float(epoch))]
        callback.on_epoch_end(epoch, {"m": float(value)})
        if model.stop_training:
            break
    callback.on_train_end()
    stopped = callback.stopped_epoch + 1 if model.stop_training else 0
    return stopped, int(model.weights[0][0]) + 1  # the weights restored are those of the best epoch


def test_decisions_are_keras_early_stopping_on_recorded_curves():
    """Stop and best epochs against Keras's callback itself, on random curves with plateaus and ties."""
    rng = np.random.default_rng(0)
    for trial in range(60):
        values = np.round(rng.normal(1.0, 0.1, 12).cumsum() / np.arange(1, 13), 2)  # rounding makes ties
        patience, delta = int(rng.integers(0, 4)), float(rng.choice([0.0, 0.01]))
        for lower in (True, False):
            got = stopping.decide(values[None], [patience], min_delta=delta, lower_is_better=lower)
            want = keras_stops(values, patience, delta, "min" if lower else "max")
            assert (got.stopped[0], got.best[0]) == want, (trial, values, patience, delta, lower)
    never = stopping.decide(np.arange(10.0)[None], [math.inf])  # only getting worse, and no patience
    assert never.stopped[0] == 0 and never.best[0] == 1


@pytest.mark.numeric  # two programs (with and without the bookkeeping) agree bit for bit: again on AVX2 kernels
def test_early_stopping_freezes_each_seed_on_its_own_and_restores_its_best(data):
    """Lanes with patience 0 stop as the decisions on their own curves say; a stopped lane's state is
    frozen bit for bit from then on; the restored weights are those its best epoch ended with, which a
    run of just that many epochs reproduces bit for bit; a lane with patience none trains every epoch."""
    recipe = Recipe(restore_best=True)
    config = TrainConfig(**{**CONFIG, "epochs": 6}, recipe=recipe)
    seeds, lanes = [1, 2, 3, 1], [Settings(patience=0.0)] * 3 + [Settings(patience=math.inf)]
    states, history = train_seeds(config, data, seeds, lanes, progress=False)
    stopped = np.asarray(states.stopped)
    decision = stopping.decide(np.where(np.isnan(history["val_loss"]), np.inf, history["val_loss"]),
                               [0, 0, 0, math.inf])
    assert stopped[3] == 0 and np.isfinite(history["val_loss"][3]).all()
    for lane in range(3):
        if stopped[lane]:
            assert np.isnan(history["val_loss"][lane, stopped[lane]:]).all()
            assert np.isfinite(history["val_loss"][lane, :stopped[lane]]).all()
    np.testing.assert_array_equal(stopped[:3], decision.stopped[:3])
    # The restored weights: lane 0's best epoch, trained again alone to that epoch (no stopping in it).
    best = int(decision.best[0])
    again, _ = train_seeds(TrainConfig(**{**CONFIG, "epochs": best}), data, seeds, progress=False)
    for got, want in zip(jax.tree.leaves(states.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(got)[0], np.asarray(want)[0])


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop", "nadam", "adamax", "adagrad", "lion"])
def test_a_stopped_lane_stays_frozen_under_every_optimizer_and_schedule(data, optimizer):
    """After its stop, a lane's params, batch statistics and optimizer state do not move by a bit, under a
    cosine schedule that keeps changing the rate; the lane beside it keeps training."""
    recipe = Recipe(optimizer=optimizer, schedule=Schedule("cosine", warmup_epochs=1))
    config = TrainConfig(**{**CONFIG, "epochs": 3}, recipe=recipe)
    from flaxray.runtime import programs

    states = programs.initial_states(config, data, [4, 5], jax.tree.map(
        lambda *v: np.asarray(v, np.float32), Settings(patience=0.0), Settings(patience=0.0)), None)
    run = programs.epoch(config, "vmap", None, donate=False)
    states, _ = run(states, data)
    states = states._replace(stopped=np.asarray([1, 0], np.int32))  # the host stops lane 0 after epoch 1
    before = jax.tree.map(np.asarray, (states.params, states.model_state, states.opt_state))
    for _ in range(2):
        states, _ = run(states, data)
    after = jax.tree.map(np.asarray, (states.params, states.model_state, states.opt_state))
    for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(b[0], a[0])
    assert any(not np.array_equal(b[1], a[1]) for b, a in zip(jax.tree.leaves(before[0]), jax.tree.leaves(after[0])))


def test_the_lr_column_is_each_epochs_rate_and_medmnist_is_its_recipe(tmp_path, capsys):
    """--recipe medmnist --epochs 4: milestones 2 and 3 (50 % and 75 %, rounded down), rates 1e-3, 1e-3,
    1e-4, 1e-5 in curves.csv, batch 128, the model of the best val AUC kept, all recorded expanded."""
    out = tmp_path / "m"
    argv = ["--arch", "dense:8@0.5", "--seeds", "2", "--epochs", "4", "--channels", "1", "--recipe", "medmnist",
            "--out", str(out), "--no-progress", "--checkpoint-every", "0"]
    assert seed_variance.main(argv) == 0
    import csv

    rows = list(csv.DictReader(open(out / "curves.csv")))
    rates = {int(r["epoch"]): float(r["lr"]) for r in rows}
    assert [rates[e] for e in (1, 2, 3, 4)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5], rel=1e-6)
    study = json.loads((out / "study.json").read_text())
    recipe = study["spec"]["recipe"]
    assert recipe["schedule"]["milestones"] == [2, 3] and recipe["monitor"] == "val_auc" and recipe["restore_best"]
    assert study["spec"]["batch_size"] == 128
    assert study["configs"]["dense:8@0.5"]["recipe"] == recipe
    assert "keeps its best epoch's model" in capsys.readouterr().out
    kept = study["analysis"]["stopping"]["dense:8@0.5"]["kept"]["epochs"]
    best = [int(np.nanargmax([float(r["value"]) for r in rows if r["seed"] == str(s) and r["split"] == "val"
                                and r["metric"] == "auc"]) + 1) for s in (0, 1)]
    assert kept == best  # the model kept is that of each seed's best val AUC (the first, on a tie)


def test_early_stopping_none_and_3_on_the_same_seeds_is_reported_paired(tmp_path, capsys):
    out = tmp_path / "es"
    argv = ["--arch", "dense:8@0.5", "dense:4", "--seeds", "3", "--epochs", "4", "--batch-size", "256", "--channels",
            "1", "--early-stopping", "none", "0", "--out", str(out), "--no-progress", "--checkpoint-every", "0"]
    assert seed_variance.main(argv) == 0
    printed = capsys.readouterr().out
    assert "seeds paired" in printed and "ranking of the archs" in printed
    study = json.loads((out / "study.json").read_text())
    assert set(study["stopped"]) == {"dense:8@0.5@es=none", "dense:8@0.5@es=0", "dense:4@es=none", "dense:4@es=0"}
    assert study["stopped"]["dense:4@es=none"] == {}
    header = open(out / "curves.csv").readline().strip().split(",")
    assert header[:9] == ["arch", "seed", "epoch", "split", "metric", "value", "lr", "diverged_epoch", "stopped_epoch"]
    assert "Early stopping" in (out / "report.md").read_text()
    # The same study again reads its units back, the stop epochs with them.
    assert seed_variance.main(argv) == 0
    assert json.loads((out / "study.json").read_text())["stopped"] == study["stopped"]


@pytest.mark.parametrize("flags, needle", [
    (["--optimizer", "adamm"], "--optimizer"),
    (["--schedule", "linear"], "--schedule"),
    (["--augment", "flip,blur=0.1"], "--augment"),
    (["--schedule", "step", "--milestones", "2"], "--milestones"),
    (["--early-stopping", "-1"], "--early-stopping"),
    (["--monitor", "val_f7"], "--monitor"),
    (["--label-smoothing", "1"], "--label-smoothing"),
    (["--momentum", "0.9"], "--momentum"),
    (["--nesterov"], "--nesterov"),
])
def test_bad_recipe_flags_are_one_line_errors_and_nothing_is_written(tmp_path, capsys, flags, needle):
    out = tmp_path / "bad"
    argv = ["--arch", "dense:4", "--seeds", "1", "--epochs", "2", "--out", str(out), "--no-progress", *flags]
    code = 2
    try:
        code = seed_variance.main(argv)
    except SystemExit as err:  # argparse's own refusal of a choice: its usage line and the flag
        code = err.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and needle in err[-1] and "Traceback" not in "\n".join(err)
    assert not out.exists()


def test_another_recipe_in_the_same_out_is_refused_naming_both(tmp_path, capsys):
    out = tmp_path / "r"
    base = ["--arch", "dense:4", "--seeds", "1", "--epochs", "2", "--batch-size", "256", "--channels", "1",
            "--out", str(out), "--no-progress", "--checkpoint-every", "0"]
    assert seed_variance.main(base) == 0
    capsys.readouterr()
    assert seed_variance.main([*base, "--optimizer", "sgd"]) == 2
    err = capsys.readouterr().err
    assert "recipe" in err and "sgd" in err


def test_the_default_recipe_records_as_before():
    """A config with the default recipe records no recipe (older units and fingerprints match), and a
    preset that explicit choices override expands to its fields."""
    assert "recipe" not in TrainConfig(**CONFIG).record()
    fields = preset("medmnist", epochs=4, schedule=None, decay=0.5)
    assert fields["batch_size"] == 128 and fields["recipe"].schedule.milestones == (2, 3)
    assert fields["recipe"].schedule.decay == 0.5 and fields["recipe"].restore_best
    with pytest.raises(FlaxrayError, match="--recipe"):
        preset("imagenet")
    assert preset("medmnist", epochs=1)["recipe"].schedule.kind == "constant"  # no milestone fits one epoch
    again = TrainConfig.from_record(TrainConfig(**{**CONFIG, "epochs": 4}, recipe=fields["recipe"]).record())
    assert again.recipe == fields["recipe"]


def test_augment_draws_per_seed_unless_shared_and_decompose_adds_only_augment(data, tmp_path, capsys):
    """The source `augment` gives each seed its own draws; without it in --vary every seed draws the same;
    --decompose over the sources of --vary trains an only-augment unit."""
    from flaxray.runtime import programs

    recipe = Recipe(augment="flip,translate=0.1")
    keys = lambda vary: programs.initial_states(  # noqa: E731
        TrainConfig(**CONFIG, recipe=recipe, vary=vary), data, [1, 2], Settings(lr=np.float32([1e-3] * 2)), None
    ).keys["augment"]
    varied, shared = jax.random.key_data(keys(("init", "dropout", "order", "augment"))), jax.random.key_data(
        keys(("init", "dropout", "order")))
    assert not np.array_equal(varied[0], varied[1]) and np.array_equal(shared[0], shared[1])
    _, plain = train_seeds(TrainConfig(**CONFIG), data, [1], progress=False)
    _, augmented = train_seeds(TrainConfig(**CONFIG, recipe=recipe), data, [1], progress=False)
    assert not np.array_equal(plain["loss"], augmented["loss"])  # the augmentation is in the step
    out = tmp_path / "aug"
    argv = ["--arch", "dense:4", "--seeds", "2", "--epochs", "1", "--batch-size", "256", "--channels", "1",
            "--augment", "flip", "--decompose", "--out", str(out), "--no-progress", "--checkpoint-every", "0"]
    from studies import architecture_search

    assert architecture_search.main(argv) == 0
    assert (out / "groups" / "dense_4" / "only-augment" / "group.json").exists()
    assert "augment" in json.loads((out / "study.json").read_text())["analysis"]["decomposition"]["dense:4"]


def test_label_smoothing_is_keras_cross_entropy_against_smoothed_labels(data):
    """The val loss with --label-smoothing 0.2 is the binary cross-entropy against y (1 - 0.2) + 0.1,
    from the same model's probabilities."""
    from flaxray.core.train import make_train

    trainer = make_train(TrainConfig(**CONFIG, recipe=Recipe(label_smoothing=0.2)))
    state = trainer.init(3, data)
    counts = trainer.evaluate(state.variables, data.x_val, data.y_val, data.val_mask)
    p = np.asarray(trainer.predict(state.variables, data.x_val), np.float64)
    y, mask = np.asarray(data.y_val), np.asarray(data.val_mask)
    target = y * 0.8 + 0.1
    want = np.sum(mask * -(target * np.log(p) + (1 - target) * np.log(1 - p)))
    assert float(counts.loss_sum) == pytest.approx(want, rel=1e-5)
    plain = make_train(TrainConfig(**CONFIG)).evaluate(state.variables, data.x_val, data.y_val, data.val_mask)
    assert float(plain.loss_sum) != pytest.approx(want, rel=1e-3)


def test_a_stopped_and_resumed_recipe_study_gives_the_same_bytes_and_replays(tmp_path, monkeypatch, capsys):
    """Early stopping, model selection, a schedule and augmentation: a Ctrl-C after epoch 2 and --resume
    give the uninterrupted run's curves.csv and study.json's stop epochs; a seed replays bit for bit."""
    from tests.test_resume import ctrl_c_in_epoch

    study = ["--arch", "dense:8@0.5", "--channels", "1", "--seeds", "3", "--epochs", "5", "--batch-size", "256",
             "--early-stopping", "none", "1", "--restore-best", "--schedule", "step", "--milestones", "2",
             "--augment", "flip", "--no-progress"]
    clean = tmp_path / "clean"
    assert seed_variance.main([*study, "--out", str(clean)]) == 0
    ctrl_c_in_epoch(monkeypatch, 2)
    out = tmp_path / "stopped"
    assert seed_variance.main([*study, "--checkpoint-every", "1", "--out", str(out)]) == 130
    monkeypatch.undo()
    assert seed_variance.main([*study, "--out", str(out), "--resume", str(out)]) == 0
    assert (out / "curves.csv").read_bytes() == (clean / "curves.csv").read_bytes()
    record = lambda folder: json.loads((folder / "study.json").read_text())  # noqa: E731
    assert record(out)["stopped"] == record(clean)["stopped"]
    capsys.readouterr()
    assert seed_variance.main(["--replay", str(clean), "--seed", "1", "--no-progress"]) == 0


def test_a_cosine_program_is_its_epochs_own_and_the_host_decisions_compile_nothing_again(data):
    """The epoch program is shared across epoch counts except where the schedule reads them (cosine);
    early stopping's decisions written between epochs leave the program's signature as it was."""
    from flaxray.runtime import programs

    cosine = Recipe(schedule=Schedule("cosine"))
    assert programs.compiled(TrainConfig(**{**CONFIG, "epochs": 2}, recipe=cosine)) is not programs.compiled(
        TrainConfig(**{**CONFIG, "epochs": 4}, recipe=cosine))
    assert programs.compiled(TrainConfig(**{**CONFIG, "epochs": 2})) is programs.compiled(
        TrainConfig(**{**CONFIG, "epochs": 4}))
    config = TrainConfig(**{**CONFIG, "arch": "dense:5@0.5", "epochs": 4}, recipe=Recipe(restore_best=True))  # its own
    run = programs.epoch(config, "vmap", None)
    train_seeds(config, data, [1, 2], [Settings(patience=5.0)] * 2, progress=False, strategy="vmap")
    assert run._cache_size() == 1
