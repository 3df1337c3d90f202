"""Patient-level, class-stratified train/validation split (plain numpy, deterministic in the seed).

Several images can belong to one patient, so a per-image random split leaks patients into
validation and flatters the validation curves. :func:`patient_split` puts every patient wholly on
one side and takes about ``val_fraction`` of each class's images for validation.
"""

from __future__ import annotations

import numpy as np

from flaxray.errors import FlaxrayError


def patient_split(files, labels, patients, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a pool of images into ``(train_idx, val_idx)``, index arrays into the inputs.

    - No patient has images on both sides.
    - Stratified by class: each patient belongs to the class of most of its images (ties go to
      PNEUMONIA; in the Kaggle data every patient has one class), and for each class, patients are
      shuffled with ``np.random.default_rng(seed)`` and taken greedily into validation while that
      brings the class's validation image count closer to ``val_fraction`` of its images.
    - A class with at least two patients always has at least one patient on each side.
    - Deterministic: the same ``seed`` and the same set of (label, patient) pairs give the same
      split whatever the input order; both index arrays are sorted ascending.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    patients = np.asarray(patients).astype(str).reshape(-1)
    n = len(labels)
    if len(np.asarray(files).reshape(-1)) != n or len(patients) != n:
        raise ValueError(f"files, labels and patients must have one length; got {len(files)}, {n}, {len(patients)}")
    if not (0.0 < float(val_fraction) < 1.0):
        raise FlaxrayError(f"val_fraction must be strictly between 0 and 1, got {val_fraction!r}")
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if labels.min() < 0 or labels.max() > 1:
        raise ValueError("labels must be 0 (NORMAL) or 1 (PNEUMONIA)")

    uniq, inv = np.unique(patients, return_inverse=True)  # sorted ids: input order does not matter
    counts = np.zeros((len(uniq), 2), np.int64)
    np.add.at(counts, (inv, labels), 1)
    patient_class = (counts[:, 1] >= counts[:, 0]).astype(np.int64)
    sizes = counts.sum(axis=1)

    rng = np.random.default_rng(seed)
    in_val = np.zeros(len(uniq), bool)
    for c in (0, 1):
        members = np.flatnonzero(patient_class == c)
        if len(members) == 0:
            continue
        order = members[rng.permutation(len(members))]
        target = float(val_fraction) * sizes[members].sum()
        taken = 0
        chosen = []
        for p in order:
            if taken + sizes[p] / 2 < target:  # taking p gets closer to the target
                chosen.append(p)
                taken += sizes[p]
        if len(members) >= 2:
            if not chosen:
                chosen = [order[0]]
            elif len(chosen) == len(members):
                chosen = chosen[:-1]
        in_val[chosen] = True

    image_in_val = in_val[inv]
    return np.flatnonzero(~image_in_val), np.flatnonzero(image_in_val)
