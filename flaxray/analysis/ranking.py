"""Comparing architectures over seeds: the one per-architecture summary, the one ranking, the
probability of improvement, and the terminal table.

After rliable (Agarwal et al., "Deep RL at the Edge of the Statistical Precipice", NeurIPS 2021):
robust aggregates (median, IQM) with bootstrap CIs (`flaxray.analysis.stats`), the probability of
improvement, and a ranking that does not reward a lucky seed. A diverged seed (non-finite value)
counts as the worst possible seed everywhere here, never as a missing one. Plain numpy/scipy.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import scipy.stats

from flaxray.analysis import metrics
from flaxray.analysis.stats import as_scores, describe


def _per_seed_best(curves: np.ndarray, lower_is_better: bool) -> np.ndarray:
    """Best value over epochs for each seed, ignoring non-finite epochs; NaN for an all-NaN seed."""
    fill = np.inf if lower_is_better else -np.inf
    c = np.where(np.isfinite(curves), curves, fill)
    best = c.min(axis=1) if lower_is_better else c.max(axis=1)
    return np.where(np.isfinite(best), best, np.nan)


def per_seed(history: Mapping[str, np.ndarray], key: str, kind: str, lower_is_better: bool,
             final_epoch=None) -> np.ndarray:
    """One value per seed from curves (S, E): the final epoch ("final": the last, or `final_epoch[s]`
    (1-based), the model a seed ends with under early stopping or model selection) or the best ("best")."""
    curves = np.atleast_2d(np.asarray(history[key], dtype=float))
    if kind != "final":
        return _per_seed_best(curves, lower_is_better)
    return curves[:, -1] if final_epoch is None else curves[np.arange(len(curves)), np.asarray(final_epoch) - 1]


def val_metrics(history: Mapping[str, np.ndarray]) -> list[metrics.Entry]:
    """The registry metrics a history has as `val_<name>` curves, in registry order (then history order)."""
    found = [(i, e) for i, key in enumerate(history)
             if key.startswith("val_") and (e := metrics.find(key[len("val_"):])) is not None]
    return [e for _, e in sorted(found, key=lambda t: (metrics.REGISTRY.index(t[1].metric), t[0]))]


def summary_keys(history: Mapping[str, np.ndarray]) -> list[tuple[str, metrics.Entry, str]]:
    """(summary key, registry entry, "final" | "best") of every per-seed quantity `summarize` makes."""
    return [(f"{kind}_val_{e.name}", e, kind) for e in val_metrics(history) for kind in ("final", "best")]


def per_seed_values(history: Mapping[str, np.ndarray], *, diverged=None, final_epoch=None) -> dict[str, np.ndarray]:
    """{summary key: per-seed values (S,)} for every registry metric of the history; `diverged` (S,)
    bool seeds are NaN on every metric (a NaN loss can leave a finite but meaningless accuracy behind)."""
    out = {}
    for key, e, kind in summary_keys(history):
        if np.atleast_2d(np.asarray(history[f"val_{e.name}"])).shape[1] == 0:
            continue
        values = per_seed(history, f"val_{e.name}", kind, e.lower_is_better, final_epoch)
        out[key] = values if diverged is None else np.where(np.asarray(diverged, bool), np.nan, values)
    return out


def summarize(history: Mapping[str, np.ndarray], *, diverged=None, confidence: float = 0.95,
              seed: int = 0, final_epoch=None) -> dict[str, dict]:
    """The one per-architecture summary over seeds of a History {key: (S, E)}: {key: `describe`}.

    For every registry metric m with a `val_<m>` curve: `final_val_<m>` (the last epoch) and
    `best_val_<m>` (per seed, its best epoch: min for a loss, max for a score), described with m's
    direction, so a diverged seed is the worst in the robust statistics. Plus `best_epoch`: per seed
    the 1-based epoch of its lowest val loss. `diverged` (S,) bool marks seeds to count as
    non-finite on everything. Missing metrics are skipped.
    """
    out: dict[str, dict] = {}
    values = per_seed_values(history, diverged=diverged, final_epoch=final_epoch)
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


# ----------------------------------------------------------------------------- comparing architectures


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
