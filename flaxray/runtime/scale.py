"""How many seeds fit at once, and where they run: memory-aware chunks and the seed axis over devices.

    per_seed = bytes_per_seed(config, (28, 28, 3))
    size = plan_chunk(1000, per_seed, free_memory(), n_devices=len(jax.devices()))

`train_seeds` does this by itself: S seeds are trained in chunks of `size` (a multiple of the device
count), each chunk's seed axis split over every device by a `jax.sharding.Mesh`. Seeds are
independent, so the chunks and the devices change nothing in the curves, only where and when each
seed is computed.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flaxray.models import conv, factory_of, is_registered, model, output_shape, param_counts, parse_arch

SEED_AXIS = "seeds"
MEMORY_FRACTION = 0.7  # of the free memory a plan may fill: the estimate is rough, XLA needs scratch space
BYTES = 4  # float32 parameters, optimizer state and (at worst) activations


def param_count(arch: str, input_shape: tuple[int, ...], num_classes: int = 2) -> int:
    """Trainable and non-trainable parameters, from the shapes alone (nothing is initialised)."""
    return _param_count(arch, tuple(input_shape), num_classes, factory_of(arch))


@functools.lru_cache(maxsize=64)
def _param_count(arch, input_shape, num_classes, factory):  # factory: a re-registered name is counted again
    return param_counts(arch, input_shape, num_classes)["total"]


def activation_count(arch: str, input_shape: tuple[int, ...], num_classes: int = 2) -> int:
    """Numbers one image's forward pass makes. Sequential models: every layer's output, and a conv's 9
    shifted copies of its input (counted by hand), which only the shifted form makes (`conv.form`, the
    CPU's): an upper bound for the native form. Registered modules, whose layers flaxray does not know:
    every intermediate array of the traced training-mode forward pass (`traced_activation_count`)."""
    if is_registered(arch):
        return traced_activation_count(arch, tuple(input_shape), num_classes)
    shape, total = tuple(input_shape), math.prod(input_shape)
    for layer in parse_arch(arch):
        if layer.kind in ("conv", "sep"):
            total += 9 * math.prod(shape)  # `conv.neighbourhoods`: the 3x3 shifted copies
        shape = output_shape(layer, shape)
        total += math.prod(shape)
    return total


def traced_activation_count(arch: str, input_shape: tuple[int, ...], num_classes: int = 2) -> int:
    """Numbers per image of every array the training-mode forward pass computes, read off its jaxpr:
    the count at batch 2 minus the count at batch 1, so what does not grow with the batch (parameter
    casts, BatchNorm statistics) drops out. An upper bound of what the backward pass keeps (XLA fuses
    elementwise chains); nested calls count by their outputs only. Nothing is initialised or run."""
    return _traced_activation_count(arch, tuple(input_shape), num_classes, factory_of(arch), conv.form())


@functools.lru_cache(maxsize=64)
def _traced_activation_count(arch, input_shape, num_classes, factory, layers):  # layers: the conv form traced
    import jax.numpy as jnp

    net = model(arch, input_shape, num_classes=num_classes)
    variables = jax.eval_shape(net.init, jax.random.key(0))

    def numbers(batch):
        images = jax.ShapeDtypeStruct((batch, *input_shape), jnp.uint8)
        forward = lambda v, x, key: net.apply(v, x, train=True, key=key)  # noqa: E731
        jaxpr = jax.make_jaxpr(forward)(variables, images, jax.eval_shape(jax.random.key, 0))
        jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # jax 0.11 made ClosedJaxpr a Jaxpr, `.jaxpr` a legacy accessor
        return sum(math.prod(getattr(v.aval, "shape", ())) for eqn in jaxpr.eqns for v in eqn.outvars)

    return int(numbers(2) - numbers(1))


def bytes_per_seed(config, input_shape) -> int:
    """Estimated device bytes one more seed costs while it trains.

    Params, Adam's two moments, the gradient and the update's temporaries, and the parameters the
    epoch started from, which a seed that diverges gets back (6 copies of the parameters in float32; 7
    with `--restore-best`, which keeps the best epoch's),
    plus the activations a training step keeps for its backward pass and an eval batch's. A sequential model keeps ~4 numbers per layer output (pre-activation, relu,
    BatchNorm, dropout mask); a registered module's traced count already holds every intermediate,
    so it is taken once. `config.num_classes` (default 2) sets the head's width.
    """
    num_classes = getattr(config, "num_classes", 2)
    params = param_count(config.arch, tuple(input_shape), num_classes)
    activations = activation_count(config.arch, tuple(input_shape), num_classes)
    per_layer_output = 1 if is_registered(config.arch) else 4
    per_number = BYTES if config.dtype == "float32" else 2  # bfloat16 activations
    copies = 7 if getattr(getattr(config, "recipe", None), "restore_best", False) else 6
    return int(copies * params * BYTES
               + activations * per_number * (per_layer_output * config.batch_size + config.eval_batch_size))


def free_memory(device=None) -> int:
    """Bytes free on `device` (default: the first): the allocator's limit minus what is in use on a
    GPU or TPU; the system's available memory on the CPU, which reports no memory stats."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def plan_chunk(n_seeds: int, per_seed: int, free: int, n_devices: int = 1, fraction: float = MEMORY_FRACTION) -> int:
    """Seeds per chunk: as many as fit in `fraction` of `free` bytes per device, a multiple of the
    device count (at least one seed per device), and no more than `n_seeds` rounded up to one."""
    per_device = max(1, int(free * fraction) // max(1, per_seed))
    whole = -(-n_seeds // n_devices) * n_devices  # n_seeds padded to a multiple of the devices
    return int(min(whole, per_device * n_devices))


def chunks(n_seeds: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` seeds covering 0..n_seeds-1."""
    return [slice(i, min(i + size, n_seeds)) for i in range(0, n_seeds, size)]


def seed_mesh(devices=None) -> Mesh | None:
    """A one-axis mesh over every device (the seed axis is split across it), or None for a single device."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (SEED_AXIS,)) if len(devices) > 1 else None


def shard_seeds(mesh: Mesh | None, tree):
    """Split the leading (seed) axis of every leaf over the mesh's devices."""
    return tree if mesh is None else _place(tree, NamedSharding(mesh, PartitionSpec(SEED_AXIS)))


def split_seeds(mesh: Mesh | None, tree):
    """Device arrays with a leading seed axis (e.g. what `init` made: XLA lays its constant leaves out
    on every device) resplit over the mesh as every epoch's program returns them, so the epoch program
    is compiled once, not once for the first epoch and again for the rest."""
    if mesh is None:
        return tree
    return jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, PartitionSpec(SEED_AXIS)))(tree)


def replicate(mesh: Mesh | None, tree):
    """A copy of every leaf on every device of the mesh (the data every seed reads)."""
    return tree if mesh is None else _place(tree, NamedSharding(mesh, PartitionSpec()))


def _place(tree, sharding: NamedSharding):
    """`tree` laid out by `sharding`. A mesh over several processes' devices (`flaxray.runtime.hosts`) holds
    global arrays: every process has the whole host value and puts only its own devices' pieces."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def one(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def pad_seeds(values, multiple: int):
    """`values` (a list or an array) with its last element repeated up to a multiple of `multiple` (padding
    seeds, dropped later)."""
    pad = -len(values) % multiple
    if isinstance(values, list):
        return values + values[-1:] * pad
    return np.concatenate([values, np.repeat(values[-1:], pad, axis=0)])


def describe(n_seeds: int, size: int, per_seed: int, free: int, n_devices: int, source: str = "estimated") -> str:
    n = len(chunks(n_seeds, size))
    where = f"{n_devices} devices" if n_devices > 1 else "1 device"
    return (f"{n_seeds} seeds in {n} chunk{'s' if n > 1 else ''} of up to {size}, on {where} "
            f"(~{per_seed / 2**20:.1f} MiB per seed, {source}; {free / 2**30:.1f} GiB free per device)")
