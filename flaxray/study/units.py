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
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from flaxray import results
from flaxray.runtime.checkpoint import DEFAULT_EVERY, Stopped
from flaxray.errors import FlaxrayError

GROUPS = "groups"
GROUP_JSON = "group.json"
FORMAT = 1
DATA_KEYS = ("source", "fingerprint", "image_size", "channels", "val_fraction", "split_seed", "class_names")




def lr_label(lr: float) -> str:
    """Shortest text that reads back as `lr`: 3e-4, 0.01, 1e+30, 0."""
    lr = float(lr)
    if lr == 0 or 1e-2 <= lr < 1e4:
        return np.format_float_positional(lr, trim="-")
    return np.format_float_scientific(lr, trim="-", exp_digits=1)


# The settings a unit crosses with its seeds: the TrainConfig field, its label in group names, its default.
SETTINGS = (("lr", "lr", None), ("dropout", "dropout", None), ("weight_decay", "wd", 0.0))


def settings(lrs: Sequence[float], dropouts: Sequence = (None,), weight_decays: Sequence[float] = (0.0,)) -> list[dict]:
    """Every {lr, dropout, weight_decay} of a unit, lr outermost: the order its lanes are trained in."""
    return [{"lr": float(r), "dropout": None if d is None else float(d), "weight_decay": float(w)}
            for r in lrs for d in dropouts for w in weight_decays]


def group_names(name: str, lrs: Sequence[float], dropouts: Sequence = (None,),
                weight_decays: Sequence[float] = (0.0,)) -> list[str]:
    """`NAME` for one setting; for several, `NAME@` and the settings that vary: `NAME@lr=RATE`,
    `NAME@dropout=0.2`, `NAME@lr=0.001,wd=1e-4`."""
    grid = settings(lrs, dropouts, weight_decays)
    varying = [(field, label) for field, label, _ in SETTINGS if len({g[field] for g in grid}) > 1]
    if not varying:
        return [name]
    return [f"{name}@" + ",".join(f"{label}={lr_label(g[field])}" for field, label in varying) for g in grid]


@dataclasses.dataclass
class Group:
    """The seeds of one config: what a summary row, a band and a ranking entry are over."""

    name: str
    config: Any  # flaxray.core.train.TrainConfig, with this group's rate
    seeds: list[int]
    history: dict[str, np.ndarray]  # Keras-style, (seeds, epochs); NaN from the epoch a seed diverged in
    diverged: np.ndarray  # (seeds,): 0, or the epoch (1-based) in which the seed diverged and stopped
    folder: Path  # of its unit
    seconds: float | None = None  # of the program it was trained in now (None: read back)
    states: Any = None  # the final per-seed state (leading seed axis) when trained now

    @property
    def params_dir(self) -> Path:
        """Where its seeds' final params and batch statistics are (`flaxray.study.trained`)."""
        return self.folder / "params" / results.slug(self.name)


def write_curves(path, groups: Sequence[Group]) -> Path:
    """curves.csv of `groups`: every seed's curves with its group's rate and diverged epoch, and its
    dropout and weight decay columns when a group sets them (so a default study's file is unchanged)."""
    extra = {field: {g.name: getattr(g.config, field) for g in groups} for field, _, default in SETTINGS[1:]
             if any(getattr(g.config, field) != default for g in groups)}
    return results.write_curves_csv(path, {g.name: g.history for g in groups}, {g.name: g.seeds for g in groups},
                                    lrs={g.name: g.config.lr for g in groups},
                                    diverged={g.name: g.diverged for g in groups}, extra=extra)


def unit_dir(out, arch: str, source: str | None = None) -> Path:
    folder = Path(out) / GROUPS / results.slug(arch)
    return folder if source is None else folder / f"only-{source}"


def fingerprint(config, lrs: Sequence[float], seeds: Sequence[int], data_summary, dropouts: Sequence = (None,),
                weight_decays: Sequence[float] = (0.0,)) -> dict:
    """What a saved unit must match to be reused: the config (its settings aside), the settings, the
    seeds, the data. Dropouts and weight decays only when not the defaults, so a default unit's
    fingerprint is the one it had before they existed (its folder stays reusable)."""
    skip = {field for field, _, _ in SETTINGS}
    out = {"config": {**{k: v for k, v in dataclasses.asdict(config).items() if k not in skip}, "lr": None},
           "lrs": [float(r) for r in lrs], "seeds": [int(s) for s in seeds],
           "data": {k: data_summary.get(k) for k in DATA_KEYS}}
    for key, values, default in (("dropouts", dropouts, None), ("weight_decays", weight_decays, 0.0)):
        if list(values) != [default]:
            out[key] = [None if v is None else float(v) for v in values]
    return results.jsonable(out)


def differences(saved, wanted, prefix="") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} here, {b!r} asked")
    return out


def finished(folder: Path, wanted: dict) -> dict | None:
    """The unit's group.json if it finished with the `wanted` fingerprint; None if it never finished;
    a one-line error if it finished with other settings."""
    try:
        record = json.loads((folder / GROUP_JSON).read_text("utf-8"))
    except (OSError, ValueError):
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
    import jax

    from flaxray.models.conv import form

    chunks = results.read_json(folder / results.CHECKPOINTS / "chunks.json")
    return {"lanes": lanes, "seeds_per_chunk": int(chunks.get("seeds_per_chunk", lanes)),
            "strategy": chunks.get("strategy", "vmap"), "strategy_source": chunks.get("strategy_source", "asked"),
            **({"probe_s": chunks["probe_s"]} if "probe_s" in chunks else {}),
            "devices": len(jax.devices()), "processes": jax.process_count(), "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "cpu": results.cpu_model(), "layers": form()}


def train_unit(name: str, config, lrs: Sequence[float], seeds: Sequence[int], folder: Path, data, dataset, *,
               progress=True, checkpoint_every=DEFAULT_EVERY, chunk=None, dropouts: Sequence = (None,),
               weight_decays: Sequence[float] = (0.0,), strategy=None) -> tuple[list[Group], bool]:
    """The groups of one unit (`name` x `lrs` x `dropouts` x `weight_decays` x `seeds`, one vmapped
    program), trained into `folder` or read back from it. `dropouts`: rates replacing the arch's
    (None: its own); `weight_decays`: Keras's decoupled decay (0: none).

    Returns (groups, reused)."""
    from flaxray.runtime.runner import SAVES, train_seeds
    from flaxray.study.trained import save_trained

    seeds, grid = [int(s) for s in seeds], settings(lrs, dropouts, weight_decays)
    names, summary = group_names(name, lrs, dropouts, weight_decays), dataset.summary
    wanted = fingerprint(config, lrs, seeds, summary, dropouts, weight_decays)
    record = finished(folder, wanted)
    if record is not None:
        histories, _ = results.read_curves_csv(folder / "curves.csv")
        return [Group(n, dataclasses.replace(config, **g), seeds, histories[n],
                      np.asarray(record["diverged"][n], np.int64), folder)
                for n, g in zip(names, grid)], True
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    lanes = {field: [g[field] for g in grid for _ in seeds] for field, _, _ in SETTINGS}
    stopped = None
    try:
        states, history = train_seeds(config, data, [s for _ in grid for s in seeds], lrs=lanes["lr"],
                                      dropouts=lanes["dropout"], weight_decays=lanes["weight_decay"],
                                      class_names=getattr(dataset, "class_names", None), progress=progress,
                                      desc=name + (f" x {len(grid)} settings" if len(grid) > 1 else ""),
                                      checkpoint_dir=folder / results.CHECKPOINTS, checkpoint_every=checkpoint_every,
                                      max_seeds_per_chunk=chunk, strategy=strategy)
    except Stopped as err:  # a Ctrl-C in the last epoch: the unit is finished, and written before stopping
        (states, history), stopped = err.result, err
    seconds = time.perf_counter() - start
    import jax

    diverged, groups = np.asarray(states.diverged), []
    for j, (n, g) in enumerate(zip(names, grid)):
        rows = slice(j * len(seeds), (j + 1) * len(seeds))
        groups.append(Group(n, dataclasses.replace(config, **g), seeds, {k: v[rows] for k, v in history.items()},
                            diverged[rows], folder, seconds, jax.tree.map(lambda a: a[rows], states)))
    write_curves(folder / "curves.csv", groups)
    for g in groups:
        save_trained(g.params_dir, g.name, g.config, seeds, g.states, data.x_train.shape[1:], summary)
    results.write_json(folder / GROUP_JSON, {  # last: marks the unit finished
        "format": FORMAT, "name": name, "groups": names, "fingerprint": wanted, "seconds": seconds,
        "diverged": {g.name: g.diverged for g in groups}, "program": program_shape(folder, len(grid) * len(seeds)),
        "checkpoints": results.read_json(folder / results.CHECKPOINTS / SAVES)})  # their cost to this run
    if stopped is not None:
        raise Stopped(f"stopped after {name}'s last epoch, saved", (groups, False))
    return groups, False
