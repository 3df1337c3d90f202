"""The types every data source shares (Split, Dataset, Pool) and the checks of load arguments.

A *source* (Kaggle folder, class folder, embedded default, numpy arrays, TFDS) only has to build a
:class:`Pool`: every kept image with its label, an id, its group (patient) and the official split it
came from, plus a ``read(indices)`` for the pixels. :func:`flaxray.data.assemble.assemble` turns any
pool into a :class:`Dataset` the same way, so the split and the summary cannot drift between sources.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Callable

import numpy as np

from flaxray.data.folder import CLASSES
from flaxray.errors import FlaxrayError


class DataWarning(UserWarning):
    """A file of the data folder was skipped (unreadable, not an image, ...)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split. ``x`` (N, H, W, C) uint8; ``y`` (N,) int32 in [0, C) (chest: 1 = PNEUMONIA,
    0 = NORMAL); ``files`` (N,) str, an id per image (the path relative to a folder's root,
    ``split/CLASS/index`` for arrays); ``patients`` (N,) str, the group of each image."""

    x: np.ndarray
    y: np.ndarray
    files: np.ndarray
    patients: np.ndarray
    class_names: tuple[str, ...] = CLASSES  # for the repr only; the Dataset holds the same tuple

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        counts = np.bincount(np.asarray(self.y, np.int64), minlength=len(self.class_names))
        per_class = ", ".join(f"{c}={int(n)}" for c, n in zip(self.class_names, counts))
        return (f"Split(n={len(self.y)}, x={tuple(self.x.shape)} {self.x.dtype}, {per_class}, "
                f"patients={len(np.unique(self.patients))})")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """``train`` / ``val`` (group split of official train+val, or the val given) / ``test``
    (official test). ``class_names[k]`` is the name of label k (two or more)."""

    train: Split
    val: Split
    test: Split
    summary: dict
    class_names: tuple[str, ...] = CLASSES

    def __repr__(self) -> str:
        return (f"Dataset(source={self.summary.get('source')!r}, classes={list(self.class_names)}, "
                f"train={self.train!r}, val={self.val!r}, test={self.test!r})")


@dataclasses.dataclass
class Pool:
    """Every kept image of a source (all official splits) before the group split.

    Pixels are read on demand with ``read(indices) -> (k, H, W, C) uint8`` so that each split's
    array is filled straight from the cache, without a full-size intermediate copy. The fields
    after ``path`` have defaults that are the Kaggle folder's behaviour (patients parsed from the
    file names, official split = first path component, official val merged into the pool).
    """

    y: np.ndarray  # (N,) int32
    files: np.ndarray  # (N,) str, "split/CLASS/name"
    read: Callable[[np.ndarray], np.ndarray]
    source: str
    fingerprint: str
    image_size: int | list
    channels: int
    duplicates_dropped: list
    unreadable_skipped: list
    extra: dict = dataclasses.field(default_factory=dict)
    path: str | None = None  # what load_dataset takes to load it again; None: embedded default / arrays
    class_names: tuple[str, ...] = CLASSES
    groups: np.ndarray | None = None  # (N,) str; None: Kaggle patient ids from the file names
    n_ungrouped: int = 0  # images that are their own group (only used when groups is given)
    official: np.ndarray | None = None  # (N,) "train"/"val"/"test"; None: from the file ids
    keep_val: bool = False  # True: official val is the val split as given (not merged and carved)
    shape: tuple[int, int, int] | None = None  # (H, W, C); None: (image_size, image_size, channels)


# ----------------------------------------------------------------------------------------- args

def _integer(value, message: str) -> int:
    """`value` as an int; a bool or a non-integer is a one-line error: `message`, got `value`."""
    try:
        if not isinstance(value, bool):
            return operator.index(value)
    except TypeError:
        pass
    raise FlaxrayError(f"{message}, got {value!r}")


def _check_args(image_size, channels, val_fraction, split_seed, *, channels_optional: bool = False) -> None:
    if image_size is not None:
        size = _integer(image_size, "image_size must be an integer between 8 and 1024")
        if not 8 <= size <= 1024:
            raise FlaxrayError(f"image_size must be between 8 and 1024, got {size}")
    if not (channels_optional and channels is None) and (isinstance(channels, bool) or channels not in (1, 3)):
        raise FlaxrayError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    try:
        ok = 0.0 < float(val_fraction) < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(val_fraction, bool):
        raise FlaxrayError(f"val_fraction must be strictly between 0 and 1, got {val_fraction!r}")
    if _integer(split_seed, "split_seed must be an integer") < 0:
        raise FlaxrayError(f"split_seed must be a non-negative integer, got {split_seed}")
