"""Image augmentation as Keras 3's preprocessing layers do it, in pure JAX, per seed inside the train step.

    augment = parse("flip,rotate=0.1,translate=0.1,zoom=0.2,contrast=0.2")   # --augment's text
    images = apply(augment, key, images)     # float32 (N, H, W, C) in [0, 255], one draw per image

Each kind is the Keras layer of the same name with its defaults (fill "reflect", bilinear), applied in
the order flip, rotate, translate, zoom, contrast, as a model that stacks `RandomFlip("horizontal")`,
`RandomRotation(r)`, `RandomTranslation(t, t)`, `RandomZoom(z)`, `RandomContrast(c)` would. A study that
moves from Keras to flaxray then trains on the same distribution of images, not a look-alike.

The geometric kinds are resampled one after another, one gather each, not folded into one affine map:
two bilinear resamplings blur twice and reflect the border of an intermediate image, so the composed
map gives other (sharper) images than Keras's stack. The flip rides in the first resampling's map (it
is exact there), so flip with any one geometric kind costs one gather.

Every kind draws from its own key, `fold_in(key, KINDS.index(kind))`, so turning one on or off moves
none of the others' draws; every image gets its own draw. `apply` is pure: `jax.jit` and `jax.vmap`
over seeds (one key each) compose with it, and the kinds that are off are not in the program.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp

from flaxray.core.settings import label
from flaxray.errors import FlaxrayError

KINDS = ("flip", "rotate", "translate", "zoom", "contrast")  # the order applied; a kind's key is fold_in(key, index)
FACTORS = KINDS[1:]  # the kinds that take a factor, each in (0, 1]
VALUE_RANGE = (0.0, 255.0)  # RandomContrast's default value_range: what it clips to, hence images in [0, 255]


@dataclasses.dataclass(frozen=True)
class Augment:
    """Which augmentations, and their factors (0: off). Hashable: it is static in the compiled program."""

    flip: bool = False  # RandomFlip("horizontal"): each image mirrored left-right with probability 1/2
    rotate: float = 0.0  # RandomRotation(rotate): angle uniform in [-rotate, rotate] turns (* 360 degrees)
    translate: float = 0.0  # RandomTranslation(translate, translate): shift uniform in [-t, t] * H (and * W)
    zoom: float = 0.0  # RandomZoom(zoom): one factor uniform in [1 - zoom, 1 + zoom] for both axes (> 1: out)
    contrast: float = 0.0  # RandomContrast(contrast): factor uniform in [1, 1 + contrast] (Keras 3's draw)

    def __post_init__(self):
        if not isinstance(self.flip, bool):
            raise FlaxrayError(f"--augment: flip is on or off, got {self.flip!r}")
        for name in FACTORS:
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and value == 0 and not isinstance(value, bool)):
                _check_factor(name, value)

    def __bool__(self) -> bool:
        """Any augmentation on (the trainer leaves `apply` out of the program otherwise)."""
        return self.flip or any(getattr(self, name) for name in FACTORS)

    def spec(self) -> str:
        """The canonical text that `parse` reads back to this Augment: kinds in `KINDS` order; "" when off."""
        items = ["flip"] if self.flip else []
        return ",".join(items + [f"{name}={label(getattr(self, name))}" for name in FACTORS if getattr(self, name)])


def _check_factor(name: str, value) -> None:
    """A factor must be a finite real in (0, 1]: Keras's own bound for these layers, 0 being "off"."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and 0 < value <= 1):
        raise FlaxrayError(f"--augment: {name} must be a finite number in (0, 1], got {value!r}")


def parse(text: str | None) -> Augment:
    """`--augment`'s text ("flip,rotate=0.1,..."; "" or None: off) as an Augment; one-line errors."""
    if text is None or not text.strip():
        return Augment()
    given: dict = {}
    for item in text.split(","):
        name, eq, value = (part.strip() for part in item.partition("="))
        if name not in KINDS:
            what = f"unknown augmentation {name!r}" if name else f"an empty item in {text!r}"
            raise FlaxrayError(f"--augment: {what}; the choices are {', '.join(KINDS)} (flip, or NAME=F with F in (0, 1])")
        if name in given:
            raise FlaxrayError(f"--augment lists {name} twice: {text!r}")
        if name == "flip":
            if eq:
                raise FlaxrayError(f"--augment: flip takes no value, got {item.strip()!r}")
            given[name] = True
            continue
        if not value:
            raise FlaxrayError(f"--augment: {name} needs a value, as {name}=F with F in (0, 1]; got {item.strip()!r}")
        try:
            factor = float(value)
        except ValueError:
            raise FlaxrayError(f"--augment: {name}={value} is not a number") from None
        _check_factor(name, factor)
        given[name] = factor
    return Augment(**given)


def draw(augment: Augment, key, n: int, height: int, width: int) -> dict:
    """Each image's parameters, as Keras's layers draw them (`_transform`'s keywords); only the kinds on."""
    keys = {kind: jax.random.fold_in(key, i) for i, kind in enumerate(KINDS)}
    uniform = lambda k, low, high: jax.random.uniform(k, (n,), jnp.float32, low, high)
    params = {}
    if augment.flip:  # Keras: flip where uniform <= 0.5
        params["flip"] = jax.random.uniform(keys["flip"], (n,), jnp.float32) <= 0.5
    if augment.rotate:  # Keras draws degrees: factor * 360
        params["angle"] = uniform(keys["rotate"], -augment.rotate * 360.0, augment.rotate * 360.0)
    if augment.translate:  # Keras: a fraction of the side, times the side, in pixels
        k_dy, k_dx = jax.random.split(keys["translate"])
        params["dy"] = uniform(k_dy, -augment.translate, augment.translate) * height
        params["dx"] = uniform(k_dx, -augment.translate, augment.translate) * width
    if augment.zoom:
        params["zoom"] = uniform(keys["zoom"], 1.0 - augment.zoom, 1.0 + augment.zoom)
    if augment.contrast:
        # Keras 3 documents [1 - c, 1 + c] but its RandomContrast bounds the factor to (0, 1), so the lower
        # end is 1 - 0: contrast only ever rises. We draw what Keras draws, not what it documents.
        params["contrast"] = uniform(keys["contrast"], 1.0, 1.0 + augment.contrast)
    return params


def apply(augment: Augment, key, images):
    """`images` (float32 (N, H, W, C) in [0, 255]) with each image augmented by its own draw from `key`."""
    if not augment:
        return images
    n, height, width, _ = images.shape
    return _transform(images, **draw(augment, key, n, height, width))


def _transform(images, *, flip=None, angle=None, dx=None, dy=None, zoom=None, contrast=None):
    """`images` transformed by explicit per-image parameters (each (N,) or None: that kind off), in Keras's
    units: `flip` bool, `angle` degrees (counter-clockwise), `dx`/`dy` pixels, `zoom` and `contrast` factors.
    Separate from the draws so a test can hand it the very parameters a Keras layer drew."""
    images = jnp.asarray(images, jnp.float32)
    _, height, width, _ = images.shape
    maps = []
    if angle is not None:
        maps.append(_rotation(jnp.asarray(angle, jnp.float32), height, width))
    if dx is not None or dy is not None:
        maps.append(_translation(jnp.asarray(dx, jnp.float32), jnp.asarray(dy, jnp.float32)))
    if zoom is not None:
        maps.append(_zoom(jnp.asarray(zoom, jnp.float32), height, width))
    if flip is not None:
        flip = jnp.asarray(flip, bool)
        if maps:  # the flip joins the first resampling's map: reflect fill is symmetric, the images the same
            maps[0] = _flipped(maps[0], flip, width)
        else:
            images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
    if maps:
        # A loop, not a Python for: in one straight program XLA fuses a stage's 4-tap sum into the next
        # stage's gather, so it is computed again for every tap that reads it (two stages ran 2x slower on
        # XLA:CPU than in this loop); a loop's carry is computed once. One stage: XLA inlines the loop.
        stacked = jnp.stack([jnp.stack(jnp.broadcast_arrays(*matrix)) for matrix in maps])  # (stages, 6, N)
        images = jax.lax.fori_loop(0, len(maps), lambda i, x: _resample(x, stacked[i]), images)
    if contrast is not None:
        images = _contrast(images, jnp.asarray(contrast, jnp.float32))
    return images


# The maps below take an output pixel (x, y) to where it reads the input: x_in = a0 x + a1 y + a2,
# y_in = b0 x + b1 y + b2, each as (a0, a1, a2, b0, b1, b2) with a leading image axis. Their arithmetic
# follows Keras's own, term by term, so the same drawn parameters give the same float32 matrices.

def _rotation(degrees, height: int, width: int):
    """RandomRotation's matrix: about the image's centre ((W-1)/2, (H-1)/2); Keras's shear and scale are 0 and 1."""
    theta = degrees * jnp.float32(math.pi / 180.0)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    cx, cy = jnp.float32(0.5 * (width - 1)), jnp.float32(0.5 * (height - 1))
    return (cos, -sin, cx - cx * cos + cy * sin, sin, cos, cy - cx * sin - cy * cos)


def _translation(dx, dy):
    """RandomTranslation's matrix: the image moves right by dx and down by dy pixels."""
    one, zero = jnp.ones_like(dx), jnp.zeros_like(dx)
    return (one, zero, -dx, zero, one, -dy)


def _zoom(factor, height: int, width: int):
    """RandomZoom's matrix, about the centre: a factor above 1 reads a larger area (zooms out)."""
    zero = jnp.zeros_like(factor)
    x_offset = jnp.float32((width - 1.0) / 2.0) * (1.0 - factor)
    y_offset = jnp.float32((height - 1.0) / 2.0) * (1.0 - factor)
    return (factor, zero, x_offset, zero, factor, y_offset)


def _flipped(matrix, flip, width: int):
    """`matrix` read from the image mirrored left-right where `flip`: x_in -> (W-1) - x_in. Saves the mirror's
    own pass; bilinear weights and the reflected border are symmetric under it, so only rounding moves."""
    a0, a1, a2, b0, b1, b2 = matrix
    return (jnp.where(flip, -a0, a0), jnp.where(flip, -a1, a1), jnp.where(flip, (width - 1.0) - a2, a2), b0, b1, b2)


def _reflect(index, size: int):
    """Keras's fill "reflect", `(d c b a | a b c d | d c b a)`: jax.scipy's "reflect" (half-sample symmetric)."""
    index = jnp.mod(index, 2 * size)
    return jnp.where(index >= size, 2 * size - 1 - index, index)


def _resample(images, matrix):
    """Bilinear resampling of every image by its own map, one gather for the whole batch.

    As Keras's jax backend (`jax.scipy.ndimage.map_coordinates`, order 1, mode "reflect"): the four
    neighbours are reflected into the image one by one, weighted (1 - f, f) per axis and summed in its
    order. Keras interpolates along the channel axis too, with weight exactly 1 and 0; we skip it."""
    n, height, width, channels = images.shape
    a0, a1, a2, b0, b1, b2 = (jnp.broadcast_to(jnp.asarray(m, jnp.float32), (n,)) for m in matrix)
    y, x = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
    grid = jnp.stack([y, x, jnp.ones_like(x)], axis=-1)  # (H, W, 3): Keras's einsum's order, its offset last
    affine = jnp.stack([jnp.stack([a1, a0, a2], axis=-1), jnp.stack([b1, b0, b2], axis=-1)], axis=1)  # (N, 2, 3)
    # The coordinates come out of a dot, as in Keras, and not out of fusible multiply-adds: XLA copies cheap
    # elementwise producers into each consumer and contracts them to fma differently in each, so the floor
    # that picks the pixels and the floor under the weights could differ by one pixel where a coordinate
    # lies on an integer (seen on XLA:CPU: a rotation's centre read its neighbour). A dot is computed once.
    # HIGHEST: no TF32 on GPUs; its 10-bit mantissa would move a 180-pixel image's coordinates by 0.09 pixel.
    x_in, y_in = jnp.einsum("hwk,nik->inhw", grid, affine, precision=jax.lax.Precision.HIGHEST)
    y0, x0 = jnp.floor(y_in), jnp.floor(x_in)
    wy1, wx1 = y_in - y0, x_in - x0
    wy0, wx0 = 1 - wy1, 1 - wx1
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    rows = [_reflect(y0, height) * width, _reflect(y0 + 1, height) * width]
    cols = [_reflect(x0, width), _reflect(x0 + 1, width)]
    base = (jnp.arange(n, dtype=jnp.int32) * (height * width))[:, None, None]
    index = jnp.stack([base + r + c for r in rows for c in cols])  # (4, N, H, W): y0x0, y0x1, y1x0, y1x1
    taps = images.reshape(n * height * width, channels)[index]  # (4, N, H, W, C)
    weights = [wy * wx for wy in (wy0, wy1) for wx in (wx0, wx1)]
    out = weights[0][..., None] * taps[0]
    for tap, weight in zip(taps[1:], weights[1:]):
        out = out + weight[..., None] * tap
    return out


def _contrast(images, factor):
    """RandomContrast: (x - mean) * factor + mean per image and channel (mean over H, then W), clipped to
    its value_range (0, 255)."""
    mean = _sum(_sum(images, 1) / images.shape[1], 2) / images.shape[2]
    return jnp.clip((images - mean) * factor[:, None, None, None] + mean, *VALUE_RANGE)


def _sum(x, axis: int):
    """Sum over `axis` (kept, size 1) pairwise, in an order fixed by the shape alone. XLA picks a reduction's
    order by the fused program, which differs between one seed and seeds vmapped (one ulp in 1/20 of the
    means), and a seed must get the same bits however many seeds share its program. Padding is zeros: exact."""
    size = 1 << (x.shape[axis] - 1).bit_length()
    x = jnp.pad(x, [(0, size - x.shape[axis]) if a == axis else (0, 0) for a in range(x.ndim)])
    while x.shape[axis] > 1:
        half = x.shape[axis] // 2
        x = jax.lax.slice_in_dim(x, 0, half, axis=axis) + jax.lax.slice_in_dim(x, half, 2 * half, axis=axis)
    return x
