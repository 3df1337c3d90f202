"""Two groups on one per-seed value: seed by seed where the seeds are paired, independent samples where not.

    compare(a, b, paired=True)      # settings of one arch: the per-seed differences
    compare(a, b, paired=False)     # two archs: every seed of one against every seed of the other
    decide(low, high, delta)        # better, worse, equivalent within +-delta or undecided (TOST)

Groups of one arch at other settings (`--lr`, `--dropout`, `--weight-decay`, `--momentum`,
`--early-stopping`) trained the same seeds in one program: seed k has the same initialisation, dropout
masks and data order in both, so its difference removes the seed's own luck, and the tests are of the
differences: Wilcoxon's signed-rank test, the exact sign-flip permutation test of their mean, the
Hodges-Lehmann shift (the median of the Walsh averages) with its distribution-free CI (the Wilcoxon test
inverted, as R's `wilcox.test(conf.int=TRUE)`), and P(improvement) on the pairs. Two archs have
independent initialisations, so their shift is the two-sample Hodges-Lehmann estimate (the median of
every difference a_i - b_j) with the Mann-Whitney test inverted for its CI (Moses' interval).

A diverged seed counts as the worst (+inf for a loss), never as a missing one: a difference with it is
+-inf (ranks still order it), and two diverged seeds tie. The sign-flip test of the mean is then not
defined (NaN); the rank tests are. Plain numpy and scipy.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import scipy.stats

from flaxray.analysis.stats import as_scores, bootstrap_ci

DECISIONS = ("better", "worse", "equivalent", "undecided")
_EXACT_U = 10_000  # m*n up to which the Mann-Whitney null is counted exactly; above, its normal approximation
_EXACT_FLIPS = 16  # seeds up to which the sign-flip test enumerates all 2^n flips; above, 65536 random ones


@functools.lru_cache(maxsize=64)
def signed_rank_null(n: int) -> np.ndarray:
    """P(T+ = t), t = 0..n(n+1)/2: Wilcoxon's signed-rank statistic with no ties, each rank's sign a fair coin.
    Built one rank at a time in probabilities (all positive: no cancellation), so exact to rounding at any n."""
    p = np.zeros(n * (n + 1) // 2 + 1)
    p[0] = 1.0
    for i in range(1, n + 1):
        p[i:] = (p[i:] + p[:-i]) / 2  # rank i's sign: + adds i to T+ (the right side is read before it is written)
        p[:i] /= 2
    return p


@functools.lru_cache(maxsize=64)
def rank_sum_null(m: int, n: int) -> np.ndarray:
    """P(U = u), u = 0..m*n: the Mann-Whitney statistic with no ties, from the Gaussian binomial [m+n, m]_q
    (integer counts, exact) over C(m+n, m)."""
    c = np.zeros(m * n + 1, dtype=object)
    c[0] = 1
    for i in range(1, m + 1):
        if n + i < c.size:  # times (1 - q^(n+i)); the quotient is a polynomial of degree <= m*n, so truncating is exact
            c[n + i:] = c[n + i:] - c[:-(n + i)]
        for r in range(i):  # divided by (1 - q^i): a running sum along each residue mod i
            c[r::i] = np.cumsum(c[r::i])
    return np.array([x / math.comb(m + n, m) for x in c], dtype=float)


def _lower_count(cdf, alpha: float) -> int:
    """k, the largest count with P(stat <= k - 1) <= alpha / 2: the interval drops the k - 1 lowest and highest
    order statistics. 0: no interval at this level (too few seeds)."""
    return int(np.searchsorted(cdf, alpha / 2 * (1 + 1e-9), side="right"))


def _normal_count(mean: float, var: float, alpha: float) -> int:
    # k from the normal approximation of the null (mean, var), with a continuity correction: large samples.
    return max(0, int(np.floor(mean - scipy.stats.norm.isf(alpha / 2) * math.sqrt(var) + 0.5)))


def _order_interval(values, cdf, alpha: float, k: int | None = None) -> tuple[float, float, float]:
    """[v_(k), v_(N+1-k)] of the sorted `values` (N of them) and the confidence it has, 1 - 2 P(stat <= k - 1);
    (-inf, inf, 1) when no k reaches 1 - alpha."""
    v = np.sort(values)
    k = _lower_count(cdf, alpha) if k is None else k
    if k < 1:
        return -math.inf, math.inf, 1.0
    return float(v[k - 1]), float(v[v.size - k]), float(1 - 2 * cdf[k - 1]) if cdf is not None else 1 - alpha


def difference(a, b):
    """a - b with two worst seeds (inf - inf) tied at 0, not NaN."""
    with np.errstate(invalid="ignore"):
        d = np.subtract(a, b)
    return np.where(np.isnan(d), 0.0, d)


def walsh(d) -> np.ndarray:
    """The Walsh averages (d_i + d_j) / 2, i <= j, of the differences d."""
    d = np.ravel(d)
    i, j = np.triu_indices(d.size)
    return difference(d[i], -d[j]) / 2


def hodges_lehmann(a, b=None, *, confidence: float = 0.95) -> dict:
    """The Hodges-Lehmann shift of a over b and its distribution-free CI.

    b None: `a` are paired differences; the shift is the median of their Walsh averages, the CI the signed-rank
    test inverted. Else two independent samples: the median of every a_i - b_j, the CI the Mann-Whitney test
    inverted (Moses). Exact null distributions (no ties assumed, as R's); the normal one above `_EXACT_U`
    pairs of seeds. Keys: shift, low, high, and achieved, the confidence the interval has (the exact nulls
    are discrete: at least `confidence`; with too few seeds no finite interval reaches it: (-inf, inf)).
    """
    alpha = 1 - confidence
    if b is None:
        v, n = walsh(a), np.size(a)
        cdf = np.cumsum(signed_rank_null(n)) if n else None
    else:
        m, n = np.size(a), np.size(b)
        v = difference(np.ravel(a)[:, None], np.ravel(b)[None, :]).ravel()
        cdf = np.cumsum(rank_sum_null(m, n)) if m * n <= _EXACT_U else None
    if not v.size:
        return {"shift": math.nan, "low": math.nan, "high": math.nan, "achieved": math.nan}
    k = None
    if cdf is None:  # large samples: the normal approximation of U's null
        k = _normal_count(m * n / 2, m * n * (m + n + 1) / 12, alpha)
    low, high, achieved = _order_interval(v, cdf, alpha, k)
    return {"shift": float(np.median(v)), "low": low, "high": high, "achieved": achieved}


def signflip_p(d, *, seed: int = 0) -> float:
    """Two-sided p of the sign-flip permutation test of the mean difference: every 2^n flips of the signs up to
    `_EXACT_FLIPS` seeds (exact), 65536 random ones above. NaN with a non-finite difference (a diverged seed:
    no mean) or fewer than 2 nonzero differences."""
    d = np.ravel(np.asarray(d, float))
    if not np.isfinite(d).all() or np.count_nonzero(d) < 2:
        return math.nan
    res = scipy.stats.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                                       n_resamples=np.inf if d.size <= _EXACT_FLIPS else 2**16,
                                       rng=np.random.default_rng(seed))
    return float(res.pvalue)


def wilcoxon_p(d) -> float:
    """Wilcoxon's two-sided signed-rank p of the differences (zeros dropped; scipy's exact null for up to 50
    without ties); NaN with fewer than 2 nonzero differences, where there is nothing to test."""
    d = np.ravel(d)
    if np.count_nonzero(d) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ties: scipy says it leaves the exact null; the p stands
        return float(scipy.stats.wilcoxon(d).pvalue)


def decide(low: float, high: float, delta: float) -> str:
    """From the (1 - 2 alpha) CI of the shift (a - b, lower is better) and the margin +-delta, each one-sided
    test at alpha: `better` (high < -delta: lower by more than delta), `worse` (low > delta), `equivalent`
    (-delta < low and high < delta: TOST's two one-sided tests both reject), else `undecided`."""
    if not np.isfinite([low, high]).all():
        return "undecided"
    if high < -delta:
        return "better"
    if low > delta:
        return "worse"
    if -delta < low and high < delta:
        return "equivalent"
    return "undecided"


def compare(a, b, *, paired: bool, lower_is_better: bool = True, confidence: float = 0.95,
            rope: float | None = None) -> dict:
    """Group a against group b on one per-seed value (diverged seeds NaN, counted as the worst).

    Keys: paired, n (seeds, or pairs), shift / shift_low / shift_high / shift_achieved (Hodges-Lehmann, a - b,
    with its CI at `confidence`). Paired, also: median_difference, wins (seeds where a is better), ties,
    p_improve with p_improve_low / p_improve_high (the share of seeds where a beats b, ties half, with its
    bootstrap CI over seeds), wilcoxon_p and signflip_p. With `rope`: rope_low / rope_high, the shift's
    (1 - 2 alpha) CI, and decision (`decide`), in the units of the value (a score's sign is kept: `better`
    is then higher).
    """
    x, y = as_scores(np.ravel(a), lower_is_better), as_scores(np.ravel(b), lower_is_better)
    sign = 1.0 if lower_is_better else -1.0  # "better": a lower loss, a higher score
    out = {"paired": paired, "n": int(x.size) if paired else int(min(x.size, y.size))}
    if paired:
        if x.size != y.size:
            raise ValueError(f"paired groups need the same seeds, got {x.size} and {y.size} values")
        d = difference(x, y)
        hl = hodges_lehmann(d, confidence=confidence)
        better = sign * d < 0
        score = np.where(better, 1.0, np.where(d == 0, 0.5, 0.0))
        low, high = bootstrap_ci(score, confidence=confidence) if d.size >= 2 else (math.nan, math.nan)
        out.update(median_difference=float(np.median(d)) if d.size else math.nan, wins=int(better.sum()),
                   ties=int(np.sum(d == 0)), p_improve=float(score.mean()) if d.size else math.nan,
                   p_improve_low=low, p_improve_high=high, wilcoxon_p=wilcoxon_p(d), signflip_p=signflip_p(d))
    else:
        hl = hodges_lehmann(x, y, confidence=confidence)
    out.update(shift=hl["shift"], shift_low=hl["low"], shift_high=hl["high"], shift_achieved=hl["achieved"])
    if rope is not None:
        # TOST at alpha = 1 - confidence is the (1 - 2 alpha) interval inside the margin.
        tost = hodges_lehmann(d if paired else x, None if paired else y, confidence=1 - 2 * (1 - confidence))
        out.update(rope=float(rope), rope_low=tost["low"], rope_high=tost["high"],
                   decision=decide(tost["low"], tost["high"], rope) if lower_is_better
                   else decide(-tost["high"], -tost["low"], rope))
    return out
