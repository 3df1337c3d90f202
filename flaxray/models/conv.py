"""The 3x3 convolutions and 2x2 max pools of flaxray's models, in one of two forms per backend.

    native    `lax.conv_general_dilated` and `lax.reduce_window`: what GPUs and TPUs run fastest.
    shifted   a convolution as 9 shifted copies of the map and one matmul (`neighbourhoods`), a pool as
              a reshape and an argmax: what XLA:CPU runs fastest inside the trainer's `lax.scan` over
              steps, where it runs convolutions and max-pool gradients 10-50x slower than outside a
              loop (jax-ml/jax#12868), and slower still when `vmap` over seeds makes them grouped.

`form()` chooses: the variable FLAXRAY_LAYERS (native, shifted or auto) where it is set, else the
backend (cpu: shifted; gpu, tpu: native). It is plain Python, read when a program is traced, so a
compiled program keeps the form it was traced in. Both forms take the same parameters (Keras's
shapes), so params and checkpoints serve either. Their convolutions agree up to float32 rounding
(another summation order), their pools exactly, gradients included: both send a window's gradient
to its first maximum, as Keras does (tests/test_layers.py, on the CPU). A seed's exact bits depend on
the form, so `groups.program_shape` records it beside the devices.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from flaxray.errors import FlaxrayError

ENV = "FLAXRAY_LAYERS"
FORMS = ("native", "shifted")
# NHWC maps, HWIO kernels (Keras's kernel layout). Padding 1 on every side, PyTorch's padding=1: equal to
# 'SAME' at stride 1, but at stride 2 'SAME' pads an even side at the bottom/right only (another output).
DIMENSIONS, PADDING = ("NHWC", "HWIO", "NHWC"), ((1, 1), (1, 1))


def form() -> str:
    """'native' or 'shifted': FLAXRAY_LAYERS where it is set (native, shifted or auto), else by backend."""
    value = os.environ.get(ENV) or "auto"
    if value == "auto":
        return "shifted" if jax.default_backend() == "cpu" else "native"
    if value not in FORMS:
        raise FlaxrayError(f"{ENV}={value!r}: expected native, shifted or auto (auto: shifted on CPU, "
                           "native on GPU and TPU)")
    return value


def neighbourhoods(x, stride: int = 1):
    """The 3x3 neighbourhood of every pixel of NHWC maps, zero-padded ('same'): 9 shifted copies of x.

    Copy (i, j) holds x[y + i - 1, x + j - 1] at (y, x), in the row-major order of a Keras 3x3 kernel,
    so a 3x3 convolution (a cross-correlation, as in Keras) is the sum over copies of copy @ kernel[i, j].
    With `stride` s, copy (i, j) holds x[s*y + i - 1, s*x + j - 1]: PyTorch's Conv2d(3, stride=s, padding=1),
    whose output side is (n - 1) // s + 1.
    """
    h, w = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [padded[:, i:i + h:stride, j:j + w:stride] for i in range(3) for j in range(3)]


def conv3x3(x, kernel, stride: int = 1):
    """A 3x3 convolution of NHWC maps with an HWIO kernel (3, 3, in, out), zero padding 1, no bias: Keras's
    'same' Conv2D at stride 1, PyTorch's Conv2d(3, stride, padding=1) at any stride. `kernel` in x's dtype."""
    if form() == "native":
        return jax.lax.conv_general_dilated(x, kernel, (stride, stride), PADDING, dimension_numbers=DIMENSIONS)
    # All nine neighbours side by side in the channel axis, then one matmul with the kernel read as
    # (9 * in, out): row (3i + j) * in + c is kernel[i, j, c].
    patches = jnp.concatenate(neighbourhoods(x, stride), axis=-1)
    return patches @ kernel.reshape(-1, kernel.shape[-1])


def depthwise3x3(x, kernel):
    """A 3x3 depthwise convolution ('same', stride 1, no bias): channel c of x by its own filter
    kernel[:, :, c, 0], Keras's depthwise kernel (3, 3, C, 1). `kernel` in x's dtype."""
    channels = x.shape[-1]
    if form() == "native":  # one group per channel: lax's kernel is (3, 3, 1, C), the same numbers
        return jax.lax.conv_general_dilated(x, kernel.reshape(3, 3, 1, channels), (1, 1), PADDING,
                                            dimension_numbers=DIMENSIONS, feature_group_count=channels)
    return sum(shifted * weight for shifted, weight in zip(neighbourhoods(x), kernel.reshape(9, channels)))


def max_pool(x, padding: str):
    """Keras's MaxPool2D() of NHWC maps: 2x2 windows, stride 2; padding 'valid' drops an odd last row and
    column, 'same' pools them alone (padded with -inf at the bottom and right only, as Keras pads)."""
    n, h, w, c = x.shape
    if form() == "native":
        odd = (h % 2, w % 2) if padding == "same" else (0, 0)  # 'valid': what no window covers is dropped
        pads = ((0, 0), (0, odd[0]), (0, odd[1]), (0, 0))
        # With a concrete -inf (numpy, not a traced jnp value) this is lax's max-pool primitive, whose
        # gradient (XLA's select-and-scatter, selecting with >=) goes to the first maximum of each window in
        # row-major order, as the argmax below, ties included; it compares values within one operation,
        # so it cannot drift as a `windows.max(-1)` gradient does (below).
        return jax.lax.reduce_window(x, np.array(-np.inf, x.dtype), jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), pads)
    if padding == "same":
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    else:
        x = x[:, : h - h % 2, : w - w % 2]
    h, w = x.shape[1] // 2, x.shape[2] // 2  # the output's size
    windows = x.reshape(n, h, 2, w, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h, w, c, 4)
    # The gradient goes to the first maximum of each window, as in Keras. Not `windows.max(-1)`: its
    # gradient compares the input with the maximum again, and when XLA recomputes the two in
    # different fusions, last-bit differences move or drop the gradient, so that a seed's curves
    # depended on how many seeds were trained with it (caught by the seed-in-batch test).
    first_max = jnp.argmax(windows, axis=-1, keepdims=True)
    return jnp.take_along_axis(windows, first_max, axis=-1)[..., 0]
