"""The oracle behind benchmarks.race_oracle: known answers where every decision is forced."""

import json

import numpy as np
import pytest

from benchmarks import race_oracle


def test_worse_archs_far_behind_go_at_the_first_look_that_can_reject():
    # 8 tied, 6 worse by 100 sd: at 6 seeds (the first look with a level for 14 archs) every worse arch is out
    values = np.random.default_rng(0).normal(size=(14, 12)) + np.repeat([0.0, 100.0], [8, 6])[:, None]
    assert race_oracle.oracle_race(values, 8, keep=1, drop=3, round_seeds=3) == (14 * 3 + 7 * 3, 6)
    assert race_oracle.oracle_race(values, 8, keep=2, drop=6, round_seeds=3) == (14 * 6, 6)


def test_no_worse_arch_ends_it_at_the_first_look():
    values = np.random.default_rng(1).normal(size=(5, 12))
    assert race_oracle.oracle_race(values, 5, keep=1, drop=3, round_seeds=3) == (15, 0)


def test_cli_prints_every_look_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bound.json"
    assert race_oracle.main(["--scenario", "3:2:1", "--replays", "5", "--keep", "1", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["drop_after_seeds"], r["keep"]) for r in rows] == [(3, 1), (3, 2), (6, 1), (6, 2), (9, 1), (9, 2)]
    assert all(0 < r["seed_epochs_share"] <= 1 and 0 <= r["worse_eliminated_share"] <= 1 for r in rows)
    assert "| 2 | 9 seeds |" in capsys.readouterr().out


def test_bad_scenario_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        race_oracle.main(["--scenario", "8:6"])
    assert e.value.code == 2 and "expected T:W:D" in capsys.readouterr().err
