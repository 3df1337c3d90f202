"""Each seed's own train/val split (`--vary split`): the fixed split's draw, reseeded per seed.

    pool = Resample.of(dataset)           # official train+val as one pool, in the order of the image ids
    train, val = pool.draw(seed)          # indices into the pool: the same seed, the same split, always
    x = images(dataset)                   # the pool's images, in the same order

Bouthillier et al. (MLSys 2021) find the sampling of the data among the largest sources of variance
in a benchmark, and flaxray's fixed split is the same for every seed. With `split` in --vary, each
seed draws its split of official train+val with `flaxray.data.split.patient_split` itself (every
patient wholly on one side; about `val_fraction` of each class, a patient counting in its majority
class) from a generator of its own seed and the source's number (`flaxray.core.randomness.number`).

Equal sizes, not masked steps: whole patients go to one side, so two draws' sides differ by up to a
patient's images per class. Every draw is trimmed to the sizes every draw can meet (`bounds`: from
the greedy's own bounds, a function of the pool alone, not of which seeds a study holds, so a seed
added later or replayed alone draws the same), dropping a seeded choice of each side's images. Every
lane then has the same train and val sizes, the same steps an epoch (so one program shape and a plain
vmap, a schedule's steps the same for every seed); the cost is a few images per class and side, no
more than about the largest patient's. Each lane's val metrics are on its own val set, so the spread
between seeds includes the sampling of the val set too, as a different split does; the test set
stays the official one for every seed, the common yardstick.

Data whose val is given as it is (an .npz or arrays with x_val) can only be resampled by groups that
it carries for train and val; without them no seed can draw another split that keeps its patients
apart, and `of` says so in one line.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import jax
import numpy as np

from flaxray.core.randomness import SPLIT, number
from flaxray.data.split import patient_split
from flaxray.errors import FlaxrayError


@dataclasses.dataclass(frozen=True, eq=False)
class Resample:
    """Official train+val as one pool (`labels`, `groups`, sorted by image id), the val fraction to draw,
    and (`epoch_images`) how many of a lane's training images an epoch trains: None, all of them; fewer
    only in a strategy probe's short epochs. Static in a jitted program's data (`DeviceData.resample`):
    it gives the program its sizes, and equal pools give equal programs."""

    labels: np.ndarray
    groups: np.ndarray
    val_fraction: float
    num_classes: int
    epoch_images: int | None = None

    @classmethod
    def of(cls, dataset) -> "Resample":
        """The pool of a `flaxray.data.Dataset`, refused in one line where its val was given and no groups are."""
        summary = getattr(dataset, "summary", None)
        if summary is None:
            raise FlaxrayError("--vary split: the data holds no patients to resample its split by; load it with "
                               "flaxray.data.load_dataset or from_arrays")
        if summary.get("val_given") and summary.get("patients_without_pattern", 0):
            raise FlaxrayError("--vary split: this data brings its own val split (x_val) and no groups (patients) for "
                               "all of train and val, so a seed cannot draw another split that keeps patients apart; "
                               "give groups for x_train and x_val, or leave x_val out (val is then carved by group)")
        order = _order(dataset)
        labels = np.concatenate([dataset.train.y, dataset.val.y]).astype(np.int64)[order]
        groups = np.concatenate([dataset.train.patients, dataset.val.patients]).astype(str)[order]
        n_val = len(dataset.val.y)
        # a val given as it is (with groups) is resampled at its own share of the pool
        fraction = n_val / len(labels) if summary.get("val_given") else float(summary["val_fraction"])
        return cls(labels, groups, fraction, len(dataset.class_names))

    @functools.cached_property
    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.labels, self.groups):
            h.update(part.tobytes())
        h.update(repr((self.val_fraction, self.num_classes)).encode())
        return h.hexdigest()[:16]

    def __eq__(self, other):
        return isinstance(other, Resample) and (self.digest, self.epoch_images) == (other.digest, other.epoch_images)

    def __hash__(self):
        return hash((self.digest, self.epoch_images))

    @functools.cached_property
    def _strata(self) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """Each image's stratum (its patient's class, as `patient_split` assigns it) and per stratum (images,
        least val images, most val images) over every possible draw."""
        uniq, inv = np.unique(self.groups, return_inverse=True)
        counts = np.zeros((len(uniq), self.num_classes), np.int64)
        np.add.at(counts, (inv, self.labels), 1)
        patient_class = self.num_classes - 1 - np.argmax(counts[:, ::-1], axis=1)
        sizes = counts.sum(axis=1)
        return patient_class[inv], [bounds(sizes[patient_class == c], self.val_fraction)
                                    for c in range(self.num_classes)]

    @property
    def sizes(self) -> tuple[int, int]:
        """(train, val) images of every lane's split."""
        strata = self._strata[1]
        return sum(n - most for n, _, most in strata), sum(least for _, least, _ in strata)

    @property
    def n_train(self) -> int:
        """Training images an epoch trains."""
        return self.sizes[0] if self.epoch_images is None else self.epoch_images

    def record(self) -> dict:
        """What study.json says of the lanes' splits: their sizes, and how each is drawn."""
        train, val = self.sizes
        return {"pool": len(self.labels), "train": train, "val": val, "val_fraction": self.val_fraction,
                "drawn": "per seed (the shared seed where split is not varied): patient_split of official train+val "
                         "from SeedSequence([number('split'), seed]), each side of each class trimmed to these sizes; "
                         "val metrics on each seed's own val set, test on the official test set"}

    def draw(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) indices into the pool, sorted, of `seed`'s split: `patient_split` from the seed's own
        generator, then each side of each stratum trimmed to `sizes` by a seeded choice."""
        grouped, trim = np.random.SeedSequence([int(number(SPLIT)), int(seed)]).spawn(2)
        train, val = patient_split(self.groups, self.labels, self.groups, self.val_fraction, grouped,
                                   num_classes=self.num_classes)
        stratum, strata = self._strata
        rng = np.random.default_rng(trim)
        keep = {"train": [], "val": []}
        for c, (n, least, most) in enumerate(strata):
            for side, idx, size in (("train", train, n - most), ("val", val, least)):
                members = idx[stratum[idx] == c]
                if len(members) < size:  # `bounds` is a proof; this says if it is ever wrong
                    raise FlaxrayError(f"--vary split: seed {seed}'s {side} side has {len(members)} images of class "
                                       f"{c}, fewer than the {size} every draw should have (a flaxray bug)")
                keep[side].append(rng.choice(members, size, replace=False))
        return tuple(np.sort(np.concatenate(keep[s])).astype(np.int32) for s in ("train", "val"))

    def lane(self, seed: int, eval_batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`draw(seed)` as a lane carries it: train indices, val indices zero-padded to whole eval batches,
        and the val mask (0 on the padding)."""
        train, val = self.draw(seed)
        pad = -len(val) % eval_batch_size
        return (train, np.concatenate([val, np.zeros(pad, np.int32)]),
                (np.arange(len(val) + pad) < len(val)).astype(np.float32))


jax.tree_util.register_static(Resample)


def _order(dataset) -> np.ndarray:
    """The pool's order: by image id, so a draw does not depend on which fixed split the data was loaded with."""
    return np.argsort(np.concatenate([dataset.train.files, dataset.val.files]).astype(str), kind="stable")


def images(dataset) -> np.ndarray:
    """The pool's images (official train+val), in `Resample.of`'s order."""
    return np.concatenate([dataset.train.x, dataset.val.x])[_order(dataset)]


def bounds(sizes: np.ndarray, val_fraction: float) -> tuple[int, int, int]:
    """(images, least, most) val images `patient_split` can take from one class of patients of `sizes`
    images each, over every order of the patients. Its greedy takes a patient while that brings the count
    nearer the target t = f n: the last taken left the count below t + s/2, the first refused found it at
    t - s/2 or more; a class whose patients all went to val gives its last one back (n - s), one with none
    takes its first (which was refused alone, so it is >= 2t). With s up to the largest patient m:
    least >= min(t - m/2, n - m) and >= 1, most <= max(t + m/2, m) and <= n - the smallest patient."""
    n = int(sizes.sum())
    if len(sizes) == 0:
        return 0, 0, 0
    target = float(val_fraction) * n
    if len(sizes) == 1:  # no order to vary: the one patient is in val or not
        val = n if n / 2 < target else 0
        return n, val, val
    big, small = int(sizes.max()), int(sizes.min())
    least = max(1, int(np.ceil(min(target - big / 2, n - big) - 1e-9)))  # the slack only ever loosens
    most = min(n - small, int(np.floor(max(target + big / 2, big) + 1e-9)))
    return n, least, most
