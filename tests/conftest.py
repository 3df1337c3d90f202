"""Shared test data (data only, no test logic): tiny synthetic Kaggle-layout chest X-ray folders."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("KERAS_BACKEND", "jax")  # Keras (in [dev]) picks its backend once, at its first import

# A tiny folder in the Kaggle layout {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg with several
# multi-image patients, NORMAL2-/4-part names, a patient shared by official train and val, and one
# "personN_virus_M_1" name (as in the real data).
SYNTHETIC_LAYOUT: dict[str, dict[str, list[str]]] = {
    "train": {
        "NORMAL": [
            "IM-0001-0001", "IM-0001-0002", "IM-0001-0003", "IM-0002-0001", "IM-0003-0001",
            "IM-0003-0002", "NORMAL2-IM-0004-0001", "NORMAL2-IM-0004-0002", "IM-0005-0001-0001",
            "IM-0005-0001-0002", "IM-0006-0001", "IM-0007-0001",
        ],
        "PNEUMONIA": [
            "person1_bacteria_1", "person1_bacteria_2", "person2_virus_3", "person2_virus_4",
            "person2_bacteria_5", "person3_bacteria_6", "person4_virus_7", "person5_bacteria_8",
            "person5_bacteria_9", "person6_virus_10", "person7_bacteria_11", "person8_bacteria_12",
            "person9_virus_13", "person10_bacteria_14", "person10_virus_15_1",
        ],
    },
    "val": {
        "NORMAL": ["IM-0008-0001", "IM-0001-0004"],
        "PNEUMONIA": ["person11_bacteria_16", "person3_virus_17"],
    },
    "test": {
        "NORMAL": ["IM-0100-0001", "IM-0100-0002", "IM-0101-0001"],
        "PNEUMONIA": ["person100_bacteria_1", "person101_virus_2", "person101_virus_3"],
    },
}


def noise_image(name: str, mode: str = "RGB") -> Image.Image:
    """A small image of deterministic noise, unique per name, of uneven size (20..47 pixels)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    h, w = (int(v) for v in rng.integers(20, 48, size=2))
    channels = 3 if mode == "RGB" else 1
    a = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if channels == 1 else a, "L" if channels == 1 else "RGB")


def write_chest_folder(root: Path, layout=SYNTHETIC_LAYOUT, extra: dict | None = None) -> Path:
    """Write ``layout`` (split -> class -> stems) as JPEGs under ``root``; ``extra`` maps a relative
    path to bytes or a PIL image (saved by its extension) for odd files. Returns ``root``."""
    root = Path(root)
    for split, classes in layout.items():
        for cls, stems in classes.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for stem in stems:
                noise_image(f"{split}/{cls}/{stem}").save(d / f"{stem}.jpeg", quality=90)
    for rel, content in (extra or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Image.Image):
            content.save(p)
        else:
            p.write_bytes(content)
    return root


@pytest.fixture
def chest_folder(tmp_path):
    """Factory: ``chest_folder(name="data", layout=SYNTHETIC_LAYOUT, extra=None) -> Path``."""

    def make(name: str = "data", layout=SYNTHETIC_LAYOUT, extra: dict | None = None) -> Path:
        return write_chest_folder(tmp_path / name, layout, extra)

    return make


# The suite's programs are vmap's, the strategy its identities and samples were written for; the
# strategy tests (tests/test_strategy.py) pass auto, map and groups explicitly.
os.environ.setdefault("FLAXRAY_STRATEGY", "vmap")

# One compilation cache for the run, its workers and the studies they start as subprocesses: many tests
# compile the same small programs. A cached executable is the compiled program itself, keyed by its HLO,
# the XLA flags and the versions, so every curve is the same bits with or without it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
