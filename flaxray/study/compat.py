"""The one place for folders written by older flaxrays: each record read in an older format is brought
to today's here, so the rest of the code knows one format per record.

    group.json  format 1: the settings as `lrs` (+ `dropouts`, `weight_decays` when set) and the config
                holding `lr: null`; format 2: the config alone and `settings` ({field: values}).
    trained.json format 1: the config holding the group's lr, dropout and weight decay, the model state
                saved as `batch_stats`; format 2: `settings` beside the config, `model_state`.
    study       layouts before one folder per arch (issue 12) are refused with the command to run
                them again; their units could not be found.
    run.json    before it recorded the study's spec (`flaxray.study.study.recorded_study`), a resume
                rebuilds the study from the recorded flags.

Checkpoints (`flaxray.runtime.checkpoint`) of an older format are refused: they belong to an unfinished
run, which is started again.
"""

from __future__ import annotations

from pathlib import Path

from flaxray import results
from flaxray.errors import FlaxrayError

OLD_SETTINGS = {"lrs": "lr", "dropouts": "dropout", "weight_decays": "weight_decay"}
LAYOUT = 2  # study.json's "layout": 2 = one folder per arch under groups/ (issue 12)


def group_record(record: dict) -> dict:
    """A unit's group.json in format 2."""
    if record.get("format") != 1:
        return record
    old = record.get("fingerprint", {})
    config = {k: v for k, v in old.get("config", {}).items() if k != "lr"}
    grid = {field: old[key] for key, field in OLD_SETTINGS.items() if key in old}
    fingerprint = {"config": config, "settings": grid, "seeds": old.get("seeds"), "data": old.get("data")}
    return {**record, "format": 2, "fingerprint": fingerprint}


def trained_record(meta: dict) -> dict:
    """A group's trained.json in format 2 (with `state_key`: the model state's name in its saved tree)."""
    if meta.get("format") != 1:
        return {**meta, "state_key": "model_state"}
    config = dict(meta["config"])
    lr, dropout, decay = config.pop("lr", 1e-3), config.pop("dropout", None), config.pop("weight_decay", 0.0)
    settings = {"lr": lr, **({"dropout": dropout} if dropout is not None else {}),
                **({"weight_decay": decay} if decay else {})}
    return {**meta, "format": 2, "config": config, "settings": settings, "state_key": "batch_stats"}


def check_layout(out: Path) -> None:
    """A one-line error when `out` holds a study of a layout before issue 12."""
    old = [n for n in ("checkpoints", "params", "archs", "search.json") if (out / n).exists()]
    study = out / "study.json"
    if old or (study.exists() and results.read_json(study).get("layout") != LAYOUT):
        raise FlaxrayError(f"{out} holds a study written by an older flaxray (one layout per study before issue 12: "
                           f"{', '.join(old) or 'study.json'}); run it again with --overwrite, or choose another --out")


def no_saved_params(run_dir: Path, again: str) -> FlaxrayError:
    """The error for a finished study whose parameters this flaxray cannot read."""
    if (run_dir / "search.json").is_file():
        return FlaxrayError(f"{run_dir} holds an architecture search written by an older flaxray (search.json, "
                            f"before one layout for every study, issue 12); run it again{again}")
    return FlaxrayError(f"{run_dir} holds no saved parameters that this flaxray reads (studies before issue 8 "
                        f"kept none; those before issue 12 kept them in another layout); run it again{again}")


def program_layers(program: dict) -> str:
    """The convolutions' form a unit was trained with: recorded since there was a choice; before, shifted."""
    return program.get("layers", "shifted")
