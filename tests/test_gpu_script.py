"""benchmarks.gpu, the prepared GPU script, runs end to end on the CPU at --tiny settings (its timings are
measured, not asserted), and its budget logic stops what would overrun."""

import json
import math
import sys
import time

import pytest

from benchmarks import gpu, gpu_setup
from flaxray.errors import FlaxrayError


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_tiny_run_writes_every_part(tmp_path, capsys, monkeypatch):
    for name in ("tensorflow", "tensorflow_datasets", "keras"):  # as on the device machine: importing them fails
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "gpu"
    assert gpu.main(["--tiny", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "gpu.json").read_text())
    assert report["tiny"] and report["device"] and report["environment"]["versions"]["jax"]
    assert report["command"] == f"python -m benchmarks.gpu --tiny --out {out} --no-progress"
    parts = report["parts"]
    assert list(parts) == ["throughput", "study", "cnn_vs_ann"]
    assert all(p["status"] == "complete" and positive(p["seconds"]) for p in parts.values()), parts

    a = parts["throughput"]
    assert [(r["method"], r["seeds"]) for r in a["rows"]] == [("auto", 1), ("sequential", 1), ("auto", 2)]
    assert all(r["strategy"] in ("vmap", "map", "loop") for r in a["rows"] if r["method"] == "auto")
    assert all(positive(r["seed_epochs_per_s"]) and r["steps_per_epoch"] == 2 for r in a["rows"])
    assert a["data"] == {"train": 64, "val": 64, "test": 64}  # the prepared tiny .npz, read back by the library

    b = parts["study"]
    assert (b["seeds"], b["epochs"]) == (2, 1) and b["plan"]["from_seeds"] == 2
    assert b["checkpoints"] >= 1 and positive(b["checkpoint_s"]) and 0 < b["checkpoint_share"] < 1
    for key in ("train_s", "seed_epochs_per_s", "final_val_loss", "final_val_auc", "wall_s"):
        assert positive(b[key]), key

    c = parts["cnn_vs_ann"]
    assert set(c["models"]) == {c["cnn"], c["ann"]} and all(positive(s) for s in c["probe_epoch_s"].values())
    for m in c["models"].values():
        assert positive(m["train_s"]) and positive(m["seed_epochs_per_s"]) and 0 <= m["accuracy"] <= 1
    assert 0 <= c["p_cnn_better"] <= 1 and c["verdict"]

    md = (out / "gpu.md").read_text()
    assert md.startswith(f"## GPU: {report['device']}") and report["command"] in md
    for heading in ("### Throughput", "### The largest", "### CNN vs ANN"):
        assert heading in md
    printed = capsys.readouterr().out
    assert "!!! --tiny" in printed and all(f"{name}: complete" in printed for name in parts)


def test_deadline_interrupts_and_says_so():
    def slow():
        time.sleep(5)
        return "done"

    assert gpu.within(time.monotonic() + 0.2, slow) == (None, True)  # the sleep was interrupted
    assert gpu.within(time.monotonic() + 5, lambda: "quick") == ("quick", False)


def test_preflight_names_a_package_the_parts_would_miss(monkeypatch):
    assert len(gpu_setup.DEVICE_COMMAND) < 2000 and "benchmarks.gpu" in gpu_setup.DEVICE_COMMAND  # the device tool's limit
    gpu_setup.preflight()  # everything is here
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as a machine without it: importing it fails
    with pytest.raises(FlaxrayError, match=r"cannot run the parts: tqdm: ModuleNotFoundError"):
        gpu_setup.preflight()
