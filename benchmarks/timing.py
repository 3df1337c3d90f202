"""How `benchmarks.throughput` times each of flaxray's methods: `train_seeds` in a strategy (the runner's own
epoch timing), auto's probe as a study would run it, the whole-epoch check of auto's choice, and the
jitted single-seed step seed after seed.

Each `measure_*` returns {seconds (of the timed epochs), compile_s, init_s, ...}; none prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from unittest import mock


def timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def probe_auto(config, data, seeds: int, epochs: int) -> tuple:
    """auto's choice for `seeds` seeds, as a study of `epochs` epochs would make it (the probe's budget is a
    tenth of those epochs' predicted time), not cached: (the strategy, the probe's seconds, compilation
    included, its evidence: each candidate's predicted epoch and timed calls)."""
    import jax

    from flaxray.core import settings
    from flaxray.runtime import plan

    start = time.perf_counter()
    lanes = settings.stack([settings.Settings()] * seeds)  # train_seeds' default: every seed at Settings()
    study = dataclasses.replace(config, epochs=epochs)
    chosen = plan.choose_strategy(study, data, lanes, "auto", seeds, jax.devices(), fresh=True)
    return chosen["strategy"], time.perf_counter() - start, chosen.get("evidence")


def whole_epochs_probe(rounds: int):
    """auto's probe as a measurement while inside: each candidate timed at a whole epoch (the program the
    study runs), exactly `rounds` rounds of turns (never stopped early by a clear ranking or a budget)."""
    from flaxray.runtime import probe

    return mock.patch.multiple(probe, lengths=lambda steps: (steps,), MIN_ROUNDS=rounds, budget=lambda *_: 0.0)


def whole_epoch_rounds(config, data, seeds: int, rounds: int) -> dict:
    """{candidate: [its whole epoch in seconds, one per round]} for `seeds` seeds, the candidates taking
    turns epoch by epoch for `rounds` rounds (`whole_epochs_probe`); {} for one seed (one program: nothing
    to choose)."""
    import jax

    from flaxray.core import settings
    from flaxray.runtime import plan

    lanes = settings.stack([settings.Settings()] * seeds)
    with whole_epochs_probe(rounds):
        chosen = plan.choose_strategy(config, data, lanes, "auto", seeds, jax.devices(), fresh=True)
    timed_calls = (chosen.get("evidence") or {}).get("seconds", {})
    return {str(c): [t for ts in by.values() for t in ts] for c, by in timed_calls.items()}


def whole_epochs(config, data, seeds: int, rounds: int) -> dict:
    """{candidate: its fastest whole epoch in seconds} (`whole_epoch_rounds`)."""
    return {c: min(ts) for c, ts in whole_epoch_rounds(config, data, seeds, rounds).items()}


def paired_share(rounds: dict, chosen: str) -> float:
    """How fast `chosen` ran against the fastest candidate, round by round: the smallest over candidates c
    of the median over rounds of t_c / t_chosen (at most 1, `chosen` against itself). Each round's epochs
    ran within seconds of each other, so a shared machine's drift across minutes, which the fastest epoch
    of each candidate (possibly from different rounds) keeps, cancels in each round's ratio."""
    own = rounds[chosen]
    return min(statistics.median(t / o for t, o in zip(ts, own)) for ts in rounds.values())


@contextlib.contextmanager
def init_timed():
    """[seconds] spent in `programs.initial_states` (the seeds' initial states, ready) while inside: a one-off
    per run, apart from its epochs. flaxray's own models: one jitted init of every seed; a Keras model: each
    seed built on the host as `set_random_seed(k)` and its builder build it, a Keras build a seed."""
    import jax

    from flaxray.runtime import programs

    spent, original = [0.0], programs.initial_states

    def initial_states(*args, **kwargs):
        start = time.perf_counter()
        try:
            return jax.block_until_ready(original(*args, **kwargs))
        finally:
            spent[0] += time.perf_counter() - start

    programs.initial_states = initial_states
    try:
        yield spent
    finally:
        programs.initial_states = original


@contextlib.contextmanager
def epochs_timed():
    """[each chunk's fastest epoch after its first] of the `train_seeds` calls made while inside: the epoch
    program alone, as the runner times it (and the probe predicts it), without a run's one-off costs (its
    plan, the seeds' initial states, the states gathered to the host, the history)."""
    from flaxray.runtime import runner

    seen, original = [], runner._train_chunk

    def train_chunk(*args, **kwargs):
        chunk = original(*args, **kwargs)
        seen.append(chunk.epoch_s)
        return chunk

    runner._train_chunk = train_chunk
    try:
        yield seen
    finally:
        runner._train_chunk = original


def measure_strategy(config, data, seeds: int, epochs: int, strategy) -> dict:
    """`train_seeds` itself in `strategy`: one epoch (compile and run), then a run of 1 + `epochs` epochs,
    whose fastest epoch after its first (the program alone, as the runner times it) counts `epochs` times
    (`run_s`: that run's wall clock, its initial states apart; `init_s`: those)."""
    from flaxray.runtime.runner import train_seeds

    one, many = dataclasses.replace(config, epochs=1), dataclasses.replace(config, epochs=1 + epochs)
    first = timed(lambda: train_seeds(one, data, range(seeds), progress=False, strategy=strategy))
    with init_timed() as init, epochs_timed() as epoch_s:
        run_s = timed(lambda: train_seeds(many, data, range(seeds), progress=False, strategy=strategy)) - init[0]
    seconds = epochs * epoch_s[0]
    return {"seconds": seconds, "run_s": run_s, "compile_s": max(0.0, first - init[0] - seconds / epochs),
            "init_s": init[0]}


def measure_sequential(config, data, seeds: int, epochs: int) -> dict:
    """The jitted single-seed `init` and `run_epoch`, compiled once, run seed after seed; as for the methods
    that call `train_seeds`, the seeds' initial states (`init_s`) are not in the timed seconds."""
    import jax

    from flaxray.core.train import make_train

    trainer = make_train(config)
    init, run_epoch = jax.jit(trainer.init), jax.jit(trainer.run_epoch, donate_argnums=0)

    def one_seed(state, n):
        for _ in range(n):
            state, counts = run_epoch(state, data)
        jax.block_until_ready((state, counts))

    first = timed(lambda: one_seed(init(0, data), 1))
    began = time.perf_counter()
    states = [jax.block_until_ready(init(seed, data)) for seed in range(seeds)]
    init_s = time.perf_counter() - began
    seconds = timed(lambda: [one_seed(state, epochs) for state in states])
    return {"seconds": seconds, "compile_s": max(0.0, first - seconds / (seeds * epochs)), "init_s": init_s}
