"""The race's sequential test: exact one-sided Mann-Whitney p-values, where the alpha is spent, futility.

    spending(14, [3, 6, 9, 12], 0.05)   # {6: 2/924, 9: 0.000926, 12: 0.000756}: each rival's share per look
    worse_p(x, y)                       # exact p that seeds of x end worse (higher) than seeds of y
    predictive_power(values, levels)    # P(each arch is eliminated by each other by the cap), simulated
    needed(power, 0.1, order, top=2)    # the futility exit: which archs the race still needs

Why the levels are where they are: with n seeds against n the smallest one-sided p is 1 / C(2n, n)
and every attainable p is a point of that lattice, so a level between two lattice points spends
only the lower one. Each rival's share alpha / (K - 1) is therefore spent look by look as lattice
points, as much as a Pocock-type spending function allows by then (Lan and DeMets 1983: early looks
get much of it, which is where a race saves seeds); what a look cannot spend carries to the next,
and the last look spends the rest. Numpy only; no jax.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import numpy as np

from flaxray.analysis import stats


def looks(max_seeds: int, round_seeds: int) -> list[int]:
    """Seeds per arch after each planned round: R, 2R, ..., max_seeds (the last round may be short)."""
    return sorted({min(k, max_seeds) for k in range(round_seeds, max_seeds + round_seeds, round_seeds)})


@functools.cache
def _null_sf(m: int, n: int) -> np.ndarray:
    """P(U >= u), u = 0..m n, where U counts the pairs (x, y) with x > y among m x's and n y's drawn
    from one continuous distribution: the exact Mann-Whitney null. The largest of the m + n values is
    an x with probability m / (m + n), and then beats all n y's; otherwise it is a y and beats nothing."""
    pmf = np.ones(1)
    if m and n:
        pmf = np.zeros(m * n + 1)
        pmf[n:] += m / (m + n) * np.diff(-_null_sf(m - 1, n), append=0.0)
        pmf[: m * (n - 1) + 1] += n / (m + n) * np.diff(-_null_sf(m, n - 1), append=0.0)
    return np.cumsum(pmf[::-1])[::-1]


def lattice(n: int) -> np.ndarray:
    """Every one-sided p-value n seeds against n can give, smallest first (1 / C(2n, n) is the first)."""
    return _null_sf(n, n)[::-1].copy()


def spending(n_archs: int, planned: Sequence[int], alpha: float) -> dict[int, float]:
    """{look: the level of each of an arch's tests against one rival there}; looks absent reject nothing.

    Per rival the share beta = alpha / (K - 1) is spent by the cumulative allowance
    beta * ln(1 + (e - 1) * n / N) at a look with n of the N = planned[-1] seeds (Pocock-type): each look
    before the last spends the largest lattice point within what is allowed and not yet spent, the last
    the rest. The levels sum to at most beta, so by the union bound over the K - 1 rivals and the looks
    an arch that no other beats is eliminated with probability at most alpha. A function of the design
    alone (K, the looks, alpha), fixed before any seed is seen."""
    beta, cap, spent, out = alpha / max(n_archs - 1, 1), planned[-1], 0.0, {}
    for n in planned[:-1]:
        allowed = beta * np.log1p((np.e - 1) * n / cap) - spent
        reach = lattice(n)[lattice(n) <= allowed * (1 + 1e-12)]  # a point equal to the allowance fits, rounding aside
        if reach.size:
            out[n] = float(reach[-1])
            spent += out[n]
    if lattice(cap)[0] <= beta - spent:  # the last look can reject at what is left
        out[cap] = beta - spent
    return out


def worse_p(x, y) -> np.ndarray:
    """One-sided exact Mann-Whitney p that seeds of x end with higher (worse) losses than seeds of y,
    along the last axis (broadcast). A tie between an x and a y seed counts as x better, which can only
    raise p, so the exact no-ties null stays valid with ties and diverged seeds (NaN: +inf)."""
    x, y = (np.where(np.isnan(v), np.inf, v) for v in (np.asarray(x, float), np.asarray(y, float)))
    u = (x[..., :, None] > y[..., None, :]).sum(axis=(-1, -2))
    return _null_sf(x.shape[-1], y.shape[-1])[u]


def improvement(values: np.ndarray) -> np.ndarray:
    """(K,) each arch's mean P(it improves on another), rliable's statistic (ties half) over the others:
    the test's own statistic, so the arch it puts first is the one the others are raced against."""
    v = stats.as_scores(values)  # lower is better; a diverged seed the worst
    lower = (v[:, None, :, None] < v[None, :, None, :]).mean((-1, -2))
    equal = (v[:, None, :, None] == v[None, :, None, :]).mean((-1, -2))
    p = lower + 0.5 * equal
    np.fill_diagonal(p, 0.0)
    return p.sum(1) / max(len(v) - 1, 1)


def predictive_power(values: np.ndarray, levels: Mapping[int, float], *, sims: int = 200, seed: int = 0) -> np.ndarray:
    """(K, K): P(arch i is eliminated by arch j at some later look), given their (K, n) seeds so far.

    Each simulated race goes on from the seeds seen: every arch's further seeds up to the last look in
    `levels` are drawn with replacement from its own observed seeds (the bootstrap of
    `flaxray.analysis.study.seeds_to_settle`, which takes the observed difference as the true one), and
    the race's own test is applied at each later look m at its level levels[m]. Seeded: the same seeds
    give the same powers, so a resumed race decides the same way."""
    v = stats.as_scores(values)
    k, n = v.shape
    later = sorted(m for m in levels if m > n)
    if not later or k < 2:
        return np.zeros((k, k))
    rng = np.random.default_rng([seed, n])
    more = np.take_along_axis(np.broadcast_to(v, (sims, k, n)), rng.integers(0, n, (sims, k, later[-1] - n)), -1)
    full = np.concatenate([np.broadcast_to(v, (sims, k, n)), more], -1)
    hits, size = np.zeros((k, k)), full.shape[-1]
    step = max(1, 2**23 // (k * k * size * size))  # simulated races a batch: at most ~8M comparisons in memory
    for lo in range(0, sims, step):
        x = full[lo : lo + step]
        beats = x[:, :, None, :, None] > x[:, None, :, None, :]  # [s, i, j, p, q]: seed p of i above seed q of j
        hit, u, seen = np.zeros(beats.shape[:3], bool), 0, 0
        for m in later:  # U over the first m seeds of each: the last look's, plus the new rows and columns
            u = u + beats[..., seen:m, :m].sum((-1, -2)) + beats[..., :seen, seen:m].sum((-1, -2))
            hit |= _null_sf(m, m)[u] <= levels[m]
            seen = m
        hits += hit.sum(0)
    np.fill_diagonal(hits, 0.0)
    return hits / sims


def needed(power: np.ndarray, gamma: float, order: Sequence[int], top: int | None = None) -> np.ndarray:
    """(K,) bool: the archs a race still needs, given `predictive_power`'s (K, K) matrix. Arch i is needed
    when it may still be eliminated (power[i, j] >= gamma for some j), or when it is one of the `top`
    strongest challengers j != i (the largest power[i, j], however small; equal powers go to the first in
    `order`) of such an arch i (None: every challenger with power[i, j] >= gamma, the rule "either way
    round"). One challenger can throw a worse arch out: the others that could are redundant, and may leave."""
    power = np.asarray(power, float)
    rank = np.empty(len(power), int)
    rank[list(order)] = np.arange(len(power))
    out = (power >= gamma).any(axis=1)
    for i in np.flatnonzero(out):
        by = sorted((j for j in range(len(power)) if j != i and (top or power[i, j] >= gamma)),
                    key=lambda j: (-power[i, j], rank[j]))
        out[by[:top]] = True
    return out
