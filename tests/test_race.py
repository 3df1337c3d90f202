"""The race: its test against known answers on simulated seeds (no training), and one tiny race end to
end on the embedded default, killed after round 1 and resumed."""

import json
from math import comb

import numpy as np
import pytest
import scipy.stats

from flaxray import results
from flaxray.analysis import race as rules
from flaxray.analysis import sequential
from flaxray.study import race
from flaxray.study.study import DataSpec, Study
from studies import architecture_search

ALPHA = 1e-3  # each statistical assertion below fails a correct race with probability at most this


def simulate(draw, n_archs, races, *, max_seeds=12, round_seeds=3, alpha=0.05, seed=0):
    """`races` races on simulated final losses, `draw(rng, arch, n)` per arch; the race records."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(races):
        table = {a: draw(rng, a, max_seeds) for a in range(n_archs)}
        out.append(rules.run_rounds(lambda a, block: table[a][block], range(n_archs), range(max_seeds),
                                   round_seeds=round_seeds, alpha=alpha))
    return out


def assert_rate_at_most(hits, n, bound, what):
    """`hits` of `n` is no more than a rate `bound` would give: a one-sided binomial test at ALPHA."""
    p = scipy.stats.binomtest(hits, n, bound, alternative="greater").pvalue
    assert p > ALPHA, f"{what}: {hits} of {n}, more than a rate of {bound} gives (p = {p:.2g})"


def test_the_levels_and_the_exact_test_are_the_stated_ones():
    assert rules.looks(12, 3) == [3, 6, 9, 12] and rules.looks(10, 4) == [4, 8, 10]
    # 14 archs, looks at 3..12, each rival's share 0.05 / 13. A Pocock-type allowance, 0.357 of it by
    # 3 seeds, cannot reach 1 / C(6, 3) = 0.05: 3 seeds reject nothing. By 6 seeds 0.62 of it = 0.00238:
    # the largest lattice point of 6 against 6 below is 2 / 924 (one inversion of 36 pairs can reject);
    # by 9 seeds 0.828 = 0.00318, so 9 seeds spend 45 / 48620 = 0.000926 of the 0.00102 left (45 of
    # C(18, 9) orderings have at most 7 inversions), and 12 seeds the rest.
    levels = sequential.spending(14, [3, 6, 9, 12], 0.05)
    assert list(levels) == [6, 9, 12]
    assert levels[6] == pytest.approx(2 / 924) and levels[9] == pytest.approx(45 / comb(18, 9))
    assert sum(levels.values()) == pytest.approx(0.05 / 13)
    # Two archs, looks at 2, 4, 6 seeds: 2 seeds never reach 0.05 (1 / 6), 4 seeds spend 2 / 70, 6 the rest.
    levels = sequential.spending(2, [2, 4, 6], 0.05)
    assert list(levels) == [4, 6] and levels[4] == pytest.approx(2 / 70) and levels[6] == pytest.approx(0.05 - 2 / 70)
    # A design in which no look can reach its share rejects nothing: 30 archs, at most 4 seeds (1 / 70 > 0.05 / 29).
    assert sequential.spending(30, [2, 4], 0.05) == {}
    assert all(sequential.lattice(n)[0] == pytest.approx(1 / comb(2 * n, n)) for n in (3, 6, 9))
    # Complete separation of 6 and 6 seeds: the smallest exact p; a tie counts in the tested arch's favour.
    assert rules.worse_p(np.arange(6) + 10.0, np.arange(6.0)) == pytest.approx(1 / 924)
    assert rules.worse_p(np.ones(4), np.ones(4)) == pytest.approx(1.0)
    assert rules.worse_p([np.inf, np.inf, 1.0], [np.inf, 0.0, 0.5]) == pytest.approx(
        scipy.stats.mannwhitneyu([3, 4, 2], [5, 0, 1], method="exact", alternative="greater").pvalue)


def test_which_looks_reject_known_answers():
    # 14 archs at 6 seeds (level 2 / 924): a rival with one inversion out of 36 pairs is out, with two it stays.
    levels = sequential.spending(14, [3, 6, 9, 12], 0.05)
    best = np.arange(6.0)
    one = np.array([4.5, 6, 7, 8, 9, 10])  # 4.5 < 5: one pair inverted, p = 2 / 924
    two = np.array([3.5, 6, 7, 8, 9, 10])  # 3.5 < 4 and < 5: two, p = 4 / 924
    look = rules.decide({"best": best, "one": one, "two": two}, levels, [3, 6, 9, 12], futility=0)
    assert look["level"] == pytest.approx(2 / 924) and look["eliminated"] == {"one": ("best", pytest.approx(2 / 924))}
    # The same seeds at 3 of them: 3 seeds cannot reject, whatever they are.
    look = rules.decide({"best": best[:3], "one": one[:3] + 10}, levels, [3, 6, 9, 12], futility=0)
    assert look["level"] == 0.0 and look["eliminated"] == {}


@pytest.mark.parametrize("draw", [
    lambda rng, a, n: rng.normal(size=n),  # continuous
    lambda rng, a, n: rng.choice([0.2, 0.3, 0.3, np.inf], size=n),  # ties, and diverged seeds
], ids=["normal", "ties-and-diverged"])
def test_identical_archs_are_eliminated_at_most_at_the_stated_rate(draw):
    # The guarantee: an arch no other arch beats survives with probability >= 1 - alpha. With all
    # archs identical, each is such an arch; arch 0's eliminations over many races are a binomial count.
    records = simulate(draw, 6, 1000, alpha=0.05)
    gone = sum(0 not in r["decision"]["survivors"] for r in records)
    assert_rate_at_most(gone, len(records), 0.05, "arch 0 eliminated")


def test_futility_never_raises_the_false_elimination_rate():
    # 2000 races of 4 identical archs (looks at 3, 6, 9 seeds), the futility exit on. Exact part: arch 0 is
    # only ever eliminated where one of its planned tests, on the first n seeds at look n, rejects at
    # its level (the union bound's event, which futility cannot enlarge: it only skips looks). Statistical
    # part: that event, and so the elimination, happens in at most alpha of races (fails at rate <= ALPHA).
    rng, planned = np.random.default_rng(3), [3, 6, 9]
    levels = sequential.spending(4, planned, 0.05)
    union = gone = left = cheaper = 0
    for _ in range(2000):
        table = rng.normal(size=(4, 9))
        r = rules.run_rounds(lambda a, block: table[a][block], range(4), range(9), round_seeds=3, futility=0.1)
        bound = any(rules.worse_p(table[0, :n], table[b, :n]) <= lv for b in (1, 2, 3) for n, lv in levels.items())
        out = 0 not in r["decision"]["survivors"]
        assert bound or not out, "arch 0 eliminated without any of its planned tests rejecting"
        union, gone, left = union + bound, gone + out, left + bool(r["decision"]["futile"])
        cheaper += r["seed_epochs"] < r["fixed_seed_epochs"]
    assert_rate_at_most(union, 2000, 0.05, "some planned test of arch 0 rejects")
    assert_rate_at_most(gone, 2000, 0.05, "arch 0 eliminated")
    assert left > 1000 and cheaper > 1000  # the exit is taken, and saves seeds, in most of these races


def test_an_arch_that_cannot_be_told_apart_leaves_into_the_tie():
    # "twin" has the seeds of "best"; "worse" is far behind. While worse is raced, twin may still eliminate
    # it, so twin is raced on; the test throws worse out at the first look that can reject (6 seeds), and
    # then no pairing of twin can reject either way: it leaves into the tie, trained no further.
    seeds = np.arange(12.0)
    values = {"best": seeds, "twin": seeds.copy(), "worse": seeds + 100}
    asked = []
    r = rules.run_rounds(lambda a, block: asked.append((a, len(block))) or values[a][block], list(values), range(12),
                        round_seeds=3, futility=0.1)
    first, second = r["rounds"][:2]
    assert first["anchor"] == "best" and first["futile"] == {} and first["power"]["twin"] == ("worse", 1.0)
    assert "worse" in second["eliminated"] and list(second["futile"]) == ["twin"] and second["power"]["twin"][1] < 0.1
    assert asked.count(("twin", 3)) == 2 and len(r["rounds"]) == 2
    assert r["decision"] == {"kind": "tie", "survivors": ["best", "twin"], "seeds": 6, "futile": {"twin": 6}}
    np.testing.assert_equal(rules.tie_values(r)["twin"], seeds[:6])
    # Without the exit (futility 0) the same race is a winner-less tie at the cap, at a higher cost.
    r0 = rules.run_rounds(lambda a, block: values[a][block], list(values), range(12), round_seeds=3, futility=0)
    assert r0["decision"]["futile"] == {} and r0["seed_epochs"] > r["seed_epochs"]


def test_a_redundant_challenger_leaves_and_the_strongest_stays():
    # After the first look an arch that may still be eliminated keeps its two strongest challengers
    # (rules.CHALLENGERS), not every arch that could throw it out. a..d are near copies (a the anchor),
    # w is worse and may still be eliminated (power 0.64 by 12 seeds), not yet at 6. Each of a..d could
    # eliminate w (power >= 0.1: the rule "either way round" kept them all); the strongest, b and c,
    # stay with the anchor, d, as able but redundant, leaves into the tie.
    base = np.arange(6.0)
    values = {"a": base, "b": base + 0.3, "c": base + 0.6, "d": base + 0.9, "w": base + 3.0}
    levels = sequential.spending(5, [3, 6, 9, 12], 0.05)
    pw = sequential.predictive_power(np.stack(list(values.values())), levels)
    look = rules.decide(values, levels, [3, 6, 9, 12])
    assert look["anchor"] == "a" and look["eliminated"] == {} and pw[4].max() >= 0.1
    assert pw[4, 3] >= 0.1 and min(pw[4, 1:3]) > max(pw[4, 0], pw[4, 3])  # d could eliminate w; b, c most likely
    assert list(look["futile"]) == ["d"] and look["futile"]["d"][1] < 0.1 and look["power"]["d"][0] == "w"
    # At the first look every able challenger stays (3 seeds tell the least: the best may trail a lucky arch).
    assert rules.decide({a: v[:3] for a, v in values.items()}, levels, [3, 6, 9, 12])["futile"] == {}
    # The rule itself: i may be eliminated (0.5 by j = 1, 0.3 by 2, 0.2 by 3); 4 is needed by no one.
    pw = np.zeros((5, 5))
    pw[0, 1:4] = 0.5, 0.3, 0.2
    assert sequential.needed(pw, 0.1, range(5), top=1).tolist() == [True, True, False, False, False]
    assert sequential.needed(pw, 0.1, range(5), top=2).tolist() == [True, True, True, False, False]
    assert sequential.needed(pw, 0.1, range(5)).tolist() == [True, True, True, True, False]
    assert sequential.needed(pw, 0.4, range(5)).tolist() == [True, True, False, False, False]
    assert sequential.needed(pw, 0.4, range(5), top=2).tolist() == [True, True, True, False, False]
    pw[0, 3] = 0.5  # equal powers go to the first in the order
    assert sequential.needed(pw, 0.1, [3, 2, 1, 0, 4], top=1).tolist() == [True, False, False, True, False]


def test_the_best_arch_is_raced_on_while_it_may_still_eliminate_another():
    # One arch clearly best, three a little worse: at 3 seeds a lucky worse arch can be the anchor, and
    # the best, never likely to be eliminated, must not leave while it can still throw the others out.
    # Simulated catalogues: it stays the pick (the leader among the archs raced to the end).
    rng = np.random.default_rng(3)
    picked = 0
    for _ in range(40):
        values = {"best": rng.normal(size=12)} | {f"w{i}": rng.normal(size=12) + 2.0 for i in range(3)}
        r = rules.run_rounds(lambda a, block: values[a][block], list(values), range(12), round_seeds=3, futility=0.1)
        assert "best" not in r["decision"]["futile"]
        picked += rules.leader(rules.finalists(r))[0] == "best"
    assert picked >= 36  # each replay picks the best with probability ~0.99 (2 sd apart, 12 seeds): P(< 36) < 1e-4


def test_a_clearly_worse_arch_is_eliminated_and_the_rest_tie():
    def draw(rng, a, n):
        return rng.normal(size=n) + (6.0 if a == 3 else 0.0)

    records = simulate(draw, 4, 100, seed=1)
    # 6 and 6 seeds 6 sd apart overlap with probability < 0.01 per race, then it goes at the first look that can reject.
    out_early = sum(len(r["rounds"]) > 1 and 3 in r["rounds"][1]["eliminated"] for r in records)
    assert_rate_at_most(len(records) - out_early, len(records), 0.02, "the worse arch survived 6 seeds")
    assert all(r["seed_epochs"] < r["fixed_seed_epochs"] for r in records)


def test_survivors_that_no_further_seed_can_separate_end_the_race_as_a_tie_early():
    # Two archs, 2 seeds a round up to 4: with equal seeds even 2 more seeds as extreme as possible
    # cannot reach p <= 0.05 (their best is 4 / 70), so the race stops after round 1, at half the cost.
    # (The exact rule alone: futility 0; with it on, b also leaves by futility then, the same tie.)
    same = np.array([1.0, 2.0, 3.0, 4.0])
    r = rules.run_rounds(lambda a, block: same[block], ["a", "b"], range(4), round_seeds=2, futility=0)
    assert r["decision"] == {"kind": "tie", "survivors": ["a", "b"], "seeds": 2, "futile": {}}
    assert r["seed_epochs"] * 2 == r["fixed_seed_epochs"]
    r = rules.run_rounds(lambda a, block: same[block], ["a", "b"], range(4), round_seeds=2, futility=0.1)
    assert r["decision"] == {"kind": "tie", "survivors": ["a", "b"], "seeds": 2, "futile": {"b": 2}}
    # The seeds of each round are the next indices of a fixed study's seeds.
    asked = []
    rules.run_rounds(lambda a, block: asked.append((a, list(block))) or np.arange(len(block)) + (a == "b") * 9.0,
                    ["a", "b"], range(10, 16), round_seeds=3)
    assert asked == [("a", [10, 11, 12]), ("b", [10, 11, 12]), ("a", [13, 14, 15]), ("b", [13, 14, 15])]


TINY = ["--epochs", "1", "--batch-size", "32", "--no-progress"]
ARCHS = ["dense:8@0.5", "dense:4"]


def tiny_npz(path):
    """200 + 100 images of 8x8 whose class shows in their brightness: a few steps learn something."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    x = np.clip(rng.normal(100 + 60 * y[:, None, None], 40, (300, 8, 8)), 0, 255).astype(np.uint8)
    np.savez(path, x_train=x[:200], y_train=y[:200], x_val=x[200:], y_val=y[200:])
    return str(path)


def test_race_end_to_end_killed_after_round_1_then_resumed(tmp_path, capsys, monkeypatch):
    out, data = tmp_path / "race", tiny_npz(tmp_path / "tiny.npz")
    study = Study(archs=tuple(ARCHS), data=DataSpec(path=data), seeds=tuple(range(6)), epochs=1, batch_size=32)

    def kill(record):
        raise KeyboardInterrupt("killed after round 1")

    with pytest.raises(KeyboardInterrupt):
        race.race(study, out, round_seeds=2, futility=0, progress=False, on_round=kill)
    first = json.loads((out / race.RACE_JSON).read_text())
    assert first["status"] == "running" and [r["seeds"] for r in first["rounds"]] == [2]

    # The same race from the command line: round 1 is read back, not trained again.
    trained = []
    real = __import__("flaxray.runtime.runner", fromlist=["train_seeds"]).train_seeds
    monkeypatch.setattr("flaxray.runtime.runner.train_seeds", lambda config, data, seeds, *a, **kw: trained.append(
        (config.arch, list(seeds))) or real(config, data, seeds, *a, **kw))
    argv = ["--race", "--arch", *ARCHS, "--max-seeds", "6", "--round-seeds", "2", "--budget", "8", *TINY,
            "--data", data, "--out", str(out), "--futility", "0"]  # off: round 2 must run, whatever the seeds
    assert architecture_search.main(argv) == 0
    printed = capsys.readouterr().out
    assert trained == [(a, [2, 3]) for a in ARCHS]
    record = json.loads((out / race.RACE_JSON).read_text())
    assert record["status"] == "complete" and record["rounds"][0]["values"] == first["rounds"][0]["values"]
    # 2 archs x 4 seeds x 1 epoch = 8 seed-epochs; round 3 would exceed the budget (or one arch is left).
    assert record["seed_epochs"] == 8 and record["fixed_seed_epochs"] == 12
    assert record["decision"]["seeds"] == 4 and "seed-epochs" in printed  # winner, tie or budget: the seeds decide
    md = (out / "report.md").read_text()
    for section in ("## The test", "## Compute", "## Elimination trace", "](trace.png)", "## Ranking over"):
        assert section in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 1
    assert results.read_curves_csv(out / "curves.csv")[1] == {a: [0, 1, 2, 3] for a in ARCHS}  # every seed trained

    # Again: nothing trained, the same decision.
    monkeypatch.setattr("flaxray.runtime.runner.train_seeds", lambda *a, **k: pytest.fail("a finished round was retrained"))
    assert architecture_search.main(argv) == 0
    assert json.loads((out / race.RACE_JSON).read_text())["decision"] == record["decision"]


def test_the_report_says_who_left_by_futility_and_at_how_many_seeds(tmp_path):
    from types import SimpleNamespace

    from flaxray.analysis.study import analyse
    from flaxray.report.race import write_report

    # Synthetic curves: "twin" is "best" again, "worse" far behind; the race on their final val losses.
    e = np.arange(1, 4)
    rng = np.random.default_rng(0)
    curve = 0.3 + 0.3 * np.exp(-e) + 0.05 * rng.normal(size=(12, 1))
    histories = {a: {"loss": curve - 0.05, "val_loss": curve + shift, "accuracy": 0.9 + 0 * curve,
                     "val_accuracy": 0.9 + 0 * curve, "auc": 0.9 + 0 * curve, "val_auc": 0.9 + 0 * curve}
                 for a, shift in (("best", 0.0), ("twin", 0.0), ("worse", 5.0))}
    record = rules.evidence(rules.run_rounds(lambda a, block: histories[a]["val_loss"][list(block), -1], list(histories),
                                           range(12), round_seeds=3, futility=0.1))
    assert record["decision"]["futile"] == {"twin": 6} and record["decision"]["kind"] == "tie"
    record.update(environment=results.environment(), round_seeds=3, budget=None, alpha=0.05, planned_looks=[3, 6, 9, 12])
    got = {a: next(len(r["values"][a]) for r in record["rounds"][::-1] if a in r["values"]) for a in histories}
    kept = {a: {k: v[: got[a]] for k, v in h.items()} for a, h in histories.items()}  # the seeds each was trained
    assert got == {"best": 6, "twin": 6, "worse": 6}
    study = SimpleNamespace(confidence=0.95, seeds=tuple(range(12)), epochs=3)
    dataset = SimpleNamespace(summary={"source": "synthetic", "image_size": 8, "channels": 1},
                              train=SimpleNamespace(y=np.zeros(4)), val=SimpleNamespace(y=np.zeros(2)),
                              test=SimpleNamespace(y=np.zeros(0)))
    md = write_report(tmp_path, record, analyse(kept, baseline=0.69), study, dataset)[0].read_text()
    assert "left by futility at 6 seeds (power 0" in md and "left by futility into the tie" in md
    assert "predictive power below 0.1" in md and "0.013 at 6 seeds" in md  # the futility rule; the levels
    assert "**twin** left by futility at 6 seeds" in md  # the decision sentence


def test_race_flags_are_refused_in_one_line_and_explained(tmp_path, capsys):
    def error(*args):
        assert architecture_search.main([*args, "--no-progress", "--out", str(tmp_path / "out")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:")
        return lines[0]

    assert "--budget goes with --race" in error("--budget", "100")
    assert "--seeds" in error("--race", "--seeds", "4")
    assert "--round-seeds" in error("--race", "--round-seeds", "0")
    assert "--max-seeds" in error("--race", "--max-seeds", "1")
    assert "--budget" in error("--race", "--budget", "1")
    assert "--futility goes with --race" in error("--futility", "0.2")
    assert "--futility" in error("--race", "--futility", "1")
    assert "--race" in error("--race", "--lr", "1e-3", "1e-2")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        architecture_search.parser().parse_args(["--help"])
    help_text = capsys.readouterr().out
    for flag in ("--race", "--max-seeds", "--round-seeds", "--budget", "--futility", "runs/architecture_race"):
        assert flag in help_text


def test_replays_on_recorded_seeds_find_a_clear_winner_at_a_fraction_of_the_cost():
    from benchmarks.race_accuracy import replay

    rng = np.random.default_rng(2)
    values = {a: rng.normal(size=9) + (0.0 if a == "best" else 8.0) for a in ("x", "best", "y", "z")}
    by = replay(values, "best", {"best"}, replays=8, round_seeds=3, epochs=2, confidence=0.95, progress=False)
    # The three others are 8 sd worse: all gone at the first look that can reject (6 seeds), every time.
    assert by["race"]["winner_share"] == 1 and by["race"]["seed_epochs"] == 48
    assert by["race"]["seed_epochs_share"] == pytest.approx(2 / 3) and by["race"]["ends"] == {"winner": 8}
    assert by["one seed per arch"]["winner_share"] == 1 and by["one seed per arch"]["exact"]
    full = by["fixed, 9 seeds per arch"]
    assert full["winner_share"] == 1 and full["winner_ci"] == pytest.approx([0.631, 1.0], abs=1e-3)
    assert full["seed_epochs"] == 72 and full["seed_epochs_share"] == 1


@pytest.mark.parametrize("mode", [["--scenario", "2:1:3"], ["--identical", "3"]], ids=["scenario", "identical"])
def test_the_benchmark_writes_every_method_of_its_table_to_json(mode, tmp_path, capsys):
    from benchmarks.race_accuracy import main

    path = tmp_path / "out.json"
    assert main([*mode, "--replays", "3", "--max-seeds", "6", "--no-progress", "--json", str(path)]) == 0
    printed = [line.split(" | ")[0].strip("| ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    methods = json.loads(path.read_text())
    assert printed[1:] == list(methods) and "race" in methods  # printed[0]: the header
    for name, m in methods.items():
        assert 0 < m["seed_epochs_share"] <= 1 and 0 <= m["tie_share"] <= 1, name
    for name in ("race", "race, futility off"):
        assert {"given_eliminated_share", "any_eliminated_share"} <= set(methods[name])
        assert methods[name]["given_eliminated_share"] <= methods[name]["any_eliminated_share"]
    assert methods["fixed, 6 seeds per arch"]["seed_epochs_share"] == 1
