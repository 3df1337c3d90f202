"""A study's own files, written from its groups: curves.csv, bands.png, report.md/html, study.json.

`flaxray.study.study.run` calls `write` after every unit is trained or read back, so the files always
describe exactly the groups of the spec that was run, however many runs trained them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from flaxray import results
from flaxray.study.units import GROUP_JSON, Group, write_curves

LAYOUT = 2  # study.json's "layout": 2 = one folder per arch under groups/ (issue 12)


@dataclasses.dataclass
class Result:
    """What `flaxray.study.study.run` returns; study.json holds the same as JSON."""

    out: Path
    dataset: Any
    groups: dict[str, Group]
    analysis: dict
    decomposition: dict
    reused: list[str]
    test: dict | None
    record: dict


def describe_programs(programs: Mapping) -> str:
    """One line for the programs the units ran in (`groups.program_shape` of each), e.g.
    "map (probed), 16 seeds per chunk, shifted layers" — the same line once however many units share it."""
    lines = [f"{p.get('strategy', 'vmap')} ({p.get('strategy_source', 'asked')}), {p.get('seeds_per_chunk')} seeds per "
             f"chunk, {p.get('layers', 'native')} layers" for p in programs.values() if p]
    return "; ".join(dict.fromkeys(lines))


def header(study, dataset, info: Mapping, env: Mapping, programs: Mapping | None = None) -> dict:
    """The strings a report's header shows (`flaxray.report.search.run_info`), from the study and the machine
    (`env`: `results.environment()`) and, when given, the units' program shapes."""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v and k != "flaxray")
    size, channels = dataset.summary.get("image_size"), dataset.summary.get("channels")
    seeds = list(study.seeds)
    return {"command": info.get("command", "flaxray.study.study.run (Python)"),
            "seeds": f"{len(seeds)} ({seeds[0]}..{seeds[-1]})", "epochs": study.epochs,
            "data": f"{dataset.summary['source']}, {size}×{size}×{channels}, train {len(dataset.train.y)}, "
                    f"val {len(dataset.val.y)}, test {len(dataset.test.y)}",
            "device": (f"CPU ({env['cpu_count']} cores)" if env["backend"] == "cpu"
                       else f"{env['backend']}: {env['device']} ({env['cpu_count']} CPU cores)"),
            "versions": f"Python {env['python']}, {versions}",
            **({"programs": describe_programs(programs)} if programs else {}),
            "title": f"{len(seeds)} seeds · {size}×{size}×{channels}"}


def evaluate_test(study, dataset, groups: Mapping) -> dict:
    """Every seed of every group once on the test split, and the first two groups compared there."""
    from flaxray.analysis import compare
    from flaxray.models import build_model, count_params
    from flaxray.runtime.runner import evaluate_seeds, predict
    from flaxray.study.trained import load_folder

    classes = tuple(getattr(dataset, "class_names", ("NORMAL", "PNEUMONIA")))
    models = {}
    for name, g in groups.items():
        states = g.states if g.states is not None else load_folder(g.params_dir)
        shape = tuple(dataset.test.x.shape[1:])
        models[name] = {"counts": evaluate_seeds(g.config, states, dataset.test.x, dataset.test.y),
                        "probs": predict(g.config, states, dataset.test.x),
                        "params": count_params(build_model(g.config.arch, shape, num_classes=len(classes)))["total"],
                        "seconds": g.seconds, "seed_epochs": len(g.seeds) * g.config.epochs}
    names = list(groups)
    return compare.analyse(models, dataset.test.y, challenger=names[0], baseline=names[1],
                           confidence=study.confidence, **({"class_names": classes} if len(classes) > 2 else {}))


SETTING_WORDS = {"lr": "the learning rate", "dropout": "dropout", "weight_decay": "weight decay"}


def settings_of(groups: Mapping) -> dict:
    """Per arch trained at several settings: what varies (in words) and its groups, one per setting."""
    by_arch: dict = {}
    for name, g in groups.items():
        by_arch.setdefault(g.config.arch, []).append(name)
    out = {}
    for arch, names in by_arch.items():
        varying = [f for f in SETTING_WORDS if len({getattr(groups[n].config, f) for n in names}) > 1]
        if varying:
            words = (SETTING_WORDS[varying[0]] if len(varying) == 1
                     else "the setting (" + ", ".join(SETTING_WORDS[f] for f in varying) + ")")
            out[arch] = {"varies": words, "groups": names}
    return out


def write(out, study, dataset, groups: Mapping, decomposition: Mapping, reused: list, info: Mapping):
    from flaxray.analysis import compare, diagnose
    from flaxray.report import plots, search as report
    from flaxray.analysis.study import analyse

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    histories = {n: g.history for n, g in groups.items()}
    write_curves(out / "curves.csv", list(groups.values()))
    env = results.environment()
    # Each unit's program shape: its chunks, its strategy (and why: `flaxray.core.strategy`), its devices.
    programs = {str(f.relative_to(out)): results.read_json(f / GROUP_JSON).get("program")
                for f in dict.fromkeys(g.folder for g in groups.values())}
    head = header(study, dataset, info, env, programs)
    weight = next(iter(groups.values())).config.class_weight
    analysis = analyse(histories, baseline=diagnose.baseline_loss(dataset.train.y, weight),
                       decomposition=decomposition or None, confidence=study.confidence,
                       seeds={n: g.seeds for n, g in groups.items()}, settings=settings_of(groups))
    test = evaluate_test(study, dataset, groups) if study.test else None
    if not results.elsewhere():  # the figures and reports of a multi-process study: process 0's alone
        plots.plot_bands(histories, out / "bands.png", title=head["title"])
        if test is not None:
            compare.write_report(out, test, info=head, bands=out / "bands.png")
        else:
            report.write_report(out, analysis, histories, info=head)
    diverged = {n: {int(s): int(e) for s, e in zip(g.seeds, g.diverged) if e} for n, g in groups.items()}
    record = {
        "layout": LAYOUT, "study": study.kind, **{k: v for k, v in info.items() if k != "title"},
        "spec": study.record(), "configs": {n: dataclasses.asdict(g.config) for n, g in groups.items()},
        "seeds": list(study.seeds), "environment": env, "data": dataset.summary,
        "summary": analysis["summary"], "criterion": analysis["criterion"], "ranking": analysis["ranking"],
        "diverged": diverged, "analysis": analysis, "test": test, "reused": reused,
        "train_seconds": {n: g.seconds for n, g in groups.items() if g.seconds is not None},
        "groups": {n: str(g.folder.relative_to(out)) for n, g in groups.items()},
        "programs": programs,
        "params": {n: str(g.params_dir.relative_to(out)) for n, g in groups.items()},
    }
    results.write_json(out / "study.json", record)
    return Result(out, dataset, dict(groups), analysis, dict(decomposition), reused, test, record)
