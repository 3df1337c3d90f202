"""The trainer's compiled programs, once per config and process, and the memory they need.

    programs = compiled(config)                 # Programs(init, epoch, one_seed, evaluate, predict)
    epoch(config, "map", mesh)                  # the epoch program in a seed-parallel strategy
    states = initial_states(config, data, seeds, lanes, mesh)

`flaxray.runtime.runner` runs these on the host side; a resume, a test evaluation or a study run
again in the same notebook reuses them. An epoch's program depends on the config (not on its number
of epochs: `TrainConfig.epoch_key`), on which settings the lanes carry (their pytree's structure:
jit traces each once) and on the form of the convolutions (`flaxray.models.conv.form`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from flaxray import models
from flaxray.core import strategy as strategies
from flaxray.core import schedules
from flaxray.core.randomness import SPLIT
from flaxray.core.config import TrainConfig, train_count
from flaxray.core.recipe import Recipe
from flaxray.core.settings import Settings
from flaxray.core.train import make_train
from flaxray.errors import FlaxrayError
from flaxray.models import conv
from flaxray.runtime import scale, stopping


class Programs(NamedTuple):
    """One config's jitted programs over a leading seed axis."""

    init: Any  # (seeds, data, lanes: Settings, variables, splits) -> SeedState
    epoch: Any  # (states, data) -> (states, counts): vmap over the seeds, donating the states
    one_seed: Any  # the same for a single seed, without vmap
    evaluate: Any  # (variables, x, y, mask) -> counts
    predict: Any  # (variables, x) -> probabilities


def compiled(config: TrainConfig) -> Programs:
    """The programs of `config`, once per epoch program (`TrainConfig.epoch_key`) and form of the
    convolutions (read when they are traced: each form its own programs). The single-seed program runs
    without `vmap`: a vmap over one seed compiles to worse-shaped matmuls on XLA:CPU (each weight
    gradient transposed, then back) at half the speed."""
    return _compiled(_Key(config), conv.form())


class _Key:
    """A config as a cache key: equal when the epoch's program is (whatever its number of epochs)."""

    def __init__(self, config: TrainConfig):
        self.config = config

    def __eq__(self, other):
        return self.config.epoch_key == other.config.epoch_key

    def __hash__(self):
        return hash(self.config.epoch_key)


@functools.lru_cache(maxsize=16)
def _compiled(key: _Key, layers: str) -> Programs:
    return _programs(make_train(key.config))._replace(epoch=_epoch(key, strategies.VMAP, None, True, layers))


def _programs(trainer) -> Programs:
    def one_seed(state, data):
        state, counts = trainer.run_epoch(jax.tree.map(lambda a: a[0], state), data)
        return jax.tree.map(lambda a: a[None], (state, counts))

    return Programs(jax.jit(jax.vmap(trainer.init, in_axes=(0, None, 0, 0, 0))), None,
                    jax.jit(one_seed, donate_argnums=0),
                    jax.jit(jax.vmap(trainer.evaluate, in_axes=(0, None, None, None))),
                    jax.jit(jax.vmap(trainer.predict, in_axes=(0, None))))


def epoch(config: TrainConfig, strategy, mesh, donate: bool = True, *, cached: bool = True):
    """The jitted epoch over a leading seed axis in `strategy` (`flaxray.core.strategy`). On a mesh, vmap
    is split over the devices by the compiler; map and groups run per device (`shard_map`), each device
    looping over its own seeds, since a loop over a split axis would gather it first. loop calls the
    single-seed program once per seed from the host (one device). Not `cached`: a program of its own,
    whose executables go with it (the strategy probe's short epochs, which no run uses again)."""
    if strategy == strategies.LOOP:
        if mesh is not None:
            raise FlaxrayError("--strategy loop runs on one device; choose vmap, map or K for several")
        # donates each seed's slice, a fresh array: `states` stays intact
        run_one = compiled(config).one_seed if cached else _programs(make_train(config)).one_seed

        def loop(states, data):
            done = [run_one(jax.tree.map(lambda a: a[i:i + 1], states), data) for i in range(len(states.epoch))]
            return jax.tree.map(lambda *parts: jnp.concatenate(parts), *done)

        return loop
    return (_epoch if cached else _epoch_program)(_Key(config), strategy, mesh, donate, conv.form())


def _epoch_program(key: _Key, strategy, mesh, donate: bool, layers: str):
    program = strategies.epoch_program(make_train(key.config).run_epoch, strategy)
    if mesh is not None and strategy != strategies.VMAP:
        seeds = PartitionSpec(scale.SEED_AXIS)
        # check_vma=False: each device's loop starts its metrics' sums from constants (replicated, in
        # shard_map's types) and ends them per seed (varying); the devices never communicate here.
        program = jax.shard_map(program, mesh=mesh, in_specs=(seeds, PartitionSpec()), out_specs=seeds,
                                check_vma=False)
    return jax.jit(program, donate_argnums=0 if donate else ())


_epoch = functools.lru_cache(maxsize=32)(_epoch_program)


def model_of(config: TrainConfig, data) -> models.Model:
    return models.model(config.arch, data.x_train.shape[1:], dtype=config.dtype, num_classes=config.num_classes)


def check_model(config: TrainConfig, data, lanes: Settings) -> None:
    """One-line errors where a compiled model (a Keras model's compile: its loss and optimizer train it)
    is asked for what only flaxray's recipe does, or its compile's rate differs from the lanes' --lr."""
    model = model_of(config, data)
    if model.compiled is None:
        return
    recipe, default = config.recipe, Recipe()
    asked = [flag for flag, on in (("--optimizer", recipe.optimizer != default.optimizer or recipe.nesterov),
                                   ("--schedule", not schedules.is_default(recipe.schedule)),
                                   ("--label-smoothing", recipe.label_smoothing != default.label_smoothing),
                                   ("--weight-decay", lanes.weight_decay is not None),
                                   ("--momentum", lanes.momentum is not None),
                                   ("--dropout", lanes.dropout is not None)) if on]
    if asked:
        raise FlaxrayError(f"{config.arch} is compiled: its compile's optimizer and loss train it, so {', '.join(asked)} "
                           "do not apply; give a builder that does not compile to train with flaxray's recipe")
    rates, rate = sorted({float(r) for r in np.asarray(lanes.lr)}), model.compiled.learning_rate
    if rate is None and rates != [np.float32(Settings().lr)]:
        raise FlaxrayError(f"--lr: {config.arch} is compiled with a learning-rate schedule, which sets its rate")
    if rate is not None and rates == [np.float32(Settings().lr)] and np.float32(rate) != rates[0]:
        raise FlaxrayError(f"{config.arch} is compiled at a learning rate of {rate:g}, and --lr is {Settings().lr:g} "
                           f"(its default): give --lr {rate:g} (a compiled model's rate is the lane's --lr, so "
                           "several cross rates)")


def seed_of(config: TrainConfig, seed: int, source: str) -> int:
    """The seed a source draws from on the host: the lane's where it varies, else the shared seed."""
    return int(seed) if source in config.vary else config.shared_seed


def lane_splits(config: TrainConfig, data, seeds):
    """Each seed's split of the pool (`LaneSplit` fields stacked on a lane axis) where the lanes resample
    theirs (`DeviceData.resample`), drawn on the host from the seed, or the shared seed where `split` is
    not varied; else None."""
    if data.resample is None:
        return None
    each = [data.resample.lane(seed_of(config, s, SPLIT), config.eval_batch_size) for s in seeds]
    return tuple(np.stack(a) for a in zip(*each))


def initial_states(config: TrainConfig, data, seeds, lanes: Settings, mesh):
    """Every seed's initial state, split over `mesh`; `lanes`: each seed's settings (a leading lane axis).
    A model whose kind builds it on the host (a Keras model) is built here once per seed."""
    model, variables = model_of(config, data), None
    if model.host_init is not None:
        each = [model.host_init(seed_of(config, s, "init"), seed_of(config, s, "dropout")) for s in seeds]
        variables = jax.tree.map(lambda *a: np.stack(a), *each)
    seed_array, lanes, variables, splits = scale.shard_seeds(mesh, (
        jnp.asarray(seeds, jnp.int32), jax.tree.map(jnp.asarray, lanes), jax.tree.map(jnp.asarray, variables),
        jax.tree.map(jnp.asarray, lane_splits(config, data, seeds))))
    return scale.split_seeds(mesh, compiled(config).init(seed_array, data, lanes, variables, splits))


def with_order(config: TrainConfig, data, states, seeds, epoch: int):
    """`states` given each seed's order of epoch `epoch` (0-based) where the model's kind brings its own
    (a Keras model: fit's); else `states` as they are. `seeds`: every lane's, padding included."""
    model = model_of(config, data)
    if model.order is None:
        return states
    n = train_count(data)
    return states._replace(order=stopping.put(np.stack([model.order(seed_of(config, s, "order"), epoch, n)
                                                        for s in seeds]), states.order))


def abstract_states(config: TrainConfig, data, fields: tuple[str, ...], lanes: int):
    """The shapes and types of `lanes` seeds' states whose settings carry `fields`; nothing is run."""
    n = jax.ShapeDtypeStruct((lanes,), jnp.float32)
    settings = Settings(**{f: (n if f in fields else None) for f in Settings._fields})
    model, variables = model_of(config, data), None
    if model.host_init is not None:
        variables = jax.tree.map(lambda a: jax.ShapeDtypeStruct((lanes, *a.shape), a.dtype),
                                 jax.eval_shape(model.init, jax.random.key(0)))
    splits = None
    if data.resample is not None:  # the lanes' index arrays: their sizes are the pool's, whichever seeds
        splits = tuple(jax.ShapeDtypeStruct((lanes, *a.shape), a.dtype)
                       for a in data.resample.lane(config.shared_seed, config.eval_batch_size))
    return jax.eval_shape(compiled(config).init, jax.ShapeDtypeStruct((lanes,), jnp.int32), data, settings, variables,
                          splits)


def program_bytes(config: TrainConfig, data, fields: tuple[str, ...], lanes: int, strategy=strategies.VMAP) -> int | None:
    """Peak device bytes of the epoch program of `lanes` seeds in `strategy` (vmap, map or groups of K,
    `lanes` then a multiple of K), from XLA's own memory analysis of the compiled program (its arguments,
    its outputs less those aliased to donated arguments, and its temporaries); nothing is run; None where
    the backend gives no analysis (jax documents that it may). Each call compiles once: it is for the
    chunk plan near the memory."""
    states = abstract_states(config, data, fields, lanes)
    memory = epoch(config, strategy, None).lower(states, data).compile().memory_analysis()
    if memory is None:
        return None
    return int(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
               + memory.temp_size_in_bytes)


def compiled_bytes_per_seed(config: TrainConfig, data, fields: tuple[str, ...],
                            strategy=strategies.VMAP) -> tuple[int, int] | None:
    """(bytes one more seed costs, bytes that do not grow with the seeds: the data, and in map or groups the
    one seed's or group's working memory), from the compiled epoch program in `strategy` at one and two
    seeds or groups (`program_bytes`); None where the backend gives no memory analysis. Once per program
    and data shape in a process: a study's units and a re-plan for the chosen strategy ask again."""
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), data)
    return _compiled_bytes_per_seed(_Key(config), shapes, tuple(fields), strategy, conv.form())


@functools.lru_cache(maxsize=32)
def _compiled_bytes_per_seed(key: _Key, data, fields, strategy, layers: str):  # layers: the conv form traced
    m = strategies.multiple(strategy)
    one = program_bytes(key.config, data, fields, m, strategy)
    two = program_bytes(key.config, data, fields, 2 * m, strategy)
    if one is None or two is None:
        return None
    return max(1, (two - one) // m), max(0, 2 * one - two)
