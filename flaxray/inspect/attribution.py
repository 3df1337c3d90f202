"""Do the seeds look at the same place? Plain numpy on attribution maps of shape (seeds, images, H, W).

    corr = pairwise_correlation(maps)        # (images,): mean Pearson r over pairs of seeds
    mean, std = agreement_maps(maps)         # (images, H, W): of the max-normalised maps, over seeds
    border = border_fraction(maps)           # (seeds, images): share of each map outside LUNG_BOX
    summary = summarise(maps, seeds)         # the numbers `studies.inspect` reports (raw and `smooth`ed r)

Maps are non-negative (Grad-CAM, |gradient|). An all-zero map (Grad-CAM whose weighted sum is negative
everywhere) has no shape: its correlation and border fraction are NaN and are left out of the means.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from flaxray.analysis import stats

# The central box standing in for the lung fields, as fractions of the image height (top, bottom) and
# width (left, right). A crude proxy, not a segmentation: in the Kaggle chest X-rays the lungs fill
# roughly the middle of the frame, while the corners and edges carry the L/R markers, text, the
# shoulders and the collimator's edge. The border is everything outside it (44 % of the area).
LUNG_BOX = (0.10, 0.90, 0.15, 0.85)
BORDER_FLAG = 0.5  # a seed whose mean map puts more than this share of its mass on the border is flagged
# Input-gradient saliency varies from pixel to pixel, Grad-CAM is as coarse as the last conv map: their raw
# correlations do not compare. Both are also compared after a Gaussian blur of this many image sides.
SMOOTH_SIGMA = 1 / 32


def smooth(maps, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    """Each map (..., H, W) blurred with a Gaussian of standard deviation `sigma` times the image's side."""
    from scipy.ndimage import gaussian_filter

    maps = np.asarray(maps, np.float64)
    h, w = maps.shape[-2:]
    return gaussian_filter(maps, sigma=(0,) * (maps.ndim - 2) + (sigma * h, sigma * w), mode="nearest")


def box_mask(shape: tuple[int, int], box=LUNG_BOX) -> np.ndarray:
    """(H, W) bool, True inside `box` (pixel centres)."""
    h, w = shape
    rows = (np.arange(h) + 0.5) / h
    cols = (np.arange(w) + 0.5) / w
    return ((rows >= box[0]) & (rows <= box[1]))[:, None] & ((cols >= box[2]) & (cols <= box[3]))[None, :]


def border_area(shape: tuple[int, int], box=LUNG_BOX) -> float:
    """The border's share of the pixels: a map spread evenly has this border fraction."""
    return float(1 - box_mask(shape, box).mean())


def border_fraction(maps, box=LUNG_BOX) -> np.ndarray:
    """The share of each map's mass outside `box`: maps (..., H, W) >= 0 -> (...); NaN for an all-zero map."""
    maps = np.asarray(maps, np.float64)
    total = maps.sum(axis=(-2, -1))
    inside = (maps * box_mask(maps.shape[-2:], box)).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1 - inside / total, np.nan)


def normalise(maps) -> np.ndarray:
    """Each map divided by its maximum, so every seed's map runs 0..1 (all-zero maps stay zero)."""
    maps = np.asarray(maps, np.float64)
    top = maps.max(axis=(-2, -1), keepdims=True)
    return np.divide(maps, top, out=np.zeros_like(maps), where=top > 0)


def agreement_maps(maps) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) over seeds of the normalised maps: (seeds, N, H, W) -> two (N, H, W)."""
    norm = normalise(maps)
    return norm.mean(axis=0), norm.std(axis=0)


def pairwise_correlation(maps) -> np.ndarray:
    """Per image, the mean Pearson correlation between the maps of every pair of seeds: (seeds, N, H, W) ->
    (N,). 1 when all seeds draw the same map (up to scale); NaN with fewer than 2 seeds or no defined pair."""
    maps = np.asarray(maps, np.float64)
    s, n = maps.shape[:2]
    if s < 2:
        return np.full(n, np.nan)
    flat = maps.reshape(s, n, -1)
    centred = flat - flat.mean(axis=-1, keepdims=True)
    norms = np.linalg.norm(centred, axis=-1)  # (s, n)
    unit = np.divide(centred, norms[..., None], out=np.full_like(centred, np.nan), where=norms[..., None] > 0)
    r = np.einsum("ink,jnk->ijn", unit, unit)  # (s, s, n)
    pairs = r[np.triu_indices(s, k=1)]  # (pairs, n)
    defined = np.isfinite(pairs).any(axis=0)
    out = np.full(n, np.nan)
    out[defined] = np.nanmean(pairs[:, defined], axis=0)
    return out


def summarise(maps, seeds: Sequence[int], *, box=LUNG_BOX, flag_above: float = BORDER_FLAG,
              confidence: float = 0.95) -> dict:
    """The agreement of the seeds over a set of images, and where each seed's mass falls.

    `correlation`: the per-image mean pairwise correlation, described over the images (mean, std, bootstrap
    CI of the mean: `stats.describe`; and its quartiles); `correlation_smoothed`, the same of the maps blurred
    by `smooth`; `per_image_correlation` and `per_image_correlation_smoothed`, the (N,) values they
    describe. `border_fraction`: per seed, the mean over images of the share
    of its map outside `box`; `flagged`: the seeds above `flag_above` (looking mostly at the border).
    """
    maps = np.asarray(maps)
    corr = pairwise_correlation(maps)
    border = border_fraction(maps, box)  # (seeds, N)
    smoothed = pairwise_correlation(smooth(maps))
    per_seed = {int(s): float(np.nanmean(b)) if np.isfinite(b).any() else None for s, b in zip(seeds, border)}
    finite = corr[np.isfinite(corr)]
    return {
        "images": int(maps.shape[1]),
        "correlation": stats.describe(corr, confidence=confidence),  # n_nonfinite: images with no defined pair
        "correlation_quartiles": [float(q) for q in np.percentile(finite, [25, 50, 75])] if len(finite) else None,
        "correlation_smoothed": stats.describe(smoothed, confidence=confidence),
        "smooth_sigma": SMOOTH_SIGMA,
        "border_fraction": per_seed,
        "border_area": border_area(maps.shape[-2:], box),
        "flagged": [s for s, b in per_seed.items() if b is not None and b > flag_above],
        "zero_maps": {int(s): int((~np.isfinite(b)).sum()) for s, b in zip(seeds, border)},
        "box": {"top": box[0], "bottom": box[1], "left": box[2], "right": box[3]},
        "flag_above": flag_above,
        "per_image_correlation": corr,
        "per_image_correlation_smoothed": smoothed,
    }
