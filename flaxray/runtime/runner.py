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

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flaxray.runtime import programs, scale
from flaxray.core import strategy as strategies
from flaxray.runtime.checkpoint import DEFAULT_EVERY
from flaxray.core.counts import counts_type
from flaxray.errors import FlaxrayError
from flaxray.analysis.metrics import history_from_counts, mask_diverged
from flaxray.core.train import TrainConfig, check_batch_size, check_lr, check_rate, config_record, pad_to_batches


def default_class_names(num_classes: int) -> tuple[str, ...]:
    return ("NORMAL", "PNEUMONIA") if num_classes == 2 else tuple(str(c) for c in range(num_classes))


def counts_to_numpy(counts) -> dict[str, dict[str, np.ndarray]]:
    """{"train": counts, "val": counts} of device arrays -> nested dict of numpy arrays (gathered from
    every process's seeds when there are several: `flaxray.runtime.hosts`)."""
    from flaxray.runtime.hosts import gather

    return {split: {k: np.asarray(v) for k, v in gather(c._asdict()).items()} for split, c in counts.items()}


def train_seeds(config: TrainConfig, data, seeds: Sequence[int], *, lrs: Sequence[float] | None = None,
                dropouts: Sequence[float] | None = None, weight_decays: Sequence[float] | None = None,
                class_names: Sequence[str] | None = None, progress: bool = True, desc=None, checkpoint_dir=None,
                checkpoint_every: int | str = DEFAULT_EVERY, max_seeds_per_chunk: int | None = None, devices=None,
                strategy=None, cache_dir=None):
    """Train `seeds` together, one jitted call per epoch (for the progress bar and checkpoints).

    `lrs` gives each seed its own learning rate (default: `config.lr` for all), `dropouts` its own
    dropout rate (replacing the arch's; default `config.dropout`, None: the arch's own rates for all)
    and `weight_decays` its own weight decay (default `config.weight_decay`); a seed may appear
    several times with different settings. One compiled program serves every value. Returns the
    final per-seed `SeedState` (leading seed axis) and a Keras-style History whose values have shape (seeds, epochs), NaN from the epoch a seed
    diverged in (`states.diverged`); its metrics are `flaxray.analysis.metrics`' for `class_names`. Same
    functions as `make_train(config).train`, so the same curves.

    Seeds that do not fit in the device memory together are trained in chunks, one after another
    (the bytes a seed costs against the free memory: `scale.bytes_per_seed`'s estimate, or near the
    memory XLA's figure for the compiled program, `compiled_bytes_per_seed`, of the chosen strategy's
    program where that is map or groups; `max_seeds_per_chunk` caps a chunk), and
    each chunk's seeds are split over `devices` (default: all), the count padded to a multiple of
    them with copies of the last seed, which are dropped (in groups of K, chunks that fill the memory
    hold whole groups, not a group padded past the plan). With several chunks the returned states
    are numpy arrays on the host (typed keys on the CPU).

    `strategy` says how a chunk's seeds share a device (`flaxray.core.strategy`): "vmap", "map", a group
    size K, or "auto" (default: $FLAXRAY_STRATEGY, else auto), which probes the candidates here and
    remembers the fastest in `cache_dir` (default $FLAXRAY_CACHE or ~/.cache/flaxray). A run with
    `checkpoint_dir` records its chunk size and strategy there and keeps them when resumed.

    With `checkpoint_dir`, every seed's state and the metrics' statistics so far are saved there with
    orbax by `checkpoint_every` (N epochs, or a wall time such as "5min": `flaxray.runtime.checkpoint.every`;
    0: never) and after the last epoch, and a run finds its latest checkpoint there and continues
    from it, to the same curves; with a progress bar it says what share of the time the saves took. While it trains, a first Ctrl-C stops
    it after the current epoch, saved (in the last, it raises `flaxray.runtime.checkpoint.Stopped`, which holds
    the result); a second one stops it at once (the last checkpoint stays valid).
    """
    from flaxray.runtime import checkpoint, hosts

    checkpoint.every(checkpoint_every)  # a bad policy fails before anything trains
    seeds = [int(s) for s in seeds]
    lanes = {name: [None if v is None else float(v)
                    for v in ([getattr(config, name)] * len(seeds) if values is None else values)]
             for name, values in (("lr", lrs), ("dropout", dropouts), ("weight_decay", weight_decays))}
    if any(len(v) != len(seeds) for v in lanes.values()) or not seeds:
        raise ValueError(f"need one learning rate, dropout and weight decay per seed and at least one seed, got "
                         f"{[len(v) for v in lanes.values()]} for {len(seeds)}")
    if len({d is None for d in lanes["dropout"]}) > 1:
        raise ValueError("dropouts must replace every seed's rates or none's (None for all)")
    for lr, dropout, decay in zip(*lanes.values()):
        check_lr(lr)
        check_rate(decay, "--weight-decay")
        if dropout is not None:
            check_rate(dropout, "--dropout", high=1.0)
    # The program: rates replaced if any is given, weight decay on if any seed decays (0 adds exactly 0).
    config = dataclasses.replace(config, dropout=lanes["dropout"][0], weight_decay=max(lanes["weight_decay"]))
    lanes = [tuple(v) for v in zip(*lanes.values())]  # (lr, dropout, weight decay) of each seed
    class_names = tuple(class_names or default_class_names(config.num_classes))
    if len(class_names) != config.num_classes:
        raise FlaxrayError(f"{len(class_names)} class names for a config of {config.num_classes} classes")
    check_batch_size(config, data.x_train.shape[0])
    devices = jax.devices() if devices is None else list(devices)
    progress = progress and hosts.is_primary()
    local = [d for d in devices if d.process_index == jax.process_index()] or jax.local_devices()
    free = scale.free_memory(local[0])
    planned, per_seed, source = programs.plan(config, data, len(seeds), free, len(devices))
    asked = strategies.default() if strategy is None else strategies.parse(strategy)
    recorded = _recorded_plan(checkpoint_dir, len(seeds))
    if recorded is None:
        size = hosts.agree(_cap(planned, max_seeds_per_chunk, len(devices)))  # process 0's plan, on every process
        chosen = programs.choose_strategy(config, data, asked, min(size, len(seeds)), devices, cache_dir=cache_dir)
        if source == "compiled" and chosen["strategy"] not in (strategies.VMAP, strategies.LOOP):
            # Planned near the memory by vmap's figure, the most a strategy keeps at once: the chosen one's own.
            planned, per_seed, source = programs.plan(config, data, len(seeds), free, len(devices), chosen["strategy"])
            size = hosts.agree(_cap(planned, max_seeds_per_chunk, len(devices)))
        whole = strategies.multiple(chosen["strategy"]) * len(devices)
        if size < len(seeds) and size >= whole:  # chunks fill the memory: a padded group would overfill it
            size -= size % whole
        if checkpoint_dir is not None:  # atomic: a kill mid-write cannot break a resume
            from flaxray import results

            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            results.write_json(Path(checkpoint_dir) / PLAN, {
                "seeds_per_chunk": size, "strategy": chosen["strategy"], "strategy_source": chosen["source"],
                **({"probe_s": chosen["times"]} if chosen.get("times") else {})})
    else:
        size, chosen = recorded["seeds_per_chunk"], {"strategy": recorded["strategy"], "source": "recorded"}
    parts = scale.chunks(len(seeds), size)
    if progress and (len(parts) > 1 or len(devices) > 1):
        print(scale.describe(len(seeds), size, per_seed, free, len(devices), source), flush=True)
    if progress and chosen["source"] in ("probed", "probed here before", "recorded"):
        print(f"{desc or config.arch}: {strategies.describe(chosen, -(-min(size, len(seeds)) // len(devices)))}",
              flush=True)
    done, began = [], time.monotonic()
    for k, part in enumerate(parts):
        folder = checkpoint_dir
        if checkpoint_dir is not None and len(parts) > 1:
            folder = Path(checkpoint_dir) / f"chunk-{k}"
        label = (desc or config.arch) + (f" [{k + 1}/{len(parts)}]" if len(parts) > 1 else "")
        done.append(_train_chunk(config, data, seeds[part], lanes[part], devices, class_names, progress=progress,
                                 desc=label, checkpoint_dir=folder, checkpoint_every=checkpoint_every,
                                 strategy=chosen["strategy"]))
        if done[-1][3] and k + 1 < len(parts):  # a Ctrl-C in a chunk's last epoch stops before the next
            raise KeyboardInterrupt(f"stopped after chunk {k + 1} of {len(parts)}, saved in {checkpoint_dir}")
    if checkpoint_dir is not None and any(saves for _, _, (saves, _), _ in done):
        from flaxray import results

        results.write_json(Path(checkpoint_dir) / SAVES, {  # what this call's checkpoints cost it
            "checkpoints": sum(n for _, _, (n, _), _ in done), "held_s": sum(s for _, _, (_, s), _ in done),
            "wall_s": time.monotonic() - began})
    if len(done) == 1:
        result = done[0][:2]
    else:
        result = (jax.tree.map(lambda *parts: _host_concat(parts), *[s for s, *_ in done]),
                  {key: np.concatenate([h[key] for _, h, *_ in done]) for key in done[0][1]})
    if done[-1][3]:
        raise checkpoint.Stopped(f"stopped after the last epoch, saved in {checkpoint_dir}", result)
    return result


PLAN = "chunks.json"  # a checkpointed run's seeds per chunk and strategy
SAVES = "saves.json"  # the last run's checkpoints: how many, how long they held training up, its wall time


def _cap(planned: int, cap: int | None, n_devices: int) -> int:
    """The seeds per chunk: `planned`, capped by `cap` rounded up to the devices."""
    if cap is None:
        return planned
    if cap < 1:
        raise FlaxrayError(f"max_seeds_per_chunk must be >= 1, got {cap}")
    return min(planned, -(-cap // n_devices) * n_devices)


def _recorded_plan(checkpoint_dir, n_seeds: int) -> dict | None:
    """The chunk size and strategy the run in `checkpoint_dir` was started with, so a resume finds its
    chunks' checkpoints again and continues in the same program; None for a fresh run. (A run from
    before the plan was always written: chunks.json only with several chunks, and vmap.)"""
    if checkpoint_dir is None:
        return None
    path = Path(checkpoint_dir) / PLAN
    if path.exists():
        recorded = json.loads(path.read_text())
        return {"seeds_per_chunk": int(recorded["seeds_per_chunk"]),
                "strategy": strategies.parse(recorded.get("strategy", strategies.VMAP))}
    if Path(checkpoint_dir).exists() and any(Path(checkpoint_dir).iterdir()):
        return {"seeds_per_chunk": n_seeds, "strategy": strategies.VMAP}  # checkpointed in one chunk
    return None


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


def _train_chunk(config: TrainConfig, data, seeds: list[int], lanes: list[tuple], devices, class_names, *,
                 progress, desc, checkpoint_dir, checkpoint_every, strategy):
    """`train_seeds` for seeds that fit on `devices` together: the seed axis split over them, each
    device's seeds in `strategy`; `lanes` holds each seed's (lr, dropout, weight decay)."""
    from tqdm.auto import tqdm

    from flaxray.runtime import checkpoint, hosts

    program = programs.program_config(config)  # one compile serves every rate and epoch
    mesh = scale.seed_mesh(devices)
    n = len(seeds)
    whole = len(devices) * strategies.multiple(strategy)  # every device the same count of whole groups
    padded = scale.pad_seeds(seeds, whole), scale.pad_seeds(lanes, whole)
    run_epoch = programs.compiled(program)[2] if mesh is None and n == 1 else programs.epoch(program, strategy, mesh)
    data = scale.replicate(mesh, data)
    states = programs.initial_states(config, data, padded[0], padded[1], mesh)
    epochs = []  # per epoch, every split's statistics as (seeds,) numpy arrays: the same fresh or resumed
    saver, (every_epochs, every_s) = None, checkpoint.every(checkpoint_every)
    if checkpoint_dir is not None and (every_epochs or every_s):
        meta = {"config": config_record(config), "seeds": seeds, "lrs": [lane[0] for lane in lanes]}
        if config.dropout is not None or config.weight_decay:
            meta["dropouts"], meta["weight_decays"] = [lane[1] for lane in lanes], [lane[2] for lane in lanes]
        if len(padded[0]) > n:
            meta["padded_to"] = len(padded[0])  # the states saved hold the padding seeds too
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
    start, began = len(epochs), time.monotonic()
    last_save, saving, saves, stop = began, 0.0, 0, False
    try:
        with checkpoint.deferred_interrupt(enabled=saver is not None) as interrupted, tqdm(
            range(start, config.epochs), initial=start, total=config.epochs, desc=desc, unit="epoch",
            disable=not progress,
        ) as bar:
            for epoch in bar:
                states, counts = run_epoch(states, data)
                epochs.append({s: {k: v[:n] for k, v in c.items()} for s, c in counts_to_numpy(counts).items()})
                died = int(np.count_nonzero(np.asarray(hosts.gather(states.diverged))[:n]))  # every process: a collective
                if progress:  # the curves themselves are computed once, at the end, from every epoch's statistics
                    val = history_from_counts(epochs[-1], class_names)["val_loss"]
                    bar.set_postfix(val_loss=f"{np.mean(val):.4f}", seeds=n, diverged=died)
                stop = saver is not None and hosts.anyone(interrupted())  # every process stops after the same epoch
                due = saver is not None and (
                    every_epochs and (epoch + 1) % every_epochs == 0 or epoch + 1 == config.epochs or stop
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
    states = hosts.gather(states)  # several processes: each holds only its seeds; numpy on every process
    if len(padded[0]) > n:
        states = jax.tree.map(lambda a: a[:n], states)
    history = history_from_counts(_stack(epochs), class_names)
    return states, mask_diverged(history, np.asarray(states.diverged)), (saves, saving), stop


def evaluate_seeds(config: TrainConfig, states, x, y) -> dict[str, np.ndarray]:
    """The metrics' statistics of every seed's final model (`states`, leading seed axis) on images `x`
    with labels `y`, leading seed axis (`flaxray.analysis.metrics` turns them into numbers)."""
    xd, yd, mask = pad_to_batches(x, y, config.eval_batch_size)
    evaluate = programs.compiled(programs.program_config(config))[3]
    return {k: np.asarray(v) for k, v in evaluate(states.params, states.batch_stats, xd, yd, mask)._asdict().items()}


def predict(config: TrainConfig, states, x) -> np.ndarray:
    """Every seed's predicted probabilities on images `x`: (seeds, N) of the positive class for two
    classes, (seeds, N, C) for more."""
    xd, _, _ = pad_to_batches(x, np.zeros(len(x)), config.eval_batch_size)
    probs = programs.compiled(programs.program_config(config))[4](states.params, states.batch_stats, xd)
    return np.asarray(probs)[:, : len(x)]
