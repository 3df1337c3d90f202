"""When is the choice settled? Each epoch's ranking of the groups against the last epoch's.

    analyse(curves, order)   # curves {group: (seeds, epochs) val loss}: Kendall's tau per epoch, the settled epoch

The notes judged their curves at whatever epoch they stopped; a study that stops earlier may crown another
group. Per epoch the groups are ranked by the IQM of their seeds' val loss at that epoch (the ranking
criterion's centre: the criterion itself is a bootstrap bound, which a bootstrap over seeds could only
nest), and compared with the last epoch's ranking by Kendall's tau-b, with a percentile bootstrap CI over
seeds. The settled epoch is the first from which the top group is the last epoch's top group at every
later epoch. A diverged seed counts as the worst (+inf) from its epoch on. Plain numpy and scipy.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

from flaxray.analysis.stats import as_scores, iqm

_MAX_FLOATS = 5_000_000  # resampled values held at once; the bootstrap runs in batches above it


def kendall_tau(x, y) -> np.ndarray:
    """Kendall's tau-b of x against y over their last axis (the groups), vectorised over the leading axes
    (broadcast): (C - D) / sqrt(pairs untied in x * pairs untied in y), scipy.stats.kendalltau's default.
    Two infinite values tie; NaN where either side ties everywhere."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    i, j = np.triu_indices(x.shape[-1], 1)
    with np.errstate(invalid="ignore"):
        dx = np.nan_to_num(np.sign(x[..., i] - x[..., j]))  # inf - inf: NaN, a tie
        dy = np.nan_to_num(np.sign(y[..., i] - y[..., j]))
        return (dx * dy).sum(-1) / np.sqrt((dx != 0).sum(-1) * (dy != 0).sum(-1))


def _settled(top: np.ndarray) -> np.ndarray:
    """The 1-based first epoch from which `top` (..., E) equals its last value at every later epoch."""
    same = top == top[..., -1:]
    trailing = np.cumprod(same[..., ::-1], axis=-1).sum(-1)
    return top.shape[-1] - trailing + 1


def _iqms(scores: Mapping[str, np.ndarray], order: Sequence[str], idx: Mapping[int, np.ndarray] | None = None):
    """(..., E, G): each group's IQM over its seeds per epoch, the seeds resampled by idx[seed count] (B, S)."""
    cols = [iqm(scores[g] if idx is None else scores[g][idx[len(scores[g])]], axis=-2) for g in order]
    return np.stack(cols, -1)


def analyse(curves: Mapping[str, np.ndarray], order: Sequence[str], *, confidence: float = 0.95,
            n_resamples: int = 1000, seed: int = 0) -> dict:
    """Per epoch, Kendall's tau between that epoch's ranking of the groups and the last epoch's, and the epoch
    from which the top group no longer changes.

    Args:
      curves: {group: (S, E) val loss per seed and epoch}; groups may have different seed counts (a race).
      order: the groups (their order breaks ties for the top).
    Returns:
      {epochs, tau (E,), tau_low, tau_high (percentile CI over B resamples of the seeds; groups of equal
      seed counts share the resampled seed indices, which keeps paired settings paired), top (E,) the
      group with the lowest IQM per epoch, settled_epoch (1-based) with settled_low / settled_high (its
      percentile interval over the resamples), confidence}.
    """
    epochs = min(np.shape(curves[g])[1] for g in order)
    scores = {g: as_scores(np.asarray(curves[g], float)[:, :epochs]) for g in order}
    point = _iqms(scores, order)
    top = np.argmin(point, axis=-1)  # the first of equal IQMs, in `order`
    rng = np.random.default_rng(seed)
    per = max(1, _MAX_FLOATS // max(1, sum(s.size for s in scores.values())))
    taus, settled = [], []
    for start in range(0, n_resamples, per):
        b = min(per, n_resamples - start)
        idx = {n: rng.integers(0, n, (b, n)) for n in sorted({len(s) for s in scores.values()})}
        boot = _iqms(scores, order, idx)  # (b, E, G)
        taus.append(kendall_tau(boot, boot[:, -1:, :]))
        settled.append(_settled(np.argmin(boot, axis=-1)))
    taus, settled = np.concatenate(taus), np.concatenate(settled)
    tail = 50 * (1 - confidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an epoch where every resample ties: its CI is NaN
        low, high = np.nanpercentile(taus, [tail, 100 - tail], axis=0)
    s_low, s_high = np.percentile(settled, [tail, 100 - tail])
    return {"epochs": epochs, "tau": kendall_tau(point, point[-1]), "tau_low": low, "tau_high": high,
            "top": [order[i] for i in top], "settled_epoch": int(_settled(top)), "settled_low": float(s_low),
            "settled_high": float(s_high), "confidence": confidence}
