"""The Keras parity benchmark runs end to end at --tiny (its values and timings are measured, not asserted)."""

import json

import pytest

from benchmarks import keras_parity

STATS = ("flaxray_mean", "flaxray_std", "keras_mean", "keras_std", "flaxray_range", "keras_range", "mannwhitney_p",
         "ks_p")
PER_SEED = ("final_val_loss", "stop_epoch", "stopped", "best_epoch", "val_loss")


def test_tiny_writes_every_scenarios_fields(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    pytest.importorskip("keras", reason="the [baseline] extra is not installed")
    path = tmp_path / "parity.json"
    scenarios = ("step", "early-stop")  # a schedule (with its step-by-step rate check) and early stopping
    argv = ["--tiny", "--arch", "dense:8@0.5", "--scenarios", ",".join(scenarios), "--out", str(tmp_path / "runs"),
            "--json", str(path)]
    assert keras_parity.main(argv) == 0
    report = json.loads(path.read_text())
    assert report["config"]["seeds"] == 2 and report["config"]["epochs"] == 2 and report["command"]
    assert report["environment"]["versions"]["keras"] and report["data"]["steps_per_epoch"] > 0
    assert list(report["scenarios"]) == list(scenarios)
    for name, row in report["scenarios"].items():
        for tool in ("flaxray", "keras"):
            assert all(len(row[tool][key]) == 2 for key in PER_SEED), (name, tool)
            assert "seconds" in row[tool]
        assert all(key in row["val_loss"] for key in STATS) and "max_rel_diff" in row["rate"]
    assert "piecewise_steps_differing" in report["scenarios"]["step"]["rate"]
    stop = report["scenarios"]["early-stop"]
    assert all(key in stop["stop"] for key in STATS) and all(key in stop["best"] for key in STATS)
    printed = capsys.readouterr().out
    assert "| scenario | flaxray final val loss |" in printed and "| early-stop |" in printed


def test_unknown_scenario_is_one_line(capsys):
    assert keras_parity.main(["--scenarios", "step,warp"]) == 2
    assert "unknown ['warp']" in capsys.readouterr().err
