"""How a program trains beyond its per-lane settings: one frozen record, part of `TrainConfig`.

    Recipe(optimizer="sgd", nesterov=True, schedule=Schedule("cosine", warmup_epochs=5))
    Recipe(augment=augment.parse("flip,translate=0.1"), monitor="val_auc", restore_best=True)
    preset("medmnist", epochs=100)   # the Study fields of a named recipe: {"recipe": ..., "batch_size": 128, ...}

What may differ between the lanes of one program (the learning rate, momentum, early stopping's patience,
...) is in `flaxray.core.settings`; what changes the program is here. The default, `Recipe()`, is the
one flaxray always trained with (Keras's Adam at a constant rate, no augmentation, the last epoch's
model), and a config with it records no recipe at all, so every study of before reads as it did.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from flaxray.analysis import metrics
from flaxray.core import augment as augmentation
from flaxray.core import optim
from flaxray.core import schedules
from flaxray.core.schedules import Schedule
from flaxray.errors import FlaxrayError


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The optimizer (a Keras name, or from Python a function `learning_rate -> optax transform`), its
    Nesterov flag, the schedule (a `Schedule` or a function `step -> multiplier of the rate`), the
    augmentation, early stopping's monitor and min_delta (the patience is per lane:
    `Settings.patience`), model selection (`restore_best`: the weights of the monitor's best epoch are
    the ones kept, as Keras's `restore_best_weights`) and label smoothing."""

    optimizer: Any = "adam"
    nesterov: bool = False
    schedule: Any = Schedule()
    augment: Any = augmentation.Augment()
    monitor: str = "val_loss"
    min_delta: float = 0.0
    restore_best: bool = False
    label_smoothing: float = 0.0

    def __post_init__(self):
        if isinstance(self.augment, str):
            object.__setattr__(self, "augment", augmentation.parse(self.augment))
        if isinstance(self.schedule, Mapping):
            object.__setattr__(self, "schedule", Schedule(**{k: tuple(v) if isinstance(v, list) else v
                                                              for k, v in self.schedule.items()}))
        if isinstance(self.optimizer, str):
            optim.check_optimizer(self.optimizer, self.nesterov, momentum_given=False)
        elif not callable(self.optimizer):
            raise FlaxrayError(f"--optimizer: a Keras name or a function of the learning rate, got {self.optimizer!r}")
        if monitored(self.monitor) is None:
            raise FlaxrayError(f"--monitor {self.monitor!r} is not a metric; give loss or val_loss, or val_ and a "
                               f"metric: {', '.join(m.name for m in metrics.REGISTRY if m.curve)}")
        if not (isinstance(self.min_delta, (int, float)) and math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise FlaxrayError(f"--min-delta must be a finite number >= 0, got {self.min_delta!r}")
        if not (isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 1):
            raise FlaxrayError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing!r}")

    def check(self, epochs: int, grid: Mapping[str, tuple]) -> None:
        """One-line errors for what needs the study's epochs and settings: the schedule's milestones and
        warm-up, a momentum for an optimizer without one."""
        schedules.check(self.schedule, epochs)
        momentum = any(v is not None for v in grid.get("momentum", (None,)))
        if isinstance(self.optimizer, str):
            optim.check_optimizer(self.optimizer, self.nesterov, momentum_given=momentum)
        elif momentum:
            raise FlaxrayError("--momentum sets a Keras-named optimizer's momentum; an optax optimizer brings its own")

    def is_default(self) -> bool:
        return self == Recipe()

    @property
    def lower_is_better(self) -> bool:
        """Early stopping's mode, from the monitored metric's direction (Keras's mode "auto")."""
        return monitored(self.monitor).lower_is_better

    def record(self) -> dict:
        """Every field as JSON (a function as its repr, which cannot be built again from the record)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "schedule":
                value = schedules.record(value)
            elif f.name == "augment":
                value = value.spec()
            elif callable(value):
                value = {"callable": repr(value)}
            out[f.name] = value
        return out

    @classmethod
    def from_record(cls, record: Mapping | None) -> "Recipe":
        record = dict(record or {})
        if isinstance(record.get("optimizer"), dict) or record.get("schedule", {}).get("kind") == "callable":
            raise FlaxrayError("the study was trained with an optax optimizer or schedule given from Python, "
                               "which its record cannot build again; run it again from Python")
        return cls(**record)


def monitored(name: str):
    """The registry entry of a monitor ("val_loss", "loss", "val_auc", ...), None if it names no metric."""
    return metrics.find(name[len("val_"):] if name.startswith("val_") else name)


def milestones_at(fractions, epochs: int) -> tuple[int, ...]:
    """Milestones given as fractions of the epochs, rounded down (MedMNIST's 50 % and 75 %), those that
    fall before the first epoch or at the last left out (a short run has fewer)."""
    return tuple(sorted({m for m in (math.floor(f * epochs) for f in fractions) if 1 <= m < epochs}))


# A named recipe is a set of defaults that explicit flags override; its milestones are fractions of the
# final --epochs. "keras" is flaxray's default: Keras's Adam at a constant rate.
PRESETS: dict[str, dict] = {
    "keras": {},
    # MedMNIST v2's ResNet-18 row (MedMNIST2D/train_and_eval_pytorch.py): Adam 1e-3, x0.1 after 50 % and
    # 75 % of 100 epochs (MultiStepLR stepped per epoch), batch 128, the model of the best val AUC kept.
    "medmnist": {"lr": 1e-3, "batch_size": 128, "epochs": 100, "schedule": "step", "milestone_fractions": (0.5, 0.75),
                 "decay": 0.1, "monitor": "val_auc", "restore_best": True},
}


def preset(name: str, epochs: int | None = None, **given) -> dict:
    """The Study fields of recipe `name` (`PRESETS`), with `given` (explicit choices: recipe fields,
    "epochs", "batch_size", "lr", "milestones", "decay", "warmup_epochs", "schedule") overriding its defaults."""
    if name not in PRESETS:
        raise FlaxrayError(f"--recipe: unknown recipe {name!r}; choose from {', '.join(PRESETS)}")
    values = {**PRESETS[name], **{k: v for k, v in given.items() if v is not None}}
    epochs = epochs if epochs is not None else values.pop("epochs", 20)
    values.pop("epochs", None)
    fractions = values.pop("milestone_fractions", ())
    if "milestones" not in values and values.get("schedule") == "step":
        values["milestones"] = milestones_at(fractions, epochs)
        if not values["milestones"]:  # a run too short for any: the rate stays constant
            values["schedule"] = "constant"
    schedule = Schedule(**{k: values.pop(k) for k in ("milestones", "decay", "warmup_epochs") if k in values},
                        **({"kind": values.pop("schedule")} if "schedule" in values else {}))
    out = {"epochs": epochs, "recipe": Recipe(schedule=schedule, **{k: values.pop(k) for k in list(values)
                                                                     if k in Recipe.__dataclass_fields__})}
    if "batch_size" in values:
        out["batch_size"] = values.pop("batch_size")
    if "lr" in values:
        out["lr"] = values.pop("lr")
    return out

