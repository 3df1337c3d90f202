"""A multi-seed study as one library call: a spec in; trained units, test evaluation, analysis; a `Result` out.

    import flaxray
    result = flaxray.run(flaxray.Study(archs=("pyramid", "final"), seeds=tuple(range(8)), epochs=10), "runs/mine")
    result.analysis["ranking"]            # the one robust ranking (criterion: ranking.RANK_CRITERION)

Every study script is argument parsing around `run`. Each arch is one unit on disk
(`flaxray.study.units`: curves, final params, checkpoints, a record), trained once and reused by any
later run whose spec asks for the same thing; a unit trained with other settings is refused, naming
the difference. The study's result files (study.json, curves.csv) are written from its units each
time (`flaxray.study.result`), then its report (`flaxray.report.study`: bands.png, report.md/html).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from flaxray import results
from flaxray.analysis.study import TOTAL
from flaxray.core import strategy as strategies
from flaxray.core.config import TrainConfig, check_batch_size, data_for
from flaxray.core.randomness import FLOOR
from flaxray.errors import FlaxrayError
from flaxray.report import study as report
from flaxray.runtime.checkpoint import DEFAULT_EVERY, Stopped, every
from flaxray.runtime.plan import check_most
from flaxray.runtime.scale import param_count
from flaxray.study import compat, units
from flaxray.study.result import Result, build
from flaxray.study.spec import MAX_SEEDS, DataSpec, Study, recorded_study  # noqa: F401 - the spec, re-exported

def balanced_class_weight(labels, num_classes: int = 2) -> tuple[float, ...]:
    """Loss weights n / (C n_class), sklearn's 'balanced'."""
    labels = np.asarray(labels)
    return tuple(len(labels) / (num_classes * max(1, int((labels == c).sum()))) for c in range(num_classes))


def check_out(out) -> Path:
    """`out` as a folder a study may write into: not a file, and not a study of an older layout."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FlaxrayError(f"--out {out} is a file, not a folder")
    compat.check_layout(out)
    return out


@dataclasses.dataclass
class Prepared:
    """A study's data, loaded, checked against the spec and on the device; its configs."""

    dataset: Any
    configs: dict[str, TrainConfig]
    data: Any  # flaxray.core.config.DeviceData


def prepare(study: Study, out, *, progress: bool = True, checkpoint_every: int | str = DEFAULT_EVERY,
            chunk: int | None = None, cache_dir=None, overwrite: bool = False, strategy=None) -> Prepared:
    """Every check that can refuse a study, before anything is written: the options, `out` (what it
    holds is not checked with `overwrite`: it is to be cleared), the units already there, the data, the
    disk `out` is on.

    Args:
      study, out, checkpoint_every, chunk, cache_dir, strategy: as `run`'s.
      overwrite: `out` is to be cleared, so what it holds is not checked.
    Returns:
      The `Prepared` data (on the device) and configs, for `run(..., prepared=...)`; with several data sets,
      one per data set (`flaxray.study.datasets.prepare`).
    """
    if isinstance(study.data, Mapping):  # several data sets: each prepared as a study of its own
        from flaxray.study import datasets

        if not overwrite:
            check_out(out)
        return datasets.prepare(study, out, prepare, progress=progress, checkpoint_every=checkpoint_every, chunk=chunk,
                                cache_dir=cache_dir, overwrite=overwrite, strategy=strategy)
    progress = progress and not results.elsewhere()  # several processes: process 0 shows it
    saves = any(every(checkpoint_every))
    check_most(chunk)
    if strategy is not None:
        strategies.parse(strategy)
    if not overwrite:
        check_out(out)
    dataset = study.data if not isinstance(study.data, DataSpec) else study.data.load(cache_dir=cache_dir,
                                                                                      progress=progress)
    classes = tuple(dataset.class_names)
    weight = balanced_class_weight(dataset.train.y, len(classes)) if study.class_weight == "balanced" else None
    configs = {a: study.config(a, len(classes), weight) for a in study.archs}
    check_batch_size(configs[study.archs[0]], len(dataset.train.y))
    if study.test and len(dataset.test.y) == 0:
        raise FlaxrayError("the data has an empty test split; the comparison is made on the test set")
    for arch, source in jobs(study) if not overwrite else ():  # a unit trained otherwise: refused before anything
        units.finished(units.unit_dir(out, arch, source),
                       units.fingerprint(unit_config(configs[arch], source), study.settings, study.seeds,
                                         dataset.summary, dataset.train.x.shape[1:]))
    need = disk_needed(study, configs, dataset.train.x.shape[1:], checkpoints=saves)
    check_disk(need, out)
    data = data_for(dataset, configs[study.archs[0]])
    if progress:
        print(describe_data(dataset), f"· on disk up to {need / 2**20:,.0f} MiB", flush=True)
    return Prepared(dataset, configs, data)


def jobs(study: Study) -> list[tuple[str, str | None]]:
    """The units of a study, (arch, source): each arch with every source varied (None), then with
    --decompose each source alone and the numerical-noise floor (`FLOOR`)."""
    sources = (*study.varied, FLOOR) if study.decompose else ()
    return [(a, None) for a in study.archs] + [(a, s) for a in study.archs for s in sources]


def unit_config(config: TrainConfig, source: str | None) -> TrainConfig:
    """The config of an arch's unit: as the study asks, or varying `source` alone (--decompose)."""
    return config if source is None else dataclasses.replace(config, vary=(source,))


def disk_needed(study: Study, configs, input_shape, *, checkpoints: bool = True) -> int:
    """Bytes the study's units may take on disk: every seed's final params and model state, and
    (`checkpoints`) its checkpointed training state (params, Adam's two moments: 3 copies, float32),
    two of them at once in the unit being saved (orbax removes the older step once the new one is
    complete). An upper bound: BatchNorm's statistics are counted like parameters."""
    sizes = [param_count(a, tuple(input_shape), configs[a].num_classes) * 4 * len(study.seeds) * study.n_settings
             for a, _ in jobs(study)]
    return int(sum(sizes) * (4 if checkpoints else 1) + max(sizes) * 3 * checkpoints)


def check_disk(need: int, out) -> None:
    """A one-line error when the filesystem of `out` has less than `need` bytes free."""
    where = Path(out).absolute()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        raise FlaxrayError(f"the study needs up to {need / 2**30:.2f} GiB on disk for its checkpoints and final "
                           f"parameters, and {where} has {free / 2**30:.2f} GiB free; free some space, choose "
                           "another --out, use fewer --seeds, or --checkpoint-every 0 (no checkpoints)")


def run(study: Study, out, *, progress: bool = True, overwrite: bool = False, checkpoint_every: int | str = DEFAULT_EVERY,
        chunk: int | None = None, cache_dir=None, info: dict | None = None, prepared: Prepared | None = None,
        strategy=None) -> Result:
    """Train every unit of `study` into `out` (or read it back), evaluate and analyse, write the result
    files and the report; returns the `Result`.

    Args:
      study: what to compare.
      out: the study's folder.
      overwrite: delete the study's files and units first.
      checkpoint_every, chunk, strategy, cache_dir: where and when things are computed, not what; the
        program shape they set is recorded (`flaxray.study.replay`). `strategy`: `flaxray.core.strategy`
        (None: $FLAXRAY_STRATEGY or auto).
      info: recorded in study.json (e.g. the command line) and shown in the report's header.
      prepared: what `prepare` returned for this study and `out` (the command line prepares before it
        records the run).
    Returns:
      The `flaxray.study.result.Result`: its groups, analysis, test comparison and study.json record; with
      several data sets, a `flaxray.study.datasets.DatasetsResult` (a `Result` per data set, the comparison
      across them).
    """
    if isinstance(study.data, Mapping):  # several data sets: `flaxray.study.datasets`, a study on each
        from flaxray.study import datasets

        return datasets.run(study, out, run, prepare, progress=progress, overwrite=overwrite, checkpoint_every=checkpoint_every,
                            chunk=chunk, cache_dir=cache_dir, info=info, prepared=prepared, strategy=strategy)
    out = Path(out)
    progress = progress and not results.elsewhere()
    if overwrite:
        results.clear_outputs(out)
    if prepared is None:
        prepared = prepare(study, out, progress=progress, checkpoint_every=checkpoint_every, chunk=chunk,
                           cache_dir=cache_dir, strategy=strategy)
    dataset, configs, data = prepared.dataset, prepared.configs, prepared.data

    trained, decomposition, reused = {}, {}, []
    todo = jobs(study)
    for arch, source in tqdm(todo, desc="archs", unit="arch", disable=not progress or len(todo) < 2):
        config = unit_config(configs[arch], source)
        name = arch if source is None else f"{arch} only {source}"
        try:
            got, was_reused = units.train_unit(name, config, study.settings, study.seeds,
                                               units.unit_dir(out, arch, source), data, dataset, progress=progress,
                                               checkpoint_every=checkpoint_every, chunk=chunk, strategy=strategy)
        except Stopped as err:  # a Ctrl-C in a unit's last epoch: stop before the next, or finish the study
            if (arch, source) != todo[-1]:
                raise
            got, was_reused = err.result
        if was_reused:
            reused.append(name)
        for g in got:
            if source is None:
                trained[g.name] = g
            else:
                decomposition.setdefault(arch, {})[source] = g.history
    for arch in decomposition:
        decomposition[arch][TOTAL] = trained[arch].history  # the run where every source varies
    result = build(out, study, dataset, trained, decomposition, reused, info or {})
    report.write(result)
    return result


def describe_data(dataset) -> str:
    import jax

    return (f"data: {dataset.summary['source']} · {dataset.train.x.shape[1:]} images · "
            f"{len(dataset.class_names)} classes · train {len(dataset.train.y)}, val {len(dataset.val.y)}, "
            f"test {len(dataset.test.y)} · device {jax.devices()[0].device_kind}")
