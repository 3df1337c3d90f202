"""Part d of `benchmarks.gpu`: MedMNIST v2's ResNet-18 recipe (`--recipe medmnist`) on the embedded 28x28
data, each seed's test ACC and AUC and the seed ensemble's beside the published PneumoniaMNIST row.

    part = medmnist_part(tiny=False, until=time.monotonic() + 90, out=Path("runs/gpu"), notes=[], progress=False)
    plan(epoch_s=0.8, compile_s=25, left=70, probed=8)   # -> (seeds, epochs) that fit: here (8, 56)

Always the embedded data, whatever --data the other parts read: it is PneumoniaMNIST's own size (28x28,
and the same source, Kermany et al.'s chest X-rays), which the published row was trained at. Not
PneumoniaMNIST's own split, though (flaxray's patient split: train 4164 / val 1042 / test 618 against
its 4708 / 524 / 624), so the row stands beside the published one, not as a replication of it.

Seeds x epochs come from a probe of the study's own programs (`probe`: 4 epochs at 8 seeds, the
last timed), planned by `plan`: the recipe's 100 epochs where they fit, more seeds where they fit with
room, else fewer epochs, the milestones then at 50 % and 75 % of those (`--recipe medmnist` takes
them as fractions of --epochs). The strategy is vmap, asked: auto probes each program anew (its cache
key holds the recipe, whose milestones follow the epochs), compiling every candidate at two lengths,
more than this part's share (50-130 s a program on the CPU, RESULTS.md issue 31). No checkpoints:
every seed's final (best val AUC) parameters are saved anyway, and a save of 8 ResNet-18 states with
Adam's moments and the best copy is ~1.4 GB that nothing here reads.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.gpu_parts import command, ended, within

ARCH, EPOCHS, PROBE_SEEDS, PROBE_EPOCHS, MAX_SEEDS, STRATEGY = "resnet18", 100, 8, 4, 32, "vmap"
# --tiny: a dense stand-in (a conv program compiles ~18 s on 2 CPU cores, a dense one ~7 s), 2 seeds,
# 2 epochs: the milestone at epoch 1 is run, and the probe's program is the study's (no second compile)
TINY = {"arch": "dense:8", "seeds": 2, "epochs": 2}
MARGIN_S = 20  # of the part's time: the test prediction's compilation, reading the params back, the reports
PUBLISHED = {"accuracy": 0.854, "auc": 0.944,
             "source": "MedMNIST v2 (Yang et al., Scientific Data 2023), ResNet-18 (28), PneumoniaMNIST"}


def plan(epoch_s: float, compile_s: float, left: float, probed: int, epochs: int = EPOCHS,
         most: int = MAX_SEEDS) -> tuple[int, int]:
    """(seeds, epochs) for `left` seconds from an epoch of `epoch_s` at `probed` seeds and a compilation of
    `compile_s`. Time linear in the seeds (vmap's time a seed shrinks as S grows on a GPU: this errs short).
    More seeds than probed only with the recipe's whole length and room for a second compilation; the
    probed seeds at the whole length without one (the probe compiled that program); else fewer epochs,
    compiled again (their milestones differ)."""
    more = int((left - compile_s) / (epochs * epoch_s / probed))
    if more > probed:
        return min(most, more), epochs
    if left >= epochs * epoch_s:
        return probed, epochs
    return probed, max(1, min(epochs, int((left - compile_s) / epoch_s)))


def probe(argv, seeds: int, out: Path) -> tuple[float, list[float]]:
    """Seconds of the initial states and of each of `PROBE_EPOCHS` epochs of the study `argv` describes
    (`studies.seed_variance`'s flags) at `seeds` seeds, run as the runner runs them: the same config,
    strategy and shapes, and between epochs the same host-side decisions (`flaxray.runtime.stopping`),
    which hand the states back committed to the device: jit compiles the epoch again for the first epoch
    after one and again for the next (three programs on one device, measured), so the probe compiles
    every one the study will run, and the study in this process reuses them all."""
    import jax
    import numpy as np

    from flaxray.analysis.metrics import history_from_counts
    from flaxray.core import settings
    from flaxray.runtime import programs, runner, scale, stopping
    from flaxray.study.study import prepare as ready
    from studies import _cli, _recipe, seed_variance

    args = seed_variance.parser().parse_args(argv)
    _recipe.apply_preset(args, _cli.given_flags(seed_variance.parser, argv))  # as the command line does
    study = _cli.study_spec(args, args.arch, "seed_variance")
    got = ready(study, out / "medmnist-probe", progress=False, checkpoint_every=0, overwrite=True)
    config, mesh, ids = got.configs[args.arch[0]], scale.seed_mesh(), list(range(seeds))
    lanes = runner.lanes_of(config, ids, settings.cross(study.settings) * seeds)
    data, run_epoch = scale.replicate(mesh, got.data), programs.epoch(config, STRATEGY, mesh)
    watch, names, done, times = stopping.watch(config, lanes.patience), got.dataset.class_names, [], []
    began = time.monotonic()
    states = jax.block_until_ready(programs.initial_states(config, data, ids, lanes, mesh))
    init_s = time.monotonic() - began
    for _ in range(PROBE_EPOCHS):
        began = time.monotonic()
        states, counts = jax.block_until_ready(run_epoch(states, data))
        done.append(runner.counts_to_numpy(counts))
        if watch is not None:
            curves = {s: {k: np.stack([e[s][k] for e in done], axis=1) for k in done[0][s]} for s in done[0]}
            states, _ = watch.after_epoch(states, history_from_counts(curves, names), seeds)
        times.append(time.monotonic() - began)
    return init_s, times


def medmnist_part(tiny: bool, until: float, out: Path, notes: list, progress: bool) -> dict:
    from flaxray import results
    from flaxray.analysis import stats
    from flaxray.analysis.compare import ensemble, metrics_from_probs
    from flaxray.core.recipe import PRESETS, milestones_at
    from flaxray.runtime import predict
    from flaxray.study.trained import load_run_data, load_trained
    from studies import seed_variance

    arch, probed, cap = (TINY["arch"], TINY["seeds"], TINY["epochs"]) if tiny else (ARCH, PROBE_SEEDS, EPOCHS)
    folder = out / "medmnist"
    flags = ["--arch", arch, "--recipe", "medmnist", "--strategy", STRATEGY, "--checkpoint-every", "0",
             "--out", str(folder), "--overwrite"] + ["--no-progress"] * (not progress)
    part = {"arch": arch, "published": PUBLISHED}
    times, stopped = within(until, lambda: probe(flags + ["--seeds", str(probed), "--epochs", str(cap)], probed, out))
    if stopped:
        return ended(part, notes, "medmnist's probe", None, True)
    init_s, epoch_times = times
    epoch_s = epoch_times[-1]  # the last: every program compiled by then
    compile_s = max(0.0, init_s + sum(epoch_times) - len(epoch_times) * epoch_s)
    left = until - time.monotonic() - MARGIN_S
    seeds, epochs = (probed, cap) if tiny else plan(epoch_s, compile_s, left, probed, cap)
    part["plan"] = {"probe_seeds": probed, "epoch_s": epoch_s, "compile_s": compile_s, "left_s": left}
    argv = flags + ["--seeds", str(seeds), "--epochs", str(epochs)]
    part.update(seeds=seeds, epochs=epochs, full_length=epochs == EPOCHS, short_because="--tiny" if tiny else
                "no more fit this part's share of the budget", reused_probe=(seeds, epochs) == (probed, cap),
                command=command("studies.seed_variance", argv),
                milestones=list(milestones_at(PRESETS["medmnist"]["milestone_fractions"], epochs)))
    code, stopped = within(until, lambda: seed_variance.main(argv))
    if code != 0:
        return ended(part, notes, f"medmnist ({seeds} seeds x {epochs} epochs)", code, stopped)
    record, trained = results.read_json(folder / "study.json"), next(iter(load_trained(folder).values()))
    dataset = load_run_data(trained, progress=False)  # the embedded data again, its fingerprint checked
    # One program gives both: each seed's and the ensemble's metrics from the probabilities, binned as the
    # trainer bins its counts (`flaxray.analysis.probs`), so `evaluate_seeds` would give the same ACC and AUC.
    probs = predict(trained.config, trained, dataset.test.x)
    per_seed = metrics_from_probs(probs, dataset.test.y, dataset.class_names)
    joint = metrics_from_probs(ensemble(probs), dataset.test.y, dataset.class_names)
    for key in ("accuracy", "auc"):
        d = stats.describe(per_seed[key], lower_is_better=False)  # CI: bootstrap of the mean over the seeds
        part[key] = {"per_seed": [float(v) for v in per_seed[key]], "mean": d["mean"], "std": d["std"],
                     "ci": [d["ci_low"], d["ci_high"]], "ensemble": float(joint[key])}
    summary = record["summary"][arch]
    part.update(status="complete", train_s=record["train_seconds"][arch], val_auc=summary["final_val_auc"]["mean"],
                data={s: len(getattr(dataset, s).y) for s in ("train", "val", "test")},
                source=dataset.summary["source"])
    part["seed_epochs_per_s"] = seeds * epochs / part["train_s"]
    return part
