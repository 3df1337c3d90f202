"""A finished study folder in the tools people already use: pandas and TensorBoard.

    curves, summary = load_study("runs/my_study")      # two pandas DataFrames
    write_tensorboard("runs/my_study", "runs/tb")       # then: tensorboard --logdir runs/tb

`load_study` reads `curves.csv` (one row per arch, seed, epoch, split, metric) and the per-arch summary
of `study.json`. `write_tensorboard` writes TensorBoard event files: a run per seed (`GROUP/seed_K`)
and, per group, the study's own band over the seeds (`GROUP/mean`, `GROUP/ci_low`, `GROUP/ci_high`,
from `flaxray.analysis.stats.band`, what bands.png draws), a scalar per split and metric (`train/loss`,
`val/auc`, ...) at step = epoch. Group names become file-safe folder names (`flaxray.results.slug`:
`dense:8@0.5` -> `dense_8_0.5`). It needs the `tensorboard` extra (tensorboardX; no TensorFlow).

This module reads files only: it never imports jax.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from flaxray.analysis import stats
from flaxray.errors import FlaxrayError
from flaxray import results
from flaxray.results import slug

STUDY_JSON = "study.json"
CURVES_CSV = "curves.csv"
COLUMNS = ("arch", "seed", "epoch", "split", "metric", "value", "lr", "diverged_epoch")
CURVES_DTYPES = {"arch": "str", "seed": "int64", "epoch": "int64", "split": "str", "metric": "str",
                 "value": "float64", "lr": "float64", "diverged_epoch": "Int64"}
AGGREGATES = ("mean", "ci_low", "ci_high")
EXTRA = "pip install 'flaxray[tensorboard]' (tensorboardX, no TensorFlow)"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def study_files(out) -> tuple[Path, Path]:
    """(study.json, curves.csv) of a finished study folder, or a one-line FlaxrayError naming what is missing."""
    out = Path(out)
    if not out.is_dir():
        raise FlaxrayError(f"{out} is not a folder; pass the --out folder of a finished study")
    if several := results.several_data_sets(out):
        raise FlaxrayError(several)
    for name in (STUDY_JSON, CURVES_CSV):
        if not (out / name).is_file():
            raise FlaxrayError(f"{out} is not a finished study: {out / name} is missing")
    return out / STUDY_JSON, out / CURVES_CSV


def read_study_json(out) -> dict:
    path, _ = study_files(out)
    try:
        study = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise FlaxrayError(f"cannot read {path}: {_one_line(err)}") from None
    if not isinstance(study, dict):
        raise FlaxrayError(f"cannot read {path}: not a JSON object")
    return study


def read_curves(path):
    """curves.csv as a DataFrame with the dtypes of its columns: seed and epoch int64, value and lr
    float64 (lr NaN where the study recorded none), diverged_epoch nullable Int64 (<NA>: did not
    diverge). Values read back exactly as written (`float_precision="round_trip"`: pandas' default
    parser may miss the last bit of a 17-digit float); names such as "NA" stay strings."""
    import pandas as pd

    path = Path(path)
    try:
        header = path.open(newline="").readline().strip().split(",")
        if tuple(header) != COLUMNS:
            raise ValueError(f"columns {','.join(header)}, expected {','.join(COLUMNS)}")
        return pd.read_csv(path, dtype=CURVES_DTYPES, keep_default_na=False,
                           na_values={"value": ["nan"], "lr": [""], "diverged_epoch": [""]},
                           float_precision="round_trip")
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise FlaxrayError(f"cannot read {path}: {_one_line(err)}") from None


def summary_frame(summary: dict):
    """study.json's {arch: {key: {n, mean, std, ci_low, ...}}} as one row per (arch, key)."""
    import pandas as pd

    rows = [{"arch": arch, "key": key, **{k: (np.nan if v is None else v) for k, v in stats.items()}}
            for arch, per_key in summary.items() for key, stats in per_key.items() if isinstance(stats, dict)]
    frame = pd.DataFrame(rows, columns=None if rows else ["arch", "key"])
    return frame.infer_objects()


def load_study(out):
    """A finished study's tidy curves and its summary, as two pandas DataFrames.

    curves: curves.csv, columns arch, seed, epoch, split, metric, value, lr, diverged_epoch (`read_curves`).
    summary: one row per (arch, summary key, e.g. final_val_loss) with the statistics of study.json's
    summary as columns (n, n_nonfinite, mean, std, ci_low, ci_high, median, iqm, iqm_ci_low, ...; NaN
    where the study wrote null). `arch` is the group's name, as in curves.csv and the ranking.
    """
    study = read_study_json(out)
    _, csv_path = study_files(out)
    return read_curves(csv_path), summary_frame(study.get("summary") or {})


def run_names(groups) -> dict[str, str]:
    """Group name -> its TensorBoard run folder: `flaxray.results.slug`, made unique with a hash where
    two names slug alike (`dense:8` and `dense_8`)."""
    names = {g: slug(g) for g in groups}
    taken = list(names.values())
    return {g: (n if taken.count(n) == 1 else f"{n}-{hashlib.sha256(g.encode()).hexdigest()[:8]}")
            for g, n in names.items()}


def group_curves(rows) -> tuple[list[int], list[int], dict[str, np.ndarray]]:
    """(seeds, epochs, {tag: (seeds, epochs) array}) of one group's rows of the curves (tags in the
    order of curves.csv: train/loss, ..., val/loss, ...); NaN where curves.csv has no row."""
    seeds = sorted(int(s) for s in rows["seed"].unique())
    epochs = sorted(int(e) for e in rows["epoch"].unique())
    arrays = {}
    for (split, metric), cells in rows.groupby(["split", "metric"], sort=False):
        table = cells.pivot(index="seed", columns="epoch", values="value")
        arrays[f"{split}/{metric}"] = table.reindex(index=seeds, columns=epochs).to_numpy(dtype=float)
    return seeds, epochs, arrays


def _clear_events(run: Path) -> None:
    """Event files left in `run` by an earlier write (TensorBoard would show both)."""
    if run.is_dir():
        for f in run.glob("events.out.tfevents.*"):
            f.unlink()


def _write_run(run: Path, epochs, series: dict[str, np.ndarray]) -> None:
    """One run folder: per epoch one event holding each tag's value at step = epoch; non-finite values
    (e.g. after a seed diverged) are left out, so the line ends there."""
    from tensorboardX import FileWriter
    from tensorboardX.proto.summary_pb2 import Summary

    _clear_events(run)
    tags, table = list(series), np.stack([np.asarray(v, float) for v in series.values()]) if series else None
    writer = FileWriter(str(run), max_queue=len(epochs) + 1, flush_secs=3600)
    try:
        for e, epoch in enumerate(epochs):
            values = [Summary.Value(tag=t, simple_value=float(table[i, e]))
                      for i, t in enumerate(tags) if np.isfinite(table[i, e])]
            if values:
                writer.add_summary(Summary(value=values), int(epoch))
    finally:
        writer.close()


def write_tensorboard(out, logdir, *, confidence: float | None = None) -> Path:
    """TensorBoard event files of a finished study folder `out` under `logdir`; returns `logdir`.

    Runs: `RUN/seed_K` per seed and `RUN/mean`, `RUN/ci_low`, `RUN/ci_high` per group (RUN =
    `run_names`: the group's file-safe name), tags `SPLIT/METRIC` per curve of curves.csv, step =
    epoch. The aggregate runs are `flaxray.analysis.stats.band` over the group's seeds at `confidence`
    (default: the study's own, study.json's analysis.confidence): the mean of the finite seeds per
    epoch and the bootstrap CI of that mean. Values are stored as TensorBoard stores scalars
    (float32); non-finite ones are left out. Writing again into the same `logdir` replaces the event
    files of the runs it writes and leaves any other runs there alone.
    """
    study = read_study_json(out)
    curves = read_curves(study_files(out)[1])
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise FlaxrayError(f"writing TensorBoard event files needs the tensorboard extra: {EXTRA}") from None
    if confidence is None:
        confidence = float((study.get("analysis") or {}).get("confidence") or 0.95)
    if not 0 < confidence < 1:
        raise FlaxrayError(f"confidence must be in (0, 1), got {confidence}")
    logdir = Path(logdir)
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FlaxrayError(f"cannot write to {logdir}: {_one_line(err)}") from None
    runs = run_names(dict.fromkeys(curves["arch"]))
    for group, rows in curves.groupby("arch", sort=False):
        run = runs[group]
        seeds, epochs, arrays = group_curves(rows)
        for s, seed in enumerate(seeds):
            _write_run(logdir / run / f"seed_{seed}", epochs, {t: a[s] for t, a in arrays.items()})
        bands = {tag: stats.band(a, confidence=confidence) for tag, a in arrays.items()}
        for i, name in enumerate(AGGREGATES):
            _write_run(logdir / run / name, epochs, {t: b[i] for t, b in bands.items()})
    return logdir
