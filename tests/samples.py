"""Comparing training runs of *different* programs, which no tolerance can do honestly.

Two programs that differ in shape (seeds batched or alone, chunks, devices, dtypes, another CPU's
kernels) round differently from the first step, and training amplifies that: their seeds are two
samples of one distribution, not the same numbers. So such runs are compared as samples, with a
stated false-failure rate, and never with a tolerance tuned to one machine's sample.
"""

import numpy as np
import scipy.stats

ALPHA = 1e-3  # each test below fails a correct trainer with probability at most this


def assert_one_distribution(a, b, what: str, alpha: float = ALPHA) -> None:
    """Per-seed values `a` and `b` (one per seed, e.g. final val loss) come from one distribution.

    A two-sided Mann-Whitney U test at `alpha`: under the hypothesis that both runs draw their seeds
    from one distribution it rejects with probability at most `alpha` (exact for independent samples;
    conservative here, where seed k of one run is the same seed as seed k of the other, so the two
    samples are positively correlated and their ranks interleave more than chance). Needs enough seeds
    to be able to fail at all: 8 and 8 give a smallest p-value of 1.6e-4.
    """
    a, b = np.ravel(np.asarray(a, float)), np.ravel(np.asarray(b, float))
    assert np.isfinite(a).all() and np.isfinite(b).all(), what
    smallest = 2 / scipy.special.comb(a.size + b.size, a.size)
    assert smallest < alpha, f"{a.size} and {b.size} seeds cannot fail a test at {alpha}"
    p = scipy.stats.mannwhitneyu(a, b, alternative="two-sided", method="exact").pvalue
    assert p > alpha, f"{what}: p = {p:.2g} < {alpha}: {a} vs {b}"


def assert_same_mean(a, b, what: str, alpha: float = ALPHA) -> None:
    """The means of per-seed values `a` and `b` do not differ: Welch's t-test at `alpha` (the
    per-seed values of these small stacks are close to normal; a false failure has probability ~alpha)."""
    p = scipy.stats.ttest_ind(np.ravel(a), np.ravel(b), equal_var=False).pvalue
    assert p > alpha, f"{what}: means {np.mean(a):.4g} vs {np.mean(b):.4g}, p = {p:.2g} < {alpha}"
