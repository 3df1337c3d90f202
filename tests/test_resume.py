"""Studies that survive: a run killed (SIGKILL, even mid-checkpoint) or stopped (Ctrl-C) resumes to
the curves of an uninterrupted run, byte for byte; the same flags give the same bytes; crossed
learning rates are grouped and diverged seeds flagged; --out is never silently reused."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flaxray import results
from flaxray.runtime import runner
from flaxray.core.config import TrainConfig, device_data
from flaxray.core.settings import Settings
from flaxray.errors import FlaxrayError
from studies import seed_variance

ROOT = Path(__file__).resolve().parents[1]
# Two archs (two vmapped programs), each crossed with two learning rates of which 1e30 diverges.
STUDY = ["--arch", "dense:8@0.5", "dense:4", "--channels", "1", "--seeds", "2", "--epochs", "3",
         "--batch-size", "512", "--lr", "1e-3", "1e30", "--no-progress"]
GROUPS = {"dense:8@0.5@lr=1e-3", "dense:8@0.5@lr=1e+30", "dense:4@lr=1e-3", "dense:4@lr=1e+30"}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The uninterrupted run every other run is compared with."""
    out = tmp_path_factory.mktemp("clean") / "run"
    assert seed_variance.main([*STUDY, "--out", str(out)]) == 0
    return out


def curves(out: Path) -> bytes:
    return (out / "curves.csv").read_bytes()


def test_same_flags_give_the_same_bytes_and_diverged_seeds_are_flagged(clean, tmp_path):
    out = tmp_path / "again"
    stale = out / "checkpoints" / "0-dense_8_0.5" / "3"  # an older layout's checkpoint
    stale.mkdir(parents=True)
    (stale / "junk").write_text("an older study's checkpoint")
    (out / "curves.csv").write_text("stale")
    (out / "notes.txt").write_text("not the study's")
    assert seed_variance.main([*STUDY, "--out", str(out)]) == 2  # holds an older layout's study: refused
    assert seed_variance.main([*STUDY, "--out", str(out), "--overwrite"]) == 0
    assert curves(out) == curves(clean)  # determinism, and nothing of the old study was reused
    assert (out / "notes.txt").read_text() == "not the study's"
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    assert results.read_run(out)["status"] == "complete"

    study = json.loads((clean / "study.json").read_text())
    assert set(study["summary"]) == set(study["configs"]) == GROUPS
    assert study["configs"]["dense:4@lr=1e+30"]["settings"]["lr"] == 1e30
    assert study["diverged"]["dense:8@0.5@lr=1e-3"] == study["diverged"]["dense:4@lr=1e-3"] == {}
    assert study["diverged"]["dense:8@0.5@lr=1e+30"], "lr=1e30 should blow up a BatchNorm stack"
    rows = list(csv.DictReader((clean / "curves.csv").open()))
    assert {r["arch"] for r in rows} == GROUPS
    for r in rows:
        diverged = study["diverged"][r["arch"]].get(r["seed"])
        assert r["diverged_epoch"] == (str(diverged) if diverged else "")
        assert math.isnan(float(r["value"])) == bool(diverged and int(r["epoch"]) >= diverged), r
        assert float(r["lr"]) == (1e30 if "1e+30" in r["arch"] else 1e-3)
    n_diverged = len(study["diverged"]["dense:8@0.5@lr=1e+30"])
    assert study["summary"]["dense:8@0.5@lr=1e+30"]["final_val_loss"]["n_nonfinite"] == n_diverged


# Run the study, but stop inside the write of the 2nd program's epoch-2 checkpoint: its files are
# written into orbax's temporary folder, not yet renamed. The test kills the process right there.
KILLED_MID_CHECKPOINT = r"""
import sys, time
from orbax.checkpoint._src.path import atomicity

finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def stall(self, *args, **kwargs):
    final = self.get_final()
    if final.parent.parent.name == "dense_4" and final.name == "2":
        print("WRITING CHECKPOINT", flush=True)
        time.sleep(600)
    return await finalize(self, *args, **kwargs)

atomicity.AtomicRenameTemporaryPath.finalize = stall
from studies import seed_variance
sys.exit(seed_variance.main(sys.argv[1:]))
"""


def steps(folder) -> list[str]:
    """The checkpoints in `folder` (orbax's step folders; beside them the run's plan, chunks.json, and
    what its checkpoints cost it, saves.json)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in ("chunks.json", "saves.json"))


def test_sigkill_mid_checkpoint_then_resume_gives_the_same_curves(clean, tmp_path):
    out = tmp_path / "killed"
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_CHECKPOINT, *STUDY, "--out", str(out),
                                 "--checkpoint-every", "1"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=stderr, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            stalled = any(line.strip() == "WRITING CHECKPOINT" for line in proc.stdout)
            assert stalled, (tmp_path / "stderr.txt").read_text()
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    # What a killed study leaves: an unfinished run.json, no result files, a half-written checkpoint.
    assert results.read_run(out)["status"] == "running"
    assert not (out / "curves.csv").exists() and not (out / "study.json").exists()
    assert steps(out / "groups" / "dense_8_0.5" / "checkpoints") == ["3"]
    second = steps(out / "groups" / "dense_4" / "checkpoints")
    assert second[0] == "1" and len(second) == 2 and ".orbax-checkpoint-tmp" in second[1], second

    assert seed_variance.main(["--resume", str(out), "--no-progress"]) == 0
    assert curves(out) == curves(clean)
    run = results.read_run(out)
    assert run["status"] == "complete" and len(run["resumed_utc"]) == 1
    assert steps(out / "groups" / "dense_4" / "checkpoints") == ["3"]
    assert seed_variance.main(["--resume", str(out)]) == 0  # complete: nothing to do


def ctrl_c_in_epoch(monkeypatch, n: int) -> list:
    """Press Ctrl-C while the n-th epoch trained from now runs (counted over every unit and chunk);
    returns the list that gets one entry per epoch trained."""
    seen, real = [], runner.counts_to_numpy

    def hook(counts):
        seen.append(1)
        if len(seen) == n:
            signal.raise_signal(signal.SIGINT)
        return real(counts)

    monkeypatch.setattr(runner, "counts_to_numpy", hook)
    return seen


def test_ctrl_c_saves_the_epoch_then_stops_and_resume_matches(clean, tmp_path, monkeypatch, capsys):
    epochs_done = ctrl_c_in_epoch(monkeypatch, 1)
    out = tmp_path / "stopped"
    assert seed_variance.main([*STUDY, "--checkpoint-every", "2", "--out", str(out)]) == 130
    assert f"--resume {out}" in capsys.readouterr().err
    assert len(epochs_done) == 1, "it should stop after the epoch it was in"
    assert results.read_run(out)["status"] == "interrupted"
    # Saved on the way out, although --checkpoint-every 2 would not have saved epoch 1.
    assert steps(out / "groups" / "dense_8_0.5" / "checkpoints") == ["1"]

    monkeypatch.undo()
    # What a user types first: the same command with --resume added. Equal flags are accepted.
    assert seed_variance.main([*STUDY, "--out", str(out), "--resume", str(out)]) == 0
    assert curves(out) == curves(clean)


def test_ctrl_c_in_a_units_last_epoch_finishes_it_and_stops_before_the_next(clean, tmp_path, monkeypatch):
    """A Ctrl-C in the last epoch of a unit loses nothing: the unit is finished and written; the study
    stops before the next unit, or, after the last one, completes (study.json written, exit 0)."""
    epochs_per_unit = int(STUDY[STUDY.index("--epochs") + 1])
    for unit, code in ((1, 130), (2, 0)):
        seen = ctrl_c_in_epoch(monkeypatch, unit * epochs_per_unit)
        out = tmp_path / f"unit{unit}"
        assert seed_variance.main([*STUDY, "--out", str(out)]) == code
        monkeypatch.undo()
        assert len(seen) == unit * epochs_per_unit, "no epoch of the next unit should start"
        assert (out / "groups" / "dense_8_0.5" / "group.json").exists()
        assert (out / "groups" / "dense_4" / "group.json").exists() == (unit == 2)
        assert results.read_run(out)["status"] == ("complete" if code == 0 else "interrupted")
        if code:
            assert seed_variance.main(["--resume", str(out), "--no-progress"]) == 0
        assert curves(out) == curves(clean)


def test_ctrl_c_in_a_chunks_last_epoch_stops_before_the_next_and_after_the_last_holds_the_result(
        tmp_path, monkeypatch):
    from flaxray.runtime.checkpoint import Stopped
    from flaxray.data import load_dataset

    data = device_data(load_dataset(channels=1))
    config = TrainConfig(arch="dense:4", epochs=2, batch_size=512)
    run = dict(progress=False, max_seeds_per_chunk=1)
    whole = runner.train_seeds(config, data, [0, 1], **run)[1]
    for chunk, raised in ((1, KeyboardInterrupt), (2, Stopped)):
        seen = ctrl_c_in_epoch(monkeypatch, chunk * config.epochs)
        with pytest.raises(raised) as err:
            runner.train_seeds(config, data, [0, 1], checkpoint_dir=tmp_path / f"chunk{chunk}", **run)
        monkeypatch.undo()
        assert len(seen) == chunk * config.epochs and type(err.value) is raised
        if raised is Stopped:  # every epoch trained: the result is the uninterrupted run's
            assert all(np.array_equal(err.value.result[1][k], v, equal_nan=True) for k, v in whole.items())


def test_a_checkpoint_of_other_settings_is_refused(clean):
    from flaxray.data import load_dataset

    data = device_data(load_dataset(channels=1))
    config = TrainConfig(arch="dense:4", epochs=3, batch_size=512)
    with pytest.raises(FlaxrayError, match="other settings.*seeds"):
        runner.train_seeds(config, data, [7, 8, 7, 8], [Settings(lr=lr) for lr in (1e-3, 1e-3, 1e30, 1e30)],
                           progress=False, checkpoint_dir=clean / "groups" / "dense_4" / "checkpoints")


@pytest.mark.parametrize("args, needle", [
    (["--resume", "nowhere"], "run.json"),
    (["--resume", "{clean}", "--epochs", "5"], "--epochs"),
    (["--resume", "{clean}", "--overwrite"], "--overwrite"),
    (["--arch", "dense:4", "--out", "{clean}"], "other settings"),
    (["--arch", "dense:4", "--checkpoint-every", "-1"], "--checkpoint-every"),
])
def test_out_folder_rules_are_one_line_errors(clean, capsys, args, needle):
    assert seed_variance.main([a.format(clean=clean) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "bands.png"
    target.write_bytes(b"complete")
    with pytest.raises(RuntimeError), results.atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path  # writers that go by the suffix still work
        tmp.write_bytes(b"half")
        raise RuntimeError("killed while writing")
    assert target.read_bytes() == b"complete" and list(tmp_path.iterdir()) == [target]


def test_checkpoint_every_0_trains_the_same_curves_and_keeps_no_checkpoint(clean, tmp_path):
    out = tmp_path / "nockpt"
    assert seed_variance.main([*STUDY, "--out", str(out), "--checkpoint-every", "0"]) == 0
    assert curves(out) == curves(clean)
    # Only the plan the unit ran in (chunks.json: its chunk size and strategy), no checkpoint.
    assert not any(p.is_file() and p.name != "chunks.json" for p in out.glob(f"groups/*/{results.CHECKPOINTS}/**/*"))


def test_checkpoint_every_takes_epochs_or_a_wall_time():
    from flaxray.runtime.checkpoint import every

    assert every(1) == every("1") == (1, 0.0) and every(0) == (0, 0.0)
    assert every("90s") == (0, 90.0) and every("5min") == (0, 300.0) and every("1.5h") == (0, 5400.0)
    for bad in ("-1", "0s", "5 minutes", "1.5", "m"):
        with pytest.raises(FlaxrayError, match="--checkpoint-every"):
            every(bad)


def test_a_wall_time_policy_saves_when_it_is_due_and_after_the_last_epoch(tmp_path, capsys):
    from tests.test_train import CONFIG, tiny_dataset

    data, config = device_data(tiny_dataset(), eval_batch_size=16), TrainConfig(**{**CONFIG, "epochs": 3})
    _, want = runner.train_seeds(config, data, [0, 1], progress=False)
    for policy in ("1h", "0.001s", 1):  # orbax keeps the latest step only
        folder = tmp_path / str(policy)
        _, got = runner.train_seeds(config, data, [0, 1], checkpoint_dir=folder, checkpoint_every=policy)
        assert steps(folder) == ["3"]
        saves = 1 if policy == "1h" else 3
        assert f"{saves} checkpoint{'s' * (saves > 1)} held training up for" in capsys.readouterr().out
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
