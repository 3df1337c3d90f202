"""The architecture search as library calls: train a catalogue resumably, then analyse it.

    runs = train_catalogue(configs, data, seeds, "runs/search", data_summary=dataset.summary)
    analysis = analyse(runs.histories, baseline=diagnose.baseline_loss(dataset.train.y))
    report.write_report("runs/search", analysis, ...)

Each arch's curves live in `<out>/archs/<arch>/curves.csv`, its seeds' trained parameters in
`<out>/archs/<arch>/params/` (`flaxray.trained`), with a `run.json` written last, so a
finished arch is read back instead of retrained, and an interrupted one is trained again.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from flaxray import diagnose, results, stats
from flaxray.errors import FlaxrayError
from flaxray.models import NOTES_STACKS, known_archs, parse_arch
from flaxray.train import SOURCES, DeviceData, TrainConfig
from flaxray.trained import PARAMS, save_trained



def distinct_stacks(names) -> tuple[list[str], dict[str, str]]:
    """`names` without the ones whose stack equals another's: (kept, {dropped: the same stack's kept name}).

    `pyramid_d02_plain` is `pyramid_plain` (without dropout the rate is gone): training both
    gives bit-identical curves, so the default catalogue keeps the shorter name.
    """
    kept, same = {}, {}
    for name in sorted(names, key=lambda n: (len(n), n)):
        blocks = parse_arch(name)
        if name in kept:
            continue
        if blocks in kept.values():
            same[name] = next(k for k, v in kept.items() if v == blocks)
        else:
            kept[name] = blocks
    return [n for n in names if n in kept], same


# Every named dense stack of the notes, with and without BatchNorm/Dropout (`NAME_plain`), each
# distinct stack once: 16 names, 14 stacks (SAME_STACK lists the two left out). The registry's CNNs
# are chosen with --arch: on a CPU they cost several times a dense stack per epoch.
DENSE_NAMES = [n for n in known_archs() if n.removesuffix("_plain") in NOTES_STACKS]
DEFAULT_CATALOGUE, SAME_STACK = distinct_stacks(DENSE_NAMES)
DEFAULT_CATALOGUE = tuple(DEFAULT_CATALOGUE)
TOTAL = "all"  # the decomposition's run where every source of randomness varies


class Runs(NamedTuple):
    """What `train_catalogue` returns: Histories (seeds, epochs) by arch, and by arch and source."""

    histories: dict[str, dict[str, np.ndarray]]
    decomposition: dict[str, dict[str, dict[str, np.ndarray]]]  # arch -> source or TOTAL -> History
    seconds: dict[str, float]  # training time of each run trained now (resumed runs are absent)
    resumed: list[str]  # runs read back from disk


def arch_dir(out, arch: str, source: str | None = None) -> Path:
    """`<out>/archs/<arch>` (a spec string made file-safe), or its `only-<source>` sub-folder."""
    folder = Path(out) / "archs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", arch)
    return folder if source is None else folder / f"only-{source}"


def fingerprint(config: TrainConfig, seeds: Sequence[int], data_summary: Mapping) -> dict:
    """What a saved run must match to be reused: the config, the seeds and the data."""
    data_keys = ("source", "fingerprint", "image_size", "channels", "val_fraction", "split_seed")
    return results.jsonable({"config": dataclasses.asdict(config), "seeds": list(seeds),
                             "data": {k: data_summary.get(k) for k in data_keys}})


def _differences(saved: Mapping, wanted: Mapping, prefix="") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} here, {b!r} asked")
    return out


def train_resumable(config: TrainConfig, data: DeviceData, seeds: Sequence[int], folder, *, data_summary: Mapping,
                    retrain: bool = False, progress: bool = True, desc: str | None = None,
                    max_seeds_per_chunk: int | None = None):
    """Train `seeds` of `config` into `folder`, or read them back if a finished run is there.

    Returns (History, seconds or None when read back). A finished run made with other settings
    is an error (never silently mixed in); `retrain=True` trains it again regardless.
    """
    from flaxray.train import train_seeds  # jax is imported only when something is trained

    folder = Path(folder)
    done, wanted = folder / "run.json", fingerprint(config, seeds, data_summary)
    if done.exists() and not retrain:
        saved = json.loads(done.read_text())
        if saved.get("fingerprint") != wanted:
            diff = "; ".join(_differences(saved.get("fingerprint", {}), wanted)[:3])
            raise FlaxrayError(f"{folder} was trained with other settings ({diff}); pass --overwrite to "
                               "retrain or choose another --out")
        histories, _ = results.read_curves_csv(folder / "curves.csv")
        return histories[config.arch], None
    folder.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)  # an unfinished run is never taken for a finished one
    start = time.perf_counter()
    states, history = train_seeds(config, data, seeds, progress=progress, desc=desc or config.arch,
                                  max_seeds_per_chunk=max_seeds_per_chunk)
    seconds = time.perf_counter() - start
    results.write_curves_csv(folder / "curves.csv", {config.arch: history}, {config.arch: seeds})
    save_trained(folder / PARAMS, desc or config.arch, config, seeds, states, data.x_train.shape[1:], data_summary)
    results.write_json(done, {"arch": config.arch, "fingerprint": wanted, "seconds": seconds})  # last: marks done
    return history, seconds


def train_catalogue(configs: Mapping[str, TrainConfig], data: DeviceData, seeds: Sequence[int], out, *,
                    data_summary: Mapping, decompose: bool = False, retrain: bool = False,
                    progress: bool = True, max_seeds_per_chunk: int | None = None) -> Runs:
    """Train every arch of `configs` on the same seeds, resumably (see `train_resumable`).

    With `decompose`, each arch is also trained with only one source of randomness varied at a
    time (init, dropout, order: `TrainConfig.vary`); its main run, which must vary all of them,
    is the decomposition's `TOTAL`.
    """
    from tqdm.auto import tqdm

    jobs = [(arch, None) for arch in configs]
    if decompose:
        for arch, config in configs.items():
            if set(config.vary) != set(SOURCES):
                raise FlaxrayError("--decompose varies each source in turn against a run that varies all; "
                                   f"drop --vary (got {','.join(config.vary) or 'none'})")
        jobs += [(arch, source) for arch in configs for source in SOURCES]
    runs = Runs({}, {}, {}, [])
    for arch, source in tqdm(jobs, desc="archs", unit="run", disable=not progress or len(jobs) < 2):
        config = configs[arch] if source is None else dataclasses.replace(configs[arch], vary=(source,))
        name = arch if source is None else f"{arch} only {source}"
        history, seconds = train_resumable(config, data, seeds, arch_dir(out, arch, source),
                                           data_summary=data_summary, retrain=retrain, progress=progress,
                                           desc=name, max_seeds_per_chunk=max_seeds_per_chunk)
        if seconds is None:
            runs.resumed.append(name)
        else:
            runs.seconds[name] = seconds
        if source is None:
            runs.histories[arch] = history
        else:
            runs.decomposition.setdefault(arch, {})[source] = history
    for arch in runs.decomposition:
        runs.decomposition[arch][TOTAL] = runs.histories[arch]
    return runs


def _final_val_loss(history) -> np.ndarray:
    return stats.per_seed(history, "val_loss", "final", lower_is_better=True)


def analyse(histories: Mapping[str, Mapping[str, np.ndarray]], *, baseline: float = float(np.log(2)),
            decomposition: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]] | None = None,
            confidence: float = 0.95, thresholds: diagnose.Thresholds = diagnose.THRESHOLDS) -> dict:
    """Everything the report shows, as plain data (numpy arrays and floats).

    Keys: diagnosis {arch: {labels, fractions, measures}}, summary {arch: `stats.summarize_seeds`},
    values {arch: {key: per-seed values}}, ranking (`stats.rank_robust` rows, best first, with
    p_next / p_next_low / p_next_high = P(this arch improves on the next one) and one_seed_win),
    improvement (`stats.improvement_matrix` of final val loss, in ranking order), one_seed
    (the notes' one-run-per-arch choice: win probabilities, the winner of the mean, the chance a
    single seed picks it, and the winner of each seed index), decomposition {arch:
    `stats.variance_shares`} when given, criterion (what ranks), thresholds, baseline, confidence.
    """
    if not histories:
        raise FlaxrayError("no architecture to analyse")
    diagnosis, summary, values = {}, {}, {}
    for arch, history in histories.items():
        labels, measures = diagnose.diagnose(history, baseline=baseline, thresholds=thresholds)
        diverged = labels == "diverged"
        diagnosis[arch] = {"labels": list(labels), "fractions": diagnose.fractions(labels), "measures": measures}
        summary[arch] = stats.summarize_seeds(history, diverged=diverged, confidence=confidence)
        values[arch] = {
            key: np.where(diverged, np.nan, stats.per_seed(history, hist_key, kind,
                                                           stats.LOWER_IS_BETTER.get(hist_key[4:], False)))
            for key, hist_key, kind in stats.SEARCH_METRICS if hist_key in history
        }

    ranking = stats.rank_robust(summary)
    order = [r["arch"] for r in ranking]
    scores = {a: values[a][stats.RANK_KEY] for a in order}
    matrix = stats.improvement_matrix(scores, confidence=confidence)
    wins = stats.one_seed_win_probability(scores)
    for i, row in enumerate(ranking):
        nxt = i + 1 < len(ranking)
        row["p_next"], row["p_next_low"], row["p_next_high"] = (
            (matrix["p"][i, i + 1], matrix["low"][i, i + 1], matrix["high"][i, i + 1]) if nxt else (np.nan,) * 3)
        row["one_seed_win"] = wins[row["arch"]]
        row["good"] = diagnosis[row["arch"]]["fractions"]["good"]

    mean_winner = stats.winner_of_mean(scores)
    one_seed = {"win_probability": wins, "winner_of_mean": mean_winner, "p_picks_winner_of_mean": wins[mean_winner]}
    n_seeds = {len(v) for v in scores.values()}
    if len(n_seeds) == 1 and len(order) > 1:
        # The same seed index for every arch: which arch each single seed would have crowned.
        table = np.stack([stats.as_scores(scores[a]) for a in order])
        one_seed["winner_by_seed"] = [order[i] for i in np.argmin(table, axis=0)]

    out = {"criterion": stats.RANK_CRITERION, "confidence": confidence, "baseline_loss": baseline,
           "thresholds": dataclasses.asdict(thresholds), "diagnosis": diagnosis, "summary": summary,
           "values": values, "ranking": ranking, "improvement": matrix, "one_seed": one_seed}
    if decomposition:
        out["decomposition"] = {
            arch: stats.variance_shares({s: _final_val_loss(h) for s, h in runs.items()}, total=TOTAL,
                                        confidence=confidence)
            for arch, runs in decomposition.items()
        }
    out["verdict"] = verdict(out)
    return out


def _pct(p: float) -> str:
    return f"{100 * p:.0f} %"


def verdict(analysis: Mapping) -> str:
    """A few sentences naming the most robust arch, by how much, and how sure that is (markdown)."""
    ranking, conf = analysis["ranking"], analysis["confidence"]
    first = ranking[0]
    s = analysis["summary"][first["arch"]][stats.RANK_KEY]
    diag = analysis["diagnosis"][first["arch"]]["labels"]
    others = ", ".join(f"{diag.count(lab)} {lab}" for lab in diagnose.LABELS if lab != "good" and diag.count(lab))
    health = f"{diag.count('good')} of {len(diag)} seeds diagnosed good{' (' + others + ')' if others else ''}"
    about = (f"IQM {s['iqm']:.4g} (95 % CI {s['iqm_ci_low']:.4g}–{s['iqm_ci_high']:.4g}) over {s['n']} seeds, "
             f"worst seed {s['worst']:.4g}")
    if len(ranking) == 1:
        return (f"**{first['arch']}** is the only architecture, so nothing is ranked: {about}; {health}.")
    second = ranking[1]
    s2 = analysis["summary"][second["arch"]][stats.RANK_KEY]
    lead = second["criterion"] - first["criterion"]
    relative = f", {lead / second['criterion']:.1%}" if np.isfinite(lead) and second["criterion"] > 0 else ""
    text = (f"**{first['arch']}** holds best across seeds by the {analysis['criterion']}: "
            f"{first['criterion']:.4g} against {second['criterion']:.4g} for the runner-up **{second['arch']}** "
            f"({lead:.3g} lower{relative}). {first['arch']}: {about}; {health}. {second['arch']}: IQM "
            f"{s2['iqm']:.4g} (CI {s2['iqm_ci_low']:.4g}–{s2['iqm_ci_high']:.4g}), worst seed {s2['worst']:.4g}. "
            f"P({first['arch']} improves on {second['arch']}) = {first['p_next']:.2f} "
            f"({100 * conf:g} % CI {first['p_next_low']:.2f}–{first['p_next_high']:.2f})")
    if np.isfinite(first["p_next_low"]) and first["p_next_low"] > 0.5:
        text += ": the CI excludes 0.5, so the lead holds over these seeds."
    else:
        text += ": the CI includes 0.5, so on these seeds the two are not told apart."
    one = analysis["one_seed"]
    text += (f" The winner of the mean is **{one['winner_of_mean']}**; choosing from one seed per arch, as the "
             f"notes did, picks it with probability {_pct(one['p_picks_winner_of_mean'])}")
    if "winner_by_seed" in one:
        k = one["winner_by_seed"].count(one["winner_of_mean"])
        text += f" (seed by seed here: {k} of {len(one['winner_by_seed'])})"
    likeliest = max(one["win_probability"], key=one["win_probability"].get)
    if likeliest != one["winner_of_mean"]:
        rank = next(r["rank"] for r in ranking if r["arch"] == likeliest)
        text += (f"; the one-seed method's likeliest pick is **{likeliest}** "
                 f"({_pct(one['win_probability'][likeliest])}), ranked {rank} of {len(ranking)} here")
    return text + "."
