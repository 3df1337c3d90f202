"""Chest X-ray data: a Kaggle-layout folder (through TensorFlow Datasets) or the embedded default.

>>> from flaxray.data import load_dataset
>>> ds = load_dataset()                                  # embedded default, 28x28
>>> ds = load_dataset("../shared/data/chest_xray")       # a folder, 180x180x3
>>> ds.train.x.shape, ds.summary["val"]      # {"n", "per_class", "n_patients", "fraction_pneumonia"}

Validation is carved out of official train+val by patient (see :mod:`flaxray.data.split`); test
is the official test split. ``summary`` says what was merged, dropped and skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import operator
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from flaxray.data.folder import CLASSES, SPLITS, patient_id, scan_folder, fingerprint as _fingerprint
from flaxray.data.split import patient_split
from flaxray.errors import FlaxrayError

__all__ = ["load_dataset", "Dataset", "Split", "DataWarning"]

DEFAULT_FILE = "chest_xray_28.npz"
DEFAULT_IMAGE_SIZE = 28
FOLDER_IMAGE_SIZE = 180
PREPARED_JSON = "flaxray_prepare.json"  # written beside the TFDS data once it is complete
_PREPARED_FORMAT = 1


class DataWarning(UserWarning):
    """A file of the data folder was skipped (unreadable, not an image, ...)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split. ``x`` (N, H, W, C) uint8; ``y`` (N,) int32, 1 = PNEUMONIA, 0 = NORMAL;
    ``files`` (N,) str, path relative to the data root; ``patients`` (N,) str."""

    x: np.ndarray
    y: np.ndarray
    files: np.ndarray
    patients: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        n_pos = int((self.y == 1).sum())
        return (f"Split(n={len(self.y)}, x={tuple(self.x.shape)} {self.x.dtype}, "
                f"NORMAL={len(self.y) - n_pos}, PNEUMONIA={n_pos}, patients={len(np.unique(self.patients))})")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """``train`` / ``val`` (patient split of official train+val) / ``test`` (official test)."""

    train: Split
    val: Split
    test: Split
    summary: dict

    def __repr__(self) -> str:
        return (f"Dataset(source={self.summary.get('source')!r}, train={self.train!r}, val={self.val!r}, "
                f"test={self.test!r})")


@dataclasses.dataclass
class Pool:
    """Every kept image of a source (all official splits) before the patient split.

    Pixels are read on demand with ``read(indices) -> (k, H, W, C) uint8`` so that each split's
    array is filled straight from the cache, without a full-size intermediate copy.
    """

    y: np.ndarray  # (N,) int32
    files: np.ndarray  # (N,) str, "split/CLASS/name"
    read: Callable[[np.ndarray], np.ndarray]
    source: str
    fingerprint: str
    image_size: int
    channels: int
    duplicates_dropped: list
    unreadable_skipped: list
    extra: dict = dataclasses.field(default_factory=dict)
    path: str | None = None  # the folder it was read from; None for the embedded default


# ----------------------------------------------------------------------------------------- args

def _integer(value, message: str) -> int:
    """`value` as an int; a bool or a non-integer is a one-line error: `message`, got `value`."""
    try:
        if not isinstance(value, bool):
            return operator.index(value)
    except TypeError:
        pass
    raise FlaxrayError(f"{message}, got {value!r}")


def _check_args(image_size, channels, val_fraction, split_seed) -> None:
    if image_size is not None:
        size = _integer(image_size, "image_size must be an integer between 8 and 1024")
        if not 8 <= size <= 1024:
            raise FlaxrayError(f"image_size must be between 8 and 1024, got {size}")
    if isinstance(channels, bool) or channels not in (1, 3):
        raise FlaxrayError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    try:
        ok = 0.0 < float(val_fraction) < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(val_fraction, bool):
        raise FlaxrayError(f"val_fraction must be strictly between 0 and 1, got {val_fraction!r}")
    if _integer(split_seed, "split_seed must be an integer") < 0:
        raise FlaxrayError(f"split_seed must be a non-negative integer, got {split_seed}")


def _cache_root(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("FLAXRAY_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "flaxray"


def _check_cache(folder: Path) -> None:
    """A one-line error now rather than a traceback from deep inside TFDS later."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FlaxrayError(f"cannot use the cache folder {folder}: {err.strerror or err} (set --cache-dir "
                           "or $FLAXRAY_CACHE)") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FlaxrayError(f"cannot write to the cache folder {folder} (set --cache-dir or $FLAXRAY_CACHE)")


# ---------------------------------------------------------------------------------- TFDS plumbing

@contextlib.contextmanager
def _quiet_tfds():
    """Silence TFDS's progress bars and absl INFO/WARNING chatter; restore them afterwards."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import tqdm_utils

    was_active = getattr(tqdm_utils, "_active", True)
    absl_logger = logging.getLogger("absl")
    old_level = absl_logger.level
    tfds.display_progress_bar(False)
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(old_level)
        tfds.display_progress_bar(was_active)


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on ``path`` (POSIX flock) so two processes don't prepare the same data."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _CacheReader:
    """``read(indices)`` for a folder's pool: fetches examples from the TFDS data sources."""

    def __init__(self, sources: list, src_of: np.ndarray, key_of: np.ndarray, files: np.ndarray,
                 shape: tuple, data_dir: Path):
        self.sources, self.src_of, self.key_of, self.files = sources, src_of, key_of, files
        self.shape, self.data_dir = shape, data_dir

    def __call__(self, idx) -> np.ndarray:
        idx = np.asarray(idx, np.int64).reshape(-1)
        out = np.empty((len(idx), *self.shape), np.uint8)
        with _quiet_tfds():
            for si, src in enumerate(self.sources):
                sel = np.flatnonzero(self.src_of[idx] == si)
                getitems = getattr(src, "__getitems__", None)
                for start in range(0, len(sel), 512):
                    chunk = sel[start:start + 512]
                    keys = self.key_of[idx[chunk]].tolist()
                    items = getitems(keys) if getitems is not None else [src[k] for k in keys]
                    for j, item in zip(chunk, items):
                        f = item["file"]
                        f = f.decode("utf-8") if isinstance(f, bytes) else str(f)
                        if f != self.files[idx[j]]:
                            raise FlaxrayError(f"the cached data in {self.data_dir} does not match its index "
                                               f"({f!r} != {self.files[idx[j]]!r}); delete that folder and load again")
                        out[j] = item["image"]
        return out


def _read_meta(meta_path: Path, splits) -> dict | None:
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("format") != _PREPARED_FORMAT or set(meta.get("examples", {})) != set(splits):
        return None
    return meta


def _sources_match(sources: dict, meta: dict) -> bool:
    """The TFDS splits hold the examples listed in ``meta`` (plus a placeholder when empty)."""
    for split, files in meta["examples"].items():
        if split not in sources or len(sources[split]) != max(1, len(files)):
            return False
    return True


def open_folder(path, *, image_size: int = FOLDER_IMAGE_SIZE, channels: int = 3, strict: bool = False,
                cache_dir=None, progress: bool = True) -> Pool:
    """A Kaggle-layout folder as a :class:`Pool`, prepared through the TFDS cache if needed.

    Validates the layout, warns about (or with ``strict`` raises on) each skipped file, prepares
    the TFDS ``array_record`` data once per folder fingerprint and settings (a second call with
    the same folder and settings decodes nothing) and opens it with ``as_data_source()``.
    """
    from flaxray.data import builder as builder_lib  # imports tensorflow_datasets: only for folders

    _check_args(image_size, channels, 0.5, 0)
    image_size, channels = operator.index(image_size), int(channels)
    scan = scan_folder(path)
    root = scan.root
    if strict and scan.stray:
        s = scan.stray[0]
        raise FlaxrayError(f"unreadable file {root / s['file']}: {s['reason']} (strict=True)")

    fp = _fingerprint(scan, image_size=image_size, channels=channels,
                      builder_version=builder_lib.BUILDER_VERSION, decoder=builder_lib.DECODER_VERSION)
    cache_root = _cache_root(cache_dir)
    _check_cache(cache_root / "tfds")
    data_dir = cache_root / "tfds" / fp
    meta_path = data_dir / PREPARED_JSON

    def make_builder():
        return builder_lib.FlaxrayChestXray(image_size=image_size, channels=channels, scan=scan, strict=strict,
                                            data_dir=os.fspath(data_dir), file_format="array_record")

    with _quiet_tfds(), _file_lock(cache_root / "tfds" / f"{fp}.lock"):
        meta = _read_meta(meta_path, scan.splits) if meta_path.is_file() else None
        builder = make_builder()
        sources = None
        if meta is not None and (Path(builder.data_dir) / "dataset_info.json").is_file():
            try:
                sources = builder.as_data_source()
            except Exception:  # noqa: BLE001 - unreadable cache: prepare it again
                sources = None
            if sources is not None and not _sources_match(sources, meta):
                sources = None
        if sources is None:
            meta_path.unlink(missing_ok=True)
            if Path(builder.data_dir).exists():  # a half-written or stale earlier attempt
                shutil.rmtree(builder.data_dir)
                builder = make_builder()
            meta = _prepare(builder, root, len(scan.images), progress)
            tmp = meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta, indent=1), "utf-8")
            os.replace(tmp, meta_path)
            sources = builder.as_data_source()

    decode_skips = list(meta.get("unreadable_skipped", []))
    if strict and decode_skips:  # cache hit of a folder prepared earlier without strict
        s = decode_skips[0]
        raise FlaxrayError(f"unreadable image {root / s['file']}: {s['reason']} (strict=True)")
    skipped = sorted([*scan.stray, *decode_skips], key=lambda s: s["file"])
    for s in skipped:
        warnings.warn(f"skipped {s['file']} in {root}: {s['reason']}", DataWarning, stacklevel=3)

    present = [s for s in SPLITS if s in scan.splits]
    files, src_of, key_of = [], [], []
    for si, split in enumerate(present):
        for k, rel in enumerate(meta["examples"][split]):
            files.append(rel)
            src_of.append(si)
            key_of.append(k)
    files_arr = np.array(files, dtype=str) if files else np.zeros(0, dtype=str)
    y = np.array([CLASSES.index(f.split("/")[1]) for f in files], dtype=np.int32)
    reader = _CacheReader([sources[s] for s in present], np.array(src_of, np.int64), np.array(key_of, np.int64),
                          files_arr, (image_size, image_size, channels), data_dir)
    return Pool(y=y, files=files_arr, read=reader, source=str(root), fingerprint=fp, image_size=image_size,
                channels=channels, duplicates_dropped=list(meta.get("duplicates_dropped", [])),
                unreadable_skipped=skipped, path=str(root))


def read_folder(path, *, image_size: int = FOLDER_IMAGE_SIZE, channels: int = 3, strict: bool = False,
                cache_dir=None, progress: bool = True) -> tuple[Pool, np.ndarray]:
    """Every kept image of a Kaggle-layout folder (all official splits): the :class:`Pool` and its
    pixels (N, H, W, C), in file order within each official split. See :func:`open_folder`."""
    pool = open_folder(path, image_size=image_size, channels=channels, strict=strict, cache_dir=cache_dir,
                       progress=progress)
    return pool, pool.read(np.arange(len(pool.y)))


def _prepare(builder, root: Path, n_images: int, progress: bool) -> dict:
    import tensorflow_datasets as tfds
    from tqdm.auto import tqdm

    desc = f"flaxray: preparing {root.name} at {builder.image_size}x{builder.image_size}x{builder.channels}"
    with tqdm(total=n_images, desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as pbar:
        builder._pbar = pbar
        try:
            with warnings.catch_warnings():
                # PIL's own warnings about odd files ("Possibly corrupt EXIF", "Truncated File Read")
                # are noise here: a file either decodes fully or is skipped with a DataWarning.
                # Set in this thread, the filter covers the decoding threads too.
                warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
                builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                    manual_dir=os.fspath(root), try_download_gcs=False))
        except FlaxrayError as e:
            raise FlaxrayError(str(e)) from None
        finally:
            builder._pbar = None
    return {
        "format": _PREPARED_FORMAT,
        "builder_version": str(builder.version),
        "image_size": builder.image_size,
        "channels": builder.channels,
        "source": str(root),
        "duplicates_dropped": builder.duplicates,
        "unreadable_skipped": builder.unreadable,
        "examples": builder.examples,
    }


# --------------------------------------------------------------------------------- embedded default

def _default_resource():
    import importlib.resources

    return importlib.resources.files("flaxray.data.default") / DEFAULT_FILE


def read_default(channels: int = 1) -> Pool:
    """The embedded 28x28 default as a :class:`Pool` (gray repeated when channels=3)."""
    res = _default_resource()
    try:
        blob = res.read_bytes()
    except (FileNotFoundError, OSError):
        raise FlaxrayError(f"the embedded default data {DEFAULT_FILE} is missing from flaxray/data/default/ "
                           "(rebuild it with scripts/build_default_data.py, or pass a folder)") from None
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        x, y, files = z["x"], z["y"].astype(np.int32), z["files"].astype(str)
        meta = json.loads(str(z["meta"]))
    if x.ndim == 4:
        x = x[..., 0]

    def read(idx) -> np.ndarray:
        g = x[np.asarray(idx, np.int64)][..., None]
        return np.ascontiguousarray(np.repeat(g, 3, axis=-1)) if channels == 3 else g

    return Pool(
        y=y, files=files, read=read,
        source=(f"embedded default flaxray/data/default/{DEFAULT_FILE} ({x.shape[1]}x{x.shape[2]} grayscale from the "
                "Kaggle chest_xray data set, Kermany et al., Cell 2018, CC BY 4.0)"),
        fingerprint=hashlib.sha256(blob).hexdigest()[:16], image_size=int(x.shape[1]), channels=channels,
        duplicates_dropped=list(meta.get("duplicates_dropped", [])),
        unreadable_skipped=list(meta.get("unreadable_skipped", [])),
        extra={"source_fingerprint": meta.get("source_fingerprint")},
    )


# ------------------------------------------------------------------------------------- assembly

def _empty_split(shape_hw_c) -> Split:
    return Split(np.zeros((0, *shape_hw_c), np.uint8), np.zeros(0, np.int32),
                 np.zeros(0, dtype=str), np.zeros(0, dtype=str))


def _split_summary(s: Split) -> dict:
    n = len(s.y)
    n_pos = int((s.y == 1).sum())
    return {
        "n": n,
        "per_class": {CLASSES[0]: n - n_pos, CLASSES[1]: n_pos},
        "n_patients": int(len(np.unique(s.patients))),
        "fraction_pneumonia": (n_pos / n) if n else None,
    }


def _assemble(arr: Pool, val_fraction: float, split_seed: int) -> Dataset:
    files = arr.files
    names = [f.rsplit("/", 1)[-1] for f in files]
    pid = [patient_id(n) for n in names]
    patients = np.array([p for p, _ in pid], dtype=str) if pid else np.zeros(0, dtype=str)
    n_unmatched = sum(1 for _, ok in pid if not ok)
    official = np.array([f.split("/", 1)[0] for f in files], dtype=str) if len(files) else np.zeros(0, dtype=str)

    pool = np.flatnonzero(official != "test")
    test_idx = np.flatnonzero(official == "test")
    if len(pool) == 0:
        raise FlaxrayError(f"no readable images in train/ (or val/) of {arr.source}")
    tr, va = patient_split(files[pool], arr.y[pool], patients[pool], val_fraction, split_seed)

    def take(idx) -> Split:
        if len(idx) == 0:
            return _empty_split((arr.image_size, arr.image_size, arr.channels))
        return Split(arr.read(idx), arr.y[idx].astype(np.int32), files[idx], patients[idx])

    train, val, test = take(pool[tr]), take(pool[va]), take(test_idx)
    official_counts = {}
    for s in SPLITS:
        m = official == s
        if m.any() or s == "train":
            n_pos = int((arr.y[m] == 1).sum())
            official_counts[s] = {CLASSES[0]: int(m.sum()) - n_pos, CLASSES[1]: n_pos}
    summary = {
        "source": arr.source,
        "path": arr.path,  # what `load_dataset` takes to load these images again (None: the default)
        "image_size": arr.image_size,
        "channels": arr.channels,
        "fingerprint": arr.fingerprint,
        "train": _split_summary(train),
        "val": _split_summary(val),
        "test": _split_summary(test),
        "official_splits": official_counts,
        "official_val_merged": int((official == "val").sum()),
        "val_fraction": float(val_fraction),
        "split_seed": int(split_seed),
        "duplicates_dropped": [dict(d) for d in arr.duplicates_dropped],
        "unreadable_skipped": [dict(d) for d in arr.unreadable_skipped],
        "patients_without_pattern": int(n_unmatched),
        "test_patients_also_in_train_or_val": int(len(np.intersect1d(patients[test_idx], patients[pool]))),
        **arr.extra,
    }
    return Dataset(train=train, val=val, test=test, summary=summary)


def load_dataset(path: str | os.PathLike | None = None, *, image_size: int | None = None, channels: int = 3,
                 val_fraction: float = 0.2, split_seed: int = 0, strict: bool = False,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Dataset:
    """Load chest X-rays as numpy arrays split into train / val / test.

    Args:
      path: a folder laid out as ``{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` (``train/``
        required), or ``None`` for the embedded 28x28 grayscale default (no TFDS involved).
      image_size: square size; ``None`` means 28 for the default (the only size it has) and 180 for
        a folder. Images are resized with PIL BILINEAR, aspect ratio not kept (like Keras
        ``image_dataset_from_directory``), after ``exif_transpose`` and conversion to 8-bit.
      channels: 1 (grayscale ``"L"``) or 3 (``"RGB"``; the default's gray is repeated).
      val_fraction: fraction of each class's images of official train+val taken for validation,
        by patient (no patient on both sides). Official val is merged into the pool first.
      split_seed: seed of the patient split (deterministic).
      strict: raise :class:`FlaxrayError` on the first unreadable file instead of skipping it with
        a :class:`DataWarning`.
      cache_dir: where the prepared TFDS data lives; default ``$FLAXRAY_CACHE`` or
        ``~/.cache/flaxray``. Keyed by a fingerprint of the folder (paths, sizes, mtimes) and the
        settings, so a second load of the same folder does not decode anything.
      progress: show a tqdm bar while preparing.

    Byte-identical files are dropped keeping one copy (preferring test, then val, then train).
    ``summary`` (JSON-serialisable) reports counts per split, what was dropped and skipped.
    """
    _check_args(image_size, channels, val_fraction, split_seed)
    channels = int(channels)
    if path is None:
        if image_size is not None and operator.index(image_size) != DEFAULT_IMAGE_SIZE:
            raise FlaxrayError(
                f"the embedded default data is {DEFAULT_IMAGE_SIZE}x{DEFAULT_IMAGE_SIZE} only; for "
                f"image_size={image_size} pass a folder, e.g. load_dataset('path/to/chest_xray', image_size={image_size})")
        arr = read_default(channels)
    else:
        arr = open_folder(path, image_size=FOLDER_IMAGE_SIZE if image_size is None else image_size,
                          channels=channels, strict=strict, cache_dir=cache_dir, progress=progress)
    return _assemble(arr, val_fraction, operator.index(split_seed))
