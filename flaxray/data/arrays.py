"""Numpy arrays as a data source: :func:`from_arrays`, an ``.npz`` file, and the checks both share.

Whatever the arrays come from (the caller, an ``.npz``, a TFDS data set), they pass the same checks
here and leave as one :class:`~flaxray.data.core.Pool`, so a bad input fails the same way, with a
one-line :class:`FlaxrayError`, before anything trains:

- images uint8, ``(N, H, W)`` (one channel) or ``(N, H, W, C)`` with C 1 or 3, no NaN; one shape
  for every image of every split (a list of differently sized images is resized when
  ``image_size`` is given);
- labels integers in ``[0, C)`` of the class list, one per image; two or more classes, and two or
  more of them present in train(+val);
- ``groups`` (patients), one per image of train (+val), for a leak-free split.

Images are kept exactly as given unless ``channels`` or ``image_size`` asks otherwise; then they
are converted like the folder path does: grey -> RGB by repeating, RGB -> grey with PIL's
``convert("L")`` luma (ITU-R 601-2), and resized with PIL BILINEAR to a square, aspect ratio not
kept (see :func:`flaxray.data.decode.load_image`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from flaxray.data.core import Pool
from flaxray.data.folder import SPLITS
from flaxray.errors import FlaxrayError

# The keys an .npz may hold; x_train and y_train are required, every other one is optional.
NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "groups_train", "groups_val", "class_names")


def _pixels(a: np.ndarray, name: str) -> None:
    if a.dtype == object:
        raise FlaxrayError(f"{name} holds Python objects, not uint8 pixels (images of different shapes? "
                           "pass them as a list with image_size= to resize them)")
    if np.issubdtype(a.dtype, np.inexact) and np.isnan(a).any():
        raise FlaxrayError(f"{name} has NaN pixels: images must be uint8 0..255")
    if a.dtype != np.uint8:
        raise FlaxrayError(f"{name} is {a.dtype}, not uint8: images must be uint8 0..255 "
                           "(e.g. (x * 255).round().astype(np.uint8) for floats in 0..1)")


def _with_channel_axis(a: np.ndarray, name: str, batch: bool) -> np.ndarray:
    rank = 3 if batch else 2
    if a.ndim == rank:
        return a[..., None]
    if a.ndim != rank + 1 or a.shape[-1] not in (1, 3):
        want = "(N, H, W) or (N, H, W, C)" if batch else "(H, W) or (H, W, C)"
        raise FlaxrayError(f"{name} must be {want} with C 1 or 3, got shape {tuple(a.shape)}")
    return a


def _to_gray(a: np.ndarray) -> np.ndarray:
    """RGB -> L exactly as PIL's ``convert("L")`` computes it (integer ITU-R 601-2 luma)."""
    a = a.astype(np.uint32)
    return ((a[..., 0] * 19595 + a[..., 1] * 38470 + a[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]


def convert(x: np.ndarray, image_size: int | None, channels: int | None) -> np.ndarray:
    """(N, H, W, C) uint8 -> ``channels`` channels (None: as given) and ``image_size`` squares
    (None: as given), channels first, then PIL BILINEAR, as a folder's images are decoded."""
    if channels is not None and channels != x.shape[-1]:
        x = np.repeat(x, 3, axis=-1) if channels == 3 else _to_gray(x)
    if image_size is not None and x.shape[1:3] != (image_size, image_size):
        out = np.empty((len(x), image_size, image_size, x.shape[-1]), np.uint8)
        for i, img in enumerate(x):
            pil = Image.fromarray(img[..., 0], "L") if img.shape[-1] == 1 else Image.fromarray(img, "RGB")
            r = np.asarray(pil.resize((image_size, image_size), Image.Resampling.BILINEAR), np.uint8)
            out[i] = r[..., None] if r.ndim == 2 else r
        x = out
    return np.ascontiguousarray(x)


def images(x, name: str, image_size: int | None = None, channels: int | None = None) -> np.ndarray:
    """One split's images, checked and converted: an array (N, H, W[, C]) or a list of (H, W[, C])."""
    if isinstance(x, (list, tuple)):
        items = []
        for i, a in enumerate(x):
            a = np.asarray(a)
            _pixels(a, f"{name}[{i}]")
            items.append(_with_channel_axis(a, f"{name}[{i}]", batch=False))
        shapes = sorted({a.shape for a in items})
        if len(shapes) > 1 and image_size is None:
            raise FlaxrayError(f"{name}: images of different shapes ({shapes[0]} and {shapes[1]}); pass image_size= "
                               "to resize them to one square size")
        if len(shapes) > 1:
            return np.concatenate([convert(a[None], image_size, channels) for a in items])
        x = np.stack(items) if items else np.zeros((0, 1, 1, 1), np.uint8)
    else:
        x = np.asarray(x)
        _pixels(x, name)
        x = _with_channel_axis(x, name, batch=True)
    return convert(x, image_size, channels)


def labels(y, name: str, n: int, x_name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise FlaxrayError(f"{name} must be one label per image (shape (N,)), got shape {tuple(y.shape)}")
    if len(y) != n:
        raise FlaxrayError(f"mismatched lengths: {x_name} has {n} images but {name} has {len(y)} labels")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise FlaxrayError(f"{name} must hold integer class indices, got {y.dtype}")
    return y.astype(np.int64)


def _class_names(class_names, ys: dict) -> tuple[str, ...]:
    if class_names is None:
        top = max((int(y.max()) for y in ys.values() if len(y)), default=0)
        names = tuple(str(k) for k in range(top + 1))
    else:
        if isinstance(class_names, (str, bytes)):
            raise FlaxrayError(f"class_names must be a list of names, got the string {class_names!r}")
        names = tuple(str(c) for c in np.asarray(class_names).reshape(-1).tolist())
        if len(set(names)) != len(names) or not all(names):
            raise FlaxrayError(f"class_names must be distinct non-empty names, got {list(names)}")
    if len(names) < 2:
        raise FlaxrayError(f"one class only ({', '.join(names) or 'none'}): a classifier needs two or more classes")
    for split, y in ys.items():
        bad = y[(y < 0) | (y >= len(names))]
        if len(bad):
            raise FlaxrayError(f"y_{split} has label {int(bad[0])} outside the class list "
                               f"({len(names)} classes: {', '.join(names)})")
    return names


def pool_from_arrays(splits: dict, *, groups=None, class_names=None, image_size=None, channels=None,
                     keep_val: bool = False, source: str = "arrays", path: str | None = None,
                     extra: dict | None = None) -> Pool:
    """A :class:`Pool` of ``{"train": (x, y), "val": (x, y), "test": (x, y)}`` (val, test optional).

    ``groups``: per image of train, or of train followed by val; images without one are each
    their own group. ``keep_val``: the val given is the val split (else it is merged into train
    and val is carved by group)."""
    xs, ys = {}, {}
    for split in SPLITS:
        if split in splits and splits[split] is not None:
            x, y = splits[split]
            xs[split] = images(x, f"x_{split}", image_size, channels)
            ys[split] = labels(y, f"y_{split}", len(xs[split]), f"x_{split}")
    shapes = [(s, x.shape[1:]) for s, x in xs.items() if len(x)]
    for s, shape in shapes[1:]:
        if shape != shapes[0][1]:
            raise FlaxrayError(f"images of different shapes: x_{shapes[0][0]} is {shapes[0][1]}, x_{s} {shape} "
                               "(pass image_size= to resize them)")
    names = _class_names(class_names, ys)
    pool_y = np.concatenate([ys[s] for s in ("train", "val") if s in ys])
    if len(np.unique(pool_y)) < 2:
        only = names[int(pool_y[0])] if len(pool_y) else "none"
        raise FlaxrayError(f"y_train{'+y_val' if 'val' in ys else ''} holds one class only ({only}): "
                           "a classifier needs two or more classes to learn from")

    files, official = [], []
    for s, y in ys.items():
        files += [f"{s}/{names[int(c)]}/{i}" for i, c in enumerate(y)]
        official += [s] * len(y)
    files = np.array(files, dtype=str)
    group_ids = files.copy()  # each image its own group unless given
    n_pool = len(pool_y)
    n_train = len(ys["train"])
    if groups is not None:
        g = np.asarray(groups).reshape(-1).astype(str)
        if len(g) not in (n_train, n_pool):
            also = f" or x_train+x_val {n_pool}" if n_pool != n_train else ""
            raise FlaxrayError(f"mismatched lengths: groups has {len(g)} ids but x_train has {n_train} images{also}")
        group_ids[:len(g)] = g
    n_ungrouped = n_pool if groups is None else n_pool - len(np.asarray(groups).reshape(-1))

    x = np.concatenate([xs[s] for s in xs])
    y = np.concatenate([ys[s] for s in ys]).astype(np.int32)
    h = hashlib.sha256()
    for part in (x, y, np.array(official), group_ids, np.array(names)):
        h.update(str(part.shape).encode())
        h.update(part.tobytes())
    hh, ww, cc = x.shape[1:]
    return Pool(y=y, files=files, read=lambda idx: x[np.asarray(idx, np.int64)], source=source,
                fingerprint=h.hexdigest()[:16], image_size=int(hh) if hh == ww else [int(hh), int(ww)],
                channels=int(cc), duplicates_dropped=[], unreadable_skipped=[], extra=dict(extra or {}),
                path=path, class_names=names, groups=group_ids, n_ungrouped=int(n_ungrouped),
                official=np.array(official, dtype=str), keep_val=keep_val, shape=(int(hh), int(ww), int(cc)))


def read_npz(path, *, image_size: int | None = None, channels: int | None = None) -> Pool:
    """An ``.npz`` as a :class:`Pool`. Keys (see :data:`NPZ_KEYS`): ``x_train``, ``y_train``
    (required); ``x_val``/``y_val`` and ``x_test``/``y_test`` (optional pairs; a given val is used
    as the val split); ``groups_train`` (and ``groups_val``): a group id per image; ``class_names``.
    Any other key is an error (a typo would otherwise be ignored). Read with ``allow_pickle=False``."""
    p = Path(path).expanduser().absolute()
    if not p.is_file():
        raise FlaxrayError(f"npz file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.files)
            unknown = [k for k in keys if k not in NPZ_KEYS]
            if unknown:
                raise FlaxrayError(f"{p}: unexpected key {unknown[0]!r} (keys: {', '.join(NPZ_KEYS)}; "
                                   "x_train and y_train required)")
            data = {k: z[k] for k in keys}
    except FlaxrayError:
        raise
    except Exception as e:  # noqa: BLE001 - not a zip, pickled object arrays, ...
        raise FlaxrayError(f"cannot read {p} as an .npz of arrays: {' '.join(str(e).split())}") from None
    for x_key, y_key in (("x_train", "y_train"), ("x_val", "y_val"), ("x_test", "y_test")):
        if (x_key in data) != (y_key in data) or (x_key == "x_train" and x_key not in data):
            missing = y_key if x_key in data else x_key
            raise FlaxrayError(f"{p}: no {missing!r} key ({x_key} and {y_key} go together; x_train and y_train "
                               "are required)")
    splits = {s: (data[f"x_{s}"], data[f"y_{s}"]) for s in SPLITS if f"x_{s}" in data}
    groups = None
    if "groups_train" in data or "groups_val" in data:
        parts = []
        for s in ("train", "val"):
            n = len(data[f"x_{s}"]) if f"x_{s}" in data else 0
            g = data.get(f"groups_{s}")
            if g is not None and len(g) != n:
                raise FlaxrayError(f"{p}: mismatched lengths: groups_{s} has {len(g)} ids but x_{s} has {n} images")
            parts.append(np.array([f"{s}/{i}" for i in range(n)]) if g is None else g.astype(str))
        groups = np.concatenate(parts)
    try:
        return pool_from_arrays(splits, groups=groups, class_names=data.get("class_names"), image_size=image_size,
                                channels=channels, keep_val="val" in splits, source=str(p), path=str(p),
                                extra={"val_given": "val" in splits})
    except FlaxrayError as e:
        raise FlaxrayError(f"{p}: {e}") from None
