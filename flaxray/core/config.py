"""What a compiled training program depends on (`TrainConfig`), and the data it reads on the device.

A `TrainConfig` holds what changes the program: the arch, the epochs, the batch sizes, the classes
and their weights, the compute dtype and which sources of randomness vary. What may differ between
the lanes of one program (the learning rate, dropout, weight decay: `flaxray.core.settings`) is not
here: it is state. Every check of these fields is here, once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flaxray import models
from flaxray.core.randomness import AUGMENT, DRAWN_BY_ALL, FLOOR, SOURCES, SPLIT
from flaxray.core.recipe import Recipe
from flaxray.core import resample as resample_
from flaxray.core import schedules
from flaxray.errors import FlaxrayError

DTYPES = ("float32", "bfloat16")  # compute dtypes; parameters and optimizer state are float32 either way


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    arch: str = "pyramid"
    epochs: int = 20
    batch_size: int = 32
    vary: tuple[str, ...] = SOURCES  # what differs between seeds; the rest comes from `shared_seed`
    shared_seed: int = 0
    class_weight: tuple[float, ...] | None = None  # loss weight of each class, as Keras's class_weight
    eval_batch_size: int = 256
    dtype: str = "float32"  # compute dtype of activations and matmuls (`DTYPES`)
    num_classes: int = 2  # 2: one logit, sigmoid; 3 or more: one logit per class, softmax
    recipe: Recipe = Recipe()  # the optimizer, schedule, augmentation, early stopping's monitor, ...
    # Each lane trains and validates on its own split of train+val (`flaxray.core.resample`, its data
    # `device_data(..., resample=True)`): on with "split" in `vary`, and kept by --decompose's units that
    # share the split (their lanes all draw the shared seed's), so every unit of a study has one size.
    resample: bool = False

    def __post_init__(self):
        if SPLIT in self.vary:
            object.__setattr__(self, "resample", True)
        models.check_arch(self.arch)  # unknown names and bad spec strings fail here, before any work
        if self.num_classes < 2:
            raise FlaxrayError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.class_weight is not None and len(self.class_weight) != self.num_classes:
            raise FlaxrayError(f"class_weight needs one weight per class ({self.num_classes}), "
                               f"got {len(self.class_weight)}")
        if unknown := set(self.vary) - {*SOURCES, SPLIT, FLOOR}:
            raise FlaxrayError(f"--vary: unknown source(s) {sorted(unknown)}; choose from "
                               f"{', '.join((*SOURCES, SPLIT, FLOOR))}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise FlaxrayError(f"{name} must be >= 1, got {getattr(self, name)}")
        schedules.check(self.recipe.schedule, self.epochs)
        if self.dtype not in DTYPES:
            raise FlaxrayError(f"--dtype: unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")

    @property
    def drawn(self) -> tuple[str, ...]:
        """The sources of randomness this program draws from: every program draws init, dropout and order
        (and the ulp floor's coin flips when asked). A source only some programs draw (augmentation, say)
        joins here where its setting turns it on; the split's draw (on the host) where the lanes resample."""
        return (DRAWN_BY_ALL + ((AUGMENT,) if self.recipe.augment else ()) + ((SPLIT,) if self.resample else ())
                + ((FLOOR,) if FLOOR in self.vary else ()))

    def record(self) -> dict:
        """The config as JSON-able plain values; `vary` names the sources that vary among those the program
        draws, so a source added later changes no record of a program that does not draw it; the recipe,
        expanded, only when it is not the default (a config of before the recipe existed reads the same);
        `resample` only when on."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "recipe" and (f.name != "resample" or self.resample)}
        out["vary"] = [s for s in self.vary if s in self.drawn]
        return out if self.recipe.is_default() else {**out, "recipe": self.recipe.record()}

    @classmethod
    def from_record(cls, record: dict) -> "TrainConfig":
        record = dict(record)
        recipe = Recipe.from_record(record.pop("recipe", None))
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}, recipe=recipe)

    @property
    def epoch_key(self) -> tuple:
        """What one epoch's program depends on: every field but the number of epochs (a host loop), unless
        the schedule's rate depends on it (cosine decays over the run's steps)."""
        kind = getattr(self.recipe.schedule, "kind", None)
        return tuple((f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                     if f.name != "epochs" or kind == "cosine")


def check_dropout_settings(arch: str, dropouts) -> None:
    """A one-line error when rates replacing the arch's dropout are asked of an arch without any."""
    if any(d is not None for d in dropouts):
        models.check_dropout(arch)


class DeviceData(NamedTuple):
    """Images as uint8 on the device; val padded to whole eval batches (`val_mask` 0 on padding).

    With `resample` (a `flaxray.core.resample.Resample`, static: no arrays of its own) the lanes draw
    their own splits: `x_train`, `y_train` hold the pool (official train+val) once, each lane's split is
    index arrays in its state (`LaneSplit`), and the val fields are empty."""

    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    val_mask: jax.Array
    resample: Any = None


class LaneSplit(NamedTuple):
    """One lane's split of the pool (`DeviceData.resample`): indices, not images, so a lane costs int32s."""

    train: jax.Array  # (n_train,) into the pool
    val: jax.Array  # (n_val padded to whole eval batches,) into the pool
    val_mask: jax.Array  # 0 on the padding


def train_count(data) -> int:
    """Images an epoch trains: the training split's, or with resampled splits every lane's (the same)."""
    return data.x_train.shape[0] if getattr(data, "resample", None) is None else data.resample.n_train


def val_of(data, split) -> tuple:
    """(images, labels, mask, index) a lane evaluates as val: the data's; or its own split's (`LaneSplit`),
    positions in the pool that `evaluate` gathers a batch at a time, so no lane holds a copy of images."""
    if split is None:
        return data.x_val, data.y_val, data.val_mask, None
    return data.x_train, data.y_train, split.val_mask, split.val


def check_data(config: TrainConfig, data) -> None:
    """A one-line error where the config's lanes resample their splits and the data was put without (or
    the other way round)."""
    if config.resample != (getattr(data, "resample", None) is not None):
        raise FlaxrayError("--vary split: each lane draws its split, so the data goes to the device as one pool: "
                           f"device_data(dataset, resample={config.resample})")


def pad_to_batches(x, y, eval_batch_size: int):
    """Images (uint8), labels and mask on the device, zero-padded to whole eval batches (mask 0 on padding)."""
    n = len(y)
    pad = -n % eval_batch_size
    x = np.concatenate([np.asarray(x, np.uint8), np.zeros((pad, *np.shape(x)[1:]), np.uint8)])
    return (jnp.asarray(x, jnp.uint8), jnp.asarray(np.concatenate([y, np.zeros(pad)]), jnp.float32),
            jnp.asarray(np.arange(n + pad) < n, jnp.float32))


def device_data(dataset, eval_batch_size: int = 256, resample: bool = False) -> DeviceData:
    """Put a `flaxray.data.Dataset`'s train and val splits on the device once, as uint8 (labels as
    float32: the sigmoid loss takes them so, and small class indices are exact in float32); `resample`
    (a config's, with "split" in --vary): official train+val as one pool, each lane drawing its split."""
    if len(dataset.train.y) == 0 or len(dataset.val.y) == 0:
        raise FlaxrayError("the data has an empty train or validation split; add images or lower --val-fraction")
    if resample:
        pool = resample_.Resample.of(dataset)
        train, val = pool.sizes
        if train == 0 or val == 0:
            raise FlaxrayError(f"--vary split: every seed's split must have {train} training and {val} val images "
                               "(whole patients to each side): too few patients; add images or drop split")
        x = jnp.asarray(resample_.images(dataset), jnp.uint8)
        return DeviceData(x_train=x, y_train=jnp.asarray(pool.labels, jnp.float32), x_val=x[:0],
                          y_val=jnp.zeros(0, jnp.float32), val_mask=jnp.zeros(0, jnp.float32), resample=pool)
    x_val, y_val, val_mask = pad_to_batches(dataset.val.x, dataset.val.y, eval_batch_size)
    return DeviceData(x_train=jnp.asarray(dataset.train.x, jnp.uint8), y_train=jnp.asarray(dataset.train.y, jnp.float32),
                      x_val=x_val, y_val=y_val, val_mask=val_mask)


def data_for(dataset, config: TrainConfig) -> DeviceData:
    """`device_data` as `config`'s programs take it: its eval batches, and one pool where its lanes resample."""
    return device_data(dataset, eval_batch_size=config.eval_batch_size, resample=config.resample)


def check_batch_size(config: TrainConfig, n_train: int) -> None:
    if config.batch_size > n_train:
        raise FlaxrayError(f"batch size {config.batch_size} is larger than the training split ({n_train} images)")
