"""A study's folder: `curves.csv` (tidy, every seed's every epoch), `study.json` (config, versions,
device, data summary, per-arch summary), `bands.png`, `checkpoints/` and `run.json`, whose `status`
says whether the study finished ("complete"), stopped ("interrupted", "failed") or is running or
was killed ("running"). Every file is written to a temporary name and renamed, so a result file is
either complete or absent, and a folder without a complete run.json is recognisably unfinished.
In a study of several processes (`flaxray.runtime.hosts`) only process 0 writes them: the others compute the
same files and drop them."""

from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

PACKAGES = ("flaxray", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "numpy", "scipy",
            "matplotlib")
RUN_JSON = "run.json"
CHECKPOINTS = "checkpoints"
# What a study writes into its folder (and what --overwrite deletes); "checkpoints" to "search.json": older layouts';
# datasets*: a study on several data sets (`flaxray.study.datasets`).
OUTPUTS = (RUN_JSON, "study.json", "curves.csv", "bands.png", "report.md", "report.html", "intervals.png",
           "improvement.png", "bands_per_arch.png", "groups", CHECKPOINTS, "params", "archs", "search.json",
           "race.json", "trace.png", "datasets", "datasets.json", "datasets_intervals.png", "datasets_profiles.png")


def cache_root(cache_dir=None) -> Path:
    """The machine's flaxray cache folder (prepared data, the strategy probe's choices): `cache_dir`, else
    $FLAXRAY_CACHE, else ~/.cache/flaxray."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("FLAXRAY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flaxray"


def cpu_model() -> str:
    """The CPU's model name (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(packages: Sequence[str] = PACKAGES) -> dict:
    """Versions of `packages` and the device the computation ran on (jax is imported here, not at module load)."""
    import jax

    versions = {}
    for name in packages:
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
        "cpu": cpu_model(),  # XLA:CPU compiles other kernels for other CPUs: another sample of every curve
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _distributed() -> bool:
    """Whether this process is one of several (`flaxray.runtime.hosts`)."""
    jax = sys.modules.get("jax")  # a folder read in a notebook does not start jax to learn it is alone
    return jax is not None and jax.distributed.is_initialized()


def elsewhere() -> bool:
    """Whether this is another process than process 0 of a multi-process study: not the one that writes."""
    return _distributed() and sys.modules["jax"].process_index() != 0


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` (same suffix, for writers that go by it) to write to;
    renamed to `path` only when the block completes, removed if it fails. On another process than
    process 0 (`elsewhere`), a scratch path that is thrown away."""
    path = Path(path)
    if elsewhere():
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch) / path.name
        return
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the name says the file is complete
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write(path: Path, write) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        write(f)
    return Path(path)


def write_text(path, text: str) -> Path:
    return _atomic_write(path, lambda f: f.write(text))


def save_figure(fig, path, **kwargs) -> Path:
    """`fig.savefig(path)`, atomically (the suffix picks the format)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)
    return Path(path)


def curves_rows(histories: Mapping[str, Mapping[str, np.ndarray]], seeds: Mapping[str, Sequence[int]]):
    """Tidy rows (arch, seed, epoch, split, metric, value) from Keras-style histories of shape (S, E)."""
    for arch, history in histories.items():
        for key, values in history.items():
            split, metric = ("val", key[4:]) if key.startswith("val_") else ("train", key)
            for s, seed in enumerate(seeds[arch]):
                for e, value in enumerate(values[s], start=1):
                    yield arch, int(seed), e, split, metric, float(value)


def write_curves_csv(path, histories, seeds, *, lrs: Mapping[str, float] | None = None,
                     diverged: Mapping[str, Sequence[int]] | None = None,
                     extra: Mapping[str, Mapping[str, float | None]] | None = None,
                     stopped: Mapping[str, Sequence[int]] | None = None) -> Path:
    """One row per (arch, seed, epoch, split, metric), plus the group's learning rate (`lrs[arch]`: one
    rate, or one per epoch under a schedule), the epoch the seed diverged in (`diverged[arch][s]`, empty
    when it did not), with early stopping the epoch it stopped after (`stopped[arch][s]`; its rows end
    there, as a Keras History does) and, after them, one column per `extra` setting (e.g. {"dropout":
    {arch: rate}}; empty for None)."""
    epochs = {a: np.shape(next(iter(h.values())))[-1] for a, h in histories.items()}
    lr = {a: [repr(float(r)) for r in np.broadcast_to(np.asarray(lrs[a], float), (epochs[a],))] if lrs and a in lrs
          else [""] * epochs[a] for a in histories}
    def by_seed(epochs):  # arch -> seed -> the epoch, "" for 0
        return {a: {int(s): str(int(e)) if e else "" for s, e in zip(seeds[a], epochs.get(a, [0] * len(seeds[a])))}
                for a in histories}

    died, ended = by_seed(diverged or {}), by_seed(stopped) if stopped else None
    more = {a: [("" if c.get(a) is None else repr(float(c[a]))) for c in (extra or {}).values()] for a in histories}

    def write(f):
        out = csv.writer(f)
        stop = ["stopped_epoch"] if ended else []
        out.writerow(["arch", "seed", "epoch", "split", "metric", "value", "lr", "diverged_epoch", *stop, *(extra or {})])
        out.writerows((a, s, e, sp, m, repr(v), lr[a][e - 1], died[a][s], *([ended[a][s]] if ended else []), *more[a])
                      for a, s, e, sp, m, v in curves_rows(histories, seeds)
                      if not ended or not ended[a][s] or e <= int(ended[a][s]))

    return _atomic_write(path, write)


def read_curves_csv(path, epochs: int | None = None) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, list[int]]]:
    """Inverse of `write_curves_csv`: Keras-style histories (S, E) and the seeds of each arch; the epochs a
    seed has no row for (it stopped early) NaN, up to `epochs` (default: the last epoch of any row)."""
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
        last = epochs or max(e for _, e in any_metric)
        histories[arch] = {
            key: np.array([[values.get((s, e), np.nan) for e in range(1, last + 1)] for s in seeds[arch]])
            for key, values in metrics.items()
        }
    return histories, seeds



def slug(text: str) -> str:
    """A file-safe folder name for a group name or spec string; long ones end in a hash, so two
    long specs that share their first characters still get two folders."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
    if len(safe) <= 60:
        return safe
    return safe[:51] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]


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


def read_json(path) -> dict:
    """A JSON file's object, or {} when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return {}


def several_data_sets(out) -> str:
    """Where `out` is a study over several data sets (its datasets.json), a line saying which folder holds
    each one's study (what inspection, replay and loading take); else ''."""
    out = Path(out)
    if not (out / "datasets.json").is_file():
        return ""
    names = sorted(p.name for p in (out / "datasets").iterdir() if p.is_dir()) if (out / "datasets").is_dir() else []
    return (f"{out} is a study over several data sets ({', '.join(names) or 'none finished'}); each has a study "
            f"folder of its own: pass one" + (f", e.g. {out / 'datasets' / names[0]}" if names else ""))


def read_run(out) -> dict | None:
    """The folder's run.json, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(out) / RUN_JSON).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def write_run(out, **fields) -> dict:
    """Update run.json with `fields` (e.g. status="complete"), atomically; returns what it holds."""
    run = {**(read_run(out) or {}), **fields}
    write_json(Path(out) / RUN_JSON, run)
    return run


def _utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def recorded(out, *, study: str, command: str, argv, resumed: bool = False, overwrite: bool = False,
             spec: dict | None = None):
    """run.json in `out` says "running" while the block runs (so a killed run reads as unfinished),
    then "complete", "interrupted" or "failed"; it keeps the command, its flags and the study's `spec`
    (what a resume rebuilds); `overwrite` clears the study's files first."""
    out = Path(out)
    if overwrite:
        clear_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    if resumed:
        write_run(out, status="running", pid=os.getpid(), resumed_utc=[*(read_run(out) or {}).get("resumed_utc", []),
                                                                        _utc()])
    else:
        write_run(out, status="running", study=study, command=command, argv=list(argv), cwd=os.getcwd(),
                  pid=os.getpid(), started_utc=_utc(), **({"spec": spec} if spec is not None else {}))
    try:
        yield
    except KeyboardInterrupt as err:
        write_run(out, status="interrupted", stopped_utc=_utc())
        detail = f"{err}; " if str(err) else ""
        raise KeyboardInterrupt(f"{detail}continue with: python -m {study} --resume {out}") from None
    except BaseException as err:
        write_run(out, status="failed", error=" ".join(f"{type(err).__name__}: {err}".split()), stopped_utc=_utc())
        raise
    write_run(out, status="complete", finished_utc=_utc())


def existing_outputs(out) -> list[str]:
    """Which of a study's files and folders `out` already holds."""
    return [name for name in OUTPUTS if (Path(out) / name).exists()]


def clear_outputs(out) -> None:
    """Remove a study's files and checkpoints from `out`, and nothing else the folder holds."""
    if not elsewhere():
        for name in existing_outputs(out):
            path = Path(out) / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if _distributed():  # the others start writing once it is empty
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("flaxray.results.clear_outputs")


def default_out_dir(archs: Sequence[str], root="runs") -> Path:
    """A new folder under `runs/`, named by time and archs, never an existing one."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(archs))[:60]
    path, k = Path(root) / f"{stamp}-{name}", 1
    while path.exists():
        path, k = Path(root) / f"{stamp}-{name}-{k}", k + 1
    return path
