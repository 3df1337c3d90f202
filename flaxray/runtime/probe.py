"""Which strategy trains an epoch fastest here: each candidate timed at two lengths, the study's epoch predicted.

    calls = {"vmap": {4: run_4_steps, 16: run_16_steps}, "loop": {...}, ...}
    choice = probe(calls, steps=163, epochs=20)
    choice.best, choice.predicted, choice.within_noise

An epoch of up to `WHOLE_STEPS` steps is timed whole, in the program the study then runs. A longer one
is predicted: a call of an epoch program costs a part that does not grow with its steps (the dispatch,
the evaluation batch, the divergence check; `loop` pays them once per seed) and a part per step, and
timing a call at two lengths separates them, t(s) = fixed + s * per_step, so the study's own epoch is
predicted rather than assumed to be a multiple of a few steps (a few steps let a per-call cost weigh as
if it were a share of the epoch). The line multiplies the short calls' noise by about
(steps - 4) / 12, which is why short epochs are not predicted: from 4 and 16 steps to 50, the
predictions of three candidates were off by -6 % to +9 % against their whole epochs taking turns, more
than the 5 % that separated them. Three rounds of whole epochs cost no more in all than compiling every
candidate's two short programs and timing them did (benchmarks/RESULTS.md, issue 31), though with many
seeds their timing alone can pass `MAX_BUDGET_S`, since at least `MIN_ROUNDS` are taken.

The candidates take turns, round after round, so a slow spell of a shared machine falls on all; a
length's fastest time so far counts. The rounds stop once the two fastest predicted epochs are apart
by more than the noise (the spread of the epochs predicted from each round alone), or when the timing
budget is spent: a tenth of the study's predicted training, at least `MIN_BUDGET_S` and at most
`MAX_BUDGET_S` (compilation not counted). Of the candidates whose epoch is within the noise
of the fastest, but never more than `TIE_CAP` slower, the first in `preference` is chosen: vmap, map,
groups, and the plain loop over seeds last. The cap bounds what a preference may cost: the noise is a
single round's spread, while the epochs compared are the fastest of every round, and with a noise of
8-20 % on a shared machine the loop, 7-9 % slower than the fastest on whole epochs, was taken as tied.
The loop is last because the probe flatters it: on 2 EPYC cores, each of the 10 choices that whole
epochs taking turns found more than 5 % slower than the fastest (three benchmark runs, epochs of 50
and 130 steps, every probe design tried) was the loop, and at 130 steps its predicted epoch came out
~3 % faster, relative to the others', than its whole epoch ran (benchmarks/RESULTS.md, issue 31).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Mapping

LENGTHS = (4, 16)  # training steps per seed in the two timed calls of each candidate
WHOLE_STEPS = 64  # an epoch up to this long is timed whole (its own program, no line to extrapolate)
MIN_ROUNDS = 3  # rounds before the ranking may be judged clear: two give a spread of one difference, too often ~0
MIN_BUDGET_S, MAX_BUDGET_S, BUDGET_SHARE = 10.0, 60.0, 0.1  # seconds of timing, of the predicted training
NOISE_FLOOR = 0.02  # a relative difference below this is never told apart from noise
RULE = 2  # in the cache's key: a choice made by an earlier rule (before the loop was last) is probed again
TIE_CAP = 0.03  # a preferred candidate is taken when at most this much slower, whatever the noise


def tie(noise: float) -> float:
    """How much slower than the fastest a preferred candidate may be and still be chosen: the noise, at most
    `TIE_CAP`."""
    return min(noise, TIE_CAP)


def preference(strategy) -> tuple:
    """The order ties are broken in: vmap (one program, every seed batched), map, groups, then the loop over
    seeds (a host call per seed, one device only), which the probe flatters (the module's docstring)."""
    return {"vmap": (0,), "map": (1,), "loop": (3,)}.get(strategy, (2, strategy))


def tied(predicted: Mapping, within: float, order: Callable = preference) -> list:
    """The candidates whose predicted epoch is at most `within` (relative) above the fastest, in `order`:
    the first is the one chosen."""
    fastest = min(predicted.values())
    return sorted((c for c in predicted if predicted[c] <= fastest * (1 + within)), key=order)


@dataclasses.dataclass
class Choice:
    best: str | int  # the strategy chosen
    predicted: dict  # {strategy: predicted seconds of one epoch}
    noise: float  # relative spread of repeated timings
    within_noise: list  # the candidates within the noise of the fastest (at most TIE_CAP), preferred first
    rounds: int
    timing_s: float  # the seconds spent timing, compilation apart
    seconds: dict = dataclasses.field(default_factory=dict)  # {strategy: {length: [each round's call]}}

    def record(self) -> dict:
        return {"predicted_epoch_s": {str(k): round(v, 6) for k, v in self.predicted.items()},
                "noise": round(self.noise, 4), "tie": round(tie(self.noise), 4),
                "within_noise": [str(c) for c in self.within_noise],
                "rounds": self.rounds, "timing_s": round(self.timing_s, 3),
                "seconds": {str(c): {str(n): [round(t, 5) for t in ts] for n, ts in by.items()}
                            for c, by in self.seconds.items()}}


def lengths(steps: int) -> tuple[int, ...]:
    """The lengths to time for an epoch of `steps` steps: the whole epoch up to `WHOLE_STEPS` (nothing to
    predict then, and the program timed is the one the study runs), else `LENGTHS`."""
    return (steps,) if steps <= WHOLE_STEPS else LENGTHS


def predict(times: Mapping[int, float], steps: int) -> float:
    """An epoch of `steps` steps from the fastest times of calls at two lengths: the line through them
    (its fixed part at least 0, its part per step at least 0); from one length, in proportion."""
    if len(times) == 1:
        ((s1, t1),) = times.items()
        return t1 * steps / s1
    (s1, t1), (s2, t2) = sorted(times.items())
    per_step = max(0.0, (t2 - t1) / (s2 - s1))
    fixed = max(0.0, t1 - s1 * per_step)
    return fixed + steps * per_step


def noise(rounds: Mapping[str, list]) -> float:
    """The relative spread of the epochs predicted round by round ({candidate: [one per round]}), the
    timing noise as it reaches a prediction (an extrapolation from short calls amplifies it): the median
    over candidates of (median - smallest) / smallest, at least `NOISE_FLOOR`. A round's prediction is
    noisier than the one from every round's fastest calls, so this errs towards calling candidates tied,
    and a tie goes to the preferred one."""
    spreads = sorted((statistics.median(p) - min(p)) / min(p) for p in rounds.values() if len(p) > 1 and min(p) > 0)
    return max(NOISE_FLOOR, statistics.median(spreads) if spreads else NOISE_FLOOR)


def budget(predicted_epoch_s: float, epochs: int) -> float:
    """Seconds of timing a probe may spend for a study of `epochs` epochs of the predicted length."""
    return min(MAX_BUDGET_S, max(MIN_BUDGET_S, BUDGET_SHARE * predicted_epoch_s * epochs))


def probe(calls: Mapping, *, steps: int, epochs: int, block: Callable = lambda x: x,
          clock: Callable[[], float] = time.perf_counter, max_rounds: int = 50) -> Choice:
    """The strategy that trains an epoch of `steps` steps fastest, from `calls` {strategy: {length: a call
    running `length` steps of each seed in it}}. Each call runs once first (compiling, not timed); `block`
    waits for a call's result (`jax.block_until_ready`)."""
    for by_length in calls.values():
        for call in by_length.values():
            block(call())
    samples = {(c, n): [] for c, by_length in calls.items() for n in by_length}
    spent, rounds = 0.0, 0
    while True:
        rounds += 1
        for c, by_length in calls.items():
            for n, call in by_length.items():
                start = clock()
                block(call())
                samples[c, n].append(clock() - start)
                spent += samples[c, n][-1]
        predicted = {c: predict({n: min(samples[c, n]) for n in by_length}, steps) for c, by_length in calls.items()}
        per_round = {c: [predict({n: samples[c, n][r] for n in by_length}, steps) for r in range(rounds)]
                     for c, by_length in calls.items()}
        spread = noise(per_round)
        ranked = sorted(predicted, key=predicted.get)
        fastest = predicted[ranked[0]]
        clear = len(ranked) < 2 or predicted[ranked[1]] > fastest * (1 + spread)
        if rounds >= MIN_ROUNDS and (clear or spent >= budget(fastest, epochs)) or rounds >= max_rounds:
            break
    within = tied(predicted, tie(spread))
    seconds = {c: {n: samples[c, n] for n in by_length} for c, by_length in calls.items()}
    return Choice(within[0], predicted, spread, within, rounds, spent, seconds)
