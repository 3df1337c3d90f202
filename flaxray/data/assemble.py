"""One assembly for every source: a :class:`~flaxray.data.core.Pool` -> train / val / test + summary.

Validation is carved out of official train+val by group (patient), class-stratified
(:func:`flaxray.data.split.patient_split`); test is the official test split. A pool with
``keep_val`` (arrays given with an explicit ``x_val``) keeps its val as given instead. For the
Kaggle folder and the embedded default the arithmetic and every summary value are today's; the
summary only gains ``class_names``.
"""

from __future__ import annotations

import numpy as np

from flaxray.data.core import Dataset, Pool, Split
from flaxray.data.folder import CLASSES, SPLITS, patient_id
from flaxray.data.split import patient_split
from flaxray.errors import FlaxrayError


def _empty_split(shape_hw_c, class_names) -> Split:
    return Split(np.zeros((0, *shape_hw_c), np.uint8), np.zeros(0, np.int32),
                 np.zeros(0, dtype=str), np.zeros(0, dtype=str), tuple(class_names))


def _per_class(y: np.ndarray, class_names) -> dict:
    counts = np.bincount(np.asarray(y, np.int64), minlength=len(class_names))
    return {c: int(n) for c, n in zip(class_names, counts)}


def _split_summary(s: Split, class_names) -> dict:
    n = len(s.y)
    out = {"n": n, "per_class": _per_class(s.y, class_names), "n_patients": int(len(np.unique(s.patients)))}
    if tuple(class_names) == CLASSES:  # the chest data's key, kept as it was
        out["fraction_pneumonia"] = (int((s.y == 1).sum()) / n) if n else None
    return out


def _patients(arr: Pool) -> tuple[np.ndarray, int]:
    if arr.groups is not None:
        return np.asarray(arr.groups).astype(str), int(arr.n_ungrouped)
    pid = [patient_id(f.rsplit("/", 1)[-1]) for f in arr.files]
    patients = np.array([p for p, _ in pid], dtype=str) if pid else np.zeros(0, dtype=str)
    return patients, sum(1 for _, ok in pid if not ok)


def assemble(arr: Pool, val_fraction: float, split_seed: int) -> Dataset:
    """The :class:`Dataset` of a pool: the group split, the three arrays and the summary."""
    files = arr.files
    class_names = tuple(arr.class_names)
    patients, n_unmatched = _patients(arr)
    if arr.official is not None:
        official = np.asarray(arr.official).astype(str)
    else:
        official = (np.array([f.split("/", 1)[0] for f in files], dtype=str) if len(files)
                    else np.zeros(0, dtype=str))

    pool = np.flatnonzero(official != "test")
    test_idx = np.flatnonzero(official == "test")
    if len(pool) == 0:
        raise FlaxrayError(f"no readable images in train/ (or val/) of {arr.source}")
    if arr.keep_val:
        tr_idx, va_idx = np.flatnonzero(official == "train"), np.flatnonzero(official == "val")
    else:
        tr, va = patient_split(files[pool], arr.y[pool], patients[pool], val_fraction, split_seed,
                               num_classes=len(class_names))
        tr_idx, va_idx = pool[tr], pool[va]
    shape = arr.shape or (arr.image_size, arr.image_size, arr.channels)

    def take(idx) -> Split:
        if len(idx) == 0:
            return _empty_split(shape, class_names)
        return Split(arr.read(idx), arr.y[idx].astype(np.int32), files[idx], patients[idx], class_names)

    train, val, test = take(tr_idx), take(va_idx), take(test_idx)
    official_counts = {}
    for s in SPLITS:
        m = official == s
        if m.any() or s == "train":
            official_counts[s] = _per_class(arr.y[m], class_names)
    summary = {
        "source": arr.source,
        "path": arr.path,  # what `load_dataset` takes to load these images again (None: the default, arrays)
        "image_size": arr.image_size,
        "channels": arr.channels,
        "fingerprint": arr.fingerprint,
        "train": _split_summary(train, class_names),
        "val": _split_summary(val, class_names),
        "test": _split_summary(test, class_names),
        "official_splits": official_counts,
        "official_val_merged": 0 if arr.keep_val else int((official == "val").sum()),
        "val_fraction": float(val_fraction),
        "split_seed": int(split_seed),
        "duplicates_dropped": [dict(d) for d in arr.duplicates_dropped],
        "unreadable_skipped": [dict(d) for d in arr.unreadable_skipped],
        "patients_without_pattern": int(n_unmatched),
        "test_patients_also_in_train_or_val": int(len(np.intersect1d(patients[test_idx], patients[pool]))),
        "class_names": list(class_names),
        **arr.extra,
    }
    return Dataset(train=train, val=val, test=test, summary=summary, class_names=class_names)
