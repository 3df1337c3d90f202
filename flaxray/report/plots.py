"""Curves of a multi-seed study (every seed, the mean, its confidence band), written straight to PNG.
Figures of estimates (intervals, P(improvement), throughput, a race): `flaxray.report.estimate_plots`.

Figures are built with `matplotlib.figure.Figure` and saved through the Agg canvas,
never through pyplot: nothing opens a window, nothing touches the global backend of
the caller's process, and no figure is left registered with pyplot afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from flaxray import results
from flaxray.analysis import metrics, stats

BAND_CAPTION = "line: mean over seeds · band: {pct:g} % bootstrap CI of the mean · faint: individual seeds"
SINGLE_SEED_CAPTION = "one seed per architecture: no confidence band (it needs 2 or more seeds)"


def _band_metrics() -> list[metrics.Metric]:
    """The first two headline curve metrics of the registry (loss, accuracy: every class count has them)."""
    names = dict.fromkeys(m.name for m in metrics.REGISTRY if m.headline and m.curve and not m.per_class)
    return [metrics.find(n) for n in list(names)[:2]]


def _panels() -> tuple[tuple[str, str], ...]:
    """(history key, panel title), row-major: one metric a row (loss on top), train left, validation right."""
    return tuple(panel for e in _band_metrics()
                 for panel in ((e.name, f"train {e.label}"), (f"val_{e.name}", f"validation {e.label}")))


def _caption(max_seeds: int, max_epochs: int, confidence: float) -> str:
    if max_seeds <= 1:
        return SINGLE_SEED_CAPTION
    text = BAND_CAPTION.format(pct=100 * confidence)
    if max_epochs == 1:  # drawn as points and error bars, not lines and bands
        text = text.replace("line:", "point:").replace("band:", "bar:")
    return text


def palette(n: int) -> list:
    """n colours of tab10, repeating after ten."""
    tab10 = colormaps["tab10"].colors
    return [tab10[i % len(tab10)] for i in range(n)]


def _legend_cols(labels: list[str]) -> int:
    # Constrained layout doesn't shrink a legend wider than the figure, so long arch names
    # get fewer columns (~130 characters fit across 11 in at the legend's font size).
    widest = max(len(label) for label in labels) + 6  # handle and spacing
    return int(max(1, min(len(labels), 4, 130 // widest)))


def _seed_alpha(n_seeds: int) -> float:
    # Few seeds: each one legible. Many: they add up to a density cloud instead of a smear.
    return float(np.clip(0.6 / np.sqrt(max(n_seeds, 1)), 0.06, 0.35))


def _as_curves(history: Mapping[str, np.ndarray], key: str) -> np.ndarray | None:
    if key not in history:
        return None
    c = np.atleast_2d(np.asarray(history[key], dtype=float))
    if c.size == 0:
        return None
    return np.where(np.isfinite(c), c, np.nan)  # inf breaks the line like NaN does, no warnings


def _robust_ylim(curves: list[np.ndarray]) -> tuple[float, float, float] | None:
    """(bottom, top, max) for a loss panel, the top robust to a minority of blown-up seeds.

    Top: the highest per-epoch upper quartile over seeds, so a value shared by most seeds
    (epoch-1 loss) stays in view while one seed's spike or divergence is clipped. With a
    single seed that is its own max, i.e. no clipping. Returns None when nothing is finite.
    """
    finite = [c[np.isfinite(c)] for c in curves]
    finite = [f for f in finite if f.size]
    if not finite:
        return None
    allv = np.concatenate(finite)
    lo, hi_all = float(allv.min()), float(allv.max())
    q_tops = []
    for c in curves:
        cols = np.isfinite(c).any(axis=0)
        if cols.any():
            q_tops.append(float(np.max(np.nanpercentile(c[:, cols], 75, axis=0))))
    top = max(q_tops) if q_tops else hi_all
    # Only clip when it buys real resolution; otherwise show everything.
    if hi_all - lo <= 1.3 * (top - lo):
        top = hi_all
    span = top - lo if top > lo else (abs(top) or 1.0)
    return lo - 0.05 * span, top + 0.08 * span, hi_all


def _draw_band(ax, c: np.ndarray, color, *, dodge: float = 0.0, confidence: float = 0.95) -> None:
    """One arch's curves (S, E) on `ax`: every seed faint, the mean bold, the CI of the mean as a band."""
    s, e = c.shape
    x = np.arange(1, e + 1, dtype=float)
    if e <= 3:
        x += dodge  # so several archs' points and error bars don't stack
    marker = "o" if e <= 3 else None  # a 1-epoch "line" is otherwise invisible
    for curve in c:
        ax.plot(x, curve, color=color, lw=0.7, alpha=_seed_alpha(s), marker=marker, ms=3, zorder=1)
    mean, low, high = stats.band(c, confidence=confidence)
    if e == 1:
        if np.isfinite([low[0], high[0]]).all():
            ax.errorbar(x, mean, yerr=[np.maximum(mean - low, 0), np.maximum(high - mean, 0)], color=color,
                        capsize=4, lw=1.5, zorder=3)
    else:
        ax.fill_between(x, low, high, color=color, alpha=0.25, lw=0, zorder=2)
    ax.plot(x, mean, color=color, lw=2, marker=marker, ms=5, zorder=3)


def plot_bands(
    histories: Mapping[str, Mapping[str, np.ndarray]],
    *,
    confidence: float = 0.95,
    title: str | None = None,
):
    """Train/val loss and accuracy over epochs, every architecture on every panel; returns the 2 x 2 axes
    (`save(axes, path)` writes them).

    2 x 2 panels (the registry's first two headline metrics, loss on top, accuracy below, for any
    class count; train left, validation right), shared epoch
    axis, and loss panels / accuracy panels sharing y so archs and splits compare at a glance.
    Per arch one tab10 colour: mean line, bootstrap CI band of the mean (`stats.band`), and
    each seed as a faint line. Loss y-limits ignore a minority of diverged seeds (the panel
    says when something is clipped). Works with one seed (no band) and one epoch (markers).
    """
    if not histories:
        raise ValueError("plot_bands needs at least one architecture")
    panels = _panels()
    fig = Figure(figsize=(11, 8), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True, sharey="row")
    colors = palette(len(histories))

    handles = []
    max_seeds, max_epochs = 0, 0
    n_archs = len(histories)
    for i_arch, ((arch, hist), color) in enumerate(zip(histories.items(), colors)):
        n_seeds = max((np.atleast_2d(np.asarray(v)).shape[0] for v in hist.values()), default=0)
        n_bad = 0
        for key, _ in panels:
            c = _as_curves(hist, key)
            if c is not None:
                n_bad = max(n_bad, int((~np.isfinite(c)).any(axis=1).sum()))
        label = f"{arch} ({n_seeds} seed{'s' if n_seeds != 1 else ''}"
        label += f", {n_bad} with NaN/inf)" if n_bad else ")"
        handles.append(Line2D([], [], color=color, lw=2, label=label))
        max_seeds = max(max_seeds, n_seeds)

        for ax, (key, _) in zip(axes.flat, panels):
            c = _as_curves(hist, key)
            if c is None:
                continue
            max_epochs = max(max_epochs, c.shape[1])
            _draw_band(ax, c, color, dodge=0.06 * (i_arch - (n_archs - 1) / 2), confidence=confidence)

    for ax, (key, name) in zip(axes.flat, panels):
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not any(_as_curves(h, key) is not None for h in histories.values()):
            ax.text(0.5, 0.5, f"no '{key}' recorded", ha="center", va="center", transform=ax.transAxes, color="0.5")
    if 0 < max_epochs <= 3:
        # Autoscaling around one or two points gives ticks like 0.995..1.005.
        axes[0, 0].set_xlim(0.5, max_epochs + 0.5)
        axes[0, 0].set_xticks(np.arange(1, max_epochs + 1))
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    for ax, e in zip(axes[:, 0], _band_metrics()):
        ax.set_ylabel(e.label)

    # Loss row: one robust range for both panels (they share y).
    loss_keys = [k for k, _ in panels[:2]]
    lim = _robust_ylim([c for h in histories.values() for k in loss_keys if (c := _as_curves(h, k)) is not None])
    if lim is not None:
        bottom, top, _ = lim
        axes[0, 0].set_ylim(bottom, top)
        for ax, key in zip(axes[0], loss_keys):
            panel_max = max(
                (np.nanmax(c) for h in histories.values() if (c := _as_curves(h, key)) is not None and np.isfinite(c).any()),
                default=-np.inf,
            )
            if panel_max > top:
                ax.text(
                    0.99, 0.98, f"y axis clipped: values up to {panel_max:.3g} not shown",
                    ha="right", va="top", transform=ax.transAxes, fontsize=8, color="0.25", zorder=5,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.8", "alpha": 0.9},
                )

    if title:
        fig.suptitle(title, fontsize=13)
    # Legend and caption go together under the panels: constrained layout stacks an
    # "outside upper" legend on top of the suptitle instead of below it.
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=_legend_cols([h.get_label() for h in handles]),
        frameon=False,
        title=_caption(max_seeds, max_epochs, confidence),
        title_fontsize=9,
    )
    return axes


# ----------------------------------------------------------------------------- architecture search


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(max_cols, max(1, int(np.ceil(np.sqrt(n)))))
    return int(np.ceil(n / cols)), cols


def save(axes, path):
    """Write the figure of `axes` (what a plot function returns: one Axes or an array of them) atomically,
    at its own dpi, and free it (no pyplot registry to close from); returns `path`."""
    fig = np.ravel(axes)[0].figure
    results.save_figure(fig, path, dpi=fig.dpi)
    fig.clear()
    return path


def plot_band_grid(
    histories: Mapping[str, Mapping[str, np.ndarray]],
    *,
    keys: tuple[tuple[str, str], ...] = (("loss", "train loss"), ("val_loss", "val loss")),
    subtitles: Mapping[str, str] | None = None,
    logy: bool = True,
    confidence: float = 0.95,
    title: str | None = None,
):
    """One panel per architecture, every panel on the same axes (log y by default); returns the axes.

    Each panel draws `keys` (default train and val loss) as in `plot_bands`: mean over seeds,
    bootstrap CI band of the mean, every seed faint. `subtitles[arch]` goes under the panel's
    name (e.g. its diagnosis). The y range ignores a minority of blown-up seeds, as `plot_bands`.
    """
    if not histories:
        raise ValueError("plot_band_grid needs at least one architecture")
    rows, cols = _grid(len(histories))
    fig = Figure(figsize=(3.3 * cols + 0.6, 2.6 * rows + 1.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
    colors = palette(len(keys))
    curves_seen, max_seeds, max_epochs = [], 0, 0
    for ax, (arch, hist) in zip(axes, histories.items()):
        for (key, _), color in zip(keys, colors):
            c = _as_curves(hist, key)
            if c is None:
                continue
            curves_seen.append(c)
            max_seeds, max_epochs = max(max_seeds, c.shape[0]), max(max_epochs, c.shape[1])
            _draw_band(ax, c, color, confidence=confidence)
        text = arch if not subtitles or not subtitles.get(arch) else f"{arch}\n{subtitles[arch]}"
        ax.set_title(text, fontsize=9, linespacing=1.3)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(histories):]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * cols:]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[::cols]:
        ax.set_ylabel("loss (log scale)" if logy else "loss")
    if 0 < max_epochs <= 3:
        axes[0].set_xlim(0.5, max_epochs + 0.5)
        axes[0].set_xticks(np.arange(1, max_epochs + 1))
    lim = _robust_ylim(curves_seen)
    finite = np.concatenate([c[np.isfinite(c)] for c in curves_seen]) if curves_seen else np.array([])
    if lim is not None and logy and finite.min() > 0:
        # Log scale: a good arch's 0.15 vs 0.2 stays readable beside another arch's spikes to 2 or 4;
        # only a blow-up beyond 10x the robust top (a diverging seed) is clipped.
        bottom, top, highest = finite.min() / 1.15, min(lim[2], 10 * lim[1]) * 1.15, lim[2]
        axes[0].set_yscale("log")
        axes[0].set_ylim(bottom, top)
        axes[0].yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axes[0].yaxis.set_minor_formatter(NullFormatter())
        if highest > top:
            fig.text(0.99, 0.995, f"y axis clipped: values up to {highest:.3g} not shown", ha="right", va="top",
                     fontsize=8, color="0.25")
    elif lim is not None:
        bottom, top, highest = lim
        axes[0].set_ylim(bottom, top)
        if highest > top:
            fig.text(0.99, 0.995, f"y axis clipped: values up to {highest:.3g} not shown", ha="right", va="top",
                     fontsize=8, color="0.25")
    if title:
        fig.suptitle(title, fontsize=12)
    handles = [Line2D([], [], color=c, lw=2, label=label) for (_, label), c in zip(keys, colors)]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False,
               title=_caption(max_seeds, max_epochs, confidence), title_fontsize=9)
    return axes
