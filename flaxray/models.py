"""The notes' dense stacks as Flax NNX modules, by name or by spec string.

`dense_block(units, rate)` is Dense(relu) -> BatchNorm -> Dropout(rate), as in the notes' Keras code.
Every default matches Keras, so parameter counts and early curves compare with the notes:
glorot-uniform kernels, zero biases, BatchNorm momentum 0.99 and epsilon 1e-3, inverted dropout.

Names: `pyramid`, `pyramid_d02`, `inverted`, `inverted_d02`, `hourglass`, `hourglass_d02`, `mixed`,
`final`, each also as `NAME_plain` (Dense(relu) only: no BatchNorm, no Dropout). Any other stack is a
spec string: `dense:1024@0.5,512@0.2` (a block with BatchNorm and Dropout at that rate per item;
`UNITS` alone, without `@RATE`, is a plain Dense(relu) layer).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxray.errors import FlaxrayError

glorot_uniform = nnx.initializers.glorot_uniform()


@dataclasses.dataclass(frozen=True)
class Block:
    """One hidden layer: Dense(units, relu), then BatchNorm and Dropout(rate) unless plain."""

    units: int
    rate: float | None  # None: plain Dense(relu), no BatchNorm, no Dropout


def _stack(units, rate):
    return tuple(Block(u, rate) for u in units)


_UP = (32, 64, 128, 256, 512, 1024)
_DOWN = (1024, 512, 256, 128, 64)

# The notes' architectures (phase 2). `mixed` reads literally as "32 … 1024 at 0.2, then 1024 … 64 at 0.5".
NOTES_STACKS: dict[str, tuple[Block, ...]] = {
    "pyramid": _stack(_DOWN, 0.5),
    "pyramid_d02": _stack(_DOWN, 0.2),
    "inverted": _stack(_UP[:-1], 0.5),
    "inverted_d02": _stack(_UP, 0.2),
    "hourglass": _stack(_UP + _DOWN[1:], 0.5),
    "hourglass_d02": _stack(_UP + _DOWN[1:], 0.2),
    "mixed": _stack(_UP, 0.2) + _stack(_DOWN, 0.5),
    "final": _stack((32, 64, 64, 128, 128, 256, 256, 512, 512, 1024), 0.5),
}


def known_archs() -> list[str]:
    """Every architecture name the registry accepts (spec strings aside)."""
    return sorted(NOTES_STACKS) + sorted(f"{n}_plain" for n in NOTES_STACKS)


_SPEC_ITEM = re.compile(r"^(\d+)(?:@([0-9]*\.?[0-9]+))?$")


def parse_arch(arch: str) -> tuple[Block, ...]:
    """Architecture name or `dense:` spec string -> its blocks. Raises FlaxrayError on bad input."""
    if arch in NOTES_STACKS:
        return NOTES_STACKS[arch]
    if arch.endswith("_plain") and arch[: -len("_plain")] in NOTES_STACKS:
        return tuple(Block(b.units, None) for b in NOTES_STACKS[arch[: -len("_plain")]])
    if arch.startswith("dense:"):
        items = [s.strip() for s in arch[len("dense:"):].split(",")]
        blocks = []
        for item in items:
            m = _SPEC_ITEM.match(item)
            if not m or int(m.group(1)) < 1 or (m.group(2) and not 0 <= float(m.group(2)) < 1):
                raise FlaxrayError(
                    f"bad spec string {arch!r}: item {item!r} is not UNITS or UNITS@RATE "
                    "(units >= 1, 0 <= rate < 1), e.g. 'dense:1024@0.5,512@0.2'"
                )
            blocks.append(Block(int(m.group(1)), None if m.group(2) is None else float(m.group(2))))
        return tuple(blocks)
    raise FlaxrayError(
        f"unknown arch {arch!r}; known: {', '.join(known_archs())}, or a spec string like 'dense:1024@0.5,512@0.2'"
    )


class DenseBlock(nnx.Module):
    """Dense(relu) -> BatchNorm -> Dropout(rate); Dense(relu) alone when rate is None."""

    def __init__(self, in_features: int, block: Block, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(in_features, block.units, kernel_init=glorot_uniform, rngs=rngs)
        self.plain = block.rate is None
        if not self.plain:
            # Keras defaults, not Flax's (epsilon 1e-5).
            self.norm = nnx.BatchNorm(block.units, momentum=0.99, epsilon=1e-3, rngs=rngs)
            self.dropout = nnx.Dropout(block.rate)

    def __call__(self, x, *, train: bool, dropout_key: jax.Array | None):
        x = nnx.relu(self.dense(x))
        if self.plain:
            return x
        x = self.norm(x, use_running_average=not train)
        return self.dropout(x, deterministic=not train, rngs=dropout_key)


class DenseStack(nnx.Module):
    """uint8 image -> rescale 1/255 -> flatten -> blocks -> one logit (sigmoid applied in the loss)."""

    def __init__(self, input_shape: tuple[int, ...], blocks: tuple[Block, ...], *, rngs: nnx.Rngs):
        features = int(np.prod(input_shape))
        layers = []
        for block in blocks:
            layers.append(DenseBlock(features, block, rngs=rngs))
            features = block.units
        self.blocks = nnx.List(layers)
        self.head = nnx.Linear(features, 1, kernel_init=glorot_uniform, rngs=rngs)

    def __call__(self, images, *, train: bool = False, dropout_key: jax.Array | None = None):
        x = images.astype(jnp.float32) / 255.0
        x = x.reshape(x.shape[0], -1)
        for i, block in enumerate(self.blocks):
            # One independent dropout key per layer, derived so a step's key fixes all masks.
            key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
            x = block(x, train=train, dropout_key=key)
        return self.head(x)[:, 0]


def build_model(arch: str, input_shape: tuple[int, ...], *, key: jax.Array | int = 0) -> nnx.Module:
    """The model for an architecture name or spec string, on images of `input_shape` (H, W, C)."""
    return DenseStack(tuple(input_shape), parse_arch(arch), rngs=nnx.Rngs(params=key))


def count_params(model: nnx.Module) -> dict[str, int]:
    """Parameter counts as Keras's `model.summary()` reports them (BatchNorm's moving stats are non-trainable)."""

    def size(state):
        return int(sum(np.prod(np.shape(v)) for v in jax.tree.leaves(state)))

    trainable, non_trainable = size(nnx.state(model, nnx.Param)), size(nnx.state(model, nnx.BatchStat))
    return {"trainable": trainable, "non_trainable": non_trainable, "total": trainable + non_trainable}
