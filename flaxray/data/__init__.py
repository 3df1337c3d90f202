"""Data sets as uint8 numpy arrays split into train / val / test, from any of five sources.

>>> from flaxray.data import load_dataset, from_arrays
>>> ds = load_dataset()                                  # embedded default: chest X-rays, 28x28
>>> ds = load_dataset("../shared/data/chest_xray")       # Kaggle chest folder, 180x180x3
>>> ds = load_dataset("path/to/images")                  # any {train,val,test}/{CLASS}/* folder
>>> ds = load_dataset("data.npz")                        # arrays x_train, y_train, ... (see read_npz)
>>> ds = load_dataset("tfds:mnist", data_dir="~/tensorflow_datasets")  # a TFDS set prepared locally
>>> ds = from_arrays(x, y, class_names=["cat", "dog", "owl"])          # numpy arrays in memory
>>> ds.train.x.shape, ds.class_names, ds.summary["val"]  # {"n", "per_class", "n_patients", ...}

Each source (:mod:`~flaxray.data.cache` folders, :mod:`~flaxray.data.embedded`,
:mod:`~flaxray.data.arrays`, :mod:`~flaxray.data.tfds_source`) builds one
:class:`~flaxray.data.core.Pool`: images, labels, class names, a group (patient) per image and the
official split of each image. One assembly (:mod:`flaxray.data.assemble`) carves validation out of
official train+val by group, class-stratified (:mod:`flaxray.data.split`), and keeps official test
as test; ``summary`` says what was merged, dropped and skipped, and ``summary["class_names"]``.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path

from flaxray.data.arrays import NPZ_KEYS, pool_from_arrays, read_npz
from flaxray.data.assemble import assemble
from flaxray.data.cache import FOLDER_IMAGE_SIZE, PREPARED_JSON, open_folder, read_folder
from flaxray.data.core import DataWarning, Dataset, Pool, Split, _check_args
from flaxray.data.embedded import DEFAULT_FILE, DEFAULT_IMAGE_SIZE, read_default
from flaxray.data.folder import CLASSES, folder_classes
from flaxray.data.tfds_source import PREFIX as TFDS_PREFIX, is_builder_dir, read_tfds
from flaxray.errors import FlaxrayError

__all__ = ["load_dataset", "from_arrays", "from_tfds", "Dataset", "Split", "DataWarning", "CLASSES", "NPZ_KEYS",
           # the sources' own readers and constants, re-exported where they were before the split into modules
           "Pool", "open_folder", "read_folder", "read_default", "read_npz", "read_tfds", "PREPARED_JSON",
           "DEFAULT_FILE", "DEFAULT_IMAGE_SIZE", "FOLDER_IMAGE_SIZE"]

_assemble = assemble  # the name it had


def from_arrays(x_train, y_train, x_val=None, y_val=None, x_test=None, y_test=None, *, groups=None,
                class_names=None, val_fraction: float = 0.2, split_seed: int = 0, image_size: int | None = None,
                channels: int | None = None) -> Dataset:
    """A :class:`Dataset` of numpy arrays.

    Args:
      x_*: uint8 images, ``(N, H, W)`` (one channel) or ``(N, H, W, C)`` with C 1 or 3, or a list
        of ``(H, W[, C])`` images (of different sizes only with ``image_size``).
      y_*: integer labels in ``[0, len(class_names))``, one per image. ``x_val``/``x_test`` are
        optional, each with its labels; without ``x_test`` the test split is empty.
      groups: a group id (patient) per image of x_train, or of x_train followed by x_val, so that
        no group is on both sides of the validation split; by default each image is its own group.
      class_names: the name of each label (default ``"0", "1", ...`` up to the largest label).
      val_fraction, split_seed: without ``x_val``, val is carved from train by group, class-
        stratified, as for a folder; a given ``x_val`` is the val split as it is.
      image_size, channels: ``None`` keeps the images as given; else resized (PIL bilinear, square)
        and converted (grey repeated / PIL luma) as a folder's images are.

    ``summary["source"]`` is ``"arrays"`` and ``summary["path"]`` None (arrays cannot be reloaded
    from a path: save an .npz for that).
    """
    _check_args(image_size, channels, val_fraction, split_seed, channels_optional=True)
    splits = {"train": (x_train, y_train)}
    for name, x, y in (("val", x_val, y_val), ("test", x_test, y_test)):
        if (x is None) != (y is None):
            raise FlaxrayError(f"x_{name} and y_{name} go together: got {'x' if y is None else 'y'}_{name} only")
        if x is not None:
            splits[name] = (x, y)
    pool = pool_from_arrays(splits, groups=groups, class_names=class_names, image_size=image_size,
                            channels=channels, keep_val="val" in splits, extra={"val_given": "val" in splits})
    return assemble(pool, val_fraction, operator.index(split_seed))


def from_tfds(name, *, data_dir=None, splits: dict | None = None, image_size: int | None = None,
              channels: int | None = None, val_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """A :class:`Dataset` of a TFDS set already prepared (``array_record``) under ``data_dir``, by
    name (``"mnist"``, ``"tfds:mnist"``, ``"name/config:1.0.0"``) or builder directory; nothing is
    downloaded. See :mod:`flaxray.data.tfds_source` for the split and feature mapping."""
    _check_args(image_size, channels, val_fraction, split_seed, channels_optional=True)
    pool = read_tfds(name, data_dir=data_dir, splits=splits, image_size=image_size, channels=channels)
    return assemble(pool, val_fraction, operator.index(split_seed))


def load_dataset(path: str | os.PathLike | None = None, *, image_size: int | None = None, channels: int = 3,
                 val_fraction: float = 0.2, split_seed: int = 0, strict: bool = False,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True,
                 data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data set as numpy arrays split into train / val / test.

    Args:
      path: what to load, told apart in this order:
        - ``None``: the embedded 28x28 grayscale chest X-rays (no TFDS involved);
        - ``"tfds:NAME"`` (``NAME`` any TFDS builder string, e.g. ``mnist``, ``name/config:1.0.0``,
          or a builder directory): a TFDS set prepared locally under ``data_dir`` (never downloaded);
        - a path ending in ``.npz``: arrays, keys in :data:`NPZ_KEYS` (see :func:`read_npz`);
        - a TFDS builder directory (holding ``dataset_info.json``);
        - a folder laid out as ``{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` (the Kaggle chest
          X-rays: patients from the file names, ``train/`` required), or any
          ``{train,val,test}/{CLASS}/*`` with two or more classes (sorted folder names = labels).
      image_size: square size. ``None`` means 28 for the default (the only size it has), 180 for a
        folder, and the images' own size for arrays and TFDS (which must then all have one shape).
        Images are resized with PIL BILINEAR, aspect ratio not kept (like Keras
        ``image_dataset_from_directory``), after ``exif_transpose`` and conversion to 8-bit.
      channels: 1 (grayscale ``"L"``) or 3 (``"RGB"``), for every source: grey is repeated, RGB
        goes through PIL's luma.
      val_fraction: fraction of each class's images of official train+val taken for validation,
        by patient / group (no group on both sides). Official val is merged into the pool first
        (an .npz's x_val is the val split as given instead).
      split_seed: seed of the group split (deterministic).
      strict: (folders) raise :class:`FlaxrayError` on the first unreadable file instead of
        skipping it with a :class:`DataWarning`.
      cache_dir: (folders) where the prepared TFDS data lives; default ``$FLAXRAY_CACHE`` or
        ``~/.cache/flaxray``. Keyed by a fingerprint of the folder (paths, sizes, mtimes) and the
        settings, so a second load of the same folder does not decode anything.
      progress: (folders) show a tqdm bar while preparing.
      data_dir: (``tfds:``) the TFDS data directory; default TFDS's own (``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).

    In folders, byte-identical files are dropped keeping one copy (preferring test, then val, then
    train). ``summary`` (JSON-serialisable) reports counts per split and class, what was dropped and
    skipped, and ``class_names``; ``summary["path"]`` is what this function takes to load it again.
    """
    _check_args(image_size, channels, val_fraction, split_seed)
    channels = int(channels)
    size = None if image_size is None else operator.index(image_size)
    if path is None:
        if size is not None and size != DEFAULT_IMAGE_SIZE:
            raise FlaxrayError(
                f"the embedded default data is {DEFAULT_IMAGE_SIZE}x{DEFAULT_IMAGE_SIZE} only; for "
                f"image_size={image_size} pass a folder, e.g. load_dataset('path/to/chest_xray', image_size={image_size})")
        arr = read_default(channels)
    elif isinstance(path, str) and path.startswith(TFDS_PREFIX):
        arr = read_tfds(path, data_dir=data_dir, image_size=size, channels=channels)
    elif os.fspath(path).lower().endswith(".npz"):
        arr = read_npz(path, image_size=size, channels=channels)
    elif is_builder_dir(path):
        arr = read_tfds(Path(path), image_size=size, channels=channels)
    else:
        arr = open_folder(path, image_size=FOLDER_IMAGE_SIZE if size is None else size, channels=channels,
                          strict=strict, cache_dir=cache_dir, progress=progress, classes=folder_classes(path))
    return assemble(arr, val_fraction, operator.index(split_seed))
