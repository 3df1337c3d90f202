"""How the seeds of one program share a device, and which way is fastest here.

    program = epoch_program(trainer.run_epoch, "map")      # (states, data) -> (states, counts), seed axis first

Four strategies compute the same function of each seed, in other shapes:

    vmap   every seed batched into one set of wider operations (`jax.vmap`): the fewest, largest kernels
    map    the seeds one after another inside one program (`jax.lax.map`): one dispatch, per-seed kernels
    K      groups of K seeds batched, the groups one after another (`lax.map` over a `vmap` of K)
    loop   the seeds one after another from the host, one call of the single-seed program each: what a
           user's loop over seeds does, a candidate so that auto is no slower than that loop by more
           than its probe can tell (one device only)

Which is fastest depends on the arch, the shapes, the seed count and the device: batching wins where
one seed's kernels leave the device idle (small dense layers on a GPU); it loses where batching turns
each operation into a slower one (vmapped convolution weights become grouped convolutions, whose
backward pass is slow, jax-ml/jax#26568, #13800; on XLA:CPU a batched matmul can be slower than the
same products one after another). So `auto` measures: a few steps of each candidate (compilation
apart), on this device, and the fastest is kept, cached per machine (`flaxray.runtime.plan`).

A seed's numbers depend on its inputs and on the program's shape (`flaxray.study.replay`): each strategy
is another program, so its curves are other samples of the same distribution, and a run records the
strategy it ran in and continues in it when resumed.
"""

from __future__ import annotations

import os

from flaxray.errors import FlaxrayError

AUTO, VMAP, MAP, LOOP = "auto", "vmap", "map", "loop"
ENV = "FLAXRAY_STRATEGY"  # the default of every study and of `train_seeds` when set (else auto)
GROUP_SIZES = (4, 16)  # the group sizes auto tries, where smaller than the seeds


def parse(value) -> str | int:
    """"auto", "vmap", "map", "loop" or a group size K >= 1 (from a flag, a record or $FLAXRAY_STRATEGY)."""
    text = str(value).strip().lower()
    if text in (AUTO, VMAP, MAP, LOOP):
        return text
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise FlaxrayError(f"--strategy: expected auto, vmap, map, loop or a group size K >= 1, got {value!r}")
    return k


def default() -> str | int:
    """$FLAXRAY_STRATEGY, else auto."""
    try:
        return parse(os.environ.get(ENV, AUTO))
    except FlaxrayError as e:
        raise FlaxrayError(f"${ENV}: {str(e).split(': ', 1)[1]}") from None


def canonical(strategy: str | int, lanes: int) -> str | int:
    """One name per program: a group as large as the lanes is vmap, a group of one is map."""
    if isinstance(strategy, int):
        return VMAP if strategy >= lanes else MAP if strategy == 1 else strategy
    return strategy


def multiple(strategy: str | int) -> int:
    """The lane count a strategy needs a multiple of (groups are whole)."""
    return strategy if isinstance(strategy, int) else 1


def candidates(lanes: int, devices: int = 1) -> list[str | int]:
    """What auto tries for `lanes` seeds per device."""
    return [VMAP, MAP, *(k for k in GROUP_SIZES if k < lanes), *([LOOP] if devices == 1 else [])]


def epoch_program(run_epoch, strategy: str | int):
    """One seed's `run_epoch(state, data)` as a program over a leading seed axis, in `strategy`."""
    import jax

    batched = jax.vmap(run_epoch, in_axes=(0, None))
    if strategy == VMAP:
        return batched
    if strategy == MAP:
        return lambda states, data: jax.lax.map(lambda state: run_epoch(state, data), states)
    k = int(strategy)

    def grouped(states, data):
        split = jax.tree.map(lambda a: a.reshape(-1, k, *a.shape[1:]), states)
        done = jax.lax.map(lambda group: batched(group, data), split)
        return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), done)

    return grouped


def encode(strategy: str | int) -> int:
    """As one integer (vmap 0, map 1, loop -1, groups K), for `flaxray.runtime.hosts.agree`."""
    return {VMAP: 0, MAP: 1, LOOP: -1}.get(strategy) if isinstance(strategy, str) else int(strategy)


def decode(code: int) -> str | int:
    return {0: VMAP, 1: MAP, -1: LOOP}.get(code, code)


def name(strategy: str | int) -> str:
    """As printed: "vmap", "map", "loop" or "groups of K"."""
    return f"groups of {strategy}" if isinstance(strategy, int) else strategy
