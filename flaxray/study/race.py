"""A race over architectures: seeds are spent only where the choice is still open.

    from flaxray.study.race import race
    from flaxray.study.study import Study
    result = race(Study(archs=catalogue.DEFAULT_CATALOGUE, seeds=tuple(range(12)), epochs=5), "runs/race")
    result.decision["kind"]              # "winner", "tie" or "budget"

Round 1 trains every arch on the first `round_seeds` seeds of `study.seeds`; each later round trains
the archs still raced on the next block, so a raced arch's seeds are exactly a fixed study's first seeds.
Each block of each arch is its own unit (`OUT/groups/<arch>/seeds-<lo>-<hi>/`, `flaxray.study.units`), so
the same call again reads every finished round back and continues where a killed race stopped.

The rules of each look (elimination with its guarantee, the futility exit, when it stops) are
`flaxray.analysis.race`'s; this module trains the rounds and writes race.json and the report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from flaxray import results
from flaxray.analysis import diagnose, ranking
from flaxray.analysis.race import FUTILITY, evidence, run_rounds
from flaxray.analysis.sequential import looks
from flaxray.analysis.study import analyse
from flaxray.errors import FlaxrayError
from flaxray.report.race import write_report
from flaxray.runtime.checkpoint import DEFAULT_EVERY
from flaxray.study import units
from flaxray.study.study import prepare

RACE_JSON = "race.json"


@dataclasses.dataclass
class RaceResult:
    out: Path
    record: dict  # race.json's content
    groups: dict[str, list]  # arch -> its units (flaxray.study.units.Group), one per round it ran
    reused: list[str]

    @property
    def decision(self) -> dict:
        return self.record["decision"]


def block_dir(out, arch: str, seeds: Sequence[int]) -> Path:
    return units.unit_dir(out, arch) / f"seeds-{seeds[0]}-{seeds[-1]}"


def merged(blocks: list) -> "units.Group":
    """An arch's rounds as one group: its seeds in order, each curve stacked over seeds."""
    first = blocks[0]
    return units.Group(first.name, first.config, first.settings, [s for g in blocks for s in g.seeds],
                       {k: np.concatenate([g.history[k] for g in blocks]) for k in first.history},
                       np.concatenate([g.diverged for g in blocks]), first.folder.parent)


def race(study, out, *, round_seeds: int = 3, budget: float | None = None, futility: float = FUTILITY, progress: bool = True,
         checkpoint_every: int | str = DEFAULT_EVERY, chunk: int | None = None, cache_dir=None, info: Mapping | None = None,
         prepared: Any = None, on_round: Callable[[dict], None] | None = None, strategy=None) -> RaceResult:
    """Race `study.archs` over the seeds `study.seeds` (in order, `round_seeds` a round) into `out`:
    trains (or reads back) each round's units, writes race.json after every round, then the report.

    Args:
      study: the archs, the seeds (at most), the settings; alpha = 1 - study.confidence.
      out: the race's folder.
      round_seeds: seeds each arch still raced gets per round.
      budget: seed-epochs at most (None: the fixed design's).
      futility: gamma of the futility exit (0: off); see the module's docstring.
      on_round: called with each round's record as it ends.
      progress, checkpoint_every, chunk, cache_dir, strategy, info, prepared: as `flaxray.run`'s.
    Returns:
      A `RaceResult`: its folder, race.json's record, each arch's units and what was reused.
    """
    check(study, round_seeds, budget, futility)
    out = Path(out)
    prepared = prepared or prepare(study, out, progress=progress, checkpoint_every=checkpoint_every, chunk=chunk,
                                   cache_dir=cache_dir, strategy=strategy)
    trained, reused = {a: [] for a in study.archs}, []

    def values_of(arch, block):
        (group,), was_reused = units.train_unit(arch, prepared.configs[arch], study.settings, block,
                                                block_dir(out, arch, block), prepared.data, prepared.dataset,
                                                progress=progress, checkpoint_every=checkpoint_every, chunk=chunk,
                                                strategy=strategy)
        trained[arch].append(group)
        reused.extend([f"{arch} seeds {block[0]}-{block[-1]}"] if was_reused else [])
        return ranking.per_seed_values(group.history, diverged=group.diverged > 0)[ranking.RANK_KEY]

    def record_round(r):  # a killed race leaves the rounds it finished in race.json
        results.write_json(out / RACE_JSON, {"status": "running", "rounds": rounds_so_far + [r]})
        rounds_so_far.append(r)
        if progress and not results.elsewhere():
            gone = ", ".join(f"{a} (p {p:.2g} vs {b})" for a, (b, p) in r["eliminated"].items()) or "none"
            tie = f"; into the tie by futility: {', '.join(r['futile'])}" if r["futile"] else ""
            print(f"round {r['round']}: {len(r['survivors'])} archs at {r['seeds']} seeds, out: {gone}{tie}", flush=True)
        if on_round:
            on_round(r)

    rounds_so_far: list = []
    out.mkdir(parents=True, exist_ok=True)
    record = evidence(run_rounds(values_of, study.archs, study.seeds, round_seeds=round_seeds, epochs=study.epochs,
                                 budget=budget, alpha=1 - study.confidence, futility=futility, on_round=record_round),
                      study.confidence)
    record.update(status="complete", spec=study.record(), round_seeds=round_seeds, budget=budget,
                  alpha=1 - study.confidence, planned_looks=looks(len(study.seeds), round_seeds),
                  environment=results.environment(), data=prepared.dataset.summary, **dict(info or {}))
    results.write_json(out / RACE_JSON, record)
    groups = {a: merged(blocks) for a, blocks in trained.items() if blocks}
    units.write_curves(out / "curves.csv", list(groups.values()))
    analysis = analyse({a: g.history for a, g in groups.items()},
                       baseline=diagnose.baseline_loss(prepared.dataset.train.y,
                                                       next(iter(groups.values())).config.class_weight),
                       confidence=study.confidence, seeds={a: g.seeds for a, g in groups.items()})
    if not results.elsewhere():  # a multi-process race: process 0 writes the report
        write_report(out, record, analysis, study, prepared.dataset)
    return RaceResult(out, record, trained, reused)


def check(study, round_seeds: int, budget: float | None, futility: float = FUTILITY) -> None:
    """The race's own refusals, one line each, before anything is trained."""
    if study.decompose or study.test or study.n_settings > 1:
        raise FlaxrayError("--race compares archs at one setting (one value of each of --lr, --dropout, "
                           "--weight-decay, --momentum, --early-stopping), without --decompose")
    if len(study.archs) < 2:
        raise FlaxrayError("--race needs at least two archs")
    if not 1 <= round_seeds <= len(study.seeds):
        raise FlaxrayError(f"--round-seeds must be between 1 and --max-seeds ({len(study.seeds)}), got {round_seeds}")
    if not 0 <= futility < 1:
        raise FlaxrayError(f"--futility must be at least 0 (0: off) and below 1, got {futility:g}")
    first = len(study.archs) * round_seeds * study.epochs
    if budget is not None and budget < first:
        raise FlaxrayError(f"--budget {budget:g} seed-epochs does not cover round 1: {len(study.archs)} archs x "
                           f"{round_seeds} seeds x {study.epochs} epochs = {first}")
