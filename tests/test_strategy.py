"""Seed-parallel strategies: vmap, map and groups train the same seeds to one distribution; each is a
program whose lanes depend on their own inputs only; auto probes, says why, records and remembers;
a resume continues in the strategy the run started with."""

import json

import jax
import numpy as np
import pytest

from flaxray.runtime import plan, probe, programs
from flaxray.core import settings, strategy
from flaxray.errors import FlaxrayError
from flaxray.runtime.runner import train_seeds
from flaxray.core.config import TrainConfig, device_data
from flaxray.core.settings import Settings
from tests.samples import assert_one_distribution
from tests.test_train import CONFIG, SEEDS, tiny_dataset

CNN = "conv:4,bn,pool,sep:8,bn,pool:same,dropout:0.2,gap,dense:8@0.5"


@pytest.fixture(scope="module")
def data():
    return device_data(tiny_dataset(), eval_batch_size=16)


def lanes(n: int) -> Settings:
    """`n` lanes of the default settings, stacked (what `train_seeds` plans with)."""
    return settings.stack([Settings()] * n)


@pytest.mark.numeric
def test_every_strategy_trains_one_distribution(data):
    """vmap, map and groups of 4 are three programs of the same per-seed function: the same History,
    other last bits, so one distribution of final val loss (a rank test at ALPHA each)."""
    config, arch = TrainConfig(**CONFIG), CONFIG["arch"]
    runs = {s: train_seeds(config, data, SEEDS, progress=False, strategy=s)[1] for s in ("vmap", "map", 4)}
    for name in ("map", 4):
        assert set(runs[name]) == set(runs["vmap"])
        assert runs[name]["val_loss"].shape == runs["vmap"]["val_loss"].shape == (len(SEEDS), CONFIG["epochs"])
        assert_one_distribution(runs[name]["val_loss"][:, -1], runs["vmap"]["val_loss"][:, -1],
                                f"final val loss, {name} vs vmap, {arch}")


@pytest.mark.numeric
@pytest.mark.parametrize("name, arch", [("map", CNN), (2, CONFIG["arch"]), ("loop", CONFIG["arch"])])
def test_in_map_and_groups_a_seeds_lane_depends_on_its_own_inputs_only(data, name, arch):
    """Seed 5 in lane 2 of a 4-lane program: the same bits whatever the other lanes hold (an identity,
    as for vmap in test_train), and a seed that diverges (lane 0, rate 1e30) leaves the others alone."""
    config = TrainConfig(**{**CONFIG, "arch": arch})
    _, batch = train_seeds(config, data, [3, 4, 5, 6], progress=False, strategy=name)
    states, again = train_seeds(config, data, [9, 9, 5, 9], [Settings(lr=lr) for lr in (1e30, 1e-3, 1e-3, 1e-3)],
                                progress=False, strategy=name)
    for key in batch:
        np.testing.assert_array_equal(batch[key][2], again[key][2], err_msg=key)
    assert np.asarray(states.diverged)[0] > 0 and not np.asarray(states.diverged)[1:].any()
    assert not np.allclose(batch["loss"][0], batch["loss"][2])


def test_auto_probes_says_why_records_and_remembers(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(probe, "MIN_BUDGET_S", 0.5)  # tiny programs: what is recorded matters here, not the timing
    config = TrainConfig(**CONFIG)
    train_seeds(config, data, range(3), strategy="auto", cache_dir=tmp_path / "cache", checkpoint_dir=tmp_path / "a",
                max_seeds_per_chunk=3)
    line = next(s for s in capsys.readouterr().out.splitlines() if "strategy" in s)
    record = json.loads((tmp_path / "a" / "chunks.json").read_text())
    chosen = record["strategy"]
    evidence = record["evidence"]
    assert record["strategy_source"] == "probed" and set(evidence["predicted_epoch_s"]) == {"vmap", "map", "loop"}
    fastest = min(evidence["predicted_epoch_s"].values())
    assert str(chosen) == evidence["within_noise"][0]  # the preferred of those the noise cannot tell from the fastest
    assert evidence["predicted_epoch_s"][str(chosen)] <= fastest * (1 + evidence["noise"])
    assert evidence["measured_epoch_s"] > 0  # the chosen program's own epoch, beside its prediction
    assert "probed" in line and "3 seeds per device" in line and "an epoch timed whole at" in line  # <= 64 steps
    cache = json.loads((tmp_path / "cache" / "strategies.json").read_text())
    assert [v["strategy"] for v in cache.values()] == [chosen]
    # Here again: the remembered choice, no probe (unless its measured epoch contradicted it: tests/test_probe.py).
    monkeypatch.setattr(plan, "contradicted", lambda known: False)
    monkeypatch.setattr(probe, "probe", lambda *a, **k: pytest.fail("probed again"))
    train_seeds(config, data, range(3), strategy="auto", cache_dir=tmp_path / "cache", checkpoint_dir=tmp_path / "b",
                max_seeds_per_chunk=3)
    again = json.loads((tmp_path / "b" / "chunks.json").read_text())
    assert again["strategy"] == chosen and again["strategy_source"] == "probed here before"
    # Another seed count is another key; one seed per device has nothing to choose.
    assert plan.choose_strategy(config, data, lanes(1), "auto", 1, [object()])["strategy"] == "vmap"


def test_the_probe_and_the_groups_need_no_more_memory_than_the_chunk(data, monkeypatch, tmp_path):
    """A chunk is planned to fill the device, so the probe for it must not hold more: every candidate
    runs on one chain of states, each call's input donated (no second copy), of at most the chunk's
    seeds (6 lanes and groups of 4: 4 seeds for every candidate, not 8 for the groups); and chunks in
    groups of 4 hold 4 seeds, not 6 padded to 8."""
    real, seen = programs.epoch, []

    def recording(config, name, mesh, donate=True, **kwargs):
        program = real(config, name, mesh, donate, **kwargs)

        def run(states, d):
            out = program(states, d)
            seen.append((name, len(out[0].epoch), states.epoch.is_deleted()))
            return out

        return run

    monkeypatch.setattr(programs, "epoch", recording)
    monkeypatch.setattr(probe, "MIN_BUDGET_S", 0.5)
    plan.choose_strategy(TrainConfig(**CONFIG), data, lanes(6), "auto", 6, jax.devices()[:1], fresh=True)
    assert {name for name, *_ in seen} == {"vmap", "map", 4, "loop"}
    assert {n for _, n, _ in seen} == {4}
    assert all(donated for name, _, donated in seen if name != "loop")  # loop donates each seed's own slice
    monkeypatch.setattr(programs, "epoch", real)
    _, history = train_seeds(TrainConfig(**{**CONFIG, "epochs": 1}), data, range(7), strategy=4, progress=False,
                             max_seeds_per_chunk=6, checkpoint_dir=tmp_path)
    assert json.loads((tmp_path / "chunks.json").read_text())["seeds_per_chunk"] == 4
    assert history["val_loss"].shape == (7, 1) and np.isfinite(history["val_loss"]).all()


@pytest.mark.numeric
def test_a_resume_continues_in_the_recorded_strategy(data, tmp_path, monkeypatch, capsys):
    """Stopped after epoch 2 of 3 in map, resumed asking for vmap: it continues in map, and its curves
    are the uninterrupted map run's, bit for bit (vmap's would be another sample)."""
    config = TrainConfig(**{**CONFIG, "epochs": 3})
    _, want = train_seeds(config, data, SEEDS, strategy="map", progress=False)
    real, calls = programs.epoch, []

    def stop_at_the_third(*args, **kwargs):
        program = real(*args, **kwargs)

        def counted(states, d):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("stopped")
            return program(states, d)

        return counted

    monkeypatch.setattr(programs, "epoch", stop_at_the_third)
    with pytest.raises(RuntimeError, match="stopped"):
        train_seeds(config, data, SEEDS, strategy="map", checkpoint_dir=tmp_path, checkpoint_every=1,
                    progress=False)
    monkeypatch.setattr(programs, "epoch", real)
    capsys.readouterr()
    _, got = train_seeds(config, data, SEEDS, strategy="vmap", checkpoint_dir=tmp_path, checkpoint_every=1)
    assert f"strategy map for {len(SEEDS)} seeds per device (recorded)" in capsys.readouterr().out
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_strategy_names_and_bad_values(monkeypatch):
    assert [strategy.parse(v) for v in ("auto", "VMAP", " map", "loop", "4", 16)] == ["auto", "vmap", "map", "loop", 4, 16]
    assert [strategy.canonical(k, 8) for k in (1, 4, 8, 9, "map")] == ["map", 4, "vmap", "vmap", "map"]
    assert [strategy.decode(strategy.encode(s)) for s in ("vmap", "map", "loop", 4)] == ["vmap", "map", "loop", 4]
    assert strategy.candidates(8, devices=2) == ["vmap", "map", 4]  # loop: one device only
    for bad in ("0", "-2", "fast", "2.5"):
        with pytest.raises(FlaxrayError, match="--strategy"):
            strategy.parse(bad)
    monkeypatch.setenv(strategy.ENV, "fastest")
    with pytest.raises(FlaxrayError, match=r"\$FLAXRAY_STRATEGY"):
        strategy.default()
    monkeypatch.setenv(strategy.ENV, "map")
    assert strategy.default() == "map"
