"""`flaxray.core.augment` against Keras 3's preprocessing layers: the same images given the same draws, the
same distribution of draws, one draw per image and seed, off is the identity, and `--augment`'s refusals.

Tolerances. Given Keras's own drawn parameters, flip and contrast agree within 1e-4 and translate and zoom
within 1e-3 ([0, 255] values; seen: 5e-5, float32 rounding of the weights). A rotation's coordinates are
a dot of float32 terms summed in another order than Keras's, within 2 ulp of them per axis; on noise
images (a jump of up to 255 per pixel) that is 255 * 4 ulp(max(H, W)), 1.9e-3 at 23 pixels (seen: 8e-4).
A semantic slip (the wrong pixel, half a pixel off, another fill) moves values by tens.

Statistical tests fail by chance with probability below 1e-6 each (stated at each).
"""

import math
import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before Keras is imported anywhere: it picks its backend once

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxray.core import augment as A
from flaxray.core.augment import Augment, apply, parse
from flaxray.errors import FlaxrayError

ALPHA = 1e-6  # each statistical test's false-failure rate
SHAPES = [(5, 17, 23, 3), (3, 28, 28, 1)]  # non-square catches a swapped H and W


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")  # the [baseline] extra


def noise(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


def keras_layers(keras):
    """Each kind's layer with its defaults, factors large enough to reach far into the reflected border,
    and how its transformation reads as `_transform`'s keywords."""
    L = keras.layers
    return {
        "flip": (L.RandomFlip("horizontal"), lambda t: {"flip": np.asarray(t["flips"]).reshape(-1)}),
        "rotate": (L.RandomRotation(0.5), lambda t: {"angle": np.asarray(t["angle"])}),
        "translate": (L.RandomTranslation(0.6, 0.6),
                      lambda t: {"dx": np.asarray(t["translations"])[:, 0], "dy": np.asarray(t["translations"])[:, 1]}),
        "zoom": (L.RandomZoom(0.7), lambda t: {"zoom": np.asarray(t["height_zoom"])[:, 0]}),
        "contrast": (L.RandomContrast(0.8), lambda t: {"contrast": np.asarray(t["contrast_factor"]).reshape(-1)}),
    }


def tolerance(kind, shape):
    if kind == "rotate":
        return 255 * 4 * float(np.spacing(np.float32(max(shape[1:3]))))
    return 1e-3 if kind in ("translate", "zoom") else 1e-4


def keras_draw(keras, layer, images, seed):
    # A SeedGenerator, as a layer's call uses: with a plain int seed Keras draws RandomTranslation's two
    # axes from the same seed, so dy / H == dx / W in every image (a diagonal shift only).
    return layer.get_random_transformation(images, training=True, seed=keras.random.SeedGenerator(seed))


transform_jit = jax.jit(lambda images, params: A._transform(images, **params))


@pytest.mark.numeric
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", A.KINDS)
def test_each_kind_gives_kerass_images_given_kerass_draws(keras, kind, shape):
    """Keras's layer draws a transformation and applies it; ours, handed the same parameters, gives the
    same images, eager and under jit (the train step's case)."""
    layer, params_of = keras_layers(keras)[kind]
    images = noise(shape)
    transformation = keras_draw(keras, layer, images, seed=7)
    want = np.asarray(layer.transform_images(images, transformation, training=True))
    params = params_of(transformation)
    for got in (A._transform(images, **params), transform_jit(images, params)):
        assert got.shape == images.shape and got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=tolerance(kind, shape))


@pytest.mark.numeric
@pytest.mark.parametrize("kinds", [("flip", "translate"), ("flip", "zoom"), ("rotate", "zoom", "contrast"), A.KINDS])
def test_kinds_together_are_kerass_layers_stacked_in_order(keras, kinds):
    """Keras's layers one after another in our order, each with its own draw, against one `_transform`
    given every draw: the order, the resampling one stage after another, and the flip we fold into the
    first resampling's map."""
    images = noise(SHAPES[0], seed=1)
    want, params = images, {}
    for i, kind in enumerate(kinds):
        layer, params_of = keras_layers(keras)[kind]
        transformation = keras_draw(keras, layer, want, seed=10 + i)
        want = np.asarray(layer.transform_images(want, transformation, training=True))
        params.update(params_of(transformation))
    np.testing.assert_allclose(np.asarray(transform_jit(images, params)), want, rtol=0,
                               atol=tolerance("rotate", SHAPES[0]))


def test_reflect_is_jax_scipys_reflect():
    """Our index fold is the one `jax.scipy.ndimage.map_coordinates(mode="reflect")` uses (Keras's fill)."""
    index = jnp.arange(-70, 70)
    for size in (1, 2, 5, 23):
        want = jnp.floor_divide(jnp.abs((2 * index + 1 + 2 * size) % (4 * size) - 2 * size) - 1, 2)
        np.testing.assert_array_equal(A._reflect(index, size), want)


N = 2000


def ks_critical(n, m, alpha=ALPHA):
    """Two-sample Kolmogorov-Smirnov: D above this has probability about alpha under one distribution."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def ks_statistic(a, b):
    grid = np.sort(np.concatenate([a, b]))
    return np.abs(np.searchsorted(np.sort(a), grid, "right") / len(a)
                  - np.searchsorted(np.sort(b), grid, "right") / len(b)).max()


def test_draws_have_kerass_distribution(keras):
    """2000 draws of each parameter: inside the layer's own bounds, reaching both ends (no draw in the
    end 1 % of the range: probability 0.99^2000 = 2e-9 per end), and the distribution of Keras's own
    2000 draws (two-sample KS at ALPHA). Contrast in particular: Keras 3 draws [1, 1 + c], not the
    [1 - c, 1 + c] it documents, and so do we."""
    height, width = 20, 30
    augment = Augment(rotate=0.3, translate=0.2, zoom=0.4, contrast=0.5)
    ours = {k: np.asarray(v) for k, v in A.draw(augment, jax.random.key(3), N, height, width).items()}
    layers = {
        "angle": keras.layers.RandomRotation(0.3), "zoom": keras.layers.RandomZoom(0.4),
        "translate": keras.layers.RandomTranslation(0.2, 0.2), "contrast": keras.layers.RandomContrast(0.5)}
    images = np.zeros((N, height, width, 1), np.float32)
    theirs = {name: keras_draw(keras, layer, images, seed=5) for name, layer in layers.items()}
    bounds = {
        "angle": (layers["angle"].factor[0] * 360, layers["angle"].factor[1] * 360),
        "dx": (layers["translate"].width_lower * width, layers["translate"].width_upper * width),
        "dy": (layers["translate"].height_lower * height, layers["translate"].height_upper * height),
        "zoom": (1 + layers["zoom"].height_lower, 1 + layers["zoom"].height_upper),
        "contrast": (1 - layers["contrast"].factor[0], 1 + layers["contrast"].factor[1]),
    }
    kerass = {
        "angle": np.asarray(theirs["angle"]["angle"]),
        "dx": np.asarray(theirs["translate"]["translations"])[:, 0],
        "dy": np.asarray(theirs["translate"]["translations"])[:, 1],
        "zoom": np.asarray(theirs["zoom"]["height_zoom"])[:, 0],
        "contrast": np.asarray(theirs["contrast"]["contrast_factor"]).reshape(-1),
    }
    assert bounds["contrast"] == (1.0, 1.5)  # Keras 3.15's actual range; if this moves, so must `draw`
    for name, (low, high) in bounds.items():
        values, end = ours[name], 0.01 * (high - low)
        assert values.shape == (N,) and values.dtype == np.float32
        assert low <= values.min() < low + end and high - end < values.max() <= high, name
        assert ks_statistic(values, kerass[name]) < ks_critical(N, N), name
    # the two axes of a shift are independent (|r| > 5.5 / sqrt(N): probability below 4e-8)
    assert abs(np.corrcoef(ours["dx"], ours["dy"])[0, 1]) < 5.5 / math.sqrt(N)


def binomial_two_sided_bound(n, alpha=ALPHA):
    """The smallest d with P(|X - n/2| >= d) <= alpha for X ~ Binomial(n, 1/2), from the exact tail."""
    tail, k = 0.0, 0
    while 2 * (tail + math.comb(n, k) / 2 ** n) <= alpha:
        tail += math.comb(n, k) / 2 ** n
        k += 1
    return n / 2 - k + 1


def test_flip_probability_is_one_half(keras):
    """Keras flips where uniform <= 0.5; so do we: 2000 images, an exact two-sided binomial test at ALPHA."""
    flips = np.asarray(A.draw(Augment(flip=True), jax.random.key(11), N, 8, 8)["flip"])
    assert flips.dtype == bool and flips.shape == (N,)
    assert abs(flips.sum() - N / 2) < binomial_two_sided_bound(N)
    kerass = np.asarray(keras_draw(keras, keras.layers.RandomFlip("horizontal"), np.zeros((N, 8, 8, 1)), 2)["flips"])
    assert abs(kerass.sum() - N / 2) < binomial_two_sided_bound(N)


EVERYTHING = parse("flip,rotate=0.1,translate=0.1,zoom=0.2,contrast=0.2")


@pytest.mark.numeric
def test_apply_is_its_draws_applied_and_each_seed_its_own():
    """`apply` is `_transform` of `draw`; another key, other images; the same key, the same bits; jit(vmap)
    over three keys (the trainer's seeds) is three separate jitted calls, bit for bit."""
    images = noise((4, 16, 12, 3), seed=2)
    keys = jax.random.split(jax.random.key(0), 3)
    run = jax.jit(lambda key, x: apply(EVERYTHING, key, x))
    one = np.asarray(run(keys[0], images))
    np.testing.assert_array_equal(one, np.asarray(run(keys[0], images)))
    np.testing.assert_array_equal(apply(EVERYTHING, keys[0], images),  # eager both: op for op the same
                                  A._transform(images, **A.draw(EVERYTHING, keys[0], 4, 16, 12)))
    separate = np.stack([np.asarray(run(k, images)) for k in keys])
    assert not np.array_equal(separate[0], separate[1]) and not np.array_equal(separate[1], separate[2])
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(run, in_axes=(0, None)))(keys, images)), separate)
    per_seed_images = np.stack([images, images[::-1], images + 1])  # each seed its own batch too
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(run))(keys, per_seed_images)),
                                  np.stack([np.asarray(run(k, x)) for k, x in zip(keys, per_seed_images)]))


def test_each_image_draws_its_own_and_kinds_do_not_move_each_other():
    """Images of one batch draw apart; turning a kind on or off leaves every other kind's draws alone."""
    key = jax.random.key(4)
    every = A.draw(EVERYTHING, key, 64, 10, 10)
    for name, values in every.items():
        assert len(np.unique(np.asarray(values))) == (2 if name == "flip" else 64), name
    for kind in A.KINDS:
        without = A.draw(parse(",".join(k for k in EVERYTHING.spec().split(",") if not k.startswith(kind))),
                         key, 64, 10, 10)
        for name, values in without.items():
            np.testing.assert_array_equal(values, every[name])


def test_off_is_the_identity():
    images = noise((2, 9, 7, 3))
    assert not Augment() and not parse("") and not parse(None) and not parse("  ")
    assert apply(Augment(), jax.random.key(0), images) is images
    np.testing.assert_array_equal(jax.jit(lambda k, x: apply(Augment(), k, x))(jax.random.key(0), images), images)
    assert Augment().spec() == ""


def test_spec_reads_back():
    for text in ("flip", "contrast=0.2", "flip,rotate=0.1,translate=0.1,zoom=0.2,contrast=0.2",
                 "zoom=1,rotate=0.001", " translate = 0.25 , flip "):
        augment = parse(text)
        assert augment and parse(augment.spec()) == augment
    assert parse("zoom=1,rotate=0.001,flip").spec() == "flip,rotate=1e-3,zoom=1"


@pytest.mark.parametrize("text, words", [
    ("blur=0.1", "unknown augmentation 'blur'; the choices are flip, rotate, translate, zoom, contrast"),
    ("flip,,zoom=0.1", "an empty item"),
    ("rotate", "rotate needs a value"),
    ("rotate=", "rotate needs a value"),
    ("zoom=abc", "zoom=abc is not a number"),
    ("flip=1", "flip takes no value"),
    ("flip=", "flip takes no value"),
    ("rotate=0", "rotate must be a finite number in (0, 1], got 0.0"),
    ("translate=1.5", "translate must be a finite number in (0, 1], got 1.5"),
    ("zoom=-0.2", "zoom must be a finite number in (0, 1]"),
    ("contrast=nan", "contrast must be a finite number in (0, 1]"),
    ("contrast=inf", "contrast must be a finite number in (0, 1]"),
    ("flip,rotate=0.1,flip", "lists flip twice"),
    ("zoom=0.1,zoom=0.2", "lists zoom twice"),
])
def test_parse_refuses_in_one_line_naming_the_flag(text, words):
    with pytest.raises(FlaxrayError) as err:
        parse(text)
    message = str(err.value)
    assert "--augment" in message and words in message and "\n" not in message


def test_augment_checks_its_fields_too():
    for bad in ({"rotate": 2.0}, {"zoom": -0.1}, {"contrast": float("nan")}, {"flip": 1}, {"translate": True}):
        with pytest.raises(FlaxrayError, match="--augment"):
            Augment(**bad)
