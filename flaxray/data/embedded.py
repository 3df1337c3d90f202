"""The embedded default: every image of the Kaggle chest X-ray set at 28x28 grey, shipped in the package.

Built by ``scripts/build_default_data.py`` (see ``flaxray/data/default/README.md``); read without
TensorFlow Datasets. Its file ids are the Kaggle ones, so the patients (and the patient split) are
those of the folder it was built from.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np

from flaxray.data.core import Pool
from flaxray.errors import FlaxrayError

DEFAULT_FILE = "chest_xray_28.npz"
DEFAULT_IMAGE_SIZE = 28


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

