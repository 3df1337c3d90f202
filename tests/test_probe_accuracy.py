"""The probe-accuracy benchmark runs end to end at tiny settings (its timings are measured, not asserted)."""

import json
import math

from benchmarks import probe_accuracy


def test_each_design_is_judged_against_whole_epochs(tmp_path, capsys):
    out = tmp_path / "pa"
    argv = ["--arch", "dense:8@0.5", "--steps", "3", "--channels", "1", "--seeds", "2", "--trials", "1",
            "--verify-rounds", "1", "--probe-epochs", "1", "--designs", "1:2,whole", "--out", str(out), "--no-progress"]
    assert probe_accuracy.main(argv) == 0
    report = json.loads((out / "probe_accuracy.json").read_text())
    (trial,) = report["by_seeds"]["2"]["trials"]
    candidates = set(trial["whole_epoch_s"])
    assert {"vmap", "map", "loop"} <= candidates
    for name, lengths in (("1:2", {"1", "2"}), ("whole", {"3"})):
        d = trial["designs"][name]
        assert set(d["error"]) == candidates and all(math.isfinite(e) for e in d["error"].values())
        assert abs(sum(d["ranking_error"].values())) < 1e-9  # relative to the candidates' mean
        assert 0 < d["choice"] <= 1 and d["strategy"] in candidates
        assert all(set(by) == lengths for by in d["evidence"]["seconds"].values())  # the design's lengths were timed
    assert report["command"].startswith("python -m benchmarks.probe_accuracy") and report["environment"]["device"]
    assert "S=2 1:2: ranking error" in capsys.readouterr().out and report["steps_per_epoch"] == 3
    # The recorded probes chosen again under each rule: one row each, judged by the same whole epochs.
    assert probe_accuracy.main(["--rechoose", str(out / "probe_accuracy.json")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "| rule |" not in line]
    assert len(rows) == len(probe_accuracy.RULES) and all(" of 2 |" in row for row in rows)


def test_a_bad_design_is_one_line(capsys):
    assert probe_accuracy.main(["--designs", "16:4"]) == 2
    assert capsys.readouterr().err.strip() == "error: --designs: '16:4' needs 0 < SHORT < LONG"
