"""Group-level (patient-level), class-stratified train/validation split (plain numpy, deterministic).

Several images can belong to one patient, so a per-image random split leaks patients into
validation and flatters the validation curves. :func:`patient_split` puts every patient (any
group: a patient, a subject, or each image on its own) wholly on one side and takes about
``val_fraction`` of each class's images for validation, for any number of classes.
"""

from __future__ import annotations

import numpy as np

from flaxray.errors import FlaxrayError


def patient_split(files, labels, patients, val_fraction: float, seed: int,
                  num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split a pool of images into ``(train_idx, val_idx)``, index arrays into the inputs.

    - No patient has images on both sides.
    - Stratified by class: each patient belongs to the class of most of its images (ties go to
      the highest label, PNEUMONIA for the chest data; in the Kaggle data every patient has one
      class), and for each class in label order, patients are
      shuffled with ``np.random.default_rng(seed)`` and taken greedily into validation while that
      brings the class's validation image count closer to ``val_fraction`` of its images.
    - A class with at least two patients always has at least one patient on each side.
    - Deterministic: the same ``seed`` and the same set of (label, patient) pairs give the same
      split whatever the input order; both index arrays are sorted ascending.
    - ``num_classes`` (default: the largest label + 1, at least 2): labels must lie in
      ``[0, num_classes)``. For two classes the arithmetic, and so the split, is exactly the one
      this function had when it only knew NORMAL/PNEUMONIA (the same seed gives the same indices).
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
    k = max(2, int(labels.max()) + 1) if num_classes is None else int(num_classes)
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must lie in [0, {k}) (0 = NORMAL, 1 = PNEUMONIA for the chest data)")

    uniq, inv = np.unique(patients, return_inverse=True)  # sorted ids: input order does not matter
    counts = np.zeros((len(uniq), k), np.int64)
    np.add.at(counts, (inv, labels), 1)
    # Majority class, ties to the highest label: for 2 classes this is today's counts[:, 1] >= counts[:, 0].
    patient_class = (k - 1 - np.argmax(counts[:, ::-1], axis=1)).astype(np.int64)
    sizes = counts.sum(axis=1)

    rng = np.random.default_rng(seed)
    in_val = np.zeros(len(uniq), bool)
    for c in range(k):  # one permutation per class, in label order: the binary draws are unchanged
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
