"""Across-seed statistics: bootstrap CIs, the one per-architecture summary, the one ranking, a text table.

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

from flaxray import metrics

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


def _per_seed_best(curves: np.ndarray, lower_is_better: bool) -> np.ndarray:
    """Best value over epochs for each seed, ignoring non-finite epochs; NaN for an all-NaN seed."""
    fill = np.inf if lower_is_better else -np.inf
    c = np.where(np.isfinite(curves), curves, fill)
    best = c.min(axis=1) if lower_is_better else c.max(axis=1)
    return np.where(np.isfinite(best), best, np.nan)


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


def per_seed(history: Mapping[str, np.ndarray], key: str, kind: str, lower_is_better: bool) -> np.ndarray:
    """One value per seed from curves (S, E): the last epoch ("final") or the best epoch ("best")."""
    curves = np.atleast_2d(np.asarray(history[key], dtype=float))
    return curves[:, -1] if kind == "final" else _per_seed_best(curves, lower_is_better)


def val_metrics(history: Mapping[str, np.ndarray]) -> list[metrics.Entry]:
    """The registry metrics a history has as `val_<name>` curves, in registry order (then history order)."""
    found = [(i, e) for i, key in enumerate(history)
             if key.startswith("val_") and (e := metrics.find(key[len("val_"):])) is not None]
    return [e for _, e in sorted(found, key=lambda t: (metrics.REGISTRY.index(t[1].metric), t[0]))]


def summary_keys(history: Mapping[str, np.ndarray]) -> list[tuple[str, metrics.Entry, str]]:
    """(summary key, registry entry, "final" | "best") of every per-seed quantity `summarize` makes."""
    return [(f"{kind}_val_{e.name}", e, kind) for e in val_metrics(history) for kind in ("final", "best")]


def per_seed_values(history: Mapping[str, np.ndarray], *, diverged=None) -> dict[str, np.ndarray]:
    """{summary key: per-seed values (S,)} for every registry metric of the history; `diverged` (S,)
    bool seeds are NaN on every metric (a NaN loss can leave a finite but meaningless accuracy behind)."""
    out = {}
    for key, e, kind in summary_keys(history):
        if np.atleast_2d(np.asarray(history[f"val_{e.name}"])).shape[1] == 0:
            continue
        values = per_seed(history, f"val_{e.name}", kind, e.lower_is_better)
        out[key] = values if diverged is None else np.where(np.asarray(diverged, bool), np.nan, values)
    return out


def summarize(history: Mapping[str, np.ndarray], *, diverged=None, confidence: float = 0.95,
              seed: int = 0) -> dict[str, dict]:
    """The one per-architecture summary over seeds of a History {key: (S, E)}: {key: `describe`}.

    For every registry metric m with a `val_<m>` curve: `final_val_<m>` (the last epoch) and
    `best_val_<m>` (per seed, its best epoch: min for a loss, max for a score), described with m's
    direction, so a diverged seed is the worst in the robust statistics. Plus `best_epoch`: per seed
    the 1-based epoch of its lowest val loss. `diverged` (S,) bool marks seeds to count as
    non-finite on everything. Missing metrics are skipped.
    """
    out: dict[str, dict] = {}
    values = per_seed_values(history, diverged=diverged)
    for key, e, _ in summary_keys(history):
        if key in values:
            out[key] = describe(values[key], lower_is_better=e.lower_is_better, confidence=confidence, seed=seed)
    if "val_loss" in history:
        vl = np.atleast_2d(np.asarray(history["val_loss"], dtype=float))
        if vl.shape[1]:
            ok = np.isfinite(vl)
            epoch = np.argmin(np.where(ok, vl, np.inf), axis=1) + 1.0
            epoch[~ok.any(axis=1)] = np.nan  # a seed with no finite val_loss has no best epoch
            if diverged is not None:
                epoch[np.asarray(diverged, bool)] = np.nan
            out["best_epoch"] = describe(epoch, confidence=confidence, seed=seed)
    return out


def metric_label(key: str) -> str:
    """'final val AUC' for final_val_auc (labels from the registry), 'best epoch (val loss)', else the key."""
    if key == "best_epoch":
        return "best epoch (val loss)"
    for kind in ("final", "best"):
        if key.startswith(f"{kind}_val_"):
            return f"{kind} val {metrics.label(key[len(kind) + 5:])}"
    return key.replace("_", " ")


def _key_lower_is_better(key: str) -> bool:
    return metrics.lower_is_better(key.split("_val_", 1)[1]) if "_val_" in key else True


def criterion(key: str = "final_val_loss", confidence: float = 0.95) -> str:
    """What `rank` orders by, in words: the pessimistic end of the IQM's CI of `key`."""
    end = "upper" if _key_lower_is_better(key) else "lower"
    return f"{end} end of the {100 * confidence:g} % CI of the IQM of {metric_label(key)}"


# The one ranking criterion, named once: pessimistic, so neither a lucky seed nor few seeds can win it.
RANK_KEY = "final_val_loss"
RANK_CRITERION = criterion(RANK_KEY)  # "upper end of the 95 % CI of the IQM of final val loss"


def rank(summaries: Mapping[str, Mapping[str, dict]], *, key: str = RANK_KEY) -> list[dict]:
    """Archs best first by the pessimistic end of the IQM's CI of `key` (`RANK_CRITERION` by default).

    The upper CI end of a loss (lower end of a score) is what the arch achieves in a typical seed
    at worst, given the seeds seen: a lucky seed cannot lift it, a spread or few seeds lower it.
    Ties (e.g. several archs at +inf from diverged seeds) are broken by the IQM itself, then by
    the share of diverged seeds; an arch without `key` goes last. Rows: rank, arch, key,
    lower_is_better, criterion (the value ranked), iqm, iqm_ci_low, iqm_ci_high, mean, median,
    worst, n (finite seeds), n_nonfinite.
    """
    lower = _key_lower_is_better(key)
    bound, sign = ("iqm_ci_high", 1.0) if lower else ("iqm_ci_low", -1.0)
    nan = float("nan")
    rows = []
    for arch, summ in summaries.items():
        d = summ.get(key, {})
        rows.append({"arch": arch, "key": key, "lower_is_better": lower, "criterion": d.get(bound, nan),
                     **{k: d.get(k, nan) for k in ("iqm", "iqm_ci_low", "iqm_ci_high", "mean", "median", "worst")},
                     "n": d.get("n", 0), "n_nonfinite": d.get("n_nonfinite", 0)})

    def order(r):
        c, m = sign * r["criterion"], sign * r["iqm"]
        return (np.nan_to_num(c, nan=np.inf), np.nan_to_num(m, nan=np.inf),
                r["n_nonfinite"] / max(r["n"] + r["n_nonfinite"], 1))

    rows.sort(key=order)
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


# ----------------------------------------------------------------------------- text table


def fmt(x: float) -> str:
    """4 significant digits, trailing zeros kept so a column lines up; whole numbers bare (epochs)."""
    if x is None or np.isnan(x):
        return "n/a"
    if np.isinf(x):  # a diverged seed's worst value, or a CI that reaches it
        return "inf" if x > 0 else "-inf"
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    return f"{x:#.4g}"


def format_summary_table(summaries: Mapping[str, Mapping[str, dict]], ranking: list[dict] | None = None) -> str:
    """Plain-text table for the terminal (fits 100 columns).

    One block per architecture: a row per summary key (final/best val of every registry metric,
    the best epoch); columns mean ± std, 95 % CI of the mean, IQM, min..max over seeds. With
    several architectures the ranking follows (`rank` when not given), its criterion named.
    """
    lines: list[str] = []
    for arch, summ in summaries.items():
        n_seeds = max((d["n"] + d["n_nonfinite"] for d in summ.values()), default=0)
        head = f"{arch}  ({n_seeds} seed{'s' if n_seeds != 1 else ''})"
        lines += [head, "-" * len(head)]
        table = [("metric", "mean ± std", "95% CI of mean", "IQM", "min..max", "")]
        for key, d in summ.items():
            note = f"{d['n_nonfinite']} non-finite" if d["n_nonfinite"] else ""
            table.append((metric_label(key), f"{fmt(d['mean'])} ± {fmt(d['std'])}",
                          f"[{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]", fmt(d["iqm"]),
                          f"{fmt(d['min'])}..{fmt(d['max'])}", note))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        lines.append("")

    if len(summaries) > 1:
        ranking = rank(summaries) if ranking is None else ranking
        if ranking:
            key = ranking[0].get("key", RANK_KEY)
            better = "lower" if ranking[0].get("lower_is_better", True) else "higher"
            lines.append(f"Ranking by the {criterion(key)} ({better} is better)")
            lines.append("  (a diverged seed counts as the worst; the IQM leaves out the best and the worst quarter of seeds)")
            name_w = max(len(str(r["arch"])) for r in ranking)
            for r in ranking:
                ci = f"[{fmt(r['iqm_ci_low'])}, {fmt(r['iqm_ci_high'])}]"
                bad = f"{r['n_nonfinite']} diverged" if r["n_nonfinite"] else ""
                lines.append(f"  {r['rank']:>2}. {str(r['arch']).ljust(name_w)}  {fmt(r['criterion']):>9}  "
                             f"IQM {fmt(r['iqm'])} {ci:<22}  worst {fmt(r['worst'])}  {bad}".rstrip())
    fewest = min((d["n"] for summ in summaries.values() for d in summ.values()), default=0)
    if 2 <= fewest < 10:
        # Measured: a percentile bootstrap of the mean covers ~74 % at 3 seeds, ~88 % at 8, ~93 % at 20.
        lines.append(f"note: with {fewest} seeds a 95% bootstrap CI covers the true mean less often than 95% "
                     "(about 88% at 8 seeds); use more seeds for claims")
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- comparing architectures
#
# The architecture search's statistics, after rliable (Agarwal et al., "Deep RL at the Edge of the
# Statistical Precipice", NeurIPS 2021): robust aggregates (median, IQM) with bootstrap CIs, the
# probability of improvement, and a ranking that does not reward a lucky seed. A diverged seed
# (non-finite value) counts as the worst possible seed everywhere here, never as a missing one.


def _improvement(x, y, axis=-1):
    # Mann-Whitney U of x counts the pairs with x > y, ties as half: divided by n*m, P(X > Y).
    return scipy.stats.mannwhitneyu(x, y, axis=axis).statistic / (np.shape(x)[axis] * np.shape(y)[axis])


def prob_improvement(x, y, *, lower_is_better: bool = True, confidence: float = 0.95, n_resamples: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """P(X improves on Y) with its bootstrap CI: (p, low, high), as rliable defines it.

    p is the chance that a random seed of X beats a random seed of Y, ties counting half (the
    Mann-Whitney U statistic over n*m): 0.5 means neither is better, and p(X, Y) = 1 - p(Y, X).
    The CI resamples X's and Y's seeds independently (rliable's stratified independent
    bootstrap; scipy.stats.bootstrap with paired=False). NaN bounds with fewer than 2 seeds.
    """
    sign = -1.0 if lower_is_better else 1.0  # "improves" = lower loss
    x = sign * as_scores(np.ravel(x), lower_is_better)
    y = sign * as_scores(np.ravel(y), lower_is_better)
    if not x.size or not y.size:
        return float("nan"), float("nan"), float("nan")
    p = float(_improvement(x, y))
    if min(x.size, y.size) < 2:
        return p, float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # +-inf seeds: inf - inf inside scipy's rank code
        res = scipy.stats.bootstrap((x, y), _improvement, paired=False, vectorized=True, method="percentile",
                                    confidence_level=confidence, n_resamples=n_resamples,
                                    rng=np.random.default_rng(seed))
    return p, float(res.confidence_interval.low), float(res.confidence_interval.high)


def improvement_matrix(scores: Mapping[str, np.ndarray], *, lower_is_better: bool = True, **kwargs) -> dict:
    """P(row arch improves on column arch) for every pair: {"archs", "p", "low", "high"} (k, k) arrays.

    The diagonal is 0.5 (an arch against itself) with NaN bounds. kwargs go to `prob_improvement`.
    """
    archs = list(scores)
    k = len(archs)
    p, low, high = np.full((k, k), 0.5), np.full((k, k), np.nan), np.full((k, k), np.nan)
    for i, a in enumerate(archs):
        for j, b in enumerate(archs):
            if i != j:
                p[i, j], low[i, j], high[i, j] = prob_improvement(scores[a], scores[b],
                                                                  lower_is_better=lower_is_better, **kwargs)
    return {"archs": archs, "p": p, "low": low, "high": high}


def one_seed_win_probability(scores: Mapping[str, np.ndarray], *, lower_is_better: bool = True) -> dict[str, float]:
    """For each arch, the chance it wins when every arch is trained once, with one random seed each.

    That is the notes' way of choosing, made a number. Exact, not simulated: for each seed value
    x of arch a, every other arch b is worse with probability g_b and ties with probability e_b;
    a k-way tie is split evenly, and E[1/(1 + ties)] = integral over t in [0, 1] of
    prod_b (g_b + e_b t) dt, a polynomial integral. The probabilities sum to 1.
    """
    sign = -1.0 if lower_is_better else 1.0
    s = {a: sign * as_scores(np.ravel(v), lower_is_better) for a, v in scores.items()}  # higher = better
    out = {}
    for a, xs in s.items():
        total = 0.0
        for x in xs:
            poly = np.array([1.0])
            for b, ys in s.items():
                if b != a:
                    poly = np.polynomial.polynomial.polymul(poly, [np.mean(ys < x), np.mean(ys == x)])
            total += float(np.sum(poly / np.arange(1, poly.size + 1)))
        out[a] = total / xs.size if xs.size else float("nan")
    return out


def winner_of_mean(scores: Mapping[str, np.ndarray], *, lower_is_better: bool = True) -> str:
    """The arch with the best mean over seeds (a diverged seed makes a mean the worst)."""
    sign = 1.0 if lower_is_better else -1.0
    means = {a: sign * float(np.mean(as_scores(np.ravel(v), lower_is_better))) for a, v in scores.items()}
    return min(means, key=lambda a: (np.nan_to_num(means[a], nan=np.inf), list(scores).index(a)))


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
