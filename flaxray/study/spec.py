"""What a study compares (`Study`) and where its images come from (`DataSpec`): the spec, checked once.

`Study.record()` is its JSON (study.json's "spec", run.json's for a resume); `Study.from_record` and
`recorded_study` build it again.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping

from flaxray import models
from flaxray.core import settings as settings_grid
from flaxray.core.config import TrainConfig, check_dropout_settings
from flaxray.core.randomness import FLOOR, SOURCES
from flaxray.core.recipe import Recipe
from flaxray.errors import FlaxrayError

MAX_SEEDS = 1_000_000  # far beyond any device's memory; more is a typo


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the images come from (`flaxray.data.load_dataset`'s arguments)."""

    path: str | None = None  # a folder, a .npz, tfds:NAME; None: the embedded default
    image_size: int | None = None
    channels: int = 3
    val_fraction: float = 0.2
    split_seed: int = 0
    strict: bool = False
    data_dir: str | None = None  # TFDS's data_dir for tfds:NAME

    def load(self, *, cache_dir=None, progress=True):
        from flaxray.data import load_dataset

        kwargs = {"data_dir": self.data_dir} if self.data_dir else {}
        return load_dataset(self.path, image_size=self.image_size, channels=self.channels,
                            val_fraction=self.val_fraction, split_seed=self.split_seed, strict=self.strict,
                            cache_dir=cache_dir, progress=progress, **kwargs)


@dataclasses.dataclass(frozen=True)
class Study:
    """What to compare: every arch x every combination of `settings`, on the same seeds and data.

    `settings` maps a per-lane setting (`flaxray.core.settings.FIELDS`: lr, dropout, weight_decay) to
    the values crossed with the seeds in one program, e.g. {"lr": (1e-3, 3e-4), "dropout": (0.2, 0.5)};
    a setting not given takes its default (lr 1e-3; dropout: each layer's own; no weight decay).
    `recipe` (`flaxray.core.recipe.Recipe`) is how every program trains: optimizer, schedule,
    augmentation, early stopping's monitor, model selection, label smoothing."""

    archs: tuple[str, ...] = ("pyramid",)  # names, specs, FILE.py:NAME, or models as Python objects (`flaxray.models.user`)
    # A DataSpec, or a `flaxray.data.Dataset` already in memory; or several of them (a tuple, or {name: one}):
    # each arch is then trained on each data set and compared across them (`flaxray.study.datasets`).
    data: Any = DataSpec()
    seeds: tuple[int, ...] = tuple(range(16))
    settings: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 32
    vary: tuple[str, ...] = SOURCES  # what differs between seeds (`TrainConfig.vary`)
    class_weight: str = "none"  # or "balanced": n / (C n_class), as sklearn's
    dtype: str = "float32"
    decompose: bool = False  # also train each arch with one source of randomness varied at a time, and the ulp floor
    test: bool = False  # evaluate every seed once on the test split and compare the first two archs there
    confidence: float = 0.95
    rope: float | None = None  # a margin in final val loss: every pair better, worse, equivalent or undecided
    kind: str = "study"  # recorded: seed_variance, architecture_search, cnn_vs_ann, ...
    recipe: Recipe = Recipe()

    def __post_init__(self):  # every check of a study, once, before any data is read
        # A model given as a Python object (a Keras builder or instance, an NNX factory) is registered under its name.
        object.__setattr__(self, "archs", tuple(a if isinstance(a, str) else models.name_of(a)
                                                for a in (self.archs if isinstance(self.archs, (list, tuple))
                                                          else (self.archs,))))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "data", several(self.data))
        object.__setattr__(self, "vary", tuple(self.vary))
        object.__setattr__(self, "settings", settings_grid.normalize(self.settings))
        if isinstance(self.recipe, Mapping):
            object.__setattr__(self, "recipe", Recipe.from_record(self.recipe))
        self.recipe.check(self.epochs, self.settings)
        if not self.archs:
            raise FlaxrayError("a study needs at least one arch")
        if len(set(self.archs)) < len(self.archs):
            raise FlaxrayError(f"an arch is listed twice: {' '.join(self.archs)}")
        if not 1 <= len(self.seeds) <= MAX_SEEDS or min(self.seeds) < 0 or max(self.seeds) > 2**31 - 1:
            raise FlaxrayError(f"seeds must be 1 to {MAX_SEEDS} integers in 0..2^31-1, got {len(self.seeds)}")
        if self.class_weight not in ("none", "balanced"):
            raise FlaxrayError(f"--class-weight must be none or balanced, got {self.class_weight!r}")
        if not 0 < self.confidence < 1:
            raise FlaxrayError(f"--confidence must be between 0 and 1, got {self.confidence}")
        if self.rope is not None and not 0 < self.rope < float("inf"):
            raise FlaxrayError(f"--rope takes a margin > 0 in final val loss, got {self.rope}")
        if self.decompose and (self.n_settings > 1 or not self.varied):
            raise FlaxrayError("--decompose varies each source of --vary in turn against a run that varies them "
                               "all, at one setting; give one value of each setting and at least one source")
        if self.test and len(self.archs) * self.n_settings != 2:
            raise FlaxrayError("a test-set comparison takes two groups: two archs at one setting (one value of "
                               "each of --lr, --dropout, --weight-decay, --momentum and --early-stopping)")
        for arch in self.archs:  # unknown names and bad flags fail here, before any data is read
            self.config(arch, 2)
            check_dropout_settings(arch, self.settings["dropout"])

    @property
    def varied(self) -> tuple[str, ...]:
        """The sources that differ between seeds among those the programs draw (augment only with --augment)."""
        return tuple(s for s in self.vary if s in self.config(self.archs[0], 2).drawn and s != FLOOR)

    @property
    def datasets(self) -> dict[str, Any]:
        """{name: a DataSpec or Dataset}: the one data set (named by `data_name`) or the several given."""
        return dict(self.data) if isinstance(self.data, Mapping) else {data_name(self.data): self.data}

    def on(self, name: str) -> "Study":
        """The study of one of its data sets: exactly what a study given only that data set is."""
        return dataclasses.replace(self, data=self.datasets[name])

    @property
    def n_settings(self) -> int:
        return len(settings_grid.cross(self.settings))

    def config(self, arch: str, num_classes: int, class_weight=None) -> TrainConfig:
        return TrainConfig(arch=arch, epochs=self.epochs, batch_size=self.batch_size, vary=tuple(self.vary),
                           dtype=self.dtype, num_classes=num_classes, class_weight=class_weight, recipe=self.recipe)

    def record(self) -> dict:
        """The spec as JSON; `Study.from_record` builds it again (a resume)."""
        spec = dataclasses.asdict(dataclasses.replace(self, data=DataSpec()))
        spec["settings"] = settings_grid.record(self.settings)
        spec["vary"] = [s for s in self.vary if s in self.config(self.archs[0], 2).drawn]
        spec.pop("recipe")
        if not self.recipe.is_default():
            spec["recipe"] = self.recipe.record()
        spec["data"] = ({"datasets": {n: _data_record(d) for n, d in self.data.items()}}
                        if isinstance(self.data, Mapping) else _data_record(self.data))
        return spec

    @classmethod
    def from_record(cls, record: Mapping) -> "Study":
        datas = record["data"].get("datasets", {None: record["data"]})
        if any(d.get("in_memory") for d in datas.values()):
            raise FlaxrayError("the study was trained on arrays given in memory, which cannot be loaded again "
                               "from its record; save them as an .npz and pass that as the data instead")
        fields = {f.name for f in dataclasses.fields(cls)}
        spec = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in fields}
        data = {n: DataSpec(**d) for n, d in datas.items()}
        return cls(**{**spec, "data": data.get(None) or data, "settings": record.get("settings", {})})


def _data_record(data) -> dict:
    return (dataclasses.asdict(data) if isinstance(data, DataSpec)
            else {"in_memory": True, "source": data.summary.get("source")})


def data_name(data) -> str:
    """A data set's name, for its folder and the report: the folder's or file's name, NAME of tfds:NAME,
    "embedded" for the default, the source of arrays in memory ("arrays")."""
    if not isinstance(data, DataSpec):
        name = data.summary.get("source") or "arrays"
    elif data.path is None:
        name = "embedded"
    else:
        path = str(data.path)
        name = path[len("tfds:"):] if path.startswith("tfds:") else Path(path.rstrip("/\\")).expanduser().stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "data"


def several(data):
    """`Study.data` as stored: one data set as given; several as {name: data set}, names from `data_name`
    made unique (-2, -3, ...) unless given as a mapping."""
    if isinstance(data, (list, tuple)):
        if not data:
            raise FlaxrayError("a study needs at least one data set")
        if len(data) == 1:
            return data[0]
        named: dict = {}
        for d in data:
            name, k = data_name(d), 2
            while name in named:
                name, k = f"{data_name(d)}-{k}", k + 1
            named[name] = d
        data = named
    if isinstance(data, Mapping):
        if not data:
            raise FlaxrayError("a study needs at least one data set")
        bad = [n for n in data if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", str(n))]
        if bad:
            raise FlaxrayError(f"a data set's name is a folder's name (letters, digits, _ . -), not {bad[0]!r}")
        specs = [d for d in data.values() if isinstance(d, DataSpec)]
        if len(set(specs)) < len(specs):
            raise FlaxrayError("a data set is listed twice: " + " ".join(str(d.path) for d in specs))
        return dict(data) if len(data) > 1 else next(iter(data.values()))
    return data


def recorded_study(run: Mapping, started: Path) -> Study | None:
    """The `Study` a run.json recorded, its data path made absolute from where it was started (`started`);
    None for a run.json of before the spec was recorded, whose flags describe it."""
    if "spec" not in run:
        return None
    study = Study.from_record(run["spec"])

    def absolute(data):
        path = data.path
        if path and not str(path).startswith("tfds:"):
            return dataclasses.replace(data, path=str(started / Path(path).expanduser()))
        return data

    datas = {n: absolute(d) for n, d in study.datasets.items()}
    return dataclasses.replace(study, data=datas if isinstance(study.data, Mapping) else next(iter(datas.values())))
