"""flaxray: is this architecture really better, or did I get a lucky seed?

    import flaxray
    result = flaxray.run(flaxray.Study(archs=("pyramid", "final"), seeds=tuple(range(8)), epochs=10), "runs/mine")
    result.analysis["ranking"]

The packages, from the bottom up; each imports only those below it, and data flows upwards:

    errors, results   the one exception type; atomic files, the curves CSV, the environment record
    analysis          numpy/scipy only: metrics, statistics, ranking, diagnosis, comparisons
    data              any images (folders, .npz, TFDS, arrays) -> uint8 arrays, leak-free splits
    models            every arch behind one pure interface: `init(key) -> variables`, `apply(...)`
    core              pure, no I/O: `make_train(config)` -> per-seed functions; settings and keys by name
    runtime           the host side: compiled programs, the plan (chunks, strategy), the runner,
                      checkpoints, devices and processes
    report            files from results: markdown/HTML reports, plots that return axes, pandas, TensorBoard
    study             a spec -> train, evaluate, analyse -> a `Result`; units on disk, reuse, replay, race
    inspect           what trained models look at: feature maps, filters, Grad-CAM, saliency

The names below are the public API, imported on first use (so `import flaxray` stays light).
"""

from __future__ import annotations

import importlib
import os
import sys

# flaxray is a JAX program: where Keras is not loaded yet and no backend is asked for, a user's Keras
# model (`flaxray.models.keras_kind`) gets the JAX backend, the one flaxray can train it on.
if "keras" not in sys.modules:
    os.environ.setdefault("KERAS_BACKEND", "jax")

_API = {
    "Study": "flaxray.study", "DataSpec": "flaxray.study", "run": "flaxray.study", "prepare": "flaxray.study",
    "race": "flaxray.study.race", "replay": "flaxray.study.replay", "load_trained": "flaxray.study.trained",
    "load_study": "flaxray.report.views", "write_tensorboard": "flaxray.report.views",
    "load_dataset": "flaxray.data", "from_arrays": "flaxray.data",
    "TrainConfig": "flaxray.core", "Settings": "flaxray.core", "Recipe": "flaxray.core.recipe",
    "Schedule": "flaxray.core.schedules", "make_train": "flaxray.core",
    "device_data": "flaxray.core", "train_seeds": "flaxray.runtime", "register": "flaxray.models",
    "FlaxrayError": "flaxray.errors",
}
_PACKAGES = ("analysis", "core", "data", "errors", "inspect", "models", "report", "results", "runtime", "study")
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _PACKAGES:  # `flaxray.models.register(...)` after a bare `import flaxray`
        return importlib.import_module(f"flaxray.{name}")
    if name not in _API:
        raise AttributeError(f"module 'flaxray' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_API, *_PACKAGES})
