"""A study's files: `curves.csv` (tidy, every seed's every epoch) and `study.json` (config, versions,
device, data summary, per-arch summary). Files are written to a temporary name and renamed, so a
result file is either complete or absent."""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
import platform
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

PACKAGES = ("flaxray", "jax", "jaxlib", "flax", "optax", "tensorflow-datasets", "numpy", "scipy", "matplotlib")


def environment() -> dict:
    """Versions and the device the computation ran on (jax is imported here, not at module load)."""
    import jax

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
        "device": devices[0].device_kind,
        "cpu_count": os.cpu_count(),
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        write(f)
    os.replace(tmp, path)
    return path


def curves_rows(histories: Mapping[str, Mapping[str, np.ndarray]], seeds: Mapping[str, Sequence[int]]):
    """Tidy rows (arch, seed, epoch, split, metric, value) from Keras-style histories of shape (S, E)."""
    for arch, history in histories.items():
        for key, values in history.items():
            split, metric = ("val", key[4:]) if key.startswith("val_") else ("train", key)
            for s, seed in enumerate(seeds[arch]):
                for e, value in enumerate(values[s], start=1):
                    yield arch, int(seed), e, split, metric, float(value)


def write_curves_csv(path, histories, seeds) -> Path:
    def write(f):
        out = csv.writer(f)
        out.writerow(["arch", "seed", "epoch", "split", "metric", "value"])
        out.writerows((a, s, e, sp, m, repr(v)) for a, s, e, sp, m, v in curves_rows(histories, seeds))

    return _atomic_write(path, write)


def read_curves_csv(path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, list[int]]]:
    """Inverse of `write_curves_csv`: Keras-style histories (S, E) and the seeds of each arch."""
    cells: dict = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = row["metric"] if row["split"] == "train" else f"val_{row['metric']}"
            cells.setdefault(row["arch"], {}).setdefault(key, {})[int(row["seed"]), int(row["epoch"])] = float(
                row["value"]
            )
    histories, seeds = {}, {}
    for arch, metrics in cells.items():
        any_metric = next(iter(metrics.values()))
        seeds[arch] = sorted({s for s, _ in any_metric})
        epochs = max(e for _, e in any_metric)
        histories[arch] = {
            key: np.array([[values[s, e] for e in range(1, epochs + 1)] for s in seeds[arch]])
            for key, values in metrics.items()
        }
    return histories, seeds


def jsonable(obj):
    """numpy types, tuples and non-finite floats (as null) -> what json.dump writes."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)  # JSON has no NaN
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(path, obj) -> Path:
    return _atomic_write(path, lambda f: json.dump(jsonable(obj), f, indent=2))


def default_out_dir(archs: Sequence[str], root="runs") -> Path:
    """A new folder under `runs/`, named by time and archs, never an existing one."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(archs))[:60]
    path, k = Path(root) / f"{stamp}-{name}", 1
    while path.exists():
        path, k = Path(root) / f"{stamp}-{name}-{k}", k + 1
    return path
