"""A multi-seed study as library calls: train several architectures on the same seeds, save the files.

Every study script is argument parsing around these; a notebook can call them directly.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from flaxray import plots, results, stats
from flaxray.train import DeviceData, TrainConfig, train_seeds


def balanced_class_weight(labels) -> tuple[float, float]:
    """Loss weights n / (2 n_class) for (NORMAL, PNEUMONIA), as sklearn's 'balanced'."""
    labels = np.asarray(labels)
    return tuple(len(labels) / (2 * max(1, int((labels == c).sum()))) for c in (0, 1))


def train_archs(configs: Mapping[str, TrainConfig], data: DeviceData, seeds: Sequence[int], *, progress=True):
    """Train every config on the same seeds; returns {arch: History (seeds, epochs)} and {arch: seconds}."""
    histories, seconds = {}, {}
    for arch, config in configs.items():
        start = time.perf_counter()
        _, histories[arch] = train_seeds(config, data, seeds, progress=progress, desc=arch)
        seconds[arch] = time.perf_counter() - start
    return histories, seconds


def save_study(out, *, histories, seeds: Sequence[int], configs: Mapping[str, TrainConfig], data_summary: dict,
               **extra) -> dict:
    """Write curves.csv, bands.png and study.json into `out`; return what study.json holds.

    study.json records the configs, the versions, the device, the data summary, the per-arch
    summary over seeds and (with several archs) the ranking, plus anything passed as `extra`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {arch: stats.summarize_history(h) for arch, h in histories.items()}
    ranking = stats.rank(summaries) if len(summaries) > 1 else None
    results.write_curves_csv(out / "curves.csv", histories, {a: seeds for a in histories})
    size, channels = data_summary.get("image_size"), data_summary.get("channels")
    plots.plot_bands(histories, out / "bands.png", title=f"{len(seeds)} seeds · {size}×{size}×{channels}")
    study = {
        **extra,
        "configs": {a: dataclasses.asdict(c) for a, c in configs.items()},
        "seeds": list(seeds),
        "environment": results.environment(),
        "data": data_summary,
        "summary": summaries,
        "ranking": ranking,
    }
    results.write_json(out / "study.json", study)
    return study
