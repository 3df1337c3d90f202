"""Several data sets in one study: the aggregates across tasks against rliable itself, the per-task
normalisation, the spec and flags, and a tiny study on two data sets end to end (its per-data-set studies,
the comparison's section and figures, reuse on a rerun)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest

from flaxray.analysis import tasks
from flaxray.errors import FlaxrayError
from flaxray.study.spec import DataSpec, Study, data_name
from studies import architecture_search, seed_variance


def _rliable():
    """rliable 1.2.0's `metrics` and `library` (the [dev] extra). Its `library` imports `arch.bootstrap`, and
    arch's own __init__ (its volatility models, which rliable does not use) fails under pandas 3; so the
    `arch` package is entered without running that __init__."""
    metrics = pytest.importorskip("rliable.metrics")
    if "arch" not in sys.modules:
        spec = importlib.util.find_spec("arch")
        if spec is None:
            pytest.skip("arch (rliable's bootstrap) is not installed")
        shell = types.ModuleType("arch")
        shell.__path__ = list(spec.submodule_search_locations)
        sys.modules["arch"] = shell
    from rliable import library

    return metrics, library


def _cases():
    """Random (runs, tasks) score pairs of several shapes, with ties within and across archs."""
    rng = np.random.default_rng(30)
    for runs, tasks_, ties in ((5, 3, False), (8, 1, False), (3, 6, True), (12, 4, True)):
        x, y = rng.random((runs, tasks_)), rng.random((runs, tasks_))
        if ties:
            x, y = np.round(x, 1), np.round(y, 1)
            y[:, 0] = x[:, 0]  # a task where both archs' runs are equal
        yield x, y


def test_point_estimates_equal_rliables_metrics():
    metrics, _ = _rliable()
    for x, y in _cases():
        assert tasks.mean(x) == metrics.aggregate_mean(x)
        assert tasks.median(x) == metrics.aggregate_median(x)
        assert tasks.iqm(x) == metrics.aggregate_iqm(x)
        assert tasks.optimality_gap(x) == metrics.aggregate_optimality_gap(x)
        assert tasks.improvement(x, y) == metrics.probability_of_improvement(x, y)
        assert tasks.improvement(y, x) == metrics.probability_of_improvement(y, x)


def test_intervals_and_profiles_are_rliables_under_the_same_random_stream():
    # rliable draws its stratified resamples from numpy's global legacy generator; seeded alike, the two
    # resample the same runs, so the CIs are identical, not merely close.
    metrics, library = _rliable()
    reps = 300
    for seed, (x, y) in enumerate(_cases()):
        def four(s):
            return np.array([metrics.aggregate_iqm(s), metrics.aggregate_mean(s), metrics.aggregate_median(s),
                             metrics.aggregate_optimality_gap(s)])

        np.random.seed(seed)
        point, cis = library.get_interval_estimates({"x": x}, four, reps=reps)
        got = tasks.interval(lambda s: np.stack([f(s) for f in tasks.AGGREGATES.values()], axis=-1), [x],
                             reps=reps, seed=seed)
        np.testing.assert_array_equal(got[0], point["x"])
        np.testing.assert_array_equal(np.stack(got[1:]), cis["x"])

        np.random.seed(seed)
        point, cis = library.get_interval_estimates(
            {"xy": [x, y]}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=reps)
        got = tasks.interval(tasks.improvement, [x, y], reps=reps, seed=seed)
        assert got[0] == point["xy"][0] and [got[1], got[2]] == list(cis["xy"].ravel())

        np.random.seed(seed)
        profiles, bands = library.create_performance_profile({"x": x}, tasks.TAUS, reps=reps)
        got = tasks.interval(tasks.profile, [x], reps=reps, seed=seed)
        np.testing.assert_array_equal(got[0], profiles["x"])
        np.testing.assert_array_equal(np.stack(got[1:]), bands["x"])


def test_normalise_min_max_per_task_higher_better():
    values = {"a": {"p": np.array([0.2, 0.4]), "q": np.array([0.6, np.nan])},  # {task: {arch: per seed}}
              "b": {"p": np.array([10.0, 30.0]), "q": np.array([20.0, 50.0])},
              "c": {"p": np.array([1.0, 1.0]), "q": np.array([1.0, 1.0])}}
    s = tasks.normalise(values)  # {arch: (seeds, tasks)}: the task's best run 1, its worst 0
    np.testing.assert_allclose(s["p"], [[1.0, 1.0, 1.0], [0.5, 0.5, 1.0]])
    np.testing.assert_allclose(s["q"], [[0.0, 0.75, 1.0], [0.0, 0.0, 1.0]])  # a diverged run: 0; equal runs: 1
    # A score, higher better: the same numbers the other way round; any affine rescaling of a task: the same scores.
    up = tasks.normalise({t: {a: -v for a, v in d.items()} for t, d in values.items()}, lower_is_better=False)
    np.testing.assert_allclose(up["p"], s["p"])
    scaled = tasks.normalise({**values, "b": {a: 3 * v + 7 for a, v in values["b"].items()}})
    np.testing.assert_allclose(scaled["p"], s["p"])


def test_analyse_orders_by_the_iqms_lower_end_and_a_dominant_arch_leads():
    rng = np.random.default_rng(1)
    values = {t: {"good": rng.normal(0.3, 0.02, 6), "bad": rng.normal(0.6, 0.02, 6), "mid": rng.normal(0.45, 0.2, 6)}
              for t in ("t1", "t2", "t3")}
    a = tasks.analyse(values, reps=200)
    assert a["order"][0] == "good" and a["order"][-1] == "bad"
    assert a["improvement"]["p"][0, -1] == 1.0 and np.isnan(a["improvement"]["p"][0, 0])
    agg = a["aggregates"]["good"]["iqm"]
    assert agg["value_ci_low"] <= agg["value"] <= agg["value_ci_high"]
    lows = [a["aggregates"][x]["iqm"]["value_ci_low"] for x in a["order"]]
    assert lows == sorted(lows, reverse=True)
    assert a["scores"]["good"].shape == (6, 3) and a["profiles"]["good"]["value"][0] == 1.0


def test_spec_names_several_data_sets_and_one_stays_as_it_was():
    one = Study(archs=("dense:4",), data=(DataSpec("a/x.npz"),))
    assert one.data == DataSpec("a/x.npz")
    assert one.record() == Study(archs=("dense:4",), data=DataSpec("a/x.npz")).record()
    several = Study(archs=("dense:4",), data=(DataSpec("a/x.npz"), DataSpec("b/x"), DataSpec("tfds:mnist"), DataSpec()))
    assert list(several.datasets) == ["x", "x-2", "mnist", "embedded"]
    assert several.on("x-2").data == DataSpec("b/x")
    assert Study.from_record(json.loads(json.dumps(several.record()))).data == several.data
    assert data_name(DataSpec("../shared/data/chest_xray/")) == "chest_xray"
    with pytest.raises(FlaxrayError, match="listed twice"):
        Study(data=(DataSpec("a.npz"), DataSpec("a.npz")))
    with pytest.raises(FlaxrayError, match="folder's name"):
        Study(data={"a/b": DataSpec("a.npz"), "c": DataSpec()})


def test_flags_refuse_in_one_line(capsys, tmp_path):
    data = str(tmp_path / "d.npz")
    for main, argv, says in (
        (seed_variance.main, ["--data", data, data], "--data lists a data set twice"),
        (architecture_search.main, ["--race", "--data", data, "embedded"], "--race takes one --data"),
        (seed_variance.main, ["--arch", "dense:4", "--data", "embedded", str(tmp_path / "none.npz"),
                              "--out", str(tmp_path / "o")], "none.npz"),
    ):
        assert main(argv + ["--no-progress"]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def _npz(path, classes, seed):
    """Images of 8x8 whose class shows in their brightness."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, 160)
    x = np.clip(rng.normal(60 + 60 * y[:, None, None], 30, (160, 8, 8)), 0, 255).astype(np.uint8)
    np.savez(path, x_train=x[:100], y_train=y[:100], x_val=x[100:], y_val=y[100:])
    return str(path)


def test_two_data_sets_end_to_end_then_reused(tmp_path, capsys):
    import flaxray

    a, b, out = _npz(tmp_path / "two.npz", 2, 0), _npz(tmp_path / "three.npz", 3, 1), tmp_path / "s"
    argv = ["--arch", "dense:8", "dense:4", "--seeds", "2", "--epochs", "1", "--data", a, b, "--out", str(out),
            "--no-progress", "--checkpoint-every", "0"]
    assert architecture_search.main(argv) == 0
    printed = capsys.readouterr().out
    assert "two: best by its own ranking" in printed and "optimality gap" in printed
    for name in ("two", "three"):  # each data set: the files a study on it alone writes
        for f in ("study.json", "report.md", "bands.png", "curves.csv"):
            assert (out / "datasets" / name / f).is_file()
    record = json.loads((out / "datasets.json").read_text())
    assert record["analysis"]["tasks"] == ["two", "three"] and record["value"] == "final_val_loss"
    three = json.loads((out / "datasets" / "three" / "study.json").read_text())  # a study of that data set alone
    assert three["data"]["class_names"] == ["0", "1", "2"] and three["spec"]["data"]["path"] == b
    md = (out / "report.md").read_text()
    for part in ("## Across data sets", "optimality gap", "](datasets_profiles.png)", "](datasets/two/report.md)"):
        assert part in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2
    # The same study from Python into the same folder: every arch of every data set reused, the same verdict.
    again = flaxray.run(Study(archs=("dense:8", "dense:4"), data=(DataSpec(a), DataSpec(b)), seeds=(0, 1), epochs=1,
                              kind="architecture_search"), out, progress=False, checkpoint_every=0)
    assert sorted(again.reused) == sorted(f"{g} on {d}" for g in ("dense:8", "dense:4") for d in ("two", "three"))
    assert again.analysis["order"] == record["analysis"]["order"]
    # What takes one study's folder, given the top folder, says which folders to pass, in one line.
    from studies import inspect

    for call in (lambda: flaxray.load_study(out), lambda: flaxray.load_trained(out)):
        with pytest.raises(FlaxrayError, match="several data sets"):
            call()
    capsys.readouterr()
    assert inspect.main([str(out), "--no-progress"]) == 2
    assert architecture_search.main(["--replay", str(out), "--seed", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(f"pass one, e.g. {out / 'datasets' / 'three'}" in line for line in err)


def test_resume_of_several_data_sets_reads_them_back_from_where_the_study_started(tmp_path, monkeypatch):
    import argparse

    from studies import _cli

    started, folder = tmp_path / "started", tmp_path / "started" / "runs" / "s"
    folder.mkdir(parents=True)
    argv = ["--arch", "dense:4", "--data", "a.npz", "embedded", "--out", "runs/s"]
    spec = Study(archs=("dense:4",), data=(DataSpec("a.npz"), DataSpec()))
    (folder / "run.json").write_text(json.dumps({"argv": argv, "cwd": str(started), "status": "running",
                                                 "spec": spec.record()}))
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(resume=str(folder), argv=["--resume", str(folder)])
    stored = _cli.resume_args(seed_variance.parser, args)
    assert stored.data == [str(started / "a.npz"), "embedded"]
    assert stored.recorded_study.datasets == {"a": DataSpec(str(started / "a.npz")), "embedded": DataSpec()}
    # The same data given again with --resume, from elsewhere: the same paths, accepted.
    args.argv = ["--resume", str(folder), "--data", str(started / "a.npz"), "embedded"]
    assert _cli.resume_args(seed_variance.parser, args).data == stored.data
