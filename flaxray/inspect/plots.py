"""Figures of what the models look at (matplotlib only, no jax): Grad-CAM / saliency overlays per seed
with the seeds' mean and spread, conv feature maps, first-layer filters, dense-unit templates, and the
seeds' agreement per architecture. Written straight to PNG through `Figure`, never pyplot (as `plots`).
"""

from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from flaxray.inspect import attribution

OVERLAY_CMAP = "jet"
OVERLAY_ALPHA = 0.45  # the X-ray stays visible under the map
STD_MAX = 0.5  # the largest std of values in [0, 1] (half at 0, half at 1)
WEIGHT_CMAP = "RdBu_r"  # filters and templates: red positive, blue negative, white zero


def _grey(image) -> np.ndarray:
    """(H, W, C) uint8 -> (H, W) grey, as the X-ray is shown under every map."""
    return np.asarray(image, np.float64).mean(axis=-1)


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _box(ax, shape, box=attribution.LUNG_BOX) -> None:
    """The lung-field box (`attribution.LUNG_BOX`) as a dashed white outline."""
    h, w = shape
    ax.add_patch(Rectangle((box[2] * w - 0.5, box[0] * h - 0.5), (box[3] - box[2]) * w, (box[1] - box[0]) * h,
                           fill=False, ls="--", lw=1, ec="white"))


def _overlay(ax, image, heat, *, cmap=OVERLAY_CMAP, vmin=0.0, vmax=1.0):
    ax.imshow(_grey(image), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    im = ax.imshow(heat, cmap=cmap, alpha=OVERLAY_ALPHA, vmin=vmin, vmax=vmax, interpolation="bilinear")
    _bare(ax)
    return im


def plot_attribution(images, maps, seeds: Sequence[int], *, title: str, row_labels: Sequence[str] = (),
                     box=attribution.LUNG_BOX):
    """One row per image: the X-ray, each seed's map over it (normalised to its maximum), the seeds' mean
    and their standard deviation. `maps` (seeds, N, H, W) for `images` (N, H, W, C)."""
    norm = attribution.normalise(maps)
    mean, std = norm.mean(axis=0), norm.std(axis=0)
    n_img, n_seed = norm.shape[1], norm.shape[0]
    cols = n_seed + 3
    fig = Figure(figsize=(1.9 * cols + 1.2, 2.0 * n_img + 0.9), dpi=110, layout="constrained")
    axes = fig.subplots(n_img, cols, squeeze=False)
    corr = attribution.pairwise_correlation(maps)
    border = attribution.border_fraction(maps, box)
    for r in range(n_img):
        ax = axes[r, 0]
        ax.imshow(_grey(images[r]), cmap="gray", vmin=0, vmax=255)
        _bare(ax)
        ax.set_ylabel(row_labels[r] if r < len(row_labels) else f"image {r}", fontsize=8)
        for k in range(n_seed):
            _overlay(axes[r, k + 1], images[r], norm[k, r])
            where = f"border {border[k, r]:.2f}" if np.isfinite(border[k, r]) else "all zero"
            axes[r, k + 1].set_title(f"seed {seeds[k]} · {where}", fontsize=8)
        _overlay(axes[r, n_seed + 1], images[r], mean[r])
        _box(axes[r, n_seed + 1], mean.shape[1:], box)
        axes[r, n_seed + 1].set_title(f"mean · r̄ = {corr[r]:.2f}", fontsize=8)
        _overlay(axes[r, n_seed + 2], images[r], std[r], cmap="inferno", vmax=STD_MAX)
        axes[r, n_seed + 2].set_title("std over seeds", fontsize=8)
    axes[0, 0].set_title("X-ray", fontsize=8)
    # Opaque colour bars: the overlays' own mappables would show the colours faded by OVERLAY_ALPHA.
    fig.colorbar(ScalarMappable(Normalize(0, 1), OVERLAY_CMAP), ax=axes[:, n_seed + 1], fraction=0.05, aspect=40,
                 label="map / its maximum")
    fig.colorbar(ScalarMappable(Normalize(0, STD_MAX), "inferno"), ax=axes[:, n_seed + 2], fraction=0.05, aspect=40,
                 label="std of the normalised maps")
    fig.suptitle(title + "\nr̄: mean pairwise correlation of the seeds' maps · border: share of the map outside "
                 "the dashed box (a crude lung-field proxy)", fontsize=9)
    return axes


def plot_feature_maps(activations, image, seeds: Sequence[int], *, title: str, n_channels: int = 8):
    """One conv layer's output for one image: one row per seed, its `n_channels` most active channels
    (by mean activation; a seed's channels are its own, not matched across seeds), each row on its own
    colour scale. `activations` (seeds, h, w, channels)."""
    acts = np.asarray(activations, np.float64)
    n_seed, channels = acts.shape[0], acts.shape[-1]
    shown = min(n_channels, channels)
    lines = [title, f"{shown} most active of {channels} channels per seed (relu output; each row its own scale)"]
    width = max(1.35 * (shown + 1) + 1.0, 0.08 * max(map(len, lines)))  # few channels: room for the title
    fig = Figure(figsize=(width, 1.45 * n_seed + 0.8), dpi=100, layout="constrained")
    axes = fig.subplots(n_seed, shown + 1, squeeze=False)
    for k in range(n_seed):
        top = np.argsort(-acts[k].mean(axis=(0, 1)))[:shown]
        vmax = max(float(acts[k][..., top].max()), 1e-12)
        axes[k, 0].imshow(_grey(image), cmap="gray", vmin=0, vmax=255)
        axes[k, 0].set_ylabel(f"seed {seeds[k]}", fontsize=9)
        _bare(axes[k, 0])
        for j, c in enumerate(top):
            im = axes[k, j + 1].imshow(acts[k, ..., c], cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
            axes[k, j + 1].set_title(f"ch {c}", fontsize=7)
            _bare(axes[k, j + 1])
        fig.colorbar(im, ax=axes[k, :], shrink=0.9, pad=0.01)
    fig.suptitle("\n".join(lines), fontsize=9)
    return axes


def _weight_grid(weights, seeds: Sequence[int], *, title: str, caption: str, panel: float, titles):
    """Rows of signed weight images (seeds, units, h, w) on one symmetric colour scale; `titles[k][j]` above
    panel (k, j) (rows may be shorter: no title)."""
    weights = np.asarray(weights, np.float64)
    n_seed, shown = weights.shape[:2]
    vmax = max(float(np.abs(weights).max()), 1e-12)
    fig = Figure(figsize=(panel * shown + 1.3, panel * n_seed + 0.9), dpi=100, layout="constrained")
    axes = fig.subplots(n_seed, shown, squeeze=False)
    for k in range(n_seed):
        for j in range(shown):
            im = axes[k, j].imshow(weights[k, j], cmap=WEIGHT_CMAP, vmin=-vmax, vmax=vmax, interpolation="nearest")
            _bare(axes[k, j])
            if j < len(titles[k]):
                axes[k, j].set_title(titles[k][j], fontsize=7)
        axes[k, 0].set_ylabel(f"seed {seeds[k]}", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="weight")
    fig.suptitle(f"{title}\n{caption}", fontsize=9)
    return axes


def plot_filters(filters, seeds: Sequence[int], *, title: str, n_filters: int = 16):
    """The first conv layer's 3x3 filters (seeds, 3, 3, filters), one row per seed."""
    filters = np.asarray(filters)[..., :n_filters].transpose(0, 3, 1, 2)
    titles = [[str(j) for j in range(filters.shape[1])]] + [[]] * (filters.shape[0] - 1)
    return _weight_grid(filters, seeds, title=title, panel=0.62, titles=titles,
                        caption="3x3 kernels as they act on the (grey) image; red excites, blue inhibits")


def plot_templates(templates, seeds: Sequence[int], *, title: str, n_units: int = 8):
    """The first dense layer's units as images (seeds, units, H, W): each unit's weights on the pixels; per
    seed the `n_units` units of largest weight norm (units are not matched across seeds)."""
    templates = np.asarray(templates, np.float64)
    units = templates.shape[1]
    order = np.argsort(-np.linalg.norm(templates.reshape(*templates.shape[:2], -1), axis=-1), axis=1)[:, :n_units]
    shown = np.take_along_axis(templates, order[..., None, None], axis=1)
    return _weight_grid(shown, seeds, title=title, panel=1.5, titles=[[f"unit {u}" for u in row] for row in order],
                        caption=f"per seed, the {shown.shape[1]} of {units} units with the largest weight norm, "
                        "largest first: a unit responds to images like its red parts and unlike its blue ones")


def _wrapped(name: str, width: int = 22) -> str:
    """An arch name or spec string broken after commas, to fit under a tick."""
    return textwrap.fill(name.replace(",", ", "), width).replace(", ", ",")


def plot_agreement(correlations: Mapping[str, np.ndarray], borders: Mapping[str, Mapping[int, float]], *,
                   title: str, border_area: float, smoothed: Mapping[str, np.ndarray] | None = None,
                   flag_above: float = attribution.BORDER_FLAG):
    """Left: per architecture, the per-image mean pairwise correlation of the seeds' maps over the images
    (and, hollow, of the maps blurred by `attribution.smooth`). Right: per architecture, each seed's mean
    border fraction, with the flag line and the border's area."""
    names = list(correlations)
    fig = Figure(figsize=(5.6 + 1.8 * len(names), 4.2), dpi=110, layout="constrained")
    left, right = fig.subplots(1, 2)
    rng = np.random.default_rng(0)
    series = [("raw", correlations, -0.2 if smoothed else 0.0, 0.35)]
    if smoothed:
        series.append(("smoothed", smoothed, 0.2, 0.12))
    low = -0.1
    labelled = set()  # one legend entry per series, on its first architecture with finite values
    for label, values, dx, alpha in series:
        for i, n in enumerate(names):
            d = np.asarray(values[n])[np.isfinite(values[n])]
            if not len(d):
                continue
            low = min(low, float(d.min()))
            left.boxplot([d], positions=[i + dx], widths=0.32, showfliers=False)
            left.scatter(i + dx + rng.uniform(-0.1, 0.1, len(d)), d, s=4, alpha=alpha, color=f"C{i}",
                         label=None if label in labelled else label, facecolors="none" if label == "smoothed" else None)
            labelled.add(label)
    left.set_xticks(range(len(names)), [_wrapped(n) for n in names], fontsize=7)
    left.axhline(0, color="grey", lw=0.6)
    left.set_ylim(low - 0.05, 1.02)
    left.set_ylabel("mean pairwise correlation of the seeds\n(one point per image)")
    left.set_title("seeds' maps agree? (1 = same map)", fontsize=9)
    if smoothed and labelled:
        left.legend(fontsize=7, loc="upper right", title="maps", title_fontsize=7)
    for i, n in enumerate(names):
        values = [v for v in borders[n].values() if v is not None]
        right.scatter(np.full(len(values), i) + rng.uniform(-0.1, 0.1, len(values)), values, color=f"C{i}", s=25)
        for s, v in borders[n].items():
            if v is not None and v > flag_above:
                right.annotate(f"seed {s}", (i, v), fontsize=7, xytext=(5, 0), textcoords="offset points")
    right.axhline(flag_above, color="red", ls="--", lw=1, label=f"flagged above {flag_above:g}")
    right.axhline(border_area, color="grey", ls=":", lw=1, label=f"even spread ({border_area:.2f})")
    right.set_xticks(range(len(names)), [_wrapped(n) for n in names], fontsize=7)
    right.set_xlim(-0.6, len(names) - 0.4)
    right.set_ylim(0, 1)
    right.set_ylabel("share of the map outside the lung box\n(mean over images)")
    right.set_title("mass outside the box, per seed", fontsize=9)
    right.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    return np.array([left, right])
