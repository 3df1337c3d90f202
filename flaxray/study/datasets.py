"""A study on several data sets (`Study(data=(a, b, c))`, `--data A B C`): each data set is a study of its
own in OUT/datasets/NAME/ (its units, reuse and resume, study.json and report, exactly what a study given
only that data set writes), then the archs are compared across them (`flaxray.analysis.tasks`, rliable's
aggregates): OUT/datasets.json, OUT/report.md/html and their figures (`flaxray.report.datasets`).

Each data set's own ranking keeps its criterion (`flaxray.analysis.ranking.RANK_CRITERION`); the
comparison across data sets is an added section with its own, stated order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from flaxray import results
from flaxray.analysis import tasks
from flaxray.analysis.ranking import RANK_KEY
from flaxray.core.config import data_for
from flaxray.study import compat
from flaxray.study.result import Result

FOLDER = "datasets"  # OUT/datasets/NAME/: one data set's study
RECORD = "datasets.json"


@dataclasses.dataclass
class DatasetsResult:
    """What `flaxray.run` returns for several data sets; datasets.json holds its record."""

    out: Path
    study: Any  # the `flaxray.study.Study`, every data set
    results: dict[str, Result]  # {data set's name: its own study's Result}
    analysis: dict  # `flaxray.analysis.tasks.analyse` of the groups' final val loss on each data set
    record: dict
    info: dict

    @property
    def reused(self) -> list[str]:
        return [f"{g} on {name}" for name, r in self.results.items() for g in r.reused]


def folder(out, name: str) -> Path:
    return Path(out) / FOLDER / name


def prepare(study, out, one, *, overwrite: bool = False, **options) -> list:
    """`one` (`flaxray.study.study.prepare`, which checks `out` and hands several data sets here) for each
    data set, in its folder: every refusal before anything is written. Each one's arrays go on the device
    only when it is trained (`run`), one data set at a time."""
    return [dataclasses.replace(one(study.on(name), folder(out, name), overwrite=overwrite, **options), data=None)
            for name in study.datasets]


def run(study, out, one, prepare_one, *, progress: bool = True, overwrite: bool = False, info: dict | None = None,
        prepared: list | None = None, **options) -> DatasetsResult:
    """Every data set's study by `one` (`flaxray.study.study.run`, which hands several data sets here;
    `prepare_one` its `prepare`), then the comparison across them and its report. Arguments as `one`'s;
    `prepared`: what `prepare` returned."""
    out, info = Path(out), dict(info or {})
    if overwrite:
        results.clear_outputs(out)
    if prepared is None:
        prepared = prepare(study, out, prepare_one, progress=progress, **options)
    done = {}
    for name, ready in zip(study.datasets, prepared):
        if ready.data is None:
            ready = dataclasses.replace(ready, data=data_for(ready.dataset, ready.configs[study.archs[0]]))
        if progress:
            print(f"data set {name}", flush=True)
        done[name] = one(study.on(name), folder(out, name), progress=progress, info=info, prepared=ready, **options)
    analysis = tasks.analyse({name: {g: r.analysis["values"][g][RANK_KEY] for g in r.groups}
                              for name, r in done.items()}, confidence=study.confidence)
    record = {"layout": compat.LAYOUT, "study": study.kind, **{k: v for k, v in info.items() if k != "title"},
              "spec": study.record(), "value": RANK_KEY,
              "datasets": {n: {"folder": str(folder(out, n).relative_to(out)), "data": r.dataset.summary,
                               "best": r.analysis["ranking"][0]["arch"]} for n, r in done.items()},
              "environment": results.environment(), "analysis": analysis}
    results.write_json(out / RECORD, record)
    result = DatasetsResult(out, study, done, analysis, record, info)
    from flaxray.report import datasets as report

    report.write(result)
    return result
