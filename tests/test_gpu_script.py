"""benchmarks.gpu, the prepared GPU script, runs end to end on the CPU at --tiny settings (its timings are
measured, not asserted), and its budget logic stops what would overrun."""

import json
import math
import sys
import time

import pytest

from benchmarks import gpu, gpu_medmnist, gpu_setup
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
    assert list(parts) == ["throughput", "study", "cnn_vs_ann", "medmnist"]
    assert all(p["status"] == "complete" and positive(p["seconds"]) for p in parts.values()), parts

    a = parts["throughput"]
    assert [(r["method"], r["seeds"]) for r in a["rows"]] == [("auto", 1), ("sequential", 1), ("auto", 2)]
    assert all(r["strategy"] in ("vmap", "map", "loop") for r in a["rows"] if r["method"] == "auto")
    judged = [r for r in a["rows"] if r["method"] == "auto" and r["seeds"] == 2][0]  # --verify-rounds
    assert set(judged["whole_epoch_s"]) == {"vmap", "map", "loop"} and min(judged["whole_epoch_s"].values()) > 0
    rounds = judged["whole_epoch_rounds"]
    assert {c: min(ts) for c, ts in rounds.items()} == judged["whole_epoch_s"] and all(len(ts) >= 1 for ts in rounds.values())
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

    d = parts["medmnist"]  # the recipe on the embedded data whatever the other parts read, a stand-in arch
    assert (d["arch"], d["seeds"], d["epochs"], d["milestones"]) == (gpu_medmnist.TINY["arch"], 2, 2, [1])
    assert d["data"] == {"train": 4164, "val": 1042, "test": 618} and "embedded" in d["source"]
    assert "--recipe medmnist" in d["command"] and d["reused_probe"] and not d["full_length"]
    assert all(positive(d["plan"][k]) for k in ("epoch_s", "compile_s")) and positive(d["train_s"])
    for key, published in (("accuracy", 0.854), ("auc", 0.944)):
        m = d[key]
        assert len(m["per_seed"]) == 2 and all(0 <= v <= 1 for v in m["per_seed"]) and 0 <= m["ensemble"] <= 1
        assert m["ci"][0] <= m["mean"] <= m["ci"][1] and d["published"][key] == published

    md = (out / "gpu.md").read_text()
    assert md.startswith(f"## GPU: {report['device']}") and report["command"] in md
    for heading in ("### Throughput", "### The largest", "### CNN vs ANN", "### MedMNIST"):
        assert heading in md
    assert "| published: MedMNIST v2" in md and "| 0.854 | 0.944 |" in md and "not the published recipe's 100" in md
    printed = capsys.readouterr().out
    assert "!!! --tiny" in printed and all(f"{name}: complete" in printed for name in parts)


def test_medmnist_plan_fits_the_share():
    # 0.5 s an epoch at 8 seeds, 20 s to compile: 100 epochs of the probed program in 60 s; more seeds
    # only with room for another compilation; else fewer epochs, and never none
    assert gpu_medmnist.plan(0.5, 20, 60, 8) == (8, 100)
    assert gpu_medmnist.plan(0.5, 20, 170, 8) == (24, 100)
    assert gpu_medmnist.plan(0.5, 20, 1000, 8) == (gpu_medmnist.MAX_SEEDS, 100)
    assert gpu_medmnist.plan(0.5, 20, 45, 8) == (8, 50)
    assert gpu_medmnist.plan(0.5, 20, 10, 8) == (8, 1)


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
