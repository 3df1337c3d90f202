"""Across-seed statistics of one number per seed: bootstrap CIs, the one per-seed summary (`describe`),
confidence bands, the IQM, variance shares. Comparing architectures with them: `flaxray.analysis.ranking`.

Everything here is plain numpy/scipy on arrays shaped (seeds, ...), so it runs
on a laptop against a saved history without JAX.

A note on small seed counts: a percentile bootstrap CI of the mean under-covers
when there are few seeds (simulated normal data: about 75 % actual coverage for
a nominal 95 % with 3 seeds, about 88 % with 8, about 93 % with 20). The bands
are still the right picture of seed-to-seed spread; just don't read a 3-seed
"95 %" CI as a 95 % guarantee.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import numpy as np
import scipy.stats


# Upper bound on floats scipy holds at once (n_resamples x seeds x columns); it resamples
# in batches above this so a long (S, E) history can't exhaust memory.
_MAX_RESAMPLE_FLOATS = 20_000_000


def bootstrap_ci(
    values,
    *,
    confidence: float = 0.95,
    statistic: Callable = np.mean,
    n_resamples: int = 2000,
    seed: int = 0,
    axis: int = 0,
    method: str = "percentile",
    nonfinite: float | None = None,
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Bootstrap CI of `statistic` over `axis` (the seeds), via `scipy.stats.bootstrap`.

    Vectorised over the other axes: values (S, E) gives per-epoch bounds of shape (E,).
    Non-finite entries are dropped per column, or, with `nonfinite=np.inf` (say), take that
    value instead, so a diverged seed counts as the worst one rather than vanishing. A column
    with fewer than 2 values gets NaN bounds; one whose values are all equal gets low == high
    == that value. `statistic` must accept `axis=` (np.mean, np.median, `iqm` do).
    Deterministic in `seed`.
    """
    x = np.moveaxis(np.asarray(values, dtype=float), axis, 0)
    if nonfinite is not None:
        x = np.where(np.isfinite(x), x, nonfinite)
    out_shape = x.shape[1:]
    x = x.reshape(x.shape[0], int(np.prod(out_shape)))  # (S, M): every column is an independent bootstrap
    n_cols = x.shape[1]
    low = np.full(n_cols, np.nan)
    high = np.full(n_cols, np.nan)

    finite = np.isfinite(x) if nonfinite is None else np.ones(x.shape, bool)
    n_finite = finite.sum(axis=0)
    with np.errstate(invalid="ignore"):
        col_min = np.where(finite, x, np.inf).min(axis=0, initial=np.inf)
        col_max = np.where(finite, x, -np.inf).max(axis=0, initial=-np.inf)
    usable = n_finite >= 2
    degenerate = usable & (col_min == col_max)
    # scipy returns NaN plus a DegenerateDataWarning (BCa) for constant data, and the
    # percentile method can drift by an ulp; the exact answer is the value itself.
    low[degenerate] = high[degenerate] = col_min[degenerate]

    todo = np.flatnonzero(usable & ~degenerate)
    if todo.size:
        # Columns sharing the same set of finite seeds (typical: a seed that diverged at
        # epoch k is NaN from k on) are bootstrapped together in one vectorised call.
        masks, group = np.unique(finite[:, todo].T, axis=0, return_inverse=True)
        for g, mask in enumerate(masks):
            cols = todo[group.ravel() == g]
            data = x[np.ix_(mask, cols)]
            batch = max(1, _MAX_RESAMPLE_FLOATS // data.size)
            with warnings.catch_warnings():
                # Ill-conditioned small samples can make BCa warn; NaN bounds say it already.
                warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                res = scipy.stats.bootstrap(
                    (data,),
                    statistic,
                    axis=0,
                    confidence_level=confidence,
                    n_resamples=n_resamples,
                    batch=batch,
                    method=method,
                    # One stream per group, reproducible whatever order groups come in.
                    rng=np.random.default_rng([seed, g]),
                )
            low[cols] = res.confidence_interval.low
            high[cols] = res.confidence_interval.high
        if nonfinite is not None:
            # A percentile between two infinite resamples interpolates inf - inf = NaN; it is inf.
            low[todo] = np.where(np.isnan(low[todo]), nonfinite, low[todo])
            high[todo] = np.where(np.isnan(high[todo]), nonfinite, high[todo])

    if not out_shape:
        return float(low[0]), float(high[0])
    return low.reshape(out_shape), high.reshape(out_shape)


def describe(values, *, lower_is_better: bool | None = None, confidence: float = 0.95, seed: int = 0,
             n_resamples: int = 2000) -> dict:
    """Summary of one number per seed, shape (S,): the one summary every table, ranking and report reads.

    Keys: n (finite seeds), n_nonfinite, and over the finite seeds mean, std (ddof=1), ci_low /
    ci_high (bootstrap CI of the mean), min, max. The robust ones, median, iqm (rliable's
    interquartile mean) with iqm_ci_low / iqm_ci_high, worst and best, count a non-finite
    (diverged) seed as the worst value when the quantity has a direction (`lower_is_better`
    True: +inf, False: -inf), so a seed that blew up can never help; with `lower_is_better=None`
    (a plain quantity, an epoch number) they drop it too and worst/best are NaN. Undefined entries
    are NaN, never an exception. The IQM's CI resamples the seeds of one architecture on their own
    (rliable's stratified bootstrap with a single task).
    """
    v = np.asarray(values, dtype=float).ravel()
    ok = v[np.isfinite(v)]
    n, nan = ok.size, float("nan")
    robust = ok if lower_is_better is None else as_scores(v, lower_is_better)
    fill = None if lower_is_better is None else worst(lower_is_better)
    ci_low, ci_high = bootstrap_ci(ok, confidence=confidence, seed=seed, n_resamples=n_resamples)
    iqm_low, iqm_high = bootstrap_ci(robust, statistic=iqm, confidence=confidence, seed=seed,
                                     n_resamples=n_resamples, nonfinite=fill)
    out = {
        "n": int(n),
        "n_nonfinite": int(v.size - n),
        "mean": float(ok.mean()) if n else nan,
        "std": float(ok.std(ddof=1)) if n >= 2 else nan,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "median": float(np.median(robust)) if robust.size else nan,
        "iqm": float(iqm(robust)) if robust.size else nan,
        "iqm_ci_low": iqm_low,
        "iqm_ci_high": iqm_high,
        "worst": nan,
        "best": nan,
        "min": float(ok.min()) if n else nan,
        "max": float(ok.max()) if n else nan,
    }
    if lower_is_better is not None and robust.size:
        pick_worst, pick_best = (np.max, np.min) if lower_is_better else (np.min, np.max)
        out["worst"], out["best"] = float(pick_worst(robust)), float(pick_best(robust))
    return out


def band(curves, *, confidence: float = 0.95, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-epoch mean over seeds and bootstrap CI of that mean: curves (S, E) -> three (E,) arrays.

    This is what seaborn's lineplot draws by default. Non-finite seeds are left out epoch
    by epoch; an epoch with no finite seed has a NaN mean, one with a single seed NaN bounds.
    """
    c = np.atleast_2d(np.asarray(curves, dtype=float))
    finite = np.isfinite(c)
    n = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, c, 0.0).sum(axis=0) / n  # 0/0 -> NaN without nanmean's warning
    low, high = bootstrap_ci(c, confidence=confidence, seed=seed, axis=0)
    return mean, np.asarray(low), np.asarray(high)


def worst(lower_is_better: bool = True) -> float:
    """The value a diverged seed takes: +inf for a loss, -inf for a score."""
    return np.inf if lower_is_better else -np.inf


def as_scores(values, lower_is_better: bool = True) -> np.ndarray:
    """Per-seed values as floats, every non-finite (diverged) seed set to the worst value."""
    v = np.asarray(values, dtype=float)
    return np.where(np.isfinite(v), v, worst(lower_is_better))


def iqm(values, axis=0):
    """Interquartile mean: the mean of the middle 50 % of seeds (rliable's robust aggregate).

    scipy's `trim_mean` with 25 % cut from each end; one wild seed in eight cannot move it.
    """
    return scipy.stats.trim_mean(values, 0.25, axis=axis)


def percentile_ci(samples, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap `samples`, leaving out the non-finite ones (a resample with
    no spread in a denominator); NaN when none is finite."""
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if not samples.size:
        return float("nan"), float("nan")
    tail = 50 * (1 - confidence)
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def variance_shares(finals: Mapping[str, np.ndarray], *, total: str = "all", confidence: float = 0.95,
                    n_resamples: int = 2000, seed: int = 0, floor: str | None = None) -> dict[str, dict]:
    """Each source's share of the seed-to-seed variance of one per-seed value (final val loss).

    `finals[source]` holds the values of a run where only that source of randomness varied
    between seeds, `finals[total]` of a run where all did. share = var(source) / var(total)
    (ddof=1), with a bootstrap CI resampling the two runs independently. Shares need not sum to
    1: sources interact, and each variance is itself estimated from a few seeds; `remainder`
    (1 - sum) says how far off. Non-finite seeds are left out here (a variance of inf says nothing).

    `finals[floor]`, when given, is the numerical-noise floor: a run whose seeds differ only by float
    rounding. Each other source then also gets `above_floor` = (var(source) - var(floor)) / var(total),
    its share beyond what rounding alone gives, with a percentile bootstrap CI resampling the three
    runs independently (`percentile_ci`).
    """
    def ratio(a, b, axis=-1):
        return np.var(a, ddof=1, axis=axis) / np.var(b, ddof=1, axis=axis)

    all_v = np.asarray(finals[total], dtype=float).ravel()
    all_v = all_v[np.isfinite(all_v)]
    out = {}
    for source, values in finals.items():
        v = np.asarray(values, dtype=float).ravel()
        v = v[np.isfinite(v)]
        # np.var of equal values can be 1e-33 rather than 0; equal values vary by exactly nothing.
        d = {"n": int(v.size), "var": (float(np.var(v, ddof=1)) if np.ptp(v) > 0 else 0.0) if v.size >= 2 else float("nan")}
        d["std"] = float(np.sqrt(d["var"]))
        with np.errstate(divide="ignore", invalid="ignore"):
            d["share"] = d["var"] / float(np.var(all_v, ddof=1)) if v.size >= 2 and all_v.size >= 2 else float("nan")
        d["share_ci_low"] = d["share_ci_high"] = float("nan")
        if source != total and np.isfinite(d["share"]):
            if d["var"] == 0:  # e.g. dropout masks in a stack without dropout: exactly nothing
                d["share_ci_low"] = d["share_ci_high"] = 0.0
            else:
                with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
                    warnings.simplefilter("ignore", RuntimeWarning)
                    res = scipy.stats.bootstrap((v, all_v), ratio, paired=False, vectorized=True,
                                                method="percentile", confidence_level=confidence,
                                                n_resamples=n_resamples, rng=np.random.default_rng(seed))
                d["share_ci_low"], d["share_ci_high"] = (float(res.confidence_interval.low),
                                                         float(res.confidence_interval.high))
        out[source] = d
    noise = np.asarray(finals[floor], float).ravel() if floor in finals else None
    for source, d in out.items():
        if noise is not None and source not in (total, floor):
            v, noise_v = (x[np.isfinite(x)] for x in (np.asarray(finals[source], float).ravel(), noise))
            d["above_floor"] = d["share"] - out[floor]["share"]
            d["above_floor_ci_low"] = d["above_floor_ci_high"] = float("nan")
            if min(v.size, noise_v.size, all_v.size) >= 2 and np.isfinite(d["above_floor"]):
                rng = np.random.default_rng(seed)
                a, f, b = (x[rng.integers(0, x.size, (n_resamples, x.size))] for x in (v, noise_v, all_v))
                with np.errstate(divide="ignore", invalid="ignore"):
                    low_high = percentile_ci(ratio(a, b) - ratio(f, b), confidence)
                d["above_floor_ci_low"], d["above_floor_ci_high"] = low_high
    shares = [d["share"] for s, d in out.items() if s not in (total, floor)]
    out[total]["remainder"] = float(1.0 - np.sum(shares)) if shares else float("nan")
    return out
