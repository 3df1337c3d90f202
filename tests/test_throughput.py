"""The throughput benchmark runs end to end at tiny settings (its timings are not asserted: they are measured)."""

import json
import math

import pytest

from benchmarks import keras_baseline, throughput, throughput_table, timing


def run(tmp_path, *args):
    out = tmp_path / "tp"
    argv = ["--arch", "dense:16@0.5,8@0.2", "--steps", "2", "--channels", "1", "--out", str(out), "--no-progress",
            *args]
    assert throughput.main(argv) == 0
    return json.loads((out / "throughput.json").read_text()), out


def check_rows(rows):
    for row in rows:
        for key in ("seed_epochs_per_s", "compile_s", "flops_fraction", "bandwidth_fraction"):
            assert math.isfinite(row[key]) and row[key] >= 0, (key, row)
        assert row["seed_epochs_per_s"] > 0 and row["steps_per_epoch"] == 2


def test_benchmark_writes_rows_and_plot(tmp_path, capsys):
    # auto (the probe: vmap, map, loop) runs in tests/test_gpu_script.py's throughput part
    # sequential, seed after seed, measured at S = 1 only: the ratio at S = 2 is over its S = 1 rate, marked
    report, out = run(tmp_path, "--max-seeds", "2", "--methods", "map,sequential", "--serial-max-seeds", "1")
    rows = report["rows"]
    assert [(r["method"], r["seeds"]) for r in rows] == [("map", 1), ("sequential", 1), ("map", 2)]
    check_rows(rows)
    assert (out / "throughput.png").stat().st_size > 1000
    assert report["environment"]["versions"]["jax"] and report["device"]
    assert report["peaks"]["flops"] > 0 and report["peaks"]["bytes_per_s"] > 0 and report["peaks"]["source"]
    assert report["step_cost"]["dense:16@0.5,8@0.2"]["params"] == 784 * 16 + 16 + 4 * 16 + 16 * 8 + 8 + 4 * 8 + 8 + 1
    printed = capsys.readouterr().out
    assert "| dense:16@0.5,8@0.2 | 2 |" in printed and "| map | sequential |" in printed
    rate = {r["seeds"]: r["seed_epochs_per_s"] for r in rows if r["method"] == "map"}
    sequential = rows[1]["seed_epochs_per_s"]
    assert f"| – | {rate[2] / sequential:.2f}×* |" in printed and "\\* over the seed-after-seed" in printed


def test_keras_baseline_runs_the_same_stack(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # the benchmark's default; Keras's own is TensorFlow
    keras = pytest.importorskip("keras", reason="the [baseline] extra is not installed")
    report, _ = run(tmp_path, "--max-seeds", "1", "--methods", "keras")
    check_rows(report["rows"])
    assert report["keras_backend"] and report["environment"]["versions"]["keras"] == keras.__version__
    model = keras_baseline.keras_model("dense:16@0.5,8@0.2", (28, 28, 1))
    assert model.count_params() == report["step_cost"]["dense:16@0.5,8@0.2"]["params"]  # Keras counts BN's too


def test_seed_counts_and_unknown_method(tmp_path, capsys):
    assert throughput.seed_counts(1) == [1] and throughput.seed_counts(6) == [1, 2, 4, 6]
    assert throughput.main(["--methods", "vmap,jit,0", "--out", str(tmp_path)]) == 2
    assert "unknown ['0', 'jit']" in capsys.readouterr().err


def test_budget_stops_before_an_s_predicted_not_to_fit(tmp_path, capsys):
    report, _ = run(tmp_path, "--max-seeds", "4", "--methods", "sequential", "--budget-s", "0.001")
    assert [r["seeds"] for r in report["rows"]] == [1]  # S=1 always runs; S=2 would need more than the budget
    assert len(report["stopped"]) == 1 and "stopped before S=2" in report["stopped"][0]
    assert "stopped before S=2" in capsys.readouterr().out
    assert throughput.main(["--budget-s", "0", "--out", str(tmp_path)]) == 2


def test_a_failing_keras_leaves_the_other_rows(tmp_path, monkeypatch):
    """The baseline breaking (a Keras built for another jax, say) ends its rows, not the benchmark's."""
    def broken(*_):
        raise RuntimeError("keras broke")

    monkeypatch.setattr(throughput, "keras_status", lambda backend: None)
    monkeypatch.setattr(throughput, "measure_keras", broken)
    report, _ = run(tmp_path, "--max-seeds", "2", "--methods", "sequential,keras")
    assert [(r["method"], r["seeds"]) for r in report["rows"]] == [("sequential", 1), ("sequential", 2)]
    assert report["stopped"] == ["keras failed at dense:16@0.5,8@0.2 S=1: RuntimeError: keras broke"]


def test_keras_vmap_trains_the_keras_counterpart(tmp_path, monkeypatch, capsys):
    """keras-vmap: `train_seeds` of the arch's Keras model (here a dense spec string: the keras method's own
    Sequential, compiled as it compiles it), its row naming that model; the seeds' host builds kept apart."""
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    pytest.importorskip("keras", reason="the [keras] extra is not installed")
    report, _ = run(tmp_path, "--max-seeds", "1", "--methods", "vmap,keras-vmap")
    rows = report["rows"]
    assert [(r["method"], r["seeds"]) for r in rows] == [("vmap", 1), ("keras-vmap", 1)]
    check_rows(rows)
    assert rows[1]["keras_arch"] == report["keras_archs"]["dense:16@0.5,8@0.2"] == "keras-dense_16_0.5_8_0.2"
    assert all(r["init_s"] >= 0 for r in rows) and report["skipped"] == []
    assert "| vmap / keras-vmap |" in capsys.readouterr().out


def test_keras_counterparts():
    pytest.importorskip("keras", reason="the [keras] extra is not installed")
    route, _ = throughput.keras_counterpart("pyramid")
    assert route.endswith("examples/keras_xray.py:pyramid")
    assert throughput.keras_counterpart("inverted")[0] == "keras-inverted"  # a named dense stack: keras_model's
    name, why = throughput.keras_counterpart("cnn_conv")  # convolutional: skipped, with the note
    assert name is None and why.startswith("keras-vmap: no Keras counterpart of cnn_conv")


def test_table_puts_keras_vmap_beside_keras():
    rows = [{"arch": "pyramid", "method": m, "seeds": s, "seed_epochs_per_s": r}
            for m, s, r in (("vmap", 1, 2.0), ("keras-vmap", 1, 1.6), ("keras", 1, 0.8), ("vmap", 2, 4.0),
                            ("keras-vmap", 2, 3.2))]
    lines = throughput_table.format_table(rows).splitlines()
    assert lines[0] == "| arch | S | vmap | keras-vmap | keras | vmap / keras-vmap | vmap / keras | keras-vmap / keras |"
    assert lines[2] == "| pyramid | 1 | 2 | 1.6 | 0.8 | 1.25× | 2.50× | 2.00× |"
    assert lines[3] == "| pyramid | 2 | 4 | 3.2 | – | 1.25× | 5.00×* | 4.00×* |"


def test_auto_judged_round_by_round_as_well_as_by_fastest_epochs():
    # map has the fastest epoch (round 1), but vmap beats it by ~10 % in the other two rounds
    rounds = {"vmap": [3.0, 3.6, 3.3], "map": [2.9, 4.0, 3.7], "loop": [3.3, 3.9, 3.6]}
    assert timing.paired_share(rounds, "vmap") == 1.0  # vmap's median ratio against itself: the others are slower
    assert timing.paired_share(rounds, "map") == pytest.approx(3.6 / 4.0)  # the median of t_vmap / t_map
    rows = [{"arch": "pyramid", "method": "auto", "seeds": 2, "seed_epochs_per_s": 1.0, "strategy": "vmap",
             "whole_epoch_s": {c: min(ts) for c, ts in rounds.items()}, "whole_epoch_rounds": rounds}]
    lines = throughput_table.format_table(rows).splitlines()
    assert lines[0].endswith("| auto / best, whole epochs | auto / best, round by round |")
    assert lines[2].endswith(f"| {2.9 / 3.0:.3f}× | 1.000× |")
