"""A TensorFlow Datasets data set that is already prepared locally, by name or by builder directory.

Nothing downloads here, ever: ``tfds.builder(name, data_dir=...)`` only constructs the builder
(from its registered code, or from the ``dataset_info.json`` of a prepared copy when the code is
not importable), :meth:`is_prepared` says whether the data is there, and an unprepared set is a
one-line error naming where it looked; ``download_and_prepare`` is never called. The examples
are read with ``as_data_source()`` (``array_record`` random access, no TensorFlow needed), so a
set prepared in the ``tfrecord`` format is refused with the command that re-prepares it.

TFDS splits map to the official ones as ``train`` -> train, ``validation`` (or ``val``/``valid``)
-> val, ``test`` -> test; the assembly then carves val out of train+validation by group, as for a
folder (every image is its own group: TFDS sets carry no patient ids). The image is the first
supervised key (else the first ``Image`` feature), the label the second (else the first
``ClassLabel``), whose names are the class names.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from flaxray.data.arrays import pool_from_arrays
from flaxray.data.cache import _quiet_tfds
from flaxray.data.core import Pool
from flaxray.data.folder import SPLITS
from flaxray.errors import FlaxrayError

PREFIX = "tfds:"
# Official split -> the TFDS split names taken for it, first found wins.
TFDS_SPLITS = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}
_CHUNK = 1024


def _line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


def is_builder_dir(path) -> bool:
    """A prepared TFDS builder directory (``.../NAME/[CONFIG/]VERSION`` with ``dataset_info.json``)."""
    try:
        return (Path(path).expanduser() / "dataset_info.json").is_file()
    except (OSError, TypeError, ValueError):
        return False


def open_builder(spec: str | os.PathLike, data_dir=None):
    """``(builder, label, data_dir)`` of a prepared TFDS set (``data_dir`` None for a directory); ``spec`` a name (``mnist``, ``name/config:1.0.0``)
    or a builder directory. One-line FlaxrayError when unknown or not prepared."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import constants, registered

    if is_builder_dir(spec):
        d = Path(spec).expanduser().absolute()
        try:
            return tfds.builder_from_directory(os.fspath(d)), str(d), None
        except Exception as e:  # noqa: BLE001 - a broken dataset_info.json, ...
            raise FlaxrayError(f"cannot open the TFDS builder directory {d}: {_line(e)}") from None
    name = str(spec)
    root = Path(data_dir).expanduser().absolute() if data_dir is not None else Path(constants.DATA_DIR)
    kwargs = {} if data_dir is None else {"data_dir": os.fspath(root)}
    try:
        builder = tfds.builder(name, **kwargs)
    except registered.DatasetNotFoundError:
        raise FlaxrayError(f"unknown TFDS data set {name!r}: not a registered TFDS name and not prepared in "
                           f"{root} (data_dir); nothing is downloaded") from None
    except Exception as e:  # noqa: BLE001 - unknown config or version, unreadable files
        raise FlaxrayError(f"cannot open TFDS data set {name!r} in {root}: {_line(e)}") from None
    if not builder.is_prepared():
        raise FlaxrayError(
            f"TFDS data set {name!r} is not prepared locally: looked in {builder.data_dir} (data_dir {root}); "
            f"flaxray never downloads, prepare it first (e.g. tfds build {name.split(':')[0]} --data_dir {root} "
            "--file_format array_record) or pass data_dir=")
    return builder, name, str(root)


def _feature_keys(features, supervised_keys, label: str) -> tuple[str, str]:
    import tensorflow_datasets as tfds

    keys = list(features.keys())
    if (isinstance(supervised_keys, (tuple, list)) and len(supervised_keys) == 2
            and all(isinstance(k, str) and k in keys for k in supervised_keys)):
        image_key, label_key = supervised_keys
    else:
        image_key = next((k for k in keys if isinstance(features[k], tfds.features.Image)), None)
        label_key = next((k for k in keys if isinstance(features[k], tfds.features.ClassLabel)), None)
        if image_key is None:
            raise FlaxrayError(f"TFDS data set {label} has no Image feature (features: {', '.join(keys)})")
    if not isinstance(features[label_key] if label_key else None, tfds.features.ClassLabel):
        raise FlaxrayError(f"TFDS data set {label} has no ClassLabel label (features: {', '.join(keys)})")
    return image_key, label_key


def _split_map(available: list[str], splits: dict | None, label: str) -> dict[str, str]:
    if splits is None:
        mapping = {off: next((n for n in names if n in available), None) for off, names in TFDS_SPLITS.items()}
        mapping = {k: v for k, v in mapping.items() if v is not None}
    else:
        mapping = {}
        for off, name in dict(splits).items():
            if off not in SPLITS:
                raise FlaxrayError(f"splits keys must be train, val or test, got {off!r}")
            if str(name).split("[", 1)[0] not in available:
                raise FlaxrayError(f"unknown split {name!r} of TFDS data set {label} (its splits: {', '.join(available)})")
            mapping[off] = str(name)
    if "train" not in mapping:
        raise FlaxrayError(f"TFDS data set {label} has no 'train' split (its splits: {', '.join(available)}); "
                           "pass splits={'train': ...}")
    return mapping


def _read_split(builder, split: str, image_key: str, label_key: str, label: str):
    try:
        src = builder.as_data_source(split=split)
    except (NotImplementedError, ValueError) as e:
        fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
        raise FlaxrayError(f"TFDS data set {label} in {builder.data_dir} is stored as {fmt}, which flaxray cannot "
                           "read without TensorFlow: prepare it with --file_format array_record "
                           f"({_line(e)[:120]})") from None
    xs, ys = [], []
    getitems = getattr(src, "__getitems__", None)
    for start in range(0, len(src), _CHUNK):
        keys = list(range(start, min(start + _CHUNK, len(src))))
        for item in (getitems(keys) if getitems is not None else [src[k] for k in keys]):
            xs.append(np.asarray(item[image_key]))
            ys.append(int(item[label_key]))
    return xs, np.array(ys, np.int64)


def read_tfds(spec, *, data_dir=None, splits: dict | None = None, image_size: int | None = None,
              channels: int | None = None) -> Pool:
    """A prepared TFDS set as a :class:`Pool`. ``spec``: a name (optionally ``tfds:`` in front) or
    a builder directory; ``splits``: ``{"train": "train", "val": "validation", "test": "test"}``
    to choose other TFDS splits (slices like ``"train[:10%]"`` allowed)."""
    if isinstance(spec, str) and spec.startswith(PREFIX):
        spec = spec[len(PREFIX):]
    if not str(spec):
        raise FlaxrayError("empty TFDS name: use tfds:NAME, e.g. tfds:mnist")
    with _quiet_tfds():
        builder, label, root = open_builder(spec, data_dir)
        info = builder.info
        image_key, label_key = _feature_keys(info.features, info.supervised_keys, label)
        mapping = _split_map(list(info.splits.keys()), splits, label)
        arrays = {off: _read_split(builder, name, image_key, label_key, label) for off, name in mapping.items()}
    names = tuple(info.features[label_key].names)
    # summary["path"] (+ summary["data_dir"]) is what load_dataset takes to load it again
    extra = {"tfds": {"name": info.full_name, "splits": mapping, "image": image_key, "label": label_key},
             "data_dir": root}
    try:
        return pool_from_arrays(arrays, class_names=names, image_size=image_size, channels=channels,
                                source=f"{PREFIX}{label}", path=label if root is None else f"{PREFIX}{label}",
                                extra=extra)
    except FlaxrayError as e:
        raise FlaxrayError(f"TFDS data set {label}: {e}") from None
