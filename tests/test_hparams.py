"""Settings beside seeds (dropout rate, weight decay) and the numerical-noise floor (issue 15, items 5, 6).

Identities that hold bit for bit by construction (a lane's own settings; decay 0 adds exactly 0), Keras's
AdamW rule worked out by hand, and the variance split checked against known answers on simulated data.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxray.analysis import study as fa
from flaxray.study import compat, units as groups
from flaxray.analysis import stats
from flaxray.report import table
from flaxray.errors import FlaxrayError
from flaxray.core import settings
from flaxray.core.config import TrainConfig, check_dropout_settings, device_data
from flaxray.core.optim import keras_weight_decay
from flaxray.core.randomness import FLOOR
from flaxray.core.settings import Settings
from flaxray.runtime.runner import train_seeds
from flaxray.core.train import make_train
from flaxray.study.study import Study
from tests.test_train import CONFIG, tiny_dataset


@pytest.fixture(scope="module")
def data():
    return device_data(tiny_dataset(), eval_batch_size=16)


@pytest.mark.numeric
def test_a_lanes_dropout_and_weight_decay_are_its_own_and_decay_zero_is_no_decay(data):
    """Seed 5 at dropout 0.5 and decay 1e-2 in lane 2 of a 4-lane program: the same bits whatever the
    other lanes hold (one compile serves every value). And a lane at decay 0 in a program that decays
    other lanes trains bit for bit as in the program without decay (Keras's order: the decay, exactly
    nothing at 0, comes before Adam's step)."""
    # One dense block: the identities are the same for any arch, and it compiles in half the time.
    config, seeds, rates = TrainConfig(**{**CONFIG, "arch": "dense:8@0.5"}), [3, 4, 5, 6], [0.1, 0.2, 0.5, 0.0]

    def lanes(dropouts, decays=None):  # decays None: no weight decay in the program
        return [Settings(dropout=d, weight_decay=None if decays is None else decays[i]) for i, d in enumerate(dropouts)]

    states, mixed = train_seeds(config, data, seeds, lanes(rates, [0.0, 50.0, 1e-2, 0.0]), progress=False)
    _, again = train_seeds(config, data, [9, 9, 5, 5], lanes([0.3, 0.3, 0.5, 0.1], [0.0, 0.0, 1e-2, 1e-3]),
                           progress=False)
    for key in mixed:
        np.testing.assert_array_equal(mixed[key][2], again[key][2], err_msg=key)
    assert not np.allclose(again["loss"][2], again["loss"][3])  # another rate and decay: another run
    np.testing.assert_array_equal(np.asarray(states.settings.dropout), np.float32(rates))
    np.testing.assert_array_equal(np.asarray(states.settings.weight_decay), np.float32([0.0, 50.0, 1e-2, 0.0]))

    plain_states, plain = train_seeds(config, data, seeds, lanes(rates), progress=False)
    for key in plain:
        np.testing.assert_array_equal(mixed[key][[0, 3]], plain[key][[0, 3]], err_msg=key)
    assert plain_states.settings.weight_decay is None  # no decay asked: not in the program
    kernel = lambda s: np.abs(np.asarray(s.params["blocks"][0]["dense"]["kernel"])[1]).sum()  # noqa: E731
    assert kernel(states) < 0.8 * kernel(plain_states)  # 12 steps at wd * lr = 0.05 shrink the weights


def test_weight_decay_is_keras_adamw():
    """Keras 3: before each update every trainable weight does var -= var * wd * lr; 0 changes nothing."""
    w = {"kernel": jnp.array([0.5, -1.0, 2.0]), "bias": jnp.array([0.0, -3.0])}
    out = keras_weight_decay(w, jnp.float32(0.1), jnp.float32(1e-2))
    for key in w:
        np.testing.assert_allclose(np.asarray(out[key]), np.asarray(w[key]) * (1 - 1e-3), rtol=1e-6)
    for wd, lr in ((0.0, 1e-2), (0.1, 0.0)):  # no decay, or a stopped seed (rate 0): exactly the weights
        same = keras_weight_decay(w, jnp.float32(wd), jnp.float32(lr))
        assert all(np.array_equal(np.asarray(same[k]), np.asarray(w[k])) for k in w)


@pytest.mark.numeric
def test_the_ulp_floor_moves_every_initial_parameter_by_one_ulp_and_nothing_else(data):
    shared = make_train(TrainConfig(**CONFIG, vary=())).init(0, data)
    floor = make_train(TrainConfig(**CONFIG, vary=(FLOOR,)))
    nudged = [floor.init(seed, data) for seed in (0, 1)]
    for base, *leaves in zip(*(jax.tree.leaves(s.params) for s in (shared, *nudged))):
        base, leaves = np.asarray(base), [np.asarray(leaf) for leaf in leaves]
        up, down = np.nextafter(base, np.float32(np.inf)), np.nextafter(base, np.float32(-np.inf))
        assert all(((leaf == up) | (leaf == down)).all() for leaf in leaves)
        assert base.size < 8 or not np.array_equal(*leaves)  # each seed its own coin flips
    for state in nudged:  # every source of randomness shared: the same keys as the run that varies nothing
        for a, b in ((shared.keys["dropout"], state.keys["dropout"]), (shared.keys["order"], state.keys["order"])):
            np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))


def test_bad_settings_are_one_line_errors():
    """The settings are a lane's, not the config's: refused in a grid (`settings.normalize`, what a Study and
    the command line give), in lanes (`settings.check_lanes`, what train_seeds checks) and, a rate asked of an
    arch with nothing to set, where a study is specified."""
    for grid, needle in [({"dropout": 1.0}, "--dropout"), ({"dropout": -0.1}, "--dropout"),
                         ({"weight_decay": -1.0}, "--weight-decay"), ({"weight_decay": float("nan")}, "--weight-decay")]:
        with pytest.raises(FlaxrayError, match=needle) as err:
            settings.normalize({k: (v,) for k, v in grid.items()})
        assert "\n" not in str(err.value)
        with pytest.raises(FlaxrayError, match=needle):
            settings.check_lanes([Settings(**grid)])
        with pytest.raises(FlaxrayError, match=needle):
            Study(archs=(CONFIG["arch"],), settings={k: (v,) for k, v in grid.items()})
    for arch, needle in [("dense:16,8", "no Dropout layer"), ("resnet18", "registered module")]:
        with pytest.raises(FlaxrayError, match=needle) as err:
            check_dropout_settings(arch, (0.2,))
        assert "\n" not in str(err.value)
        with pytest.raises(FlaxrayError, match=needle):
            Study(archs=(arch,), settings={"dropout": (0.2,)})
    check_dropout_settings("dense:16,8", (None,))  # no rate asked: nothing to refuse


def test_group_names_fingerprints_and_curves_columns(tmp_path):
    names = lambda **grid: groups.group_names("p", settings.normalize(grid))  # noqa: E731
    assert names(lr=[1e-3]) == ["p"]
    assert names(lr=[1e-3, 3e-4]) == ["p@lr=1e-3", "p@lr=3e-4"]  # as before settings existed
    assert names(dropout=[0.2, 0.5]) == ["p@dropout=0.2", "p@dropout=0.5"]
    assert names(lr=[1e-3, 1e-2], weight_decay=[0, 1e-4]) == [
        "p@lr=1e-3,wd=0", "p@lr=1e-3,wd=1e-4", "p@lr=0.01,wd=0", "p@lr=0.01,wd=1e-4"]
    # A default unit's fingerprint is the one it had before dropout and decay existed: its folder is reused.
    # That record (format 1: the config with `lr: null`, the rates as `lrs`) is read by `flaxray.study.compat`.
    config, summary = TrainConfig(**CONFIG), {"source": "x"}
    grid = settings.normalize({"lr": [1e-3]})
    old = {"config": {**config.record(), "lr": None}, "lrs": [1e-3], "seeds": [0, 1],
           "data": {k: summary.get(k) for k in groups.DATA_KEYS}}
    old = json.loads(json.dumps(old))
    wanted = groups.fingerprint(config, grid, [0, 1], summary)
    assert compat.group_record({"format": 1, "fingerprint": old})["fingerprint"] == wanted
    unit = tmp_path / "unit"
    unit.mkdir()
    (unit / groups.GROUP_JSON).write_text(json.dumps({"format": 1, "name": "p", "fingerprint": old}))
    assert groups.finished(unit, wanted)["format"] == groups.FORMAT  # reused, not refused
    # Today's record of the same unit: the settings at their off values are left out of it.
    assert wanted == json.loads(json.dumps({"config": config.record(), "settings": {"lr": [1e-3]}, "seeds": [0, 1],
                                            "data": {k: summary.get(k) for k in groups.DATA_KEYS}}))
    # Another dropout is another unit: a rerun with it is refused, naming the difference.
    other = groups.fingerprint(config, settings.normalize({"dropout": [0.2]}), [0, 1], summary)
    assert groups.differences(other, wanted) == ["settings.dropout [0.2] here, None asked"]
    with pytest.raises(FlaxrayError, match="settings.dropout None here, \\[0.2\\] asked"):
        groups.finished(unit, other)

    history = {"loss": np.ones((2, 1)), "val_loss": np.ones((2, 1))}
    make = lambda name, **kw: groups.Group(name, config, Settings(**kw), [0, 1], history,  # noqa: E731
                                           np.zeros(2, int), tmp_path)
    header = lambda gs: groups.write_curves(tmp_path / "c.csv", gs).read_text().splitlines()[:2]  # noqa: E731
    assert header([make("a")])[0].endswith("lr,diverged_epoch")
    first, row = header([make("a@wd=0", weight_decay=0.0), make("a@wd=0.1", weight_decay=0.1)])
    assert first.endswith("lr,diverged_epoch,weight_decay") and row.endswith(",0.0")
    assert header([make("a", dropout=0.2)])[0].endswith("diverged_epoch,dropout")


def simulate(rng, effects, seeds, seed_sd=1.0, shared_sd=1.0):
    """Final losses (settings, seeds): a setting's effect + the seed's own shared effect + noise."""
    return (np.asarray(effects, float)[:, None] + shared_sd * rng.normal(size=(1, seeds))
            + seed_sd * rng.normal(size=(len(effects), seeds)))


def test_setting_shares_known_answers():
    # No noise: y = a_i + b_j. Settings' variance = var(a) (ddof 1), seeds' = var(b) (ddof 1), exactly.
    a, b = np.array([0.0, 1.0, 2.0]), np.array([0.0, 3.0, -1.0, 4.0])
    d = fa.setting_shares(a[:, None] + b[None, :])
    assert d["setting_var"] == pytest.approx(1.0) and d["seed_var"] == pytest.approx(np.var(b, ddof=1))
    assert d["share"] == pytest.approx(1.0 / (1.0 + np.var(b, ddof=1)))
    # Equal settings and a seed's own effect at every setting: the share of 0 settings is 0.
    assert fa.setting_shares(np.tile(b, (2, 1)))["share"] == 0.0
    # Many seeds, settings' variance 1 and seeds' variance 1 (half of it shared across settings): 0.5.
    d = fa.setting_shares(simulate(np.random.default_rng(0), [-0.5**0.5, 0.5**0.5], 4000, 0.5**0.5, 0.5**0.5),
                          n_resamples=500)
    assert d["share"] == pytest.approx(0.5, abs=0.05) and d["share_ci_low"] < 0.5 < d["share_ci_high"]
    d = fa.setting_shares(np.array([[1.0, np.nan, 2.0, 3.0], [1.5, 2.0, 2.5, np.inf]]))
    assert d["n"] == 2 and np.isfinite(d["share"])  # the diverged seeds are left out


def test_setting_shares_ci_holds_zero_under_no_effect_and_finds_a_large_one():
    """Over simulated studies of 8 seeds: with no setting effect the CI contains 0 at least at its
    confidence (the truncated estimate makes it conservative; without the residual correction it would
    exclude 0 every time); with an effect of 4 seed SDs the CI excludes 0 nearly always. A correct
    estimator fails each bound with probability < 1e-3 (binomial tails at these counts)."""
    rng = np.random.default_rng(1)
    null = [fa.setting_shares(simulate(rng, [0, 0], 8), n_resamples=400) for _ in range(200)]
    assert np.mean([d["share_ci_low"] <= 0 for d in null]) >= 0.90
    assert np.mean([d["p"] < 0.05 for d in null]) <= 0.12  # the F-test at its level
    large = [fa.setting_shares(simulate(rng, [0, 4 * 2**0.5], 8), n_resamples=400) for _ in range(100)]
    assert np.mean([d["share_ci_low"] > 0 for d in large]) >= 0.9
    assert np.mean([d["share_ci_low"] > 0.5 for d in large]) >= 0.9  # it moves it more than the seed does
    assert np.median([d["share"] for d in large]) == pytest.approx(16 / 18, abs=0.05)  # var 16 against 1 + 1


def test_the_floor_and_each_sources_share_above_it():
    rng = np.random.default_rng(3)
    finals = {"all": rng.normal(0, 1, 64), "init": rng.normal(0, 0.9, 64), FLOOR: rng.normal(0, 0.5, 64)}
    out = stats.variance_shares(finals, floor=FLOOR, n_resamples=300)
    assert out["init"]["above_floor"] == pytest.approx(out["init"]["share"] - out[FLOOR]["share"])
    assert out["init"]["above_floor_ci_low"] < out["init"]["above_floor"] < out["init"]["above_floor_ci_high"]
    assert 0 < out["init"]["above_floor_ci_low"]  # 0.81 - 0.25 of the total at 64 seeds: clearly above
    assert "above_floor" not in out[FLOOR] and out["all"]["remainder"] == pytest.approx(1 - out["init"]["share"])
    histories = {"a": {"loss": np.ones((64, 1)), "val_loss": finals["all"][:, None] + 2}}
    runs = {s: {"loss": np.ones((64, 1)), "val_loss": v[:, None] + 2} for s, v in finals.items()}
    lines = table.variance_lines(fa.analyse(histories, decomposition={"a": runs}))
    assert len(lines) == 1 and "noise floor" in lines[0] and "init +" in lines[0]
