"""A folder read through the TensorFlow Datasets cache: the Kaggle chest layout or any class folders.

The folder is scanned (:mod:`flaxray.data.folder`), decoded and resized once by a TFDS builder
(:mod:`flaxray.data.builder`) into ``array_record`` files under the cache, keyed by a fingerprint
of the folder and the settings, and read back with random access (no TensorFlow needed). A second
load of the same folder with the same settings decodes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import operator
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from flaxray.data.core import DataWarning, Pool, _check_args
from flaxray.data.decode import DECODER_VERSION
from flaxray.data.folder import SPLITS, group_id, scan_folder, fingerprint as _fingerprint
from flaxray.errors import FlaxrayError
from flaxray.results import cache_root

FOLDER_IMAGE_SIZE = 180
PREPARED_JSON = "flaxray_prepare.json"  # written beside the TFDS data once it is complete
_PREPARED_FORMAT = 1


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
                cache_dir=None, progress: bool = True, classes: tuple[str, ...] | None = None) -> Pool:
    """A folder as a :class:`Pool`, prepared through the TFDS cache if needed.

    ``classes=None`` is the Kaggle chest layout (today's behaviour: patients from the file names);
    a tuple (from :func:`flaxray.data.folder.folder_classes`) is ``{train,val,test}/{CLASS}/*``
    with those classes, each image its own group unless its name follows the Kaggle patient
    pattern. Validates the layout, warns about (or with ``strict`` raises on) each skipped file,
    prepares the TFDS ``array_record`` data once per folder fingerprint and settings (a second
    call with the same folder and settings decodes nothing) and opens it with ``as_data_source()``.
    """
    from flaxray.data import builder as builder_lib  # imports tensorflow_datasets: only for folders

    _check_args(image_size, channels, 0.5, 0)
    image_size, channels = operator.index(image_size), int(channels)
    scan = scan_folder(path, classes)
    kaggle = scan.kaggle
    root = scan.root
    if strict and scan.stray:
        s = scan.stray[0]
        raise FlaxrayError(f"unreadable file {root / s['file']}: {s['reason']} (strict=True)")

    settings = {} if kaggle else {"classes": scan.classes}  # the chest key is today's, so its caches stay valid
    fp = _fingerprint(scan, image_size=image_size, channels=channels,
                      builder_version=builder_lib.BUILDER_VERSION, decoder=DECODER_VERSION, **settings)
    root_dir = cache_root(cache_dir)
    _check_cache(root_dir / "tfds")
    data_dir = root_dir / "tfds" / fp
    meta_path = data_dir / PREPARED_JSON

    def make_builder():
        cls = builder_lib.FlaxrayChestXray if kaggle else builder_lib.FlaxrayImageFolder
        return cls(image_size=image_size, channels=channels, scan=scan, strict=strict,
                                            data_dir=os.fspath(data_dir), file_format="array_record")

    with _quiet_tfds(), _file_lock(root_dir / "tfds" / f"{fp}.lock"):
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
    y = np.array([scan.classes.index(f.split("/")[1]) for f in files], dtype=np.int32)
    reader = _CacheReader([sources[s] for s in present], np.array(src_of, np.int64), np.array(key_of, np.int64),
                          files_arr, (image_size, image_size, channels), data_dir)
    groups = None
    if not kaggle:  # the Kaggle layout keeps today's patients (stems when unmatched), set in assembly
        gid = [group_id(f) for f in files]
        groups = np.array([g for g, _ in gid], dtype=str) if gid else np.zeros(0, dtype=str)
    return Pool(y=y, files=files_arr, read=reader, source=str(root), fingerprint=fp, image_size=image_size,
                channels=channels, duplicates_dropped=list(meta.get("duplicates_dropped", [])),
                unreadable_skipped=skipped, path=str(root), class_names=scan.classes, groups=groups,
                n_ungrouped=0 if kaggle else sum(1 for _, ok in gid if not ok))


def read_folder(path, *, image_size: int = FOLDER_IMAGE_SIZE, channels: int = 3, strict: bool = False,
                cache_dir=None, progress: bool = True, classes: tuple[str, ...] | None = None
                ) -> tuple[Pool, np.ndarray]:
    """Every kept image of a folder (all official splits): the :class:`Pool` and its pixels
    (N, H, W, C), in file order within each official split. See :func:`open_folder`."""
    pool = open_folder(path, image_size=image_size, channels=channels, strict=strict, cache_dir=cache_dir,
                       progress=progress, classes=classes)
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

