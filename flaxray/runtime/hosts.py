"""Several processes, one study: JAX's distributed runtime, and what only one process may do.

    python -m flaxray.runtime.launch -n 2 -- python -m studies.seed_variance --arch pyramid --seeds 16
    srun --kill-on-bad-exit=1 -n 4 python -m studies.seed_variance ...     # SLURM: one task per host or GPU

Every process runs the same program (JAX's multi-controller model): the study's seed axis is split
over every process's devices, each process computes its own seeds' lanes, and what the host reads
back (each epoch's statistics, the final states) is gathered onto every process. Files are written
by process 0 only; the checkpoints (orbax) are written by all of them together, each its own shards.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from flaxray.runtime.launch import COORDINATOR, PROCESS_ID, PROCESSES  # what the launcher sets

HEARTBEAT_S = 20  # a process that stops answering for this long fails the others (the default is 100 s)


def initialize() -> bool:
    """Join the distributed runtime when this process was started as one of several: by
    `flaxray.runtime.launch` (its FLAXRAY_* variables), or by SLURM / Open MPI with more than one task (JAX reads
    their variables). Must run before anything else touches jax; a no-op otherwise or a second time.
    Returns whether this process is one of several."""
    if jax.distributed.is_initialized():
        return True
    # srun sets SLURM_STEP_NUM_TASKS for each task of a step (salloc's shell has SLURM_NTASKS alone: one process)
    managed = int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))) > 1
    if COORDINATOR not in os.environ and not managed:
        return False
    # XLA:CPU has no collectives of its own across processes; gloo is JAX's CPU implementation.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if COORDINATOR in os.environ:
        jax.distributed.initialize(os.environ[COORDINATOR], int(os.environ[PROCESSES]), int(os.environ[PROCESS_ID]),
                                   heartbeat_timeout_seconds=HEARTBEAT_S)
    else:
        jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_S)
    return True


def count() -> int:
    return jax.process_count()


def is_primary() -> bool:
    """Whether this process writes the files and shows the progress (process 0, or the only one)."""
    return jax.process_index() == 0


def gather(tree):
    """Every leaf as a whole numpy array on every process (a seed-sharded global array has only this
    process's shards here). Typed PRNG keys are gathered as their raw data and wrapped again."""
    if count() == 1:
        return tree

    def one(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = multihost_utils.process_allgather(jax.random.key_data(leaf), tiled=True)
            return jax.random.wrap_key_data(jax.device_put(data, jax.local_devices()[0]), dtype=leaf.dtype)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return leaf

    return jax.tree.map(one, tree)


def agree(value: int) -> int:
    """Process 0's `value` on every process: host decisions (a chunk size from the free memory, whether a
    wall-time checkpoint is due) must be the same everywhere, or the processes wait for each other forever."""
    if count() == 1:
        return int(value)
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def anyone(flag: bool) -> bool:
    """Whether `flag` is true on any process."""
    if count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def barrier(name: str) -> None:
    """Wait until every process got here (e.g. process 0 cleared a folder the others are about to use)."""
    if count() > 1:
        multihost_utils.sync_global_devices(name)
