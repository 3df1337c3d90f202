"""Archs compared across several data sets (tasks): rliable's aggregates on one data contract.

After rliable (Agarwal et al., NeurIPS 2021; its `metrics` and `library`): scores {arch: (runs, tasks)},
higher better; the mean and the median of the per-task means, the IQM and the optimality gap over all
runs and tasks; their CIs by the stratified bootstrap (runs resampled within each task, never across);
the probability of improvement (P(X > Y) per task, averaged over tasks); performance profiles (the
share of runs scoring above tau, with bands). tests/test_tasks.py checks every number against rliable.

Scores come from one per-seed value per task (the study's ranking value, final val loss) made
comparable across tasks by `normalise`. Plain numpy/scipy, no files, no text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import scipy.stats

from flaxray.analysis.stats import percentile_ci

TAUS = np.linspace(0.0, 1.0, 41)  # the profile's thresholds: normalised scores lie in [0, 1]
OPTIMAL = 1.0  # the optimality gap's gamma: the best run of a task scores 1


def normalise(values: Mapping[str, Mapping[str, np.ndarray]], lower_is_better: bool = True) -> dict[str, np.ndarray]:
    """{task: {arch: per-seed values (S,)}} -> {arch: scores (S, tasks)}, higher better, per task min-max
    over every arch's runs on it: the task's best run scores 1, its worst 0, whatever the task's scale
    (a loss of 0.1 on one set and 0.6 on another). A diverged run (non-finite value) scores 0, the worst,
    as everywhere in flaxray; a task where every run is equal scores them all 1 (nothing to tell apart).
    The score is relative to the archs compared: adding an arch can move every other's."""
    tasks = list(values)
    archs = list(values[tasks[0]])
    columns = {a: [] for a in archs}
    for task in tasks:
        v = {a: np.asarray(values[task][a], float) for a in archs}
        finite = np.concatenate([x[np.isfinite(x)] for x in v.values()])
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        for a, x in v.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                s = (high - x if lower_is_better else x - low) / (high - low) if high > low else np.ones_like(x)
            columns[a].append(np.where(np.isfinite(x), s, 0.0))
    return {a: np.stack(c, axis=1) for a, c in columns.items()}


# The aggregates on scores (..., runs, tasks), any leading axes (the bootstrap's resamples), as rliable's
# metrics compute them on (runs, tasks): the same operations in the same order, so the same floats.
def mean(scores):
    return np.mean(np.mean(scores, axis=-2), axis=-1)


def median(scores):
    return np.median(np.mean(scores, axis=-2), axis=-1)


def iqm(scores):
    s = np.asarray(scores)
    return scipy.stats.trim_mean(s.reshape(*s.shape[:-2], -1), proportiontocut=0.25, axis=-1)


def optimality_gap(scores, gamma: float = OPTIMAL):
    s = np.minimum(np.asarray(scores), gamma)
    return gamma - np.mean(s.reshape(*s.shape[:-2], -1), axis=-1)


AGGREGATES = {"iqm": iqm, "mean": mean, "median": median, "optimality_gap": optimality_gap}
HIGHER_IS_BETTER = {"iqm": True, "mean": True, "median": True, "optimality_gap": False}


def improvement(x, y):
    """P(a run of X scores above a run of Y on the same task), ties counted half, averaged over tasks:
    rliable's `probability_of_improvement` (Mann-Whitney's U / (n m)), counted directly."""
    x, y = np.asarray(x)[..., :, None, :], np.asarray(y)[..., None, :, :]
    return np.mean(np.mean((x > y) + 0.5 * (x == y), axis=(-3, -2)), axis=-1)


def profile(scores, taus=TAUS):
    """The share of all runs (over tasks) scoring above each tau: rliable's score distribution."""
    s = np.asarray(scores)
    return np.mean(s.reshape(*s.shape[:-2], -1)[..., None] > np.asarray(taus), axis=-2)


def resamples(samples, reps: int, seed: int = 0) -> list[np.ndarray]:
    """The stratified bootstrap: each sample (runs, tasks) resampled `reps` times, runs drawn with
    replacement within each task, independently per task and per sample; (reps, runs, tasks) each.
    Drawn as rliable draws them (one `choice` of a (runs, tasks) index array per sample per resample,
    from the legacy generator), so rliable under `np.random.seed(seed)` resamples the same runs."""
    rng = np.random.RandomState(seed)
    samples = [np.asarray(s, float) for s in samples]
    cols = [np.arange(s.shape[1]) for s in samples]
    picks = [[] for _ in samples]
    for _ in range(reps):
        for k, s in enumerate(samples):
            picks[k].append(rng.choice(s.shape[0], s.shape, replace=True))
    return [s[np.stack(p), c] for s, p, c in zip(samples, picks, cols)]


def interval(func: Callable, samples, *, reps: int = 2000, confidence: float = 0.95, seed: int = 0):
    """`func(*samples)` and its percentile CI over the stratified bootstrap (`resamples`): (point, low,
    high), each shaped like func's output."""
    point = np.asarray(func(*samples), float)
    boot = np.asarray(func(*resamples(samples, reps, seed)), float).reshape(reps, -1)
    low, high = np.transpose([percentile_ci(boot[:, k], confidence) for k in range(boot.shape[1])])
    return point, low.reshape(point.shape), high.reshape(point.shape)


def analyse(values: Mapping[str, Mapping[str, np.ndarray]], *, lower_is_better: bool = True,
            confidence: float = 0.95, reps: int = 2000, seed: int = 0, taus=TAUS) -> dict:
    """The comparison across tasks of per-seed `values` {task: {arch: (S,)}} (the same archs on each).

    Keys: tasks, scores {arch: (S, tasks)} (`normalise`), aggregates {arch: {name: {value, value_ci_low,
    value_ci_high}}} for `AGGREGATES`, order (archs best first by the lower end of the IQM's CI, then the
    IQM), improvement {archs (that order), p[i][j] = P(arch i improves on arch j), low / high of the
    pairs next to each other}, profiles {taus, arch: {value, low, high}}, confidence, reps.
    """
    scores = normalise(values, lower_is_better)
    archs = list(scores)
    aggregates = {}
    for a in archs:
        point, low, high = interval(lambda s: np.stack([f(s) for f in AGGREGATES.values()], axis=-1), [scores[a]],
                                    reps=reps, confidence=confidence, seed=seed)
        aggregates[a] = {n: {"value": float(p), "value_ci_low": float(lo), "value_ci_high": float(hi)}
                         for n, p, lo, hi in zip(AGGREGATES, point, low, high)}
    order = sorted(archs, key=lambda a: (-aggregates[a]["iqm"]["value_ci_low"], -aggregates[a]["iqm"]["value"]))
    p = np.array([[improvement(scores[a], scores[b]) if a != b else np.nan for b in order] for a in order])
    low, high = np.full(p.shape, np.nan), np.full(p.shape, np.nan)
    for i in range(len(order) - 1):  # next to each other in the order: what the order claims
        _, low[i, i + 1], high[i, i + 1] = interval(improvement, [scores[order[i]], scores[order[i + 1]]],
                                                    reps=reps, confidence=confidence, seed=seed)
    profiles = {"taus": np.asarray(taus, float)}
    for a in archs:
        value, lo, hi = interval(lambda s: profile(s, taus), [scores[a]], reps=reps, confidence=confidence, seed=seed)
        profiles[a] = {"value": value, "low": lo, "high": hi}
    return {"tasks": list(values), "scores": scores, "aggregates": aggregates, "order": order,
            "improvement": {"archs": order, "p": p, "low": low, "high": high}, "profiles": profiles,
            "confidence": confidence, "reps": reps, "lower_is_better": lower_is_better}
