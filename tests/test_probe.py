"""auto's probe predicts an epoch: candidates with known costs per call and per step, on a fake clock."""

import json

import numpy as np
import pytest

from flaxray.runtime import plan, probe


class FakeClock:
    """A clock that only the fake calls move: each call costs its candidate's fixed + steps * per_step
    seconds, times a factor of noise drawn from `spread`."""

    def __init__(self, spread=0.0, seed=0):
        self.now, self.rng, self.spread = 0.0, np.random.default_rng(seed), spread

    def __call__(self):
        return self.now

    def calls(self, costs):
        def call(fixed, per_step, steps):
            def run():
                self.now += (fixed + steps * per_step) * (1 + self.spread * self.rng.random())
            return run

        return {c: {n: call(fixed, per_step, n) for n in probe.LENGTHS} for c, (fixed, per_step) in costs.items()}


def test_the_epoch_is_predicted_not_a_few_steps():
    # loop pays a large cost per call (a dispatch per seed) and a small one per step; map the reverse. Over a
    # few steps map looks 5x faster; over the study's 1000-step epoch the loop is faster, and is chosen.
    clock = FakeClock()
    costs = {"loop": (1.0, 0.01), "map": (0.05, 0.02)}
    choice = probe.probe(clock.calls(costs), steps=1000, epochs=20, clock=clock)
    assert choice.best == "loop"
    assert choice.predicted["loop"] == pytest.approx(11.0) and choice.predicted["map"] == pytest.approx(20.05)
    assert choice.within_noise == ["loop"] and choice.rounds == probe.MIN_ROUNDS  # clear at once, no noise
    short = probe.probe(clock.calls(costs), steps=8, epochs=20, clock=clock)  # a short epoch: map wins
    assert short.best == "map"


def test_within_the_noise_vmap_is_preferred_and_the_loop_last():
    clock = FakeClock(spread=0.05, seed=1)
    costs = {4: (0.1, 0.0100), "map": (0.1, 0.01005), "vmap": (0.1, 0.0101), "loop": (0.1, 0.01015)}
    choice = probe.probe(clock.calls(costs), steps=200, epochs=10, clock=clock)
    assert choice.noise >= probe.NOISE_FLOOR
    assert set(choice.within_noise) == {4, "map", "vmap", "loop"}  # 1.5 % apart at most: under any noise
    assert choice.best == "vmap" and choice.within_noise == ["vmap", "map", 4, "loop"]  # the loop last
    assert choice.timing_s >= probe.budget(min(choice.predicted.values()), 10)  # undecided: the budget is spent


def test_however_noisy_a_simpler_candidate_more_than_the_cap_slower_is_not_taken():
    # A shared machine's noise of up to 40 % a call: the loop, 8 % slower over an epoch than vmap, would be
    # "within the noise" of it; the cap keeps what preferring the simpler may cost to 3 %.
    clock = FakeClock(spread=0.4, seed=3)
    costs = {"loop": (0.1, 0.0108), "vmap": (0.1, 0.0100)}
    choice = probe.probe(clock.calls(costs), steps=200, epochs=10, clock=clock)
    assert choice.noise > 0.08 and choice.best == "vmap" and choice.within_noise == ["vmap"]
    assert choice.record()["tie"] == probe.TIE_CAP


def test_the_budget_is_a_tenth_of_the_training_within_bounds():
    assert probe.budget(1.0, 5) == probe.MIN_BUDGET_S
    assert probe.budget(100.0, 20) == probe.MAX_BUDGET_S
    assert probe.budget(10.0, 20) == pytest.approx(20.0)


def test_a_cached_choice_that_its_run_contradicts_is_probed_again(tmp_path, monkeypatch):
    evidence = {"predicted_epoch_s": {"vmap": 10.0, "loop": 10.5}, "noise": 0.05}
    kept = {"strategy": "vmap", "evidence": {**evidence, "measured_epoch_s": 10.9}}  # within 5 % of loop's 10.5
    wrong = {"strategy": "vmap", "evidence": {**evidence, "measured_epoch_s": 12.0}}  # loop's predicted 10.5 beats it
    assert not plan.contradicted(kept) and plan.contradicted(wrong)
    assert not plan.contradicted({"strategy": "vmap", "evidence": evidence})  # nothing measured yet

    # The run's measured epoch is written beside the prediction, in chunks.json and the machine's cache.
    chosen = plan.Plan(8, "vmap", "probed", evidence, key="k")
    monkeypatch.setattr(plan.hosts, "is_primary", lambda: True)
    after = plan.measured(chosen, 12.0, tmp_path, cache_dir=tmp_path)
    assert after.evidence["measured_epoch_s"] == 12.0
    assert json.loads((tmp_path / plan.PLAN).read_text())["evidence"]["measured_epoch_s"] == 12.0
    assert plan.contradicted(plan.cached_choice("k", tmp_path))
    assert plan.measured(plan.Plan(8, "vmap", "asked"), 12.0, tmp_path / "x") == plan.Plan(8, "vmap", "asked")


def test_the_printed_line_says_what_was_predicted():
    evidence = {"predicted_epoch_s": {"vmap": 10.0, "loop": 10.2, "map": 13.0}, "noise": 0.05,
                "within_noise": ["loop", "vmap"]}
    line = plan.Plan(16, "loop", "probed", evidence).describe_strategy(16, 1)
    assert "an epoch predicted at 10.2 s" in line and "map 1.27x" in line
    assert "vmap within the noise (5%) of the fastest, and loop preferred" in line  # a record without "tie"
    capped = plan.Plan(16, "loop", "probed", {**evidence, "tie": 0.03}).describe_strategy(16, 1)
    assert "vmap within 3% of the fastest (the noise, at most 3%), and loop preferred" in capped
    whole = {**evidence, "seconds": {c: {"50": [t]} for c, t in evidence["predicted_epoch_s"].items()}}
    assert "an epoch timed whole at 10.2 s" in plan.Plan(16, "loop", "probed", whole).describe_strategy(16, 1)
    lines = {c: {"4": [t / 30], "16": [t / 8]} for c, t in evidence["predicted_epoch_s"].items()}
    line = plan.Plan(16, "loop", "probed", {**evidence, "seconds": lines}).describe_strategy(16, 1)
    assert "an epoch predicted at 10.2 s from calls of 4 and 16 steps, the others at" in line


def test_a_units_record_carries_the_probes_evidence(tmp_path):
    from flaxray import results
    from flaxray.study import units

    evidence = {"predicted_epoch_s": {"vmap": 1.0, "loop": 1.1}, "noise": 0.15, "within_noise": ["loop", "vmap"],
                "measured_epoch_s": 1.05}
    (tmp_path / results.CHECKPOINTS).mkdir()
    results.write_json(tmp_path / results.CHECKPOINTS / plan.PLAN,
                       plan.Plan(4, "loop", "probed", evidence).record())
    shape = units.program_shape(tmp_path, 4)
    assert shape["strategy"] == "loop" and shape["strategy_source"] == "probed" and shape["evidence"] == evidence


def test_a_short_epoch_is_timed_whole_and_a_long_one_predicted():
    # From 4 and 16 steps the line to a 50-step epoch multiplies the short calls' noise ~4x: timed whole.
    assert probe.lengths(50) == (50,) and probe.lengths(probe.WHOLE_STEPS) == (probe.WHOLE_STEPS,)
    assert probe.lengths(probe.WHOLE_STEPS + 1) == probe.LENGTHS
