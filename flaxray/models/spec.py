"""The sequential models by name or spec string: the notes' dense stacks, the CNNs, and the grammar.

A sequential model is a tuple of `Layer`s; `flaxray.models.layers.Sequential` builds it (rescale by
1/255, the layers in order, then the head: Dense(1) for two classes, Dense(C) for C >= 3). Every
default matches Keras, so parameter counts and early curves compare with the notes: glorot-uniform
kernels, zero biases, 3x3 convolutions with 'same' padding and relu, BatchNorm momentum 0.99 and
epsilon 1e-3, inverted dropout, NHWC. Models that are not a sequence of these layers (ResNet-18, a
user's own module) are registered by name instead: `flaxray.models.registry`.

Names
    Dense stacks (the notes' phase 2): `pyramid`, `pyramid_d02`, `inverted`, `inverted_d02`,
    `hourglass`, `hourglass_d02`, `mixed`, `final`.
    CNNs (phase 1, `CNN_SPECS`): `cnn_conv` (Conv2D-pool blocks, then a dense head), `cnn_sep` (the
    SeparableConv2D stack of keras.io's "Pneumonia Classification on TPU", widths 16 -> 256) and
    `cnn_sep_wide` (the same with every width doubled, 32 -> 512).
    Each also as `NAME_plain`: the same layers without any BatchNorm or Dropout.

Spec strings: any other model, as comma-separated layers in order, e.g.
`conv:32,pool,sep:64,pool,gap,dense:128@0.5` or `dense:1024@0.5,512@0.2`.

    conv:N       Conv2D(N, 3, padding='same', activation='relu')
    sep:N        SeparableConv2D(N, 3, padding='same', activation='relu')
    pool         MaxPool2D(): 2x2, stride 2, Keras's default padding 'valid' (a side n becomes n // 2)
    pool:same    MaxPool2D(padding='same'): a side n becomes ceil(n / 2), so 1x1 stays 1x1
    bn           BatchNormalization() over the channels (or features)
    dropout:R    Dropout(R), 0 <= R < 1
    gap          GlobalAveragePooling2D()
    flatten      Flatten()
    dense:N      Dense(N, activation='relu'); flattens a feature map first, as the dense stacks do
    dense:N@R    the notes' dense_block: Dense(N, relu) -> BatchNormalization -> Dropout(R)

An item without a kind repeats the previous kind: `conv:16,16` is two Conv2D(16), and
`dense:1024@0.5,512@0.2` two dense blocks. conv, sep, pool, gap and flatten need a feature map,
so they cannot follow gap, flatten or dense. A spec with `pool` needs images of at least 2^k x 2^k
for k such pools (`min_image_size`); smaller images are a one-line error, not a shape crash. The
registry's CNNs pool with 'same' padding so that every one of them runs on the 28x28 default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

from flaxray.errors import FlaxrayError



@dataclasses.dataclass(frozen=True)
class Layer:
    """One item of a spec string; `str(layer)` writes it back."""

    kind: str  # one of USAGE
    units: int | None = None  # filters of conv and sep, units of dense
    rate: float | None = None  # dropout's rate; dense's block rate (None: a plain Dense(relu))
    padding: str = "valid"  # pool only

    def __str__(self):
        if self.kind in ("conv", "sep"):
            return f"{self.kind}:{self.units}"
        if self.kind == "dense":
            return f"dense:{self.units}" + ("" if self.rate is None else f"@{self.rate:g}")
        if self.kind == "dropout":
            return f"dropout:{self.rate:g}"
        return "pool:same" if self.kind == "pool" and self.padding == "same" else self.kind


USAGE = {
    "conv": "conv:FILTERS",
    "sep": "sep:FILTERS",
    "pool": "pool or pool:same",
    "bn": "bn",
    "dropout": "dropout:RATE (0 <= rate < 1)",
    "gap": "gap",
    "flatten": "flatten",
    "dense": "dense:UNITS or dense:UNITS@RATE (units >= 1, 0 <= rate < 1)",
}
NEEDS_MAP = ("conv", "sep", "pool", "gap", "flatten")  # layers that work on an (H, W, C) feature map
ENDS_MAP = ("gap", "flatten", "dense")  # layers after which there is no feature map any more


def dense(units: int, rate: float | None = None) -> Layer:
    return Layer("dense", units, rate)


def _stack(units, rate):
    return tuple(dense(u, rate) for u in units)


_UP = (32, 64, 128, 256, 512, 1024)
_DOWN = (1024, 512, 256, 128, 64)

# The notes' architectures (phase 2). `mixed` reads literally as "32 … 1024 at 0.2, then 1024 … 64 at 0.5".
NOTES_STACKS: dict[str, tuple[Layer, ...]] = {
    "pyramid": _stack(_DOWN, 0.5),
    "pyramid_d02": _stack(_DOWN, 0.2),
    "inverted": _stack(_UP[:-1], 0.5),
    "inverted_d02": _stack(_UP, 0.2),
    "hourglass": _stack(_UP + _DOWN[1:], 0.5),
    "hourglass_d02": _stack(_UP + _DOWN[1:], 0.2),
    "mixed": _stack(_UP, 0.2) + _stack(_DOWN, 0.5),
    "final": _stack((32, 64, 64, 128, 128, 256, 256, 512, 512, 1024), 0.5),
}


def _keras_io_stack(a, b, c, d, e):
    """keras.io's "Pneumonia Classification on TPU" (Amy Jang, 2020), a 180x180 model whose dense_block is the
    notes' dense_block: two Conv2D(a) and a pool, four blocks SeparableConv2D x2 -> BatchNorm -> MaxPool (Dropout 0.2
    after the last two), Flatten, dense blocks 512@0.7, 128@0.5, 64@0.3. Its pools are 'valid' there; here
    'same', because five 'valid' pools need 32x32 images and the embedded default is 28x28."""
    return (f"conv:{a},{a},pool:same,sep:{b},{b},bn,pool:same,sep:{c},{c},bn,pool:same,"
            f"sep:{d},{d},bn,pool:same,dropout:0.2,sep:{e},{e},bn,pool:same,dropout:0.2,"
            "flatten,dense:512@0.7,128@0.5,64@0.3")


# The CNNs (phase 1), as spec strings.
CNN_SPECS: dict[str, str] = {
    # The classic conv-pool stack (as in Chollet's Deep Learning with Python), BatchNorm after each conv.
    "cnn_conv": "conv:32,bn,pool:same,conv:64,bn,pool:same,conv:128,bn,pool:same,conv:128,bn,pool:same,"
                "flatten,dense:512@0.5",
    "cnn_sep": _keras_io_stack(16, 32, 64, 128, 256),
    "cnn_sep_wide": _keras_io_stack(32, 64, 128, 256, 512),
}


def known_archs() -> list[str]:
    """Every sequential architecture name (spec strings and registered modules aside)."""
    dense_names, cnn_names = sorted(NOTES_STACKS), sorted(CNN_SPECS)
    return (dense_names + sorted(f"{n}_plain" for n in dense_names)
            + cnn_names + sorted(f"{n}_plain" for n in cnn_names))


def plain(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    """The same layers without BatchNorm and Dropout (dense blocks become plain Dense(relu))."""
    return tuple(dataclasses.replace(l, rate=None) if l.kind == "dense" else l
                 for l in layers if l.kind not in ("bn", "dropout"))


_UNITS = re.compile(r"^[1-9]\d*$")
_RATE = re.compile(r"^[0-9]*\.?[0-9]+$")
_DENSE = re.compile(r"^([1-9]\d*)(?:@([0-9]*\.?[0-9]+))?$")


def _parse_item(kind: str, args: str | None) -> Layer | None:
    """One spec item's kind and arguments -> its Layer, or None when the arguments do not fit the kind."""
    if kind in ("conv", "sep"):
        return Layer(kind, int(args)) if args and _UNITS.match(args) else None
    if kind == "dense":
        m = _DENSE.match(args or "")
        if not m or (m.group(2) and not float(m.group(2)) < 1):
            return None
        return dense(int(m.group(1)), None if m.group(2) is None else float(m.group(2)))
    if kind == "dropout":
        return Layer("dropout", rate=float(args)) if args and _RATE.match(args) and float(args) < 1 else None
    if kind == "pool":
        return Layer("pool", padding=args or "valid") if args in (None, "same") else None
    return Layer(kind) if args is None else None  # bn, gap, flatten take no arguments


def parse_spec(spec: str) -> tuple[Layer, ...]:
    """A spec string (grammar in the module docstring) -> its layers. Raises a one-line FlaxrayError."""

    def bad(item, why):
        return FlaxrayError(f"bad spec string {spec!r}: item {item!r} {why}, "
                            "e.g. 'conv:32,pool,sep:64,pool,gap,dense:128@0.5' or 'dense:1024@0.5,512@0.2'")

    layers, kind, map_ended_by = [], None, None
    for item in (s.strip() for s in spec.split(",")):
        head, _, args = item.partition(":")
        if head in USAGE:
            kind, args = head, (args if ":" in item else None)
        elif kind in ("conv", "sep", "dense", "dropout") and re.match(r"[\d.]", item):
            args = item  # a bare item repeats the previous kind
        else:
            raise bad(item, f"is not a layer ({', '.join(USAGE.values())})")
        layer = _parse_item(kind, args)
        if layer is None:
            raise bad(item, f"is not {USAGE[kind]}")
        if kind in NEEDS_MAP and map_ended_by:
            raise bad(item, f"needs a feature map, but {map_ended_by!r} came before it")
        if kind in ENDS_MAP:
            map_ended_by = map_ended_by or str(layer)
        layers.append(layer)
    return tuple(layers)


def parse_arch(arch: str, *, registered: Sequence[str] = ()) -> tuple[Layer, ...]:
    """Architecture name or spec string -> its layers. Raises FlaxrayError on bad input; `registered`
    (the registry's names, which have no layers) are named in the error for an unknown arch."""
    name = arch.removesuffix("_plain")
    if name in NOTES_STACKS:
        layers = NOTES_STACKS[name]
    elif name in CNN_SPECS:
        layers = parse_spec(CNN_SPECS[name])
    elif re.split("[:,]", arch, maxsplit=1)[0].strip() in USAGE:  # a spec string starts with a layer
        return parse_spec(arch)
    else:
        if arch in registered:
            raise FlaxrayError(f"arch {arch!r} is a registered module, not a stack of layers: it has no spec "
                               "layers (use flaxray.models.check_arch to validate any arch)")
        raise FlaxrayError(
            f"unknown arch {arch!r}; known: {', '.join(known_archs() + list(registered))}, or a spec string "
            "like 'conv:32,pool,sep:64,pool,gap,dense:128@0.5' or 'dense:1024@0.5,512@0.2'"
        )
    return plain(layers) if name != arch else layers


def min_image_size(layers: tuple[Layer, ...]) -> int:
    """The smallest image side the layers accept: each 'valid' pool needs a side of at least 2."""
    side = 1
    for layer in reversed(layers):
        if layer.kind == "pool":
            # The smallest n with n // 2 >= side is 2 * side; with ceil(n / 2) >= side, 2 * side - 1.
            side = 2 * side if layer.padding == "valid" else 2 * side - 1
    return side


def output_shape(layer: Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape (without batch) `layer` makes of an input of `shape`."""
    match layer.kind:
        case "conv" | "sep":
            return (*shape[:2], layer.units)
        case "pool" if layer.padding == "same":
            return (-(-shape[0] // 2), -(-shape[1] // 2), shape[2])
        case "pool":
            return (shape[0] // 2, shape[1] // 2, shape[2])
        case "gap":
            return shape[-1:]
        case "flatten":
            return (math.prod(shape),)
        case "dense":
            return (layer.units,)
    return shape  # bn, dropout
