"""The trained models of a study, kept on disk: every seed's final params and batch statistics.

    models = load_trained("runs/my_study")        # {group: Trained(config, seeds, params, batch_stats, ...)}
    dataset = load_run_data(models["cnn_sep"])   # the images the study trained and tested on

A folder per group (`OUT/groups/<arch>/params/<group>/`, written by `flaxray.study.units`): `trained.json`
(config, settings, seeds, input shape, the data's settings) and `state/`, an orbax StandardCheckpointer
tree {"params", "model_state"} with a leading seed axis (what `jax.vmap` over seeds takes). No optimizer
state and no RNG keys: these are for looking at and evaluating the models, not for training them
further (`checkpoints/` keeps that). Older folders are read through `flaxray.study.compat`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax

from flaxray import models, results
from flaxray.core.config import TrainConfig
from flaxray.core.settings import Settings
from flaxray.errors import FlaxrayError
from flaxray.models import Variables
from flaxray.study import compat

FORMAT = 2
TRAINED_JSON = "trained.json"
PARAMS = "params"  # the folder of a study that holds one sub-folder per group
DATA_KEYS = ("path", "source", "fingerprint", "image_size", "channels", "val_fraction", "split_seed", "class_names",
             "data_dir")


@dataclasses.dataclass
class Trained:
    """Every seed of one group, as trained: `params` and `batch_stats` have a leading seed axis."""

    name: str
    config: TrainConfig
    settings: Settings
    seeds: list[int]
    input_shape: tuple[int, int, int]
    data: dict  # the data's settings (DATA_KEYS), to load it again with `load_run_data`
    params: Any
    model_state: Any
    folder: Path

    @property
    def variables(self) -> Variables:
        return Variables(self.params, self.model_state)

    def to_keras(self, seed: int | None = None):
        """A Keras model's seeds back in Keras: the keras.Model holding seed `seed`'s weights (its
        `predict`, `evaluate` and `.keras` saving work), or {seed: model} for every seed."""
        if not models.is_keras(self.config.arch):
            raise FlaxrayError(f"{self.name} is not a Keras model; its variables are `.variables`")
        if seed is None:
            return {s: self.to_keras(s) for s in self.seeds}
        if seed not in self.seeds:
            raise FlaxrayError(f"{self.name} has no seed {seed}; its seeds are {self.seeds}")
        i = self.seeds.index(seed)
        one = jax.tree.map(lambda a: a[i], self.variables)
        return models.keras_kind.to_keras(models.factory_of(self.config.arch), self.input_shape,
                                          self.config.num_classes, self.config.arch, one)


def save_trained(folder, name: str, config: TrainConfig, settings: Settings, seeds: Sequence[int], states,
                 input_shape: Sequence[int], data_summary: Mapping) -> Path:
    """Write the final params and model state of every seed (`states` from `train_seeds`, trained at
    `settings` on images of `input_shape` (H, W, C) from the data `data_summary` describes) to `folder`.

    `trained.json` is written last, so a folder without it is an unfinished write, never read back.
    """
    import orbax.checkpoint as ocp

    folder = Path(folder).absolute()
    if not results.elsewhere():
        (folder / TRAINED_JSON).unlink(missing_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(folder / "state", {"params": states.params, "model_state": states.model_state}, force=True)
    results.write_json(folder / TRAINED_JSON, {
        "format": FORMAT, "name": name, "config": config.record(),
        "settings": {k: v for k, v in settings._asdict().items() if v is not None}, "seeds": [int(s) for s in seeds],
        "input_shape": [int(d) for d in input_shape], "data": {k: data_summary.get(k) for k in DATA_KEYS},
    })
    return folder


def trained_folders(run_dir) -> list[Path]:
    """The folders of a finished study's saved groups, in the study's order."""
    run_dir = Path(run_dir)
    saved = results.read_json(run_dir / "study.json").get(PARAMS, {})
    return [run_dir / f for f in saved.values() if isinstance(f, str) and (run_dir / f / TRAINED_JSON).is_file()]


def check_run_dir(run_dir) -> Path:
    """`run_dir` if it is a finished study with saved parameters, else a one-line FlaxrayError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FlaxrayError(f"no study folder at {run_dir}")
    run = results.read_run(run_dir)
    if run is not None and run.get("status") != "complete":
        how = (f"python -m {run['study']} --resume {run_dir}" if run.get("study") == "studies.seed_variance"
               else "run it again")
        raise FlaxrayError(f"the study in {run_dir} is not finished (run.json says {run.get('status')!r}); "
                           f"finish it first ({how})")
    again = f": {run['command']} --overwrite" if run and run.get("command") else " with --overwrite"
    if several := results.several_data_sets(run_dir):
        raise FlaxrayError(several)
    if not (run_dir / "study.json").is_file() and not (run_dir / "search.json").is_file():
        raise FlaxrayError(f"{run_dir} holds no finished study (no study.json)")
    if not trained_folders(run_dir):
        raise compat.no_saved_params(run_dir, again)
    return run_dir


def load_trained(run_dir, names: Sequence[str] | None = None) -> dict[str, Trained]:
    """Every seed's final parameters of a finished study, restored with orbax.

    Args:
      run_dir: the study's folder (its --out).
      names: the groups to load (default: all).
    Returns:
      {group name: `Trained`}: config, settings, seeds, input shape, data settings, and `params` and
      `model_state` with a leading seed axis (`.variables` for `flaxray.models.model(...).apply`).
    """
    loaded = {}
    for folder in trained_folders(check_run_dir(run_dir)):
        meta = json.loads((folder / TRAINED_JSON).read_text("utf-8"))
        if names is None or meta["name"] in names:
            loaded[meta["name"]] = load_folder(folder)
    if names is not None and (missing := sorted(set(names) - set(loaded))):
        raise FlaxrayError(f"{run_dir} has no saved group {', '.join(missing)}")
    return loaded


def load_folder(folder) -> Trained:
    """One group's `Trained` from its folder (what `save_trained` wrote), params restored with orbax."""
    import orbax.checkpoint as ocp

    folder = Path(folder)
    meta = compat.trained_record(json.loads((folder / TRAINED_JSON).read_text("utf-8")))
    config = TrainConfig.from_record(meta["config"])
    shape, n = tuple(meta["input_shape"]), len(meta["seeds"])
    # The tree to restore into: one model's shapes, with the seed axis in front.
    model = models.model(config.arch, shape, num_classes=config.num_classes)
    params, state = jax.eval_shape(model.init, jax.random.key(0))
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct((n, *a.shape), a.dtype),
                          {"params": params, meta["state_key"]: state})
    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.restore(folder.absolute() / "state", target)
    return Trained(meta["name"], config, Settings(**meta["settings"]), meta["seeds"], shape, meta["data"],
                   saved["params"], saved[meta["state_key"]], folder)


def load_run_data(trained: Trained, **kwargs):
    """The `flaxray.data.Dataset` the group was trained on, loaded again with the recorded settings."""
    from flaxray.data import load_dataset

    data = trained.data
    if data.get("source") == "arrays":
        raise FlaxrayError("the study was trained on arrays given in memory (from_arrays), which cannot be loaded "
                           "again from the study; save them as an .npz and pass that as the data instead")
    if data.get("data_dir"):
        kwargs.setdefault("data_dir", data["data_dir"])
    dataset = load_dataset(data["path"], image_size=data["image_size"], channels=data["channels"],
                           val_fraction=data["val_fraction"], split_seed=data["split_seed"], **kwargs)
    if dataset.summary["fingerprint"] != data["fingerprint"]:
        raise FlaxrayError(f"the data at {data['path'] or 'the embedded default'} changed since the study "
                           "(its fingerprint differs); its test split may not be the one the study held out")
    return dataset
