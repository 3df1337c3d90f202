"""Registered models: a user's NNX module with BatchNorm and dropout runs through split / vmap over seeds /
merge as the trainer does, purely per seed; check_arch; the refusals; the class-count heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxray import models
from flaxray.errors import FlaxrayError
from flaxray.models import build_model, check_arch, count_params, graphdef, register, unregister


class Tiny(nnx.Module):
    """Not sequential: a conv branch and a pooled skip, summed; BatchNorm and dropout."""

    def __init__(self, input_shape, num_outputs, *, rngs, dtype):
        c = input_shape[-1]
        self.conv = nnx.Conv(c, 4, (3, 3), dtype=dtype, rngs=rngs)
        self.norm = nnx.BatchNorm(4, dtype=dtype, rngs=rngs)
        self.skip = nnx.Linear(c, 4, dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(0.5)
        self.head = nnx.Linear(4, num_outputs, dtype=dtype, rngs=rngs)

    def __call__(self, x, *, train, dropout_key):
        a = nnx.relu(self.norm(self.conv(x), use_running_average=not train)).mean(axis=(1, 2))
        h = a + self.skip(x.mean(axis=(1, 2)))
        return self.head(self.drop(h, deterministic=not train, rngs=dropout_key))


@pytest.fixture(autouse=True)
def tiny():
    register("tiny", Tiny)
    yield
    unregister("tiny")


def images(n=6, shape=(5, 5, 2), seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, *shape)), jnp.uint8)


def test_a_registered_module_trains_purely_per_seed_through_split_vmap_merge():
    shape, x = (5, 5, 2), images()
    net = models.model("tiny", shape)  # what the trainer calls: init and apply, pure functions of arrays

    def init(key):  # as the trainer's init: the module built from the key, split into pure (params, state)
        return net.init(key)

    def step(variables, dropout_key):  # as the trainer's loss: merged, called, the new statistics read back
        return net.apply(variables, x, train=True, key=dropout_key)

    keys = jax.random.split(jax.random.key(0), 3)
    variables = jax.jit(jax.vmap(init))(keys)
    params, stats = variables
    assert jax.tree.structure(params) == jax.tree.structure(
        nnx.as_pure(nnx.state(build_model("tiny", shape), nnx.Param)))  # the module's own split
    dropout_keys = jax.random.split(jax.random.key(1), 3)
    logits, new_stats = jax.jit(jax.vmap(step))(variables, dropout_keys)
    assert logits.shape == (3, 6) and logits.dtype == jnp.float32  # binary: (N,) per seed
    for k in range(3):  # seed k of the vmapped batch is seed k alone: no state shared between seeds
        alone, alone_stats = step(init(keys[k]), dropout_keys[k])
        np.testing.assert_allclose(logits[k], alone, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new_stats["net"]["norm"]["mean"][k], alone_stats["net"]["norm"]["mean"], atol=1e-6)
    assert not np.allclose(new_stats["net"]["norm"]["mean"], stats["net"]["norm"]["mean"])  # train mode updates them
    # Dropout follows the key it is given: the same key the same mask, another key another one.
    v0 = init(keys[0])
    np.testing.assert_array_equal(step(v0, dropout_keys[0])[0], step(v0, dropout_keys[0])[0])
    assert not np.allclose(step(v0, dropout_keys[0])[0], step(v0, dropout_keys[1])[0])
    # Inference: no key, deterministic, the moving statistics (left as they were).
    inferred, same_stats = net.apply(v0, x, train=False)
    np.testing.assert_array_equal(inferred, net.apply(v0, x, train=False)[0])
    jax.tree.map(np.testing.assert_array_equal, same_stats, v0.state)
    # The module sees the images rescaled to [0, 1]: the wrapper divides by 255 as Sequential does.
    model = nnx.merge(graphdef("tiny", shape), v0.params, v0.state)
    np.testing.assert_array_equal(model(x, train=False), inferred)
    direct = model.net(x.astype(jnp.float32) / 255, train=False, dropout_key=None)[:, 0]
    np.testing.assert_allclose(inferred, direct, rtol=1e-6)


def test_class_count_sets_the_heads_width():
    model = build_model("tiny", (5, 5, 2), num_classes=4)
    assert model(images()).shape == (6, 4)
    assert count_params(model)["total"] == count_params(build_model("tiny", (5, 5, 2)))["total"] + 3 * (4 + 1)
    seq = build_model("conv:3,gap", (6, 6, 1), num_classes=5)
    assert seq(images(shape=(6, 6, 1))).shape == (6, 5) and seq.head.kernel.shape == (3, 5)
    assert build_model("conv:3,gap", (6, 6, 1))(images(shape=(6, 6, 1))).shape == (6,)
    assert models.num_outputs(2) == 1 and models.num_outputs(7) == 7
    for bad in (1, 0, 2.5, True, "3"):
        with pytest.raises(FlaxrayError, match="num_classes"):
            build_model("pyramid", (4, 4, 1), num_classes=bad)


def test_check_arch_accepts_every_kind_and_refuses_the_rest_in_one_line():
    for arch in ("pyramid", "cnn_sep_plain", "conv:8,pool,gap", "tiny", "resnet18"):
        assert check_arch(arch) == arch
    for bad, match in (("tinyy", "unknown arch 'tinyy'.*resnet18.*tiny"), ("dense:0", "bad spec"),
                       ("", "arch must be"), (None, "arch must be")):
        with pytest.raises(FlaxrayError, match=match) as err:
            check_arch(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(FlaxrayError, match="registered module, not a stack of layers"):
        models.parse_arch("tiny")


def test_register_refuses_bad_names_and_factories():
    for name, match in (("pyramid", "built-in"), ("cnn_sep_plain", "built-in"), ("conv", "built-in"),
                        ("resnet18", "flaxray's own"), ("a,b", "a letter"), ("", "a letter"), ("x/y", "a letter")):
        with pytest.raises(FlaxrayError, match=match):
            register(name, Tiny)
    with pytest.raises(FlaxrayError, match="callable"):
        register("thing", 3)
    with pytest.raises(FlaxrayError, match="flaxray's own"):
        unregister("resnet18")


def test_modules_the_trainer_cannot_split_or_read_are_refused_when_built():
    class StatefulDropout(Tiny):
        def __init__(self, input_shape, num_outputs, *, rngs, dtype):
            super().__init__(input_shape, num_outputs, rngs=rngs, dtype=dtype)
            self.drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))  # a stateful key: not pure per seed

    register("stateful", StatefulDropout)
    class PerPixel(Tiny):  # forgets to pool: (N, H, W, outputs)
        def __call__(self, x, *, train, dropout_key):
            return self.head(self.skip(x))

    register("wrong_shape", PerPixel)
    register("wrong_call", lambda shape, n, *, rngs, dtype: nnx.Linear(shape[-1], n, rngs=rngs))
    register("not_a_module", lambda shape, n, *, rngs, dtype: (lambda x: x))
    try:
        with pytest.raises(FlaxrayError, match="neither nnx.Param nor nnx.BatchStat .*drop") as err:
            build_model("stateful", (5, 5, 2))
        assert "\n" not in str(err.value)
        with pytest.raises(FlaxrayError, match=r"logits of shape \(6, 5, 5, 1\), expected .* \(6, 1\)"):
            build_model("wrong_shape", (5, 5, 2))(images())
        with pytest.raises(FlaxrayError, match=r"called as module\(x, \*, train, dropout_key\); Linear.__call__ takes"):
            build_model("wrong_call", (5, 5, 2))
        with pytest.raises(FlaxrayError, match="not a flax.nnx.Module"):
            build_model("not_a_module", (5, 5, 2))
    finally:
        for name in ("stateful", "wrong_shape", "wrong_call", "not_a_module"):
            unregister(name)


def test_re_registering_a_name_is_not_served_the_old_structure():
    before = graphdef("tiny", (5, 5, 2))

    @register("tiny")
    class Other(Tiny):
        def __init__(self, input_shape, num_outputs, *, rngs, dtype):
            super().__init__(input_shape, num_outputs, rngs=rngs, dtype=dtype)
            self.extra = nnx.Linear(2, 2, rngs=rngs)

    assert graphdef("tiny", (5, 5, 2)) != before
    assert "extra" in nnx.state(build_model("tiny", (5, 5, 2)), nnx.Param)["net"]
