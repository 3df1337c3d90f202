"""Scan and validate an image folder (the Kaggle chest X-ray layout or any class folders); patient ids.

Two layouts, told apart by the class folder names (:func:`folder_classes`)::

    ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg     the Kaggle "chest_xray" layout
    ROOT/{train,val,test}/{CLASS}/*                      any two or more classes

``train/`` is required, ``val/`` and ``test/`` are optional. In the Kaggle layout every split that
is present must have both class folders (today's checks, unchanged); in the general one the
classes are the sub-folders of ``train/`` (sorted by name: label = index, as Keras
``image_dataset_from_directory`` does), and ``val/``/``test/`` may hold any of them. Everything
here is cheap: it lists directories and calls ``stat``, it never opens an image (decoding happens
in :mod:`flaxray.data.builder`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
from pathlib import Path

from flaxray.errors import FlaxrayError

SPLITS = ("train", "val", "test")
CLASSES = ("NORMAL", "PNEUMONIA")  # label = index: 0 = NORMAL, 1 = PNEUMONIA
# Extensions read as images (case-insensitive); anything else in a class folder is skipped.
IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
LAYOUT = "{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg"
GENERIC_LAYOUT = "{train,val,test}/{CLASS}/* with two or more classes"

# personNNN_bacteria_MMM / personNNN_virus_MMM (one file in the real data has an extra "_1":
# person447_virus_921_1, whose patient person447 also has other images, so the suffix is allowed).
_PERSON = re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+(?:_\d+)*$", re.IGNORECASE)
# IM-NNNN-MMMM, IM-NNNN-MMMM-KKKK, NORMAL2-IM-NNNN-MMMM(-KKKK)
_NORMAL_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+(?:-\d+)*$", re.IGNORECASE)


def patient_id(filename: str) -> tuple[str, bool]:
    """Patient of one image from its file name: ``(patient, matched_a_known_pattern)``.

    ``personNNN_bacteria_MMM.jpeg`` / ``personNNN_virus_MMM.jpeg`` -> ``personNNN``;
    ``IM-NNNN-MMMM[-KKKK].jpeg`` -> ``IM-NNNN``; ``NORMAL2-IM-NNNN-MMMM[-KKKK].jpeg`` ->
    ``NORMAL2-IM-NNNN``. Any other name is its own patient (its stem), with ``False``.
    """
    stem = Path(filename).stem
    for pattern in (_PERSON, _NORMAL_IM):
        m = pattern.match(stem)
        if m:
            return m.group(1), True
    return stem, False


def group_id(rel: str) -> tuple[str, bool]:
    """Group of one image of a general class folder: the Kaggle patient when the name follows its
    pattern, else the image on its own (its relative path, unique, so that two classes' "001.png"
    are not taken for one patient)."""
    pid, ok = patient_id(rel.rsplit("/", 1)[-1])
    return (pid, True) if ok else (rel, False)


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file found in a class folder."""

    rel: str  # POSIX path relative to the data root, e.g. "train/NORMAL/IM-0115-0001.jpeg"
    split: str  # official split: "train", "val" or "test"
    label: int  # 0 = NORMAL, 1 = PNEUMONIA
    size: int
    mtime_ns: int


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """What :func:`scan_folder` found: image candidates plus stray entries to skip."""

    root: Path  # absolute
    splits: tuple[str, ...]  # official splits present, in SPLITS order
    images: tuple[FileEntry, ...]  # files with an image extension, sorted by rel
    stray: tuple[dict, ...]  # [{"file": rel, "reason": ...}] non-image entries, sorted by file
    entries: tuple[FileEntry, ...]  # every entry (images + stray) for the fingerprint
    classes: tuple[str, ...] = CLASSES  # label = index
    kaggle: bool = True  # the NORMAL/PNEUMONIA layout (patients from file names, stems when unmatched)


def _fail(msg: str):
    raise FlaxrayError(msg)


def _nested_hint(root: Path) -> str:
    """' (did you mean ROOT/x?)' when a direct sub-folder has the layout (Kaggle zips nest it)."""
    try:
        subs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "train").is_dir())
    except OSError:
        return ""
    return f" (did you mean {subs[0]}?)" if subs else ""


def _root(path) -> Path:
    root = Path(path).expanduser()
    try:
        return root.resolve()
    except OSError:
        return root.absolute()


def _subdirs(d: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def folder_classes(path: str | os.PathLike) -> tuple[str, ...] | None:
    """``None`` for the Kaggle layout (every class folder of every split is NORMAL or PNEUMONIA, or
    there are none: today's checks then name what is missing), else the classes: the sorted
    sub-folders of ``train/`` (hidden ones ignored)."""
    root = _root(path)
    found = {c for split in SPLITS for c in _subdirs(root / split)}
    if not found or found <= set(CLASSES):
        return None
    return tuple(_subdirs(root / "train"))


def scan_folder(path: str | os.PathLike, classes: tuple[str, ...] | None = None) -> FolderScan:
    """List and validate a folder; raise a one-line FlaxrayError if it is wrong.

    ``classes=None`` is the Kaggle layout (NORMAL/PNEUMONIA in every split); a tuple of names is
    the general layout with those classes (from :func:`folder_classes`)."""
    kaggle = classes is None
    classes = CLASSES if kaggle else tuple(classes)
    layout = LAYOUT if kaggle else GENERIC_LAYOUT
    root = _root(path)
    if not root.exists():
        _fail(f"data folder not found: {root}")
    if not root.is_dir():
        _fail(f"data path is not a directory: {root}")
    if not (root / "train").exists():
        _fail(f"no train/ folder in {root}: expected the layout {LAYOUT}{_nested_hint(root)}")
    images: list[FileEntry] = []
    stray: list[dict] = []
    entries: list[FileEntry] = []
    present = []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.exists():
            continue
        if not split_dir.is_dir():
            _fail(f"{split_dir} is not a directory: expected the layout {layout}")
        present.append(split)
        if not kaggle:
            _check_generic(root, split, classes)
        for label, cls in enumerate(classes):
            cls_dir = split_dir / cls
            if not kaggle and split != "train" and not cls_dir.is_dir():
                continue  # val/ and test/ of a general folder may lack a class
            if not cls_dir.is_dir():
                _fail(f"missing class folder {cls_dir}: each split needs NORMAL/ and PNEUMONIA/ ({LAYOUT})")
            n_images = 0
            try:
                with os.scandir(cls_dir) as it:
                    dir_entries = sorted(it, key=lambda e: e.name)
            except OSError as err:
                _fail(f"cannot list {cls_dir}: {err.strerror or err}")
            for e in dir_entries:
                rel = f"{split}/{cls}/{e.name}"
                if not _utf8(e.name):  # TFDS keys, JSON and the cache key need text
                    shown = os.fsencode(e.name).decode("utf-8", "backslashreplace")
                    stray.append({"file": f"{split}/{cls}/{shown}", "reason": "file name is not valid UTF-8"})
                    continue
                try:
                    st = e.stat()
                except OSError as err:  # broken symbolic link, vanished file
                    stray.append({"file": rel, "reason": f"cannot stat ({err.strerror or err})"})
                    continue
                entry = FileEntry(rel, split, label, int(st.st_size), int(st.st_mtime_ns))
                entries.append(entry)
                if stat.S_ISDIR(st.st_mode):
                    stray.append({"file": rel, "reason": "a sub-folder (only files directly in a class folder are read)"})
                elif not stat.S_ISREG(st.st_mode):  # reading a FIFO or a device would block or never end
                    stray.append({"file": rel, "reason": "not a regular file"})
                elif Path(e.name).suffix.lower() not in IMAGE_EXTENSIONS:
                    ext = Path(e.name).suffix or "no extension"
                    stray.append({"file": rel, "reason": f"not an image file ({ext})"})
                else:
                    images.append(entry)
                    n_images += 1
            if n_images == 0:
                _fail(f"no images in {cls_dir}: expected *.jpeg files ({LAYOUT})" if kaggle
                      else f"no images in {cls_dir}: expected image files ({layout})")
    images.sort(key=lambda f: f.rel)
    stray.sort(key=lambda s: s["file"])
    entries.sort(key=lambda f: f.rel)
    return FolderScan(root, tuple(present), tuple(images), tuple(stray), tuple(entries), classes, kaggle)


def _check_generic(root: Path, split: str, classes: tuple[str, ...]) -> None:
    if split == "train":
        if len(classes) < 2:
            found = f"only {classes[0]}/" if classes else "no class folders"
            _fail(f"{root / 'train'} has {found}: a class-folder data set needs two or more classes "
                  f"({GENERIC_LAYOUT})")
        return
    extra = sorted(set(_subdirs(root / split)) - set(classes))
    if extra:
        _fail(f"class folder {root / split / extra[0]} is not a class of train/ (classes: {', '.join(classes)})")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as lone surrogates
        return False
    return True


def fingerprint(scan: FolderScan, **settings) -> str:
    """Hex key of the folder's contents (sorted relative paths, sizes, mtimes) and the settings.

    Only ``stat`` results are hashed, never file contents, so it costs milliseconds; touching or
    replacing any file in a class folder changes it.
    """
    h = hashlib.sha256()
    for key in sorted(settings):
        h.update(f"{key}={settings[key]!r}\n".encode())
    for e in scan.entries:
        h.update(f"{e.rel}\t{e.size}\t{e.mtime_ns}\n".encode())
    return h.hexdigest()[:16]
