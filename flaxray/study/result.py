"""What a study gives back: its groups, their test evaluation and analysis (`Result`), and its result
files, curves.csv and study.json, written from its units each time, so they always describe exactly
the groups of the spec that was run, however many runs trained them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from flaxray import results
from flaxray.analysis import compare, diagnose
from flaxray.analysis import stopping as stop_analysis
from flaxray.analysis.ranking import RANK_KEY
from flaxray.analysis.study import analyse
from flaxray.core import resample, settings as settings_grid
from flaxray.models import describe, param_counts
from flaxray.runtime.runner import evaluate_seeds, predict
from flaxray.study import compat
from flaxray.study.trained import load_folder
from flaxray.study.units import GROUP_JSON, Group, stopped_record, write_curves


@dataclasses.dataclass
class Result:
    """What `flaxray.run` returns; study.json holds the same as JSON."""

    out: Path
    study: Any  # the `flaxray.study.Study`
    dataset: Any
    groups: dict[str, Group]
    analysis: dict
    decomposition: dict
    reused: list[str]
    test: dict | None
    record: dict
    info: dict  # the command line and the like, shown in the report's header


def evaluate_test(study, dataset, groups: Mapping[str, Group]) -> dict:
    """Every seed of every group once on the test split, and the first two groups compared there."""
    classes = tuple(dataset.class_names)
    models = {}
    for name, g in groups.items():
        states = g.states if g.states is not None else load_folder(g.params_dir)
        shape = tuple(dataset.test.x.shape[1:])
        models[name] = {"counts": evaluate_seeds(g.config, states, dataset.test.x, dataset.test.y),
                        "probs": predict(g.config, states, dataset.test.x),
                        "params": param_counts(g.config.arch, shape, len(classes))["total"],
                        "seconds": g.seconds, "seed_epochs": len(g.seeds) * g.config.epochs}
    names = list(groups)
    return compare.analyse(models, dataset.test.y, challenger=names[0], baseline=names[1],
                           confidence=study.confidence, class_names=classes)


def settings_of(groups: Mapping[str, Group]) -> dict:
    """Per arch trained at several settings: what varies (in words), its groups, one per setting, and each
    group's levels ({group: {setting's words: value}}, the settings that vary), which say which groups differ
    in one setting only (`flaxray.analysis.pairs`)."""
    by_arch: dict = {}
    for name, g in groups.items():
        by_arch.setdefault(g.config.arch, []).append(name)
    out = {}
    for arch, names in by_arch.items():
        varying = [f for f in settings_grid.FIELDS if len({getattr(groups[n].settings, f) for n in names}) > 1]
        if varying:
            words = [settings_grid.FIELDS[f].words for f in varying]
            text = {f: settings_grid.FIELDS[f].text or settings_grid.label for f in varying}
            levels = {n: {settings_grid.FIELDS[f].words: text[f](getattr(groups[n].settings, f)) for f in varying}
                      for n in names}
            out[arch] = {"varies": words[0] if len(words) == 1 else "the setting (" + ", ".join(words) + ")",
                         "groups": names, "levels": levels}
    return out


def stopping_analysis(groups: Mapping[str, Group], analysis: Mapping) -> dict:
    """With early stopping: each group's stop epochs, and, where the patience varies, its effect with
    the seeds paired (`flaxray.analysis.stopping`)."""
    watched = {n: g for n, g in groups.items() if g.decision is not None}
    if not watched:
        return {}
    out = {"stopping": {n: stop_analysis.epochs(g.decision.stopped if g.stopped is not None else np.zeros(len(g.seeds)),
                                                g.config.epochs, g.final_epoch if g.config.recipe.restore_best else None)
                        for n, g in watched.items()}}
    watched = {n: g for n, g in watched.items() if g.stopped is not None}
    patience = {n: g.settings.patience for n, g in watched.items()}
    if len(set(patience.values())) > 1:
        order = [r["arch"] for r in analysis["ranking"] if r["arch"] in watched]
        out["early_stopping"] = stop_analysis.effect(
            {n: analysis["values"][n][RANK_KEY] for n in watched}, {n: g.config.arch for n, g in watched.items()},
            patience, order)
    return out


def build(out, study, dataset, groups: Mapping[str, Group], decomposition: Mapping, reused: list,
          info: Mapping) -> Result:
    """The study's analysis (and test comparison), with curves.csv and study.json written into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    histories = {n: g.history for n, g in groups.items()}
    write_curves(out / "curves.csv", list(groups.values()))
    # Each unit's program shape: its chunks, its strategy (and why: `flaxray.core.strategy`), its devices.
    programs = {str(f.relative_to(out)): results.read_json(f / GROUP_JSON).get("program")
                for f in dict.fromkeys(g.folder for g in groups.values())}
    weight = next(iter(groups.values())).config.class_weight
    analysis = analyse(histories, baseline=diagnose.baseline_loss(dataset.train.y, weight),
                       decomposition=decomposition or None, confidence=study.confidence,
                       seeds={n: g.seeds for n, g in groups.items()}, settings=settings_of(groups),
                       final_epochs={n: g.final_epoch for n, g in groups.items() if g.decision is not None},
                       stopped={n: g.stopped for n, g in groups.items() if g.stopped is not None}, rope=study.rope)
    analysis.update(stopping_analysis(groups, analysis))
    test = evaluate_test(study, dataset, groups) if study.test else None
    diverged = {n: {int(s): int(e) for s, e in zip(g.seeds, g.diverged) if e} for n, g in groups.items()}
    record = {
        "layout": compat.LAYOUT, "study": study.kind, **{k: v for k, v in info.items() if k != "title"},
        "spec": study.record(),
        "configs": {n: {**g.config.record(), "settings": {k: v for k, v in g.settings._asdict().items()
                                                          if v is not None}} for n, g in groups.items()},
        "seeds": list(study.seeds), "environment": results.environment(), "data": dataset.summary,
        "summary": analysis["summary"], "criterion": analysis["criterion"], "ranking": analysis["ranking"],
        "diverged": diverged, **stopped_record(list(groups.values()), None), "analysis": analysis, "test": test, "reused": reused,
        "train_seconds": {n: g.seconds for n, g in groups.items() if g.seconds is not None},
        "groups": {n: str(g.folder.relative_to(out)) for n, g in groups.items()},
        "programs": programs,
        "params": {n: str(g.params_dir.relative_to(out)) for n, g in groups.items()},
    }
    if next(iter(groups.values())).config.resample:  # each seed's own split (the data's fixed one is not used)
        record["split"] = resample.Resample.of(dataset).record()
    shape = tuple(dataset.train.x.shape[1:])
    described = {a: describe(a, shape, len(dataset.class_names)) for a in study.archs}
    if any(described.values()):  # users' models: their kind, file, compile and what their inputs are
        record["models"] = {a: d for a, d in described.items() if d}
    results.write_json(out / "study.json", record)
    return Result(out, study, dataset, dict(groups), analysis, dict(decomposition), reused, test, record, dict(info))
