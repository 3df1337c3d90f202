"""How close a training step comes to the device's limits: the step's FLOPs and bytes per seed, estimated
from the arch, and the device's peak FLOP/s and memory bandwidth, from a datasheet or measured.

One training step of one seed is estimated at FLOPs = 6 x multiply-adds x batch (forward, and the
backward's two products) and bytes = 40 x parameters (weights read forward and backward, the gradient
written and read, Adam reading weights and two moments and writing them back, in float32) plus the
activations. The peaks are a table of known GPUs (`PEAKS`); on any other device they are
measured (`measure_peaks`).
"""

from __future__ import annotations

import math
import time

# Peak dense FLOP/s (float32 as XLA runs it on the GPU, TF32 tensor cores; bfloat16) and memory bandwidth,
# from NVIDIA's H100 and H200 datasheets (SXM forms; without sparsity).
PEAKS = {
    "H100 PCIe": {"flops": {"float32": 378e12, "bfloat16": 756e12}, "bytes_per_s": 2.0e12},
    "H100": {"flops": {"float32": 494.7e12, "bfloat16": 989.4e12}, "bytes_per_s": 3.35e12},  # SXM5, HBM3
    "H200": {"flops": {"float32": 494.7e12, "bfloat16": 989.4e12}, "bytes_per_s": 4.8e12},  # SXM, HBM3e
}


def multiply_adds(arch: str, input_shape) -> int:
    """Multiply-adds of one image's forward pass through the matmuls and convolutions (the head included)."""
    from flaxray.models import output_shape, parse_arch

    shape, total = tuple(input_shape), 0
    for layer in parse_arch(arch):
        out = output_shape(layer, shape)
        if layer.kind == "conv":
            total += math.prod(out[:2]) * 9 * shape[-1] * out[-1]
        elif layer.kind == "sep":
            total += math.prod(out[:2]) * shape[-1] * (9 + out[-1])
        elif layer.kind == "dense":
            total += math.prod(shape) * out[-1]
        shape = out
    return total + math.prod(shape)


def step_cost(config, input_shape) -> dict:
    """Estimated FLOPs and bytes of one training step of one seed (see the module docstring)."""
    from flaxray.runtime import scale

    params = scale.param_count(config.arch, tuple(input_shape))
    activations = scale.activation_count(config.arch, input_shape) * config.batch_size
    return {"params": params, "flops": 6 * multiply_adds(config.arch, input_shape) * config.batch_size,
            "bytes": 40 * params + 4 * 4 * activations}


def device_peaks(dtype: str) -> dict:
    """The peak FLOP/s and bytes/s of the first device: a known GPU's datasheet figures, else measured."""
    import jax

    kind = jax.devices()[0].device_kind
    for name, peak in PEAKS.items():  # "H100 PCIe" is tried before "H100"
        if name.lower() in kind.lower() and ("PCIe" in name) == ("pcie" in kind.lower()):
            return {"device": kind, "flops": peak["flops"][dtype], "bytes_per_s": peak["bytes_per_s"],
                    "source": f"datasheet: NVIDIA {name}, dense {dtype} (TF32 tensor cores for float32)"}
    flops, bandwidth = measure_peaks(dtype)
    return {"device": kind, "flops": flops, "bytes_per_s": bandwidth,
            "source": f"measured here: best of 5 {dtype} 2048x2048 matmuls, and of 5 in-place x+1 passes over a 256 MiB array"}


def measure_peaks(dtype: str) -> tuple[float, float]:
    """FLOP/s of a large matmul and bytes/s of a large elementwise pass, best of five, on the first device."""
    import jax
    import jax.numpy as jnp

    def best(f, *args):
        jax.block_until_ready(f(*args))
        times = []
        for _ in range(5):
            start = time.perf_counter()
            jax.block_until_ready(f(*args))
            times.append(time.perf_counter() - start)
        return min(times)

    n = 2048
    a = jnp.ones((n, n), dtype)
    flops = 2 * n**3 / best(jax.jit(lambda x: x @ x), a)
    big = [jnp.ones(64 * 2**20, jnp.float32)]  # 256 MiB, far beyond any cache
    add_one = jax.jit(lambda x: x + 1, donate_argnums=0)  # in place: no fresh pages to fault in

    def step():
        big[0] = add_one(big[0])
        return big[0]

    bandwidth = 2 * big[0].nbytes / best(step)  # read and write
    return flops, bandwidth
