"""The architecture search as a user runs it: end to end on the embedded data, resumed, reported."""

import json
import re

import matplotlib.image
import pytest

from flaxray.study import catalogue, units as groups
from flaxray.analysis import ranking
from flaxray.study.trained import load_trained
from studies import architecture_search

TINY = ["--seeds", "3", "--epochs", "2", "--batch-size", "512", "--channels", "1", "--no-progress"]


def test_search_end_to_end_on_the_embedded_default_then_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "search"
    argv = ["--arch", "dense:8@0.5", "dense:4", *TINY, "--out", str(out)]
    assert architecture_search.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| rank | arch |" in printed and "holds best across seeds" in printed

    for arch in ("dense:8@0.5", "dense:4"):
        folder = groups.unit_dir(out, arch)
        assert (folder / "curves.csv").exists() and (folder / "group.json").exists()
    trained = load_trained(out)  # every arch's seeds kept, for studies.inspect
    assert list(trained) == ["dense:8@0.5", "dense:4"] and trained["dense:4"].seeds == [0, 1, 2]
    saved = json.loads((out / "study.json").read_text())
    analysis = saved["analysis"]
    assert saved["data"]["image_size"] == 28 and "embedded" in saved["data"]["source"]
    assert {r["arch"] for r in analysis["ranking"]} == {"dense:8@0.5", "dense:4"}
    assert analysis["criterion"] == ranking.RANK_CRITERION
    for arch, diag in analysis["diagnosis"].items():
        assert len(diag["labels"]) == 3 and sum(diag["fractions"].values()) == pytest.approx(1.0)
        assert analysis["summary"][arch]["final_val_loss"]["n"] == 3
    assert sum(analysis["one_seed"]["win_probability"].values()) == pytest.approx(1.0)

    md = (out / "report.md").read_text()
    for section in ("## Ranking", "## Curves", "## Statistics over seeds", "## Probability of improvement",
                    "## Diagnosis per seed", "final val AUC"):
        assert section in md
    # The header names the program the seeds ran in (conftest asks for vmap), as study.json records it.
    program = next(iter(json.loads((out / "study.json").read_text())["programs"].values()))
    assert f"Programs: vmap (asked), {program['seeds_per_chunk']} seeds per chunk, {program['layers']} layers" in md
    # The study's own bands.png (every arch on shared axes) is not overwritten by the report's grid.
    assert (out / "bands.png").read_bytes() != (out / "bands_per_arch.png").read_bytes()
    for png in ("bands_per_arch.png", "intervals.png", "improvement.png", "settled.png"):
        assert f"]({png})" in md
        assert matplotlib.image.imread(out / png).shape[1] >= 500
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert not re.search(r'src="(?!data:)', page)  # nothing outside the file

    # A rerun trains nothing: every arch is read back, the report is written again.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished arch was retrained")

    monkeypatch.setattr("flaxray.runtime.runner.train_seeds", no_training)
    assert architecture_search.main(argv) == 0
    assert "reused 2 finished arch(s)" in capsys.readouterr().out
    again = json.loads((out / "study.json").read_text())["analysis"]
    assert again["values"] == analysis["values"]

    # Other settings in the same folder: an error naming what differs, not a silent mix.
    assert architecture_search.main([*argv, "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "settings.lr [0.001] here, [0.01] asked" in err and "--overwrite" in err

    # An arch whose group.json is missing (interrupted) is trained again; the finished one is reused.
    (groups.unit_dir(out, "dense:4") / "group.json").unlink()
    monkeypatch.undo()
    assert architecture_search.main(argv) == 0
    assert "reused 1 finished arch(s)" in capsys.readouterr().out and "dense:8@0.5" in str(
        json.loads((out / "study.json").read_text())["reused"])


def test_decompose_splits_the_variance_by_source(tmp_path):
    out = tmp_path / "dec"
    argv = ["--arch", "dense:4", "--decompose", *TINY, "--out", str(out)]
    assert architecture_search.main(argv) == 0
    for source in ("init", "dropout", "order"):
        assert (groups.unit_dir(out, "dense:4", source) / "group.json").exists()
    dec = json.loads((out / "study.json").read_text())["analysis"]["decomposition"]["dense:4"]
    # A stack without dropout: varying only the dropout masks changes nothing at all.
    assert dec["dropout"]["var"] == 0.0 and dec["dropout"]["share"] == 0.0
    assert dec["init"]["var"] > 0 and dec["order"]["var"] > 0
    assert "## Where the variance comes from" in (out / "report.md").read_text()


def test_bad_input_is_one_line_and_help_lists_every_flag(tmp_path, capsys):
    def error(*args):
        assert architecture_search.main([*args, "--no-progress", "--out", str(tmp_path / "out")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in lines[0]
        return lines[0]

    assert "resnet9000" in error("--arch", "resnet9000")
    assert "--seeds" in error("--seeds", "0")
    assert "--confidence" in error("--confidence", "95")
    assert "--decompose" in error("--arch", "dense:4", "--decompose", "--vary", "none", *TINY[:-1])
    assert not (tmp_path / "out").exists()  # nothing written on bad input

    with pytest.raises(SystemExit):
        architecture_search.parser().parse_args(["--help"])
    help_text = capsys.readouterr().out
    for flag in ("--arch", "--decompose", "--confidence", "--seeds", "--epochs", "--data", "--image-size", "--out",
                 "--overwrite", "--vary", "--class-weight"):
        assert flag in help_text
    assert "default: 8" in help_text and "runs/architecture_search" in help_text


def test_default_catalogue_is_every_named_stack_once():
    from flaxray.models import known_archs, parse_arch

    assert len(catalogue.DENSE_NAMES) == 16 and set(catalogue.DENSE_NAMES) < set(known_archs())
    assert catalogue.SAME_STACK == {"pyramid_d02_plain": "pyramid_plain", "hourglass_d02_plain": "hourglass_plain"}
    stacks = [parse_arch(a) for a in catalogue.DEFAULT_CATALOGUE]
    assert len(set(stacks)) == len(stacks) == 14
    assert {parse_arch(a) for a in catalogue.DENSE_NAMES} == set(stacks)  # nothing distinct left out
    spec = "dense:1024,512,256,128,64"  # pyramid_plain as a spec string
    kept, same = catalogue.distinct_stacks([spec, "dense:8@0.5", "pyramid_plain", "dense:8"])
    assert kept == ["dense:8@0.5", "pyramid_plain", "dense:8"] and same == {spec: "pyramid_plain"}
