"""The trainer's compiled programs, once per config and process; the memory they need; the strategy.

    init, run_epoch, run_one, evaluate, predict = compiled(program_config(config))
    epoch(config, "map", mesh)                 # the epoch program in a seed-parallel strategy
    choose_strategy(config, data, "auto", lanes=16, devices=jax.devices())

`flaxray.runtime.runner` runs these on the host side; a resume, a test evaluation or a study run again in
the same notebook reuses them. A program depends on the config only through `program_config`: the
rates are state and the epochs a host loop.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from flaxray.runtime import scale
from flaxray.core import strategy as strategies
from flaxray.errors import FlaxrayError
from flaxray.models import conv
from flaxray.core.train import DeviceData, TrainConfig, config_record, make_train


def program_config(config: TrainConfig) -> TrainConfig:
    """The config a compiled program depends on: the rates are state and the epochs a host loop; only
    whether dropout rates are replaced and whether weight decay is on change the program."""
    return dataclasses.replace(config, lr=1.0, epochs=1, dropout=None if config.dropout is None else 0.5,
                               weight_decay=1.0 if config.weight_decay else 0.0)


def compiled(config: TrainConfig):
    """`init`, `run_epoch` (vmap), one seed's `run_epoch`, `evaluate` and `predict`, vmapped over seeds
    and jitted, once per config and form of the convolutions (`flaxray.models.conv.form`, read when
    they are traced: each form its own programs). The single-seed program runs without `vmap`: a vmap
    over one seed compiles to worse-shaped matmuls on XLA:CPU (each weight gradient transposed, then
    back) at half the speed."""
    return _compiled(config, conv.form())


@functools.lru_cache(maxsize=16)
def _compiled(config: TrainConfig, layers: str):
    trainer = make_train(config)

    def one_seed(state, data):
        state, counts = trainer.run_epoch(jax.tree.map(lambda a: a[0], state), data)
        return jax.tree.map(lambda a: a[None], (state, counts))

    return (jax.jit(jax.vmap(trainer.init, in_axes=(0, None, 0, 0, 0))),
            _epoch(config, strategies.VMAP, None, True, layers),
            jax.jit(one_seed, donate_argnums=0),
            jax.jit(jax.vmap(trainer.evaluate, in_axes=(0, 0, None, None, None))),
            jax.jit(jax.vmap(trainer.predict, in_axes=(0, 0, None))))


def epoch(config: TrainConfig, strategy, mesh, donate: bool = True):
    """The jitted epoch over a leading seed axis in `strategy` (`flaxray.core.strategy`). On a mesh, vmap is
    split over the devices by the compiler; map and groups run per device (`shard_map`), each device
    looping over its own seeds, since a loop over a split axis would gather it first. loop calls the
    single-seed program once per seed from the host (one device)."""
    if strategy == strategies.LOOP:
        if mesh is not None:
            raise FlaxrayError("--strategy loop runs on one device; choose vmap, map or K for several")
        run_one = compiled(config)[2]  # donates each seed's slice, a fresh array: `states` stays intact

        def loop(states, data):
            done = [run_one(jax.tree.map(lambda a: a[i:i + 1], states), data) for i in range(len(states.epoch))]
            return jax.tree.map(lambda *parts: jnp.concatenate(parts), *done)

        return loop
    return _epoch(config, strategy, mesh, donate, conv.form())


@functools.lru_cache(maxsize=32)
def _epoch(config: TrainConfig, strategy, mesh, donate: bool, layers: str):
    program = strategies.epoch_program(make_train(config).run_epoch, strategy)
    if mesh is not None and strategy != strategies.VMAP:
        seeds = PartitionSpec(scale.SEED_AXIS)
        # check_vma=False: each device's loop starts its metrics' sums from constants (replicated, in
        # shard_map's types) and ends them per seed (varying); the devices never communicate here.
        program = jax.shard_map(program, mesh=mesh, in_specs=(seeds, PartitionSpec()), out_specs=seeds,
                                check_vma=False)
    return jax.jit(program, donate_argnums=0 if donate else ())


def initial_states(config: TrainConfig, data, seeds, rates, mesh):
    """Every seed's initial state, split over `mesh`; `rates`: per seed (lr, dropout or None, weight decay)."""
    init = compiled(program_config(config))[0]
    rates = [None if v[0] is None else jnp.asarray(v, jnp.float32) for v in zip(*rates)]
    seed_array, *rates = scale.shard_seeds(mesh, (jnp.asarray(seeds, jnp.int32), *rates))
    return scale.split_seeds(mesh, init(seed_array, data, *rates))


def program_bytes(config: TrainConfig, data, lanes: int, strategy=strategies.VMAP) -> int | None:
    """Peak device bytes of the epoch program of `lanes` seeds in `strategy` (vmap, map or groups of K,
    `lanes` then a multiple of K), from XLA's own memory analysis of the compiled program (its arguments,
    its outputs less those aliased to donated arguments, and its temporaries); nothing is run; None where
    the backend gives no analysis (jax documents that it may). Each call compiles once: it is for the
    chunk plan near the memory."""
    init = compiled(program_config(config))[0]
    n = jax.ShapeDtypeStruct((lanes,), jnp.float32)
    states = jax.eval_shape(init, jax.ShapeDtypeStruct((lanes,), jnp.int32), data, n,  # as `initial_states` calls it
                            None if config.dropout is None else n, n)
    memory = epoch(program_config(config), strategy, None).lower(states, data).compile().memory_analysis()
    if memory is None:
        return None
    return int(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
               + memory.temp_size_in_bytes)


def compiled_bytes_per_seed(config: TrainConfig, data, strategy=strategies.VMAP) -> tuple[int, int] | None:
    """(bytes one more seed costs, bytes that do not grow with the seeds: the data, and in map or groups the
    one seed's or group's working memory), from the compiled epoch program in `strategy` at one and two
    seeds or groups (`program_bytes`); None where the backend gives no memory analysis. Once per program
    and data shape in a process: a study's units and a re-plan for the chosen strategy ask again."""
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), data)
    return _compiled_bytes_per_seed(program_config(config), shapes, strategy, conv.form())


@functools.lru_cache(maxsize=32)
def _compiled_bytes_per_seed(config: TrainConfig, data, strategy, layers: str):  # layers: the conv form traced
    m = strategies.multiple(strategy)
    one, two = program_bytes(config, data, m, strategy), program_bytes(config, data, 2 * m, strategy)
    if one is None or two is None:
        return None
    return max(1, (two - one) // m), max(0, 2 * one - two)


def plan(config: TrainConfig, data, n_seeds: int, free: int, n_devices: int,
         strategy=strategies.VMAP) -> tuple[int, int, str]:
    """(seeds per chunk, bytes per seed, where the figure is from). The hand estimate
    (`scale.bytes_per_seed`, vmap's, the most any strategy keeps at once) when the seeds take less than
    half the free memory by it; else XLA's own figure for the compiled program in `strategy`, so a plan
    near the memory is the compiler's, not a guess: map and groups keep one seed's or group's activations
    and gradients at a time, so they may hold many more seeds than vmap (loop is planned as vmap; the
    estimate where the backend gives no figure)."""
    per_seed = scale.bytes_per_seed(config, data.x_train.shape[1:])
    seeds_per_device = -(-n_seeds // n_devices)
    measured = strategies.VMAP if strategy == strategies.LOOP else strategy
    if seeds_per_device * per_seed <= free // 2 or (figure := compiled_bytes_per_seed(config, data, measured)) is None:
        return scale.plan_chunk(n_seeds, per_seed, free, n_devices), per_seed, "estimated"
    per_seed, fixed = figure
    source = "compiled" if measured == strategies.VMAP else f"compiled for {strategies.name(measured)}"
    return scale.plan_chunk(n_seeds, per_seed, max(0, free - fixed), n_devices), per_seed, source


def probe_key(config: TrainConfig, data, per_device: int, devices) -> str:
    """What the fastest strategy depends on: the program, the shapes, the seeds per device and the machine."""
    from flaxray import results

    record = config_record(program_config(config))
    for name in ("epochs", "lr", "vary", "shared_seed"):  # the same program whatever they are
        record.pop(name, None)
    return json.dumps({**record, "input": list(data.x_train.shape[1:]), "per_device": per_device,
                       "devices": len(devices), "device_kind": devices[0].device_kind,
                       "backend": jax.default_backend(), "cpu": results.cpu_model(), "jax": jax.__version__,
                       "xla_flags": os.environ.get("XLA_FLAGS", ""),
                       "layers": conv.form()}, sort_keys=True)


def probe_data(config: TrainConfig, data: DeviceData) -> DeviceData:
    """A short epoch of the same shapes per step: `PROBE_STEPS` training batches and one eval batch."""
    n, v = strategies.PROBE_STEPS * config.batch_size, config.eval_batch_size
    return DeviceData(data.x_train[:n], data.y_train[:n], data.x_val[:v], data.y_val[:v], data.val_mask[:v])


def choose_strategy(config: TrainConfig, data, asked, lanes: int, devices, *, cache_dir=None, fresh=False) -> dict:
    """The strategy for `lanes` seeds over `devices`: {"strategy", "source", "times"?}. `asked`
    ("auto", "vmap", "map", "loop" or K) is kept unless auto; auto probes each candidate on this device
    (`strategy.probe`, a few steps, compilation apart) and remembers the choice for this machine, so a
    run again here takes the same program without probing (`fresh`: probe anyway, remember nothing).
    Process 0's choice holds on every process."""
    from flaxray.runtime import hosts

    per_device = -(-lanes // len(devices))
    if asked != strategies.AUTO:
        return {"strategy": strategies.canonical(asked, per_device), "source": "asked"}
    if per_device == 1:
        return {"strategy": strategies.VMAP, "source": "one seed per device"}
    key = probe_key(config, data, per_device, devices)
    known = strategies.cached_choice(key, cache_dir) if hosts.is_primary() and not fresh else None
    if hosts.agree(known is not None):
        code = hosts.agree(strategies.encode(strategies.parse(known["strategy"])) if known else 0)
        return {"strategy": strategies.decode(code), "times": (known or {}).get("times"), "source": "probed here before"}
    mesh, cands = scale.seed_mesh(devices), strategies.candidates(per_device, len(devices))
    full, short = scale.replicate(mesh, data), scale.replicate(mesh, probe_data(config, data))
    # Every candidate runs on one chain of states, donated from call to call, of the largest count that
    # every candidate's groups divide and the chunk holds: the probe needs no more memory than the run
    # it is for (a chunk is planned to fill the device), and the candidates are timed on the same seeds.
    m = max(strategies.multiple(c) for c in cands)
    count = len(devices) * (per_device // m) * m
    chain = [initial_states(config, full, list(range(count)),
                            [(config.lr, config.dropout, config.weight_decay)] * count, mesh)]

    def step(program):
        chain[0] = program(chain[0], short)[0]
        return chain[0]

    calls = {c: functools.partial(step, epoch(program_config(config), c, mesh)) for c in cands}
    best, times = strategies.probe(calls)
    best = strategies.decode(hosts.agree(strategies.encode(best)))
    choice = {"strategy": best, "times": {str(k): round(v, 6) for k, v in times.items()}}
    if hosts.is_primary() and not fresh:
        strategies.remember(key, choice, cache_dir)
    return {**choice, "source": "probed"}
