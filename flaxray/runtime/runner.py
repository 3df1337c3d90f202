"""The host side of the one trainer: chunks, devices, checkpoints, progress, Ctrl-C.

    states, history = train_seeds(TrainConfig(arch="pyramid"), device_data(dataset), range(16))
    counts = evaluate_seeds(config, states, dataset.test.x, dataset.test.y)
    probs = predict(config, states, dataset.test.x)

`train_seeds` runs `flaxray.core.train.make_train`'s pure functions one epoch per jitted call, for a
progress bar and checkpoints, and returns a Keras-style History with a leading seed axis. Seeds that
do not fit in the device memory together are trained in chunks, and each chunk's seed axis is split
over every device (`flaxray.runtime.scale`); neither changes a seed's curves. Every program (training,
evaluation, prediction) is compiled once per config and shape in a process and reused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flaxray import results
from flaxray.analysis.metrics import history_from_counts, mask_diverged
from flaxray.core import settings, strategy as strategies
from flaxray.core.config import (TrainConfig, check_batch_size, check_data, check_dropout_settings, pad_to_batches,
                                 train_count)
from flaxray.core.counts import counts_type
from flaxray.core.settings import Settings
from flaxray.errors import FlaxrayError
from flaxray.models import Variables
from flaxray.runtime import checkpoint, hosts, plan as plans, programs, scale, stopping
from flaxray.runtime.checkpoint import DEFAULT_EVERY


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """Class names for data that brings none: "0", "1", ..."""
    return tuple(str(c) for c in range(num_classes))


def counts_to_numpy(counts) -> dict[str, dict[str, np.ndarray]]:
    """{"train": counts, "val": counts} of device arrays -> nested dict of numpy arrays (gathered from
    every process's seeds when there are several: `flaxray.runtime.hosts`)."""
    return {split: {k: np.asarray(v) for k, v in hosts.gather(c._asdict()).items()} for split, c in counts.items()}


def lanes_of(config: TrainConfig, seeds: Sequence[int], lanes: Sequence[Settings] | None) -> Settings:
    """Each seed's settings (default: `Settings()` for every seed), checked once (`settings.check_lanes`;
    a dropout rate only for an arch with a dropout layer to set) and stacked into float32 arrays with a
    leading lane axis."""
    lanes = [Settings()] * len(seeds) if lanes is None else list(lanes)
    if len(lanes) != len(seeds) or not seeds:
        raise ValueError(f"need one Settings per seed and at least one seed, got {len(lanes)} for {len(seeds)}")
    settings.check_lanes(lanes)
    check_dropout_settings(config.arch, [lane.dropout for lane in lanes])
    return settings.stack(lanes)


def train_seeds(config: TrainConfig, data, seeds: Sequence[int], lanes: Sequence[Settings] | None = None, *,
                class_names: Sequence[str] | None = None, progress: bool = True, desc=None, checkpoint_dir=None,
                checkpoint_every: int | str = DEFAULT_EVERY, max_seeds_per_chunk: int | None = None, devices=None,
                strategy=None, cache_dir=None):
    """Train `seeds` together, one jitted call per epoch (for the progress bar and checkpoints).

    `lanes` gives each seed its own settings (`flaxray.core.settings.Settings`: learning rate, dropout
    rate replacing the arch's, weight decay; default `Settings()` for all); a seed may appear several
    times with different settings. One compiled program serves every value. Returns the final per-seed
    `SeedState` (leading seed axis) and a Keras-style History whose values have shape (seeds, epochs),
    NaN from the epoch a seed diverged in (`states.diverged`); its metrics are
    `flaxray.analysis.metrics`' for `class_names` (default "0", "1", ...). Same functions as
    `make_train(config).train`, so the same curves.

    Seeds that do not fit in the device memory together are trained in chunks, one after another
    (`flaxray.runtime.plan`; `max_seeds_per_chunk` caps a chunk), and each chunk's seeds are split over
    `devices` (default: all), the count padded to a multiple of them with copies of the last seed,
    which are dropped. With several chunks the returned states are numpy arrays on the host (typed
    keys on the CPU).

    `strategy` says how a chunk's seeds share a device (`flaxray.core.strategy`): "vmap", "map", a group
    size K, or "auto" (default: $FLAXRAY_STRATEGY, else auto), which probes the candidates here and
    remembers the fastest in `cache_dir` (default $FLAXRAY_CACHE or ~/.cache/flaxray). A run with
    `checkpoint_dir` records its plan there and keeps it when resumed.

    With `checkpoint_dir`, every seed's state and the metrics' statistics so far are saved there with
    orbax by `checkpoint_every` (N epochs, or a wall time such as "5min": `flaxray.runtime.checkpoint.every`;
    0: never) and after the last epoch, and a run finds its latest checkpoint there and continues
    from it, to the same curves; with a progress bar it says what share of the time the saves took.
    While it trains, a first Ctrl-C stops it after the current epoch, saved (in the last, it raises
    `flaxray.runtime.checkpoint.Stopped`, which holds the result); a second one stops it at once (the
    last checkpoint stays valid).
    """
    checkpoint.every(checkpoint_every)  # a bad policy fails before anything trains
    plans.check_most(max_seeds_per_chunk)
    seeds = [int(s) for s in seeds]
    lanes = lanes_of(config, seeds, lanes)
    class_names = tuple(class_names or default_class_names(config.num_classes))
    if len(class_names) != config.num_classes:
        raise FlaxrayError(f"{len(class_names)} class names for a config of {config.num_classes} classes")
    check_data(config, data)
    check_batch_size(config, train_count(data))
    programs.check_model(config, data, lanes)
    devices = jax.devices() if devices is None else list(devices)
    progress = progress and hosts.is_primary()
    plan = plans.recorded(checkpoint_dir, len(seeds))
    if plan is None:
        asked = strategies.default() if strategy is None else strategies.parse(strategy)
        plan = plans.make_plan(config, data, lanes, devices, asked, most=max_seeds_per_chunk, cache_dir=cache_dir)
        if checkpoint_dir is not None:  # atomic: a kill mid-write cannot break a resume
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            results.write_json(Path(checkpoint_dir) / plans.PLAN, plan.record())
    parts = scale.chunks(len(seeds), plan.seeds_per_chunk)
    if progress and (len(parts) > 1 or len(devices) > 1) and plan.strategy_source != "recorded":
        print(plan.describe(len(seeds), len(devices)), flush=True)
    if progress and plan.strategy_source in ("probed", "probed here before", "recorded"):
        print(f"{desc or config.arch}: {plan.describe_strategy(len(seeds), len(devices))}", flush=True)
    done, began = [], time.monotonic()
    for k, part in enumerate(parts):
        folder = checkpoint_dir
        if checkpoint_dir is not None and len(parts) > 1:
            folder = Path(checkpoint_dir) / f"chunk-{k}"
        label = (desc or config.arch) + (f" [{k + 1}/{len(parts)}]" if len(parts) > 1 else "")
        done.append(_train_chunk(config, data, seeds[part], jax.tree.map(lambda a: a[part], lanes), devices,
                                 class_names, progress=progress, desc=label, checkpoint_dir=folder,
                                 checkpoint_every=checkpoint_every, strategy=plan.strategy))
        if done[-1].stopped and k + 1 < len(parts):  # a Ctrl-C in a chunk's last epoch stops before the next
            raise KeyboardInterrupt(f"stopped after chunk {k + 1} of {len(parts)}, saved in {checkpoint_dir}")
    plan = plans.measured(plan, done[0].epoch_s, checkpoint_dir, cache_dir)
    if checkpoint_dir is not None and any(c.saves for c in done):
        results.write_json(Path(checkpoint_dir) / SAVES, {  # what this call's checkpoints cost it
            "checkpoints": sum(c.saves for c in done), "held_s": sum(c.held_s for c in done),
            "wall_s": time.monotonic() - began})
    if len(done) == 1:
        result = done[0].states, done[0].history
    else:
        result = (jax.tree.map(lambda *parts: _host_concat(parts), *[c.states for c in done]),
                  {key: np.concatenate([c.history[key] for c in done]) for key in done[0].history})
    if done[-1].stopped:
        raise checkpoint.Stopped(f"stopped after the last epoch, saved in {checkpoint_dir}", result)
    return result


SAVES = "saves.json"  # the last run's checkpoints: how many, how long they held training up, its wall time


class Chunk(NamedTuple):
    """What one chunk's training gives back."""

    states: Any
    history: dict
    saves: int  # checkpoints written
    held_s: float  # seconds they held training up
    stopped: bool  # a Ctrl-C came in its last epoch
    epoch_s: float | None  # the fastest epoch program after the first (which compiles)


def _host_concat(arrays):
    """Concatenate chunks' leaves on the host: numpy, or typed PRNG keys on the CPU device."""
    if jax.dtypes.issubdtype(arrays[0].dtype, jax.dtypes.prng_key):
        cpu = jax.local_devices(backend="cpu")[0]
        return jnp.concatenate([jax.device_put(a, cpu) for a in arrays])
    return np.concatenate([np.asarray(a) for a in arrays])


def _stack(epochs: Sequence[dict]) -> dict:
    """Per-epoch statistics {"train": {field: (S, ...)}, ...} -> one tree of (S, E, ...) arrays."""
    return {split: {k: np.stack([e[split][k] for e in epochs], axis=1) for k in epochs[0][split]}
            for split in epochs[0]}


def _train_chunk(config: TrainConfig, data, seeds: list[int], lanes: Settings, devices, class_names, *,
                 progress, desc, checkpoint_dir, checkpoint_every, strategy) -> Chunk:
    """`train_seeds` for seeds that fit on `devices` together: the seed axis split over them, each
    device's seeds in `strategy`; `lanes` holds each seed's settings (stacked)."""
    from tqdm.auto import tqdm

    mesh = scale.seed_mesh(devices)
    n = len(seeds)
    whole = len(devices) * strategies.multiple(strategy)  # every device the same count of whole groups
    padded, lanes = scale.pad_seeds(seeds, whole), jax.tree.map(lambda a: scale.pad_seeds(a, whole), lanes)
    run_epoch = programs.compiled(config).one_seed if mesh is None and n == 1 else programs.epoch(config, strategy, mesh)
    data = scale.replicate(mesh, data)
    states = programs.initial_states(config, data, padded, lanes, mesh)
    epochs = []  # per epoch, every split's statistics as (seeds,) numpy arrays: the same fresh or resumed
    saver, (every_epochs, every_s) = None, checkpoint.every(checkpoint_every)
    if checkpoint_dir is not None and (every_epochs or every_s):
        meta = {"config": config.record(), "seeds": seeds,
                "settings": {f: np.asarray(v[:n]).tolist() for f, v in lanes._asdict().items() if v is not None}}
        if len(padded) > n:
            meta["padded_to"] = len(padded)  # the states saved hold the padding seeds too
        if hosts.count() > 1:
            meta["processes"] = hosts.count()  # each wrote its own shards: a resume needs as many
        saver = checkpoint.Checkpoints(checkpoint_dir, meta, background=hosts.count() == 1)
        if saver.latest() is not None:
            zeros = counts_type(config.num_classes).zeros(config.num_classes)._asdict()
            template = {s: {k: np.zeros((n, saver.latest(), *np.shape(v)), np.float32) for k, v in zeros.items()}
                        for s in ("train", "val")}
            states, done = saver.restore(states, template)
            epochs = [{s: {k: v[:, e] for k, v in c.items()} for s, c in done.items()}
                      for e in range(saver.latest())]
    watch = stopping.watch(config, lanes.patience)
    finished = False  # every seed stopped early: nothing left to train
    if watch is not None and epochs:  # resumed: the decisions so far, from the curves so far
        states, finished = watch.after_epoch(states, history_from_counts(_stack(epochs), class_names), n)
    start, began, timed = len(epochs), time.monotonic(), []
    last_save, saving, saves, stop = began, 0.0, 0, False
    try:
        with checkpoint.deferred_interrupt(enabled=saver is not None) as interrupted, tqdm(
            range(start, config.epochs), initial=start, total=config.epochs, desc=desc, unit="epoch",
            disable=not progress,
        ) as bar:
            for epoch in bar:
                if finished:
                    break
                states = programs.with_order(config, data, states, padded, epoch)  # a Keras model's: fit's
                began_epoch = time.monotonic()  # the program alone, as the strategy probe times it
                states, counts = jax.block_until_ready(run_epoch(states, data))
                timed.append(time.monotonic() - began_epoch)
                epochs.append({s: {k: v[:n] for k, v in c.items()} for s, c in counts_to_numpy(counts).items()})
                died = int(np.count_nonzero(np.asarray(hosts.gather(states.diverged))[:n]))  # every process: a collective
                if progress:  # the curves themselves are computed once, at the end, from every epoch's statistics
                    val = history_from_counts(epochs[-1], class_names)["val_loss"]
                    bar.set_postfix(val_loss=f"{np.mean(val):.4f}", seeds=n, diverged=died)
                if watch is not None:
                    states, finished = watch.after_epoch(states, history_from_counts(_stack(epochs), class_names), n)
                stop = saver is not None and hosts.anyone(interrupted())  # every process stops after the same epoch
                due = saver is not None and (
                    every_epochs and (epoch + 1) % every_epochs == 0 or epoch + 1 == config.epochs or stop or finished
                    or every_s and hosts.agree(time.monotonic() - last_save >= every_s))  # process 0's clock
                if due:
                    before = time.monotonic()
                    saver.save(epoch + 1, states, _stack(epochs))
                    last_save = time.monotonic()
                    saving, saves = saving + last_save - before, saves + 1
                if stop and epoch + 1 < config.epochs:
                    saver.wait()
                    raise KeyboardInterrupt(f"stopped after epoch {epoch + 1}, saved in {checkpoint_dir}")
        if saver is not None:  # the last write, in the background until now
            before = time.monotonic()
            saver.wait()
            saving += time.monotonic() - before
    finally:
        if saver is not None:
            saver.close()
    if progress and saves:
        spent = time.monotonic() - began
        print(f"{desc}: {saves} checkpoint{'s' * (saves > 1)} held training up for {saving:.1f} s, {saving / spent:.0%} "
              f"of its {spent:.0f} s (host copies; the writes ran beside training)", flush=True)
    if config.recipe.restore_best:  # Keras restores the best epoch's weights at the end, stopped or not
        states = stopping.restore_best(states)
    states = hosts.gather(states)  # several processes: each holds only its seeds; numpy on every process
    if len(padded) > n:
        states = jax.tree.map(lambda a: a[:n], states)
    history = mask_diverged(history_from_counts(_stack(epochs), class_names), np.asarray(states.diverged))
    if states.stopped is not None:
        history = stopping.mask_stopped(history, np.asarray(states.stopped))
    history = {k: np.pad(v, ((0, 0), (0, config.epochs - v.shape[1])), constant_values=np.nan)  # stopped early
               for k, v in history.items()}
    return Chunk(states, history, saves, saving, stop, min(timed[1:], default=None))


def variables_of(states) -> Variables:
    """The model variables of `states`: a `SeedState`, or anything with `.variables` (`flaxray.study.trained`)."""
    return states.variables


def evaluate_seeds(config: TrainConfig, states, x, y) -> dict[str, np.ndarray]:
    """The metrics' statistics of every seed's final model (`states`, leading seed axis: a `SeedState` or a
    `Trained`) on images `x` with labels `y`, leading seed axis (`flaxray.analysis.metrics` turns them
    into numbers)."""
    xd, yd, mask = pad_to_batches(x, y, config.eval_batch_size)
    counts = programs.compiled(config).evaluate(variables_of(states), xd, yd, mask)
    return {k: np.asarray(v) for k, v in counts._asdict().items()}


def predict(config: TrainConfig, states, x) -> np.ndarray:
    """Every seed's predicted probabilities on images `x`: (seeds, N) of the positive class for two
    classes, (seeds, N, C) for more."""
    xd, _, _ = pad_to_batches(x, np.zeros(len(x)), config.eval_batch_size)
    probs = programs.compiled(config).predict(variables_of(states), xd)
    return np.asarray(probs)[:, : len(x)]
