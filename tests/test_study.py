"""The seed_variance study as a user runs it: files written, summary printed, bad input = one line."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from flaxray.models import conv
from flaxray.results import read_curves_csv
from studies import seed_variance

ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, n=12, size=20):
    """A tiny Kaggle-layout folder: a few patients per class, several images each."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls, name in (("NORMAL", "IM-{:04d}-{:04d}.jpeg"), ("PNEUMONIA", "person{}_bacteria_{}.jpeg")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                patient = i // 2 + (100 if split == "test" else 0)
                pixels = rng.integers(0, 255, (size, size), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / name.format(patient, i))
    return root


def test_tiny_study_on_a_folder_writes_every_file(tmp_path, capsys):
    data = make_folder(tmp_path / "xray")
    out = tmp_path / "run"
    argv = ["--arch", "dense:8@0.5", "dense:4", "--data", str(data), "--image-size", "8", "--seeds", "3",
            "--first-seed", "5", "--epochs", "2", "--batch-size", "4", "--out", str(out), "--no-progress",
            "--cache-dir", str(tmp_path / "cache")]
    assert seed_variance.main(argv) == 0
    printed = capsys.readouterr().out
    assert "dense:8@0.5" in printed and "dense:4" in printed and "rank" in printed.lower()
    assert "of dense:4 sits at the" in printed and "Seeds a claim needs:" in printed

    histories, seeds = read_curves_csv(out / "curves.csv")
    assert seeds == {"dense:8@0.5": [5, 6, 7], "dense:4": [5, 6, 7]}
    for metric in ("loss", "accuracy", "precision", "recall", "auc"):
        assert histories["dense:4"][metric].shape == (3, 2)
        assert histories["dense:4"][f"val_{metric}"].shape == (3, 2)
    assert np.isfinite(histories["dense:8@0.5"]["val_loss"]).all()

    study = json.loads((out / "study.json").read_text())
    assert study["configs"]["dense:4"]["epochs"] == 2
    assert study["environment"]["versions"]["jax"] and study["environment"]["device"]
    assert study["data"]["image_size"] == 8
    assert set(study["summary"]) == {"dense:8@0.5", "dense:4"}
    assert study["summary"]["dense:4"]["final_val_loss"]["n"] == 3
    assert [row["arch"] for row in study["ranking"]]
    assert sorted(study["analysis"]["luck"]["dense:4"]) == ["5", "6", "7"]  # by seed, as trained
    assert sorted(study["analysis"]["luck"]["dense:4"].values()) == [0, 50, 100]  # three seeds, no ties

    image = matplotlib.image.imread(out / "bands.png")
    assert image.shape[0] > 400 and image.shape[1] > 600

    # The same command again reuses every finished arch: nothing is trained, the same bytes are written.
    before = (out / "curves.csv").read_bytes()
    assert seed_variance.main(argv) == 0
    assert "reused 2 finished arch(s)" in capsys.readouterr().out
    assert (out / "curves.csv").read_bytes() == before
    # Units written before the settings were one pytree (group.json format 1: the rates as `lrs`, the config
    # with `lr: null`) are read through flaxray.study.compat: reused as they are, the same bytes written.
    for record in out.glob("groups/*/group.json"):
        meta = json.loads(record.read_text())
        fp = meta["fingerprint"]
        old = {"config": {**fp["config"], "lr": None}, "lrs": fp["settings"]["lr"], "seeds": fp["seeds"],
               "data": fp["data"]}
        record.write_text(json.dumps({**meta, "format": 1, "fingerprint": old}))
    assert seed_variance.main(argv) == 0
    assert "reused 2 finished arch(s)" in capsys.readouterr().out
    assert (out / "curves.csv").read_bytes() == before
    # Other settings in the same folder are refused, naming the difference, unless asked to overwrite.
    assert seed_variance.main([*argv, "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "config.epochs 2 here, 3 asked" in err and "--overwrite" in err and err.count("\n") == 1


@pytest.mark.numeric
def test_replay_trains_a_seed_again_to_its_exact_curves_and_params(tmp_path, capsys, monkeypatch):
    """`--replay OUT --seed K` runs the chunk seed K was trained in, as it was, and compares bit for bit;
    a curve that differs from the recorded one (here: edited in the file) is reported, exit 1; a replay
    in another form of the convolutions (FLAXRAY_LAYERS) is refused, naming the one that replays it."""
    data = make_folder(tmp_path / "xray")
    out = tmp_path / "all"
    common = ["--data", str(data), "--image-size", "8", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert seed_variance.main(["--arch", "dense:8@0.5", "--epochs", "2", "--batch-size", "4", "--seeds", "5",
                               "--lr", "1e-3", "3e-3", "--chunk", "4", "--out", str(out), *common]) == 0
    capsys.readouterr()
    assert seed_variance.main(["--replay", str(out), "--seed", "3", *common]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "seed 3 of dense:8@0.5@lr=1e-3 (lanes 0..3 trained again): curves and parameters identical, bit for bit",
        "seed 3 of dense:8@0.5@lr=3e-3 (lanes 8..9 trained again): curves and parameters identical, bit for bit"]
    unit = json.loads((out / "groups" / "dense_8_0.5" / "group.json").read_text())
    trained = unit["program"]["layers"]
    # The checkpoints' cost, as the runner recorded it: 10 lanes in chunks of 4 (3 chunks), saved at the end at least.
    saves = unit["checkpoints"]
    assert saves["checkpoints"] >= 3 and 0 <= saves["held_s"] <= saves["wall_s"]
    assert trained == conv.form()  # on the CPU: shifted
    monkeypatch.setenv("FLAXRAY_LAYERS", {"shifted": "native", "native": "shifted"}[trained])
    assert seed_variance.main(["--replay", str(out), "--seed", "3", *common]) == 2
    err = capsys.readouterr().err
    assert f"trained with {trained} convolutions" in err and f"FLAXRAY_LAYERS={trained}" in err
    assert err.count("\n") == 1
    monkeypatch.delenv("FLAXRAY_LAYERS")
    # A record from before the choice existed has no "layers": it was shifted, and replays as such (below).
    record = out / "groups" / "dense_8_0.5" / "group.json"
    meta = json.loads(record.read_text())
    del meta["program"]["layers"]
    record.write_text(json.dumps(meta))
    curves = out / "groups" / "dense_8_0.5" / "curves.csv"
    rows = curves.read_text().splitlines()
    edited = [r.replace(",val,loss,", ",val,loss,1") if r.startswith("dense:8@0.5@lr=1e-3,3,2,val,loss,") else r
              for r in rows]
    assert edited != rows
    curves.write_text("\n".join(edited) + "\n")
    assert seed_variance.main(["--replay", str(out), "--seed", "3", *common]) == 1
    assert "DIFFERENT: curves by up to" in capsys.readouterr().out
    assert seed_variance.main(["--replay", str(out), "--seed", "7", *common]) == 2
    assert "seed 7 is not one of the seeds" in capsys.readouterr().err


def test_default_study_runs_on_the_embedded_data(tmp_path, capsys):
    """The README's first command, shrunk: no --data, the embedded 28x28 set."""
    out = tmp_path / "run"
    argv = ["--arch", "dense:8@0.5", "--seeds", "2", "--epochs", "1", "--batch-size", "128", "--channels", "1",
            "--out", str(out), "--no-progress"]
    assert seed_variance.main(argv) == 0
    study = json.loads((out / "study.json").read_text())
    assert study["data"]["image_size"] == 28 and study["data"]["channels"] == 1
    assert "embedded" in study["data"]["source"]
    assert study["data"]["train"]["n"] > 3000 and study["data"]["val"]["n"] > 500


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "studies.seed_variance", *args, "--no-progress"],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_input_is_one_line_no_traceback(tmp_path, capsys):
    data = make_folder(tmp_path / "xray", n=4)
    empty_class = make_folder(tmp_path / "empty", n=4)
    for f in (empty_class / "train" / "NORMAL").iterdir():
        f.unlink()
    (tmp_path / "flat").mkdir()
    cases = [
        (["--data", str(tmp_path / "missing")], [str(tmp_path / "missing")]),
        (["--data", str(tmp_path / "flat")], [str(tmp_path / "flat"), "train"]),
        (["--data", str(empty_class), "--image-size", "8"], ["NORMAL"]),
        (["--arch", "resnet9000"], ["resnet9000", "pyramid_plain"]),
        (["--arch", "dense:12@2"], ["dense:12@2"]),
        (["--seeds", "0"], ["--seeds"]),
        (["--data", str(data), "--image-size", "2"], ["image"]),
        (["--vary", "init,luck"], ["luck"]),
        (["--dropout", "1"], ["--dropout", "[0, 1)"]),
        (["--arch", "pyramid_plain", "--dropout", "0.2"], ["--dropout", "pyramid_plain", "no Dropout"]),
        (["--weight-decay=-1e-4"], ["--weight-decay"]),
        (["--checkpoint-every", "soon"], ["--checkpoint-every", "5min"]),
    ]
    # One case through a real process (no traceback reaches the terminal), the rest in this one.
    for i, (args, needles) in enumerate(cases):
        argv = [*args, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")]
        if i == 0:
            assert_one_line_error(cli(*argv), *needles)
            continue
        assert seed_variance.main([*argv, "--no-progress"]) == 2, args
        err = capsys.readouterr().err
        assert_one_line_error(SimpleNamespace(returncode=2, stderr=err), *needles)
    assert not (tmp_path / "out").exists()  # nothing written on bad input


def test_help_lists_every_flag_with_its_default():
    result = cli("--help")
    assert result.returncode == 0
    for flag in ("--arch", "--seeds", "--first-seed", "--epochs", "--batch-size", "--lr", "--image-size",
                 "--channels", "--data", "--out", "--vary", "--class-weight", "--strict", "--resume", "--overwrite",
                 "--checkpoint-every", "--replay", "--seed", "--data-dir", "--dropout", "--weight-decay"):
        assert flag in result.stdout
    text = " ".join(result.stdout.split())  # argparse wraps to the terminal's width
    assert "default: 16" in text and "default: 32" in text and "default: 5min)" in text


def test_a_study_the_disk_cannot_hold_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import shutil

    from flaxray.errors import FlaxrayError
    from flaxray.runtime.scale import param_count
    from flaxray.study.study import Study, disk_needed, prepare

    study = Study(archs=("dense:8",), seeds=(0, 1, 2), settings={"lr": (1e-3, 1e-2)}, epochs=1)
    params = param_count("dense:8", (28, 28, 3)) * 4 * 6  # 3 seeds x 2 rates, float32
    config = {"dense:8": study.config("dense:8", 2)}
    assert disk_needed(study, config, (28, 28, 3)) == params * (1 + 3) + params * 3  # a second checkpoint while saving
    assert disk_needed(study, config, (28, 28, 3), checkpoints=False) == params
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=params * 2))
    with pytest.raises(FlaxrayError, match=r"needs up to .* GiB on disk.*--checkpoint-every 0"):
        prepare(study, tmp_path / "out", progress=False)
    prepare(study, tmp_path / "out", progress=False, checkpoint_every=0)  # final params alone fit
    assert not (tmp_path / "out").exists()
