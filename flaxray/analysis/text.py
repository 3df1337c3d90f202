"""Numbers as text, the one place they become words: `fmt` for the terminal, `num`, `ci` and `prob_ci`
for reports and for the verdicts an analysis records."""

from __future__ import annotations

import numpy as np


def fmt(x: float) -> str:
    """4 significant digits, trailing zeros kept so a column lines up; whole numbers bare (epochs)."""
    if x is None or np.isnan(x):
        return "n/a"
    if np.isinf(x):  # a diverged seed's worst value, or a CI that reaches it
        return "inf" if x > 0 else "-inf"
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    return f"{x:#.4g}"


def num(x) -> str:
    """4 significant digits; infinity (a diverged seed) as ∞, undefined as n/a."""
    if x is not None and np.isinf(x):
        return "∞" if x > 0 else "-∞"
    return fmt(x)


def ci(low, high) -> str:
    return f"[{num(low)}, {num(high)}]"


def prob_ci(p, low, high) -> str:
    """A probability and its CI to two decimals: '0.41 [0.11, 0.69]'."""
    bounds = f" [{low:.2f}, {high:.2f}]" if np.isfinite([low, high]).all() else ""
    return f"{p:.2f}{bounds}"
