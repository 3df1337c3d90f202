"""What `benchmarks.gpu` needs before it measures: the data it carries to the device machine, and packages there.

    prepare("../shared/data/chest_xray", PREPARED, 180, SUBSET)   # here, once: the .npz the device run reads
    download_wheels()                                            # here, once: Keras for the device, in .whl/
    source, path, size, note = choose_data(None, 0, Path("runs/gpu"))
    preflight()                                                  # there: fails in seconds if a package is off

Why a prepared file: the repository travels to the device machine (64 MiB in all, carried paths included),
../shared beside it does not, and a Kaggle-layout folder is read through tensorflow-datasets, absent there;
flaxray reads an .npz with numpy alone. So `prepare` reads the folder here through the library (patient
split, duplicates dropped) at 180x180 and writes every test image and a seeded class-stratified subset of
the split's train (1536 = 48 batches) and val (384), grey (the copies' three channels are identical and
`--channels 3` repeats them back bit for bit), in bzip2 members (np.load reads them; raw, 82 MB would not
fit). Keras, for the throughput's keras rows, is not on that machine and cannot be fetched there: its wheels
travel too (`download_wheels`).
"""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path

import numpy as np

from benchmarks.keras_baseline import KERAS_VERSION
from flaxray.errors import FlaxrayError

PREPARED, SHARED = Path(".gpu-data/chest_xray_180.npz"), Path("../shared/data/chest_xray")
SUBSET = {"train": 1536, "val": 384, "test": None}  # images kept per split; None: all (618 test)
MAX_MIB = 50  # of the device machine's 64 MiB for the working tree and the carried paths together
# Keras 3 for the throughput's keras rows (the target against Keras seed after seed), and what the
# device machine's packages lack of its needs; wheels for its Python 3.12 on x86-64 (pip matches the tags).
WHEELS, KERAS_WHEELS = Path(".whl"), (f"keras=={KERAS_VERSION}", "namex==0.1.0", "optree==0.20.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# The device run, from the repository root, carrying .gpu-data and .whl: the wheels into a folder of their own
# (not pip install -e .: flaxray pins jax 0.10.2 and would replace the machine's own), the versions printed
# first, the files copied back even when a part failed.
DEVICE_COMMAND = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "
                  ".whl/*.whl; export PYTHONPATH=.:/tmp/site KERAS_BACKEND=jax PYTHONUNBUFFERED=1; "
                  "python3 -m benchmarks.gpu --no-progress; cp runs/gpu/gpu.json runs/gpu/gpu.md \"$OUT\"/")


def download_wheels(dest: Path = WHEELS) -> str:
    """Keras's wheels for the device machine into `dest` (here, where pip reaches PyPI): the line to print.
    Without them the GPU run has no keras rows, and says so; nothing else depends on them."""
    import subprocess
    import sys

    tags = [a for p in PLATFORMS for a in ("--platform", p)]
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                          "--python-version", "3.12", "--implementation", "cp", *tags, "-d", str(dest), *KERAS_WHEELS],
                         capture_output=True, text=True)
    if got.returncode != 0:
        return f"no Keras wheels (pip download failed: {got.stderr.strip().splitlines()[-1:]}): no keras rows there"
    mib = sum(f.stat().st_size for f in dest.glob("*.whl")) / 2**20
    return f"wrote {dest}/: {', '.join(KERAS_WHEELS)} ({mib:.1f} MiB), for the keras rows"


def preflight() -> None:
    """Import now what the parts import on the way (orbax for the checkpoints, tqdm, scipy, matplotlib,
    PIL): on a machine whose packages are not the pinned ones, a missing or changed one fails here in
    seconds, in one line, not minutes into part b with part a's figures unwritten."""
    problems = []
    for name in ("orbax.checkpoint", "tqdm", "scipy.stats", "matplotlib.pyplot", "PIL.Image"):
        try:
            module = importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any import failure is the news
            problems.append(f"{name}: {type(err).__name__}: {err}")
            continue
        if name == "orbax.checkpoint" and not all(hasattr(module, a) for a in ("CheckpointManager", "args")):
            problems.append("orbax.checkpoint has no CheckpointManager/args (its v1 API?): flaxray.runtime.checkpoint "
                            "needs orbax-checkpoint 0.12")
    if problems:
        raise FlaxrayError("the packages here cannot run the parts: " + "; ".join(problems))


def prepare(source, dest: Path, size: int | None, subset: dict) -> Path:
    """`source` as the library splits it, grey, cut to `subset` images a split (each class its share, seed
    0), written to `dest` with bzip2 members (these X-rays compress 1.7x so, 1.2x with np.savez_compressed)."""
    from flaxray import results
    from flaxray.data import load_dataset

    data, rng = load_dataset(source, image_size=size, channels=1, progress=False), np.random.default_rng(0)
    arrays = {"class_names": np.array(data.class_names)}
    for split, n in subset.items():
        s = getattr(data, split)
        keep = np.arange(len(s.y))
        if n is not None and n < len(keep):
            share = np.floor(n * np.bincount(s.y) / len(s.y)).astype(int)
            share[-1] += n - share.sum()
            keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(s.y == c), k, replace=False)
                                           for c, k in enumerate(share)]))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = s.x[keep, ..., 0], s.y[keep]
        if split != "test":
            arrays[f"groups_{split}"] = s.patients[keep].astype(str)  # patients, for the data summary
    dest.parent.mkdir(parents=True, exist_ok=True)
    with results.atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_BZIP2, compresslevel=9) as z:
        for key, a in arrays.items():
            with z.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, a, allow_pickle=False)
    return dest


def choose_data(data: str | None, tiny: int, out: Path) -> tuple[str, str | None, int, str | None]:
    """(source, path for --data (None: embedded), image size, a note to shout or None) for `data` (None:
    the prepared file, else the shared folder, else the embedded data), or with `tiny` that many images a
    split of the embedded data. A compressed .npz is decompressed once into `out`: bzip2 costs seconds a
    read, and the parts read the data five times."""
    if tiny:
        source = str(prepare(None, out / "tiny.npz", None, {s: tiny for s in SUBSET}))
        size, note = 28, f"--tiny: {tiny} images a split of the embedded 28x28 data, stand-in archs"
    else:
        source = data or next((str(p) for p in (PREPARED, SHARED) if p.exists()), None)
        size, note = 180, None
        if source is None:
            return "embedded", None, 28, (f"NO REAL DATA: neither {PREPARED} nor {SHARED} is here, so every figure "
                                          "is on the embedded data at 28x28x3, NOT 180x180x3")
    if not source.lower().endswith(".npz"):
        return source, source, size, note
    with zipfile.ZipFile(source) as z:
        if all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist()):
            return source, source, size, note
    with np.load(source, allow_pickle=False) as z:
        np.savez(out / "data.npz", **{k: z[k] for k in z.files})
    return source, str(out / "data.npz"), size, note
