"""Figures of estimates, one number per arch, pair or method with its interval, written straight to PNG
(after rliable's interval plots, probability-of-improvement heat map and performance profiles): the
intervals of a summary, P(improvement), profiles, throughput against seeds, a race's rounds. Built like
`flaxray.report.plots`: on `matplotlib.figure.Figure` through the Agg canvas, never pyplot.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from flaxray.report.plots import palette


def _tick(arch: str) -> str:
    """An arch as a tick label: a user's `DIR/FILE.py:NAME` without its folders, which would leave the axes
    no room (the tables keep the whole name). Matched as text, as `flaxray.models.user.ROUTE` would: the
    report reads results and imports no model code."""
    head, sep, name = arch.rpartition(".py:")
    return f"{PurePath(head).name}.py:{name}" if sep else arch


def _ci_keys(stat: str) -> tuple[str, str]:
    # `stats.describe` names the mean's CI ci_low/ci_high (the table's), every other one <stat>_ci_low/high.
    return ("ci_low", "ci_high") if stat == "mean" else (f"{stat}_ci_low", f"{stat}_ci_high")


def plot_intervals(
    summaries: Mapping[str, Mapping[str, dict]],
    *,
    metrics: tuple[tuple[str, str], ...],
    values: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    stat: str = "iqm",
    ncols: int | None = None,
    confidence: float = 0.95,
    title: str | None = None,
    caption: str | None = None,
):
    """Interval plot, one panel per metric: arch on y (first = top), `stat` and its CI bar on x.

    `summaries[arch][key]` are `stats.describe` dicts; `metrics` is ((key, label), ...),
    laid out row by row, `ncols` panels a row (default: all in one row); `values[arch][key]`
    (optional) adds each seed as a faint dot. Non-finite seeds and bounds (diverged seeds) are
    not drawn; the arch's label says how many seeds diverged. `caption`: what the tick and the bar are, when
    not a statistic over seeds.
    """
    archs = list(summaries)
    if not archs:
        raise ValueError("plot_intervals needs at least one architecture")
    ncols = min(ncols or len(metrics), len(metrics))
    nrows = int(np.ceil(len(metrics) / ncols))
    width = max(len(a) for a in archs) * 0.07 + 3.6 * ncols + 0.4
    fig = Figure(figsize=(width, nrows * (0.3 * len(archs) + 1.0) + 0.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    y = np.arange(len(archs))[::-1]  # first arch on top
    colors = palette(len(archs))
    for ax, (key, label) in zip(axes, metrics):
        # x range: the CI bars (not every seed), so one arch's wild seed does not squash the others;
        # seeds beyond it sit on the edge as arrowheads.
        marks = [summaries[a][key][k] for a in archs if key in summaries[a]
                 for k in (*_ci_keys(stat), stat)]
        marks = np.asarray([m for m in marks if np.isfinite(m)], dtype=float)
        lo, hi = (marks.min(), marks.max()) if marks.size else (0.0, 1.0)
        pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
        lo, hi = lo - pad, hi + pad
        for yi, arch, color in zip(y, archs, colors):
            d = summaries[arch].get(key)
            if d is None:
                continue
            if values is not None and key in values.get(arch, {}):
                v = np.asarray(values[arch][key], dtype=float)
                v = v[np.isfinite(v)]
                jitter = np.linspace(-0.18, 0.18, v.size) if v.size > 1 else np.zeros(v.size)
                inside = (v >= lo) & (v <= hi)
                ax.scatter(v[inside], yi + jitter[inside], s=9, color=color, alpha=0.35, lw=0, zorder=1)
                for side, marker, edge in ((v < lo, "<", lo), (v > hi, ">", hi)):
                    if side.any():
                        ax.scatter(np.full(side.sum(), edge), yi + jitter[side], s=14, marker=marker, color=color,
                                   alpha=0.6, lw=0, zorder=1, clip_on=False)
            (low, high), mid = (d[k] for k in _ci_keys(stat)), d[stat]
            if np.isfinite([low, high]).all():
                ax.plot([low, high], [yi, yi], color=color, lw=5, alpha=0.55, solid_capstyle="butt", zorder=2)
            if np.isfinite(mid):
                ax.plot([mid], [yi], marker="|", ms=14, mew=2.5, color="black", zorder=3)
        ax.set_xlim(lo, hi)
        ax.set_title(label, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_ylim(-0.7, len(archs) - 0.3)
    names = []
    for arch in archs:
        bad = max((d.get("n_nonfinite", 0) for d in summaries[arch].values()), default=0)
        names.append(f"{_tick(arch)} ({bad} diverged)" if bad else _tick(arch))
    for ax in axes[::ncols]:
        ax.set_yticks(y, names, fontsize=9)
        ax.yaxis.set_tick_params(labelleft=True)
    fig.supxlabel(caption or f"black tick: {stat.upper() if stat == 'iqm' else stat} over seeds · bar: its "
                  f"{100 * confidence:g} % bootstrap CI · dots: seeds (arrowheads: beyond the axis)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=12)
    return axes


def plot_improvement_matrix(matrix: Mapping, *, confidence: float = 0.95, title: str | None = None):
    """Heat map of P(row arch improves on column arch) from `ranking.improvement_matrix`; returns its axes.

    Blue: the row arch tends to beat the column arch; red: it tends to lose; white: a coin flip.
    Bold values with a frame are pairs whose CI excludes 0.5.
    """
    archs, p, low, high = matrix["archs"], np.asarray(matrix["p"]), np.asarray(matrix["low"]), np.asarray(matrix["high"])
    k = len(archs)
    if k == 0:
        raise ValueError("plot_improvement_matrix needs at least one architecture")
    side = max(4.5, 0.55 * k + 2.8)
    fig = Figure(figsize=(side + 1.2, side), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(p, cmap="RdBu", vmin=0, vmax=1)
    fontsize = 9 if k <= 8 else 7
    for i in range(k):
        for j in range(k):
            if i == j:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fc="0.85", ec="none"))  # itself: no comparison
                continue
            clear = np.isfinite([low[i, j], high[i, j]]).all() and (low[i, j] > 0.5 or high[i, j] < 0.5)
            shade = abs(p[i, j] - 0.5) > 0.3
            ax.text(j, i, f"{p[i, j]:.2f}", ha="center", va="center", fontsize=fontsize,
                    color="white" if shade else "black", fontweight="bold" if clear else "normal")
            if clear:
                ax.add_patch(Rectangle(
                    (j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=1.2))
    ax.set_xticks(range(k), [_tick(a) for a in archs], rotation=45, ha="right", fontsize=fontsize + 1)
    ax.set_yticks(range(k), [_tick(a) for a in archs], fontsize=fontsize + 1)
    ax.set_xlabel("column arch")
    ax.set_ylabel("row arch")
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label("P(row improves on column)")
    ax.set_title(title or f"P(row improves on column)\nbold, framed: its {100 * confidence:g} % CI excludes 0.5",
                 fontsize=10)
    return ax


def plot_profiles(profiles: Mapping, *, confidence: float = 0.95, title: str | None = None):
    """Performance profiles (rliable's score distributions): for each arch, the share of its runs over
    every task that score above tau, with its stratified-bootstrap band. `profiles`: `flaxray.analysis.tasks`'s
    {"taus": (T,), arch: {value, low, high}}, archs in the order to list them."""
    taus = np.asarray(profiles["taus"], float)
    archs = [a for a in profiles if a != "taus"]
    fig = Figure(figsize=(6.4, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for arch, color in zip(archs, palette(len(archs))):
        p = profiles[arch]
        ax.fill_between(taus, p["low"], p["high"], color=color, alpha=0.2, lw=0)
        ax.plot(taus, p["value"], color=color, lw=1.8, label=arch)
    ax.set_xlim(taus[0], taus[-1])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("normalised score τ (1: the task's best run, 0: its worst)")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncols=1 + len(archs) // 8)
    ax.set_title(title or f"performance profiles · bands: {100 * confidence:g} % stratified bootstrap CI", fontsize=10)
    return ax


def plot_throughput(rows, *, title: str | None = None):
    """Seed-epochs per second against the number of seeds S, log-log, one line per method; `rows` are
    dicts with "method", "seeds" and "seed_epochs_per_s", as `benchmarks.throughput` writes them."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig = Figure(figsize=(8.4, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method, color in zip(methods, palette(len(methods))):
        points = sorted((r["seeds"], r["seed_epochs_per_s"]) for r in rows if r["method"] == method)
        ax.plot(*zip(*points), marker="o", color=color, label=method)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(subs=(1.5, 2, 3, 4, 5, 6, 7, 8, 9)))
    ax.yaxis.set_minor_formatter(plain)  # a narrow range has no power of ten to label
    ax.set_xlabel("seeds trained (S)")
    ax.set_ylabel("seed-epochs per second")
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=9, frameon=False)  # beside the lines, never over them
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_settled(settled, *, title: str | None = None):
    """Kendall's tau between each epoch's ranking and the last epoch's (`flaxray.analysis.settled.analyse`),
    its bootstrap CI as a band, and a dashed line at the epoch from which the top group no longer changes;
    returns its axes."""
    epochs = np.arange(1, settled["epochs"] + 1)
    fig = Figure(figsize=(6.4, 3.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    color = palette(1)[0]
    ax.fill_between(epochs, settled["tau_low"], settled["tau_high"], color=color, alpha=0.25, lw=0,
                    label=f"{100 * settled['confidence']:g} % bootstrap CI over seeds")
    ax.plot(epochs, settled["tau"], color=color, marker="o", ms=3, label="Kendall's τ with the last epoch")
    k = settled["settled_epoch"]
    ax.axvline(k, color="0.3", ls="--", lw=1, label=f"top group ({settled['top'][-1]}) from epoch {k} on")
    ax.set_ylim(-1.05, 1.05)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("τ (IQM of val loss)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "Each epoch's ranking against the last epoch's", fontsize=10)
    return ax


# ----------------------------------------------------------------------------- race


def plot_race(rounds, *, confidence: float = 0.95, title: str | None = None):
    """The elimination trace of a race (`flaxray.analysis.race`'s rounds with their `intervals`); returns its axes.

    x: seeds per arch after each round; per arch (one colour, dodged) its IQM of final val loss with
    the CI as a bar, a line joining its rounds, an × on the round it was eliminated in, a ▶ on the round
    it left by futility (into the tie). Archs are listed in the legend by how long they lasted, the
    survivors first.
    """
    archs = list(rounds[0]["survivors"])
    last = {a: max(i for i, r in enumerate(rounds) if a in r["survivors"]) for a in archs}
    tie = {a for r in rounds for a in r.get("futile", {})}  # in the tie: listed with the survivors
    archs.sort(key=lambda a: (-(len(rounds) if a in tie else last[a]), rounds[last[a]]["intervals"][a][0]))
    fig = Figure(figsize=(10, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.array([r["seeds"] for r in rounds], dtype=float)
    step = np.min(np.diff(x)) if x.size > 1 else 1.0
    colors = palette(len(archs)) if len(archs) <= 10 else [colormaps["tab20"].colors[i % 20] for i in range(len(archs))]
    for i, (arch, color) in enumerate(zip(archs, colors)):
        dodge = 0.5 * step * (i - (len(archs) - 1) / 2) / max(len(archs), 1)
        idx = [j for j, r in enumerate(rounds) if arch in r["survivors"]]
        mid, low, high = (np.array([rounds[j]["intervals"][arch][k] for j in idx], dtype=float) for k in range(3))
        xs = x[idx] + dodge
        left = [k for k, j in enumerate(idx) if arch in rounds[j].get("futile", {})]
        raced = arch in rounds[-1]["survivors"] and arch not in rounds[-1]["eliminated"]
        state = "tie" if left else "in" if raced else "out"
        ax.plot(xs, mid, color=color, lw=1.2, marker="o", ms=3.5, label=f"{arch} ({state})")
        ax.vlines(xs, np.where(np.isfinite(low), low, np.nan), np.where(np.isfinite(high), high, np.nan),
                  color=color, lw=3, alpha=0.45)
        gone = [k for k, j in enumerate(idx) if arch in rounds[j]["eliminated"]]
        if gone:
            ax.plot(xs[gone], mid[gone], marker="x", ms=11, mew=2.5, color=color, ls="none")
        if left:  # left by futility: not beaten, not raced further
            ax.plot(xs[left], mid[left], marker=">", ms=8, color=color, ls="none")
    ax.set_xticks(x, [f"{int(s)}\n({len(r['survivors'])} in)" for s, r in zip(x, rounds)])
    ax.set_xlabel("seeds per arch after the round (archs raced in it)")
    ax.set_ylabel("final val loss: IQM over seeds")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False, title_fontsize=8,
               title=f"bar: {100 * confidence:g} % bootstrap CI\n×: eliminated · ▶: left by futility into the tie")
    if title:
        ax.set_title(title, fontsize=11)
    return ax
