"""A finished study in pandas and TensorBoard (flaxray.report.views, python -m studies.tensorboard): the
DataFrames equal the study's files, the event files read back with TensorBoard's own reader equal
curves.csv (per seed) and stats.band (the aggregate runs), bad folders are one-line errors."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_chest_folder  # noqa: E402
from flaxray import results
from flaxray.analysis import stats
from flaxray.report import views
from flaxray.errors import FlaxrayError
from studies import seed_variance
from studies import tensorboard as tb_cli

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("dense:8@0.5", "dense:4")
METRICS = ("loss", "accuracy", "precision", "recall", "auc")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny real study: 2 groups x 3 seeds x 2 epochs on 8x8 images."""
    tmp = tmp_path_factory.mktemp("views")
    data = write_chest_folder(tmp / "xray")
    out = tmp / "study"
    argv = ["--arch", *GROUPS, "--data", str(data), "--image-size", "8", "--seeds", "3", "--epochs", "2",
            "--batch-size", "8", "--out", str(out), "--no-progress", "--cache-dir", str(tmp / "cache")]
    if importlib.util.find_spec("tensorboardX") is not None:
        argv += ["--tensorboard", str(tmp / "tb-of-the-study")]  # the study's own flag writes them too
    assert seed_variance.main(argv) == 0
    return out


def test_the_study_flag_writes_the_same_runs(study):
    pytest.importorskip("tensorboardX")
    written = sorted(p.parent.relative_to(study.parent / "tb-of-the-study").as_posix()
                     for p in (study.parent / "tb-of-the-study").rglob("events.out.tfevents.*"))
    assert len(written) == len(GROUPS) * (3 + 3) and all("/" in w for w in written)  # 3 seeds + mean, ci_low, ci_high


def events(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run folder, as TensorBoard reads it: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected(values) -> list[tuple[int, float]]:
    """(epoch, value) as TensorBoard stores a scalar (float32), non-finite values left out."""
    return [(e, float(np.float32(v))) for e, v in enumerate(values, start=1) if np.isfinite(v)]


def test_load_study_is_the_files(study):
    curves, summary = views.load_study(study)
    assert curves.shape == (len(GROUPS) * 3 * 2 * 2 * len(METRICS), 8)
    assert list(curves.columns) == list(views.COLUMNS)
    assert {c: str(t) for c, t in curves.dtypes.items()} == {
        "arch": "str", "seed": "int64", "epoch": "int64", "split": "str", "metric": "str", "value": "float64",
        "lr": "float64", "diverged_epoch": "Int64"}
    assert curves["diverged_epoch"].isna().all() and (curves["lr"] > 0).all()

    # the README's three lines, against numpy on the hand-read CSV
    val = curves[curves["split"] == "val"]
    table = val.groupby(["arch", "metric", "epoch"])["value"].agg(["mean", "std"])
    histories, seeds = results.read_curves_csv(study / "curves.csv")
    for arch in GROUPS:
        assert seeds[arch] == [0, 1, 2]
        for metric in METRICS:
            h = histories[arch][f"val_{metric}"]
            np.testing.assert_allclose(table.loc[(arch, metric), "mean"].to_numpy(), h.mean(axis=0), rtol=1e-12)
            np.testing.assert_allclose(table.loc[(arch, metric), "std"].to_numpy(), h.std(axis=0, ddof=1), rtol=1e-12)
            rows = val[(val["arch"] == arch) & (val["metric"] == metric)]
            got = rows.pivot(index="seed", columns="epoch", values="value").to_numpy()
            assert np.array_equal(got, h)  # read back exactly (round-trip float parsing)

    study_json = json.loads((study / "study.json").read_text())
    keys = {(a, k) for a, per_key in study_json["summary"].items() for k in per_key}
    assert len(summary) == len(keys) and set(zip(summary["arch"], summary["key"])) == keys
    row = summary[(summary["arch"] == "dense:4") & (summary["key"] == "final_val_loss")].iloc[0]
    for stat, value in study_json["summary"]["dense:4"]["final_val_loss"].items():
        assert row[stat] == value or (value is None and np.isnan(row[stat])), stat
    assert str(summary["n"].dtype) == "int64" and str(summary["mean"].dtype) == "float64"


def test_tensorboard_events_are_the_curves_and_the_band(study, tmp_path):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    logdir = tmp_path / "tb"
    before = (study / "curves.csv").read_bytes()
    assert views.write_tensorboard(study, logdir) == logdir
    views.write_tensorboard(study, logdir)  # again: replaces, does not duplicate
    assert (study / "curves.csv").read_bytes() == before
    histories, seeds = results.read_curves_csv(study / "curves.csv")
    runs = {"dense:8@0.5": "dense_8_0.5", "dense:4": "dense_4"}
    assert views.run_names(GROUPS) == runs
    assert sorted(p.name for p in logdir.iterdir()) == sorted(runs.values())
    tags = {f"{split}/{m}" for split in ("train", "val") for m in METRICS}
    for arch, run in runs.items():
        folders = [f"seed_{s}" for s in seeds[arch]] + list(views.AGGREGATES)
        assert sorted(p.name for p in (logdir / run).iterdir()) == sorted(folders)
        assert all(len(list((logdir / run / f).glob("events.out.tfevents.*"))) == 1 for f in folders)
        curves = {f"{'val' if k.startswith('val_') else 'train'}/{k.removeprefix('val_')}": v
                  for k, v in histories[arch].items()}
        assert set(curves) == tags
        for s, seed in enumerate(seeds[arch]):
            assert events(logdir / run / f"seed_{seed}") == {t: expected(c[s]) for t, c in curves.items()}
        bands = {t: stats.band(c, confidence=0.95) for t, c in curves.items()}
        for i, name in enumerate(views.AGGREGATES):
            assert events(logdir / run / name) == {t: expected(b[i]) for t, b in bands.items()}


def test_tensorboard_leaves_out_diverged_epochs_and_keeps_names_apart(study, tmp_path):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    out = tmp_path / "study"
    out.mkdir()
    shutil.copy(study / "study.json", out)
    histories, seeds = results.read_curves_csv(study / "curves.csv")
    h = {"dense:8": {k: v.copy() for k, v in histories["dense:4"].items()},  # two names with one slug
         "dense_8": histories["dense:8@0.5"]}
    for v in h["dense:8"].values():
        v[1, 1:] = np.nan  # seed 1 diverged in epoch 2
        v[2, :] = np.nan  # seed 2 in epoch 1
    results.write_curves_csv(out / "curves.csv", h, {a: seeds["dense:4"] for a in h},
                             diverged={"dense:8": [0, 2, 1], "dense_8": [0, 0, 0]})
    curves, _ = views.load_study(out)
    assert curves.loc[curves["arch"] == "dense:8", "diverged_epoch"].dropna().unique().tolist() == [2, 1]

    runs = views.run_names(h)
    assert runs["dense_8"] != runs["dense:8"] and all(r.startswith("dense_8-") for r in runs.values())
    logdir = views.write_tensorboard(out, tmp_path / "tb", confidence=0.9)
    seed1 = events(logdir / runs["dense:8"] / "seed_1")
    assert seed1["val/loss"] == expected(h["dense:8"]["val_loss"][1]) and len(seed1["val/loss"]) == 1
    assert events(logdir / runs["dense:8"] / "seed_2") == {}
    mean, low, high = stats.band(h["dense:8"]["val_loss"], confidence=0.9)  # epoch 2: one finite seed
    assert events(logdir / runs["dense:8"] / "mean")["val/loss"] == expected(mean)
    assert events(logdir / runs["dense:8"] / "ci_low")["val/loss"] == expected(low)
    assert len(expected(low)) == 1 and len(expected(mean)) == 2


def test_cli_writes_and_prints_the_command(study, tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    assert tb_cli.main([str(study), "--logdir", str(tmp_path / "tb")]) == 0
    printed = capsys.readouterr().out
    assert f"tensorboard --logdir {tmp_path / 'tb'}" in printed and "dense_8_0.5/seed_K" in printed


def test_bad_folders_are_one_line_errors(study, tmp_path, capsys, monkeypatch):
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(study / "curves.csv", half)
    no_curves = tmp_path / "no_curves"
    no_curves.mkdir()
    shutil.copy(study / "study.json", no_curves)
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(study / "study.json", broken)
    (broken / "curves.csv").write_text("epoch,value\n1,0.5\n")
    cases = {tmp_path / "missing": "is not a folder", half: f"{half / 'study.json'} is missing",
             no_curves: f"{no_curves / 'curves.csv'} is missing",
             broken: f"cannot read {broken / 'curves.csv'}: columns epoch,value"}
    for folder, message in cases.items():
        with pytest.raises(FlaxrayError) as err:
            views.load_study(folder)
        assert message in str(err.value) and "\n" not in str(err.value)
        assert tb_cli.main([str(folder), "--logdir", str(tmp_path / "tb")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # the extra not installed
    assert tb_cli.main([str(study), "--logdir", str(tmp_path / "tb")]) == 2
    assert "pip install 'flaxray[tensorboard]'" in capsys.readouterr().err


def test_views_never_import_jax(study):
    code = (f"import sys; from flaxray.report import views; views.load_study({str(study)!r}); "
            "assert not [m for m in ('jax', 'flax', 'tensorflow') if m in sys.modules], sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
