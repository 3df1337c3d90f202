"""A multi-seed study as library calls: train several configs on the same seeds, save the files.

Every study script is argument parsing around these; a notebook can call them directly.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from flaxray import plots, results, stats
from flaxray.trained import PARAMS, save_trained, slug
from flaxray.train import DeviceData, TrainConfig, train_seeds


def balanced_class_weight(labels) -> tuple[float, float]:
    """Loss weights n / (2 n_class) for (NORMAL, PNEUMONIA), as sklearn's 'balanced'."""
    labels = np.asarray(labels)
    return tuple(len(labels) / (2 * max(1, int((labels == c).sum()))) for c in (0, 1))


def lr_label(lr: float) -> str:
    """Shortest text that reads back as `lr`: 3e-4, 0.01, 1e+30."""
    lr = float(lr)
    if 1e-2 <= lr < 1e4:
        return np.format_float_positional(lr, trim="-")
    return np.format_float_scientific(lr, trim="-", exp_digits=1)


def cross_lrs(configs: Mapping[str, TrainConfig], lrs: Sequence[float]) -> dict[str, TrainConfig]:
    """Every config with every learning rate, named `NAME@lr=3e-4` (just `NAME` for one rate)."""
    if len(lrs) == 1:
        return {name: dataclasses.replace(c, lr=lrs[0]) for name, c in configs.items()}
    return {f"{name}@lr={lr_label(lr)}": dataclasses.replace(c, lr=lr) for name, c in configs.items() for lr in lrs}


@dataclasses.dataclass
class Group:
    """The seeds of one config: what a summary row, a band and a ranking entry are over."""

    config: TrainConfig
    seeds: list[int]
    history: dict[str, np.ndarray]  # Keras-style, (seeds, epochs); NaN from the epoch a seed diverged in
    diverged: np.ndarray  # (seeds,): 0, or the epoch (1-based) in which the seed diverged and stopped
    seconds: float | None = None  # of the vmapped program it was trained in (shared by crossed rates)
    states: Any = None  # the final per-seed `SeedState` (leading seed axis), for test evaluation
    input_shape: tuple[int, ...] | None = None  # of the images it was trained on, (H, W, C)


def train_groups(configs: Mapping[str, TrainConfig], data: DeviceData, seeds: Sequence[int], *, progress=True,
                 checkpoint_dir=None, checkpoint_every: int = 1, max_seeds_per_chunk: int | None = None
                 ) -> dict[str, Group]:
    """Train every config on the same seeds; returns {name: Group}.

    Configs that differ only in their learning rate are one vmapped program (seeds x rates). With
    `checkpoint_dir`, each program checkpoints into its own sub-folder and a second call continues
    from there (see `train_seeds`): finished programs are restored, not trained again. Seeds that do
    not fit in the device memory at once are trained in chunks (`max_seeds_per_chunk` caps them).
    """
    programs: dict[TrainConfig, list[str]] = {}
    for name, config in configs.items():
        programs.setdefault(dataclasses.replace(config, lr=1.0), []).append(name)
    groups = {}
    for i, (program, names) in enumerate(programs.items()):
        all_seeds = [s for _ in names for s in seeds]
        lrs = [configs[name].lr for name in names for _ in seeds]
        desc = program.arch + (f" x {len(names)} lr" if len(names) > 1 else "")
        folder = None if checkpoint_dir is None else Path(checkpoint_dir) / f"{i}-{slug(program.arch)}"
        start = time.perf_counter()
        states, history = train_seeds(configs[names[0]], data, all_seeds, lrs=lrs, progress=progress, desc=desc,
                                      checkpoint_dir=folder, checkpoint_every=checkpoint_every,
                                      max_seeds_per_chunk=max_seeds_per_chunk)
        seconds = time.perf_counter() - start
        diverged = np.asarray(states.diverged)
        for j, name in enumerate(names):
            rows = slice(j * len(seeds), (j + 1) * len(seeds))
            groups[name] = Group(configs[name], list(seeds), {k: v[rows] for k, v in history.items()},
                                 diverged[rows], seconds, states=jax.tree.map(lambda a: a[rows], states),
                                 input_shape=tuple(data.x_train.shape[1:]))
    return groups


def diverged_seeds(groups: Mapping[str, Group]) -> dict[str, dict[int, int]]:
    """{group: {seed: epoch it diverged in}} for the seeds that did."""
    return {name: {int(s): int(e) for s, e in zip(g.seeds, g.diverged) if e} for name, g in groups.items()}


def save_study(out, *, groups: Mapping[str, Group], data_summary: dict, seeds: Sequence[int] | None = None,
               **extra) -> dict:
    """Write curves.csv, bands.png, study.json and params/ into `out`; return what study.json holds.

    `groups` come from `train_groups`. params/I-GROUP/ holds every seed's final params and batch
    statistics (`flaxray.trained.save_trained`; `load_trained(out)` reads them back). study.json
    records the configs, the versions, the device, the data summary, the per-group summary over
    seeds, the diverged seeds, (with several groups) the ranking and where each group's params are,
    plus anything passed as `extra`. Each file is written to a temporary name and renamed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    histories = {n: g.history for n, g in groups.items()}
    summaries = {n: stats.summarize_history(h) for n, h in histories.items()}
    ranking = stats.rank(summaries) if len(summaries) > 1 else None
    results.write_curves_csv(out / "curves.csv", histories, {n: g.seeds for n, g in groups.items()},
                             lrs={n: g.config.lr for n, g in groups.items()},
                             diverged={n: g.diverged for n, g in groups.items()})
    size, channels = data_summary.get("image_size"), data_summary.get("channels")
    n_seeds = max(len(g.seeds) for g in groups.values())
    with results.atomic_path(out / "bands.png") as tmp:
        plots.plot_bands(histories, tmp, title=f"{n_seeds} seeds · {size}×{size}×{channels}")
    saved = {}
    for i, (name, g) in enumerate(groups.items()):
        if g.states is not None and g.input_shape is not None:
            folder = out / PARAMS / f"{i}-{slug(name)}"
            save_trained(folder, name, g.config, g.seeds, g.states, g.input_shape, data_summary)
            saved[name] = str(folder.relative_to(out))
    study = {
        **extra,
        "configs": {n: dataclasses.asdict(g.config) for n, g in groups.items()},
        "seeds": list(seeds) if seeds is not None else next(iter(groups.values())).seeds,
        "environment": results.environment(),
        "data": data_summary,
        "summary": summaries,
        "diverged": diverged_seeds(groups),
        "ranking": ranking,
        "params": saved,  # group -> its folder of trained parameters, relative to `out`
    }
    results.write_json(out / "study.json", study)
    return study


def format_diverged(diverged: Mapping[str, Mapping[int, int]]) -> str:
    """One line per group with diverged seeds, or '' when none did."""
    return "\n".join(
        f"diverged in {name}: " + ", ".join(f"seed {s} (epoch {e})" for s, e in seeds.items())
        + " -- non-finite loss or gradients; these seeds stopped updating and are NaN from that epoch on"
        for name, seeds in diverged.items() if seeds
    )
