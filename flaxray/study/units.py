"""One unit of a study on disk: an arch's seeds (crossed with its settings) trained, or read back.

    OUT/groups/<arch>/              one vmapped program: the arch x its settings x the seeds
        group.json                  what was trained (the fingerprint) and how it ended; written last
        curves.csv                  its groups' curves (`NAME`, or `NAME@lr=RATE,dropout=RATE,wd=DECAY`
                                    naming the settings that take several values)
        checkpoints/                every seed's training state while it trains (orbax)
        params/<group>/             every seed's final params and batch statistics (`flaxray.study.trained`)
    OUT/groups/<arch>/only-<source>/   the same, with only one source of randomness varied (--decompose;
                                       only-ulp: only a one-ulp nudge of the initial parameters)

A unit whose group.json matches what is asked is read back instead of trained again; one trained with
other settings is refused, naming the difference; one without group.json (killed, interrupted) is
trained again, continuing from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from flaxray import models, results
from flaxray.core import schedules, settings
from flaxray.core.config import TrainConfig, train_count
from flaxray.core.settings import Settings
from flaxray.errors import FlaxrayError
from flaxray.models.conv import form
from flaxray.runtime.checkpoint import DEFAULT_EVERY, Stopped
from flaxray.runtime.plan import PLAN
from flaxray.core.train import batches
from flaxray.runtime import programs, runner, stopping
from flaxray.study import compat
from flaxray.study.trained import save_trained

GROUPS = "groups"
GROUP_JSON = "group.json"
FORMAT = 2  # 1: the settings as lrs, dropouts, weight_decays (read by `flaxray.study.compat`)
DATA_KEYS = ("source", "fingerprint", "image_size", "channels", "val_fraction", "split_seed", "class_names")


@dataclasses.dataclass
class Group:
    """The seeds of one config at one setting: what a summary row, a band and a ranking entry are over."""

    name: str
    config: TrainConfig
    settings: Settings  # this group's settings (floats; None: not in its program)
    seeds: list[int]
    history: dict[str, np.ndarray]  # Keras-style, (seeds, epochs); NaN from the epoch a seed diverged in
    diverged: np.ndarray  # (seeds,): 0, or the epoch (1-based) in which the seed diverged and stopped
    folder: Path  # of its unit
    seconds: float | None = None  # of the program it was trained in now (None: read back)
    states: Any = None  # the final per-seed state (leading seed axis) when trained now
    steps: int | None = None  # optimizer steps per epoch (for the rate a schedule gives each epoch)

    @functools.cached_property  # read by the curves, the record and the analysis: decided once
    def decision(self) -> stopping.Decision | None:
        """Early stopping's and model selection's decisions (`flaxray.runtime.stopping`), from the curves;
        None where the program had neither."""
        recipe, patience = self.config.recipe, self.settings.patience
        if not recipe.restore_best and patience is None:
            return None
        d = stopping.decide(self.history[recipe.monitor], np.inf if patience is None else patience,
                            min_delta=recipe.min_delta, lower_is_better=recipe.lower_is_better)
        return d._replace(stopped=np.where(self.diverged > 0, 0, d.stopped))  # a diverged seed did not stop

    @property
    def stopped(self) -> np.ndarray | None:
        """(seeds,): the epoch after which each seed stopped early, 0 if it did not; None without early stopping."""
        return None if self.settings.patience is None else self.decision.stopped

    @property
    def final_epoch(self) -> np.ndarray:
        """(seeds,): the epoch (1-based) of the model each seed ends with (restored, stopped or the last)."""
        d = self.decision
        if d is None:
            return np.full(len(self.seeds), self.config.epochs)
        return stopping.final_epochs(d, self.config.epochs, restore_best=self.config.recipe.restore_best)

    @property
    def rates(self):
        """The learning rate of each epoch's last step (epochs,), or the lane's one rate without a schedule."""
        schedule = self.config.recipe.schedule
        if schedules.is_default(schedule) or self.steps is None:
            return self.settings.lr
        return schedules.rate_per_epoch(schedule, self.settings.lr, self.steps, self.config.epochs)

    @property
    def params_dir(self) -> Path:
        """Where its seeds' final params and model state are (`flaxray.study.trained`)."""
        return self.folder / "params" / results.slug(self.name)


def group_names(name: str, grid: Mapping[str, tuple]) -> list[str]:
    """`NAME` for one setting; for several, `NAME@` and the settings that vary: `NAME@lr=3e-4`,
    `NAME@dropout=0.2`, `NAME@lr=0.001,wd=1e-4`; in the order of `settings.cross(grid)`."""
    fields = settings.varying(grid)
    return [settings.group_name(name, s, fields) for s in settings.cross(grid)]


def write_curves(path, groups: Sequence[Group]) -> Path:
    """curves.csv of `groups`: every seed's curves with its group's rate and diverged epoch, and a column
    for each other setting that some group sets (so a study that sets none writes the columns it always did)."""
    extra = {}
    for field in Settings._fields[1:]:
        off = settings.FIELDS[field].off
        values = {g.name: getattr(g.settings, field) for g in groups}
        if any(v is not None and v != off for v in values.values()):
            extra[field] = {n: off if v is None else v for n, v in values.items()}
    stopped = {g.name: g.stopped for g in groups} if any(g.stopped is not None for g in groups) else None
    return results.write_curves_csv(path, {g.name: g.history for g in groups}, {g.name: g.seeds for g in groups},
                                    lrs={g.name: g.rates for g in groups},
                                    diverged={g.name: g.diverged for g in groups}, extra=extra, stopped=stopped)


def stopped_record(groups: Sequence[Group], steps: int | None) -> dict:
    """What group.json and study.json add for a recipe: the steps per epoch (a schedule's rates; `steps`
    None: not recorded) and {group: {seed: the epoch it stopped after}} (early stopping); nothing for
    the default recipe."""
    out = {} if groups[0].config.recipe.is_default() or steps is None else {"steps": steps}
    if any(g.stopped is not None for g in groups):
        out["stopped"] = {g.name: {int(s): int(e) for s, e in zip(g.seeds, g.stopped) if e} for g in groups}
    return out


def unit_dir(out, arch: str, source: str | None = None) -> Path:
    folder = Path(out) / GROUPS / results.slug(arch)
    return folder if source is None else folder / f"only-{source}"


def fingerprint(config: TrainConfig, grid: Mapping[str, tuple], seeds: Sequence[int], data_summary,
                input_shape: Sequence[int] | None = None) -> dict:
    """What a saved unit must match to be reused: the config, the settings (those at their off value left
    out: `settings.record`), the seeds, the data, and for a user's model on images of `input_shape`
    what it is (`flaxray.models.describe`: its file's hash, its compile)."""
    model = None if input_shape is None else models.describe(config.arch, tuple(input_shape), config.num_classes)
    return results.jsonable({"config": config.record(), "settings": settings.record(grid),
                             "seeds": [int(s) for s in seeds], "data": {k: data_summary.get(k) for k in DATA_KEYS},
                             **({"model": model} if model else {})})


def differences(saved, wanted, prefix="") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} here, {b!r} asked")
    return out


def read_record(folder: Path) -> dict | None:
    """A unit's group.json in today's format (`flaxray.study.compat` upgrades an older one), or None."""
    try:
        record = json.loads((Path(folder) / GROUP_JSON).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return compat.group_record(record)


def finished(folder: Path, wanted: dict) -> dict | None:
    """The unit's group.json if it finished with the `wanted` fingerprint; None if it never finished;
    a one-line error if it finished with other settings."""
    record = read_record(folder)
    if record is None:
        return None
    if record.get("format") != FORMAT or record.get("fingerprint") != wanted:
        diff = "; ".join(differences(record.get("fingerprint", {}), wanted)[:3]) or "an older format"
        raise FlaxrayError(f"{folder} was trained with other settings ({diff}); pass --overwrite to retrain "
                           "it, or choose another --out")
    return record


def program_shape(folder: Path, lanes: int) -> dict:
    """What decides a seed's arithmetic besides its own inputs: the lanes of each vmapped program (the
    chunk size), the devices they were split over, the machine and the form of the convolutions and
    pools (`flaxray.models.conv.form`; `flaxray.study.replay` runs it again)."""
    chunks = results.read_json(folder / results.CHECKPOINTS / PLAN)
    return {"lanes": lanes, "seeds_per_chunk": int(chunks.get("seeds_per_chunk", lanes)),
            "strategy": chunks.get("strategy", "vmap"), "strategy_source": chunks.get("strategy_source", "asked"),
            **({"evidence": chunks["evidence"]} if "evidence" in chunks else {}),
            "devices": len(jax.devices()), "processes": jax.process_count(), "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "cpu": results.cpu_model(), "layers": form()}


def train_unit(name: str, config: TrainConfig, grid: Mapping[str, tuple], seeds: Sequence[int], folder: Path, data,
               dataset, *, progress=True, checkpoint_every=DEFAULT_EVERY, chunk=None, strategy=None
               ) -> tuple[list[Group], bool]:
    """The groups of one unit (`name` x every setting of `grid` (`settings.normalize`d) x `seeds`, one
    vmapped program), trained into `folder` or read back from it. Returns (groups, reused)."""
    seeds, lanes = [int(s) for s in seeds], settings.cross(grid)
    names, summary = group_names(name, grid), dataset.summary
    wanted = fingerprint(config, grid, seeds, summary, data.x_train.shape[1:])
    record = finished(folder, wanted)
    if record is not None:
        histories, _ = results.read_curves_csv(folder / "curves.csv", epochs=config.epochs)
        return [Group(n, config, lane, seeds, histories[n], np.asarray(record["diverged"][n], np.int64), folder,
                      steps=record.get("steps")) for n, lane in zip(names, lanes)], True
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stopped = None
    try:
        states, history = runner.train_seeds(config, data, [s for _ in lanes for s in seeds],
                                      [lane for lane in lanes for _ in seeds],
                                      class_names=dataset.class_names, progress=progress,
                                      desc=name + (f" x {len(lanes)} settings" if len(lanes) > 1 else ""),
                                      checkpoint_dir=folder / results.CHECKPOINTS, checkpoint_every=checkpoint_every,
                                      max_seeds_per_chunk=chunk, strategy=strategy)
    except Stopped as err:  # a Ctrl-C in the last epoch: the unit is finished, and written before stopping
        (states, history), stopped = err.result, err
    seconds = time.perf_counter() - start
    whole, rest = batches(config, programs.model_of(config, data), train_count(data))
    diverged, groups, steps = np.asarray(states.diverged), [], whole + (rest > 0)  # a schedule's steps an epoch
    for j, (n, lane) in enumerate(zip(names, lanes)):
        rows = slice(j * len(seeds), (j + 1) * len(seeds))
        groups.append(Group(n, config, lane, seeds, {k: v[rows] for k, v in history.items()}, diverged[rows],
                            folder, seconds, jax.tree.map(lambda a: a[rows], states), steps))
    write_curves(folder / "curves.csv", groups)
    for g in groups:
        save_trained(g.params_dir, g.name, g.config, g.settings, seeds, g.states, data.x_train.shape[1:], summary)
    results.write_json(folder / GROUP_JSON, {  # last: marks the unit finished
        "format": FORMAT, "name": name, "groups": names, "fingerprint": wanted, "seconds": seconds,
        "diverged": {g.name: g.diverged for g in groups}, **stopped_record(groups, steps), "program": program_shape(folder, len(lanes) * len(seeds)),
        "checkpoints": results.read_json(folder / results.CHECKPOINTS / runner.SAVES)})  # their cost to this run
    if stopped is not None:
        raise Stopped(f"stopped after {name}'s last epoch, saved", (groups, False))
    return groups, False
