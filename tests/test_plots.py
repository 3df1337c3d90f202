import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from flaxray.report import plots

KEYS = ("loss", "accuracy", "precision", "recall", "auc")


def _history(rng, seeds, epochs, level=0.3):
    e = np.arange(1, epochs + 1)
    loss = level + 1.5 * np.exp(-e / 3) + 0.03 * rng.normal(size=(seeds, epochs))
    acc = np.clip(1 - loss / 2, 0, 1)
    h = {}
    for split in ("", "val_"):
        h[f"{split}loss"] = loss + (0.05 if split else 0.0)
        for m in KEYS[1:]:
            h[f"{split}{m}"] = acc.copy()
    return h


def _check_png(path):
    path = Path(path)
    assert path.exists() and path.stat().st_size > 10_000
    img = matplotlib.image.imread(path)
    # ~11 x 8 in at 120 dpi, RGBA
    assert img.ndim == 3 and img.shape[2] == 4
    assert 850 <= img.shape[0] <= 1050 and 1200 <= img.shape[1] <= 1450, img.shape
    assert img[..., :3].std() > 0.01  # not a blank canvas
    return img


@pytest.mark.parametrize(
    ("n_archs", "seeds", "epochs"),
    [(1, 5, 10), (3, 8, 20), (2, 1, 10), (3, 6, 1), (1, 1, 1)],
)
def test_plot_bands_writes_png(tmp_path, n_archs, seeds, epochs):
    rng = np.random.default_rng(0)
    hs = {f"arch{i}": _history(rng, seeds, epochs, level=0.2 * i) for i in range(n_archs)}
    axes = plots.plot_bands(hs, title="test")
    assert axes.shape == (2, 2) and axes[0, 0].get_lines()  # the caller holds the axes, and saves them
    out = plots.save(axes, tmp_path / "bands.png")
    assert out == tmp_path / "bands.png"
    _check_png(out)


def test_plot_bands_nan_seed_and_spike(tmp_path):
    rng = np.random.default_rng(1)
    hs = {"a": _history(rng, 6, 15), "b": _history(rng, 6, 15, level=0.5)}
    for k in hs["a"]:
        hs["a"][k][2, 8:] = np.nan  # diverged seed
    hs["b"]["val_loss"][0, 3] = np.inf
    hs["b"]["loss"][1, 4] = 1e4  # one huge spike must not squash the panel
    _check_png(plots.save(plots.plot_bands(hs), tmp_path / "nan.png"))
    # All-NaN and missing metrics must not crash either.
    hs["c"] = {"val_loss": np.full((3, 15), np.nan)}
    _check_png(plots.save(plots.plot_bands(hs), str(tmp_path / "missing.png")))


def test_robust_ylim_clips_spike_keeps_common_start():
    rng = np.random.default_rng(2)
    c = 0.3 + 2.0 * np.exp(-np.arange(20) / 3) + 0.01 * rng.normal(size=(8, 20))
    bottom, top, hi = plots._robust_ylim([c])
    assert top >= c[:, 0].max() * 0.95  # epoch-1 loss, shared by all seeds, stays in view
    c[3, 5:] = 1e3  # one seed blows up
    bottom2, top2, hi2 = plots._robust_ylim([c])
    assert hi2 == 1e3 and top2 < 5  # ...and does not set the scale


def test_plot_bands_leaves_pyplot_alone(tmp_path):
    plots.save(plots.plot_bands({"a": _history(np.random.default_rng(3), 3, 5)}), tmp_path / "x.png")
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_plot_bands_rejects_empty(tmp_path):
    with pytest.raises(ValueError):
        plots.plot_bands({})


def test_plot_bands_of_a_multiclass_history_draws_the_registry_panels(tmp_path):
    from flaxray.analysis import metrics

    rng = np.random.default_rng(5)
    keys = metrics.curve_keys(("cat", "dog", "eel"))
    hs = {"a": {k: rng.uniform(0.1, 0.9, (4, 6)) for k in keys}}
    assert [k for k, _ in plots._panels()] == ["loss", "val_loss", "accuracy", "val_accuracy"]
    _check_png(plots.save(plots.plot_bands(hs), tmp_path / "multi.png"))
