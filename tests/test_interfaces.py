"""The seams a new setting, source of randomness or kind of model plugs into: each is one module."""

import ast
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxray
from flaxray import models
from flaxray.core import randomness, settings
from flaxray.core.config import TrainConfig, device_data
from flaxray.core.settings import Settings
from flaxray.core.train import make_train
from flaxray.errors import FlaxrayError
from flaxray.runtime.runner import train_seeds
from tests.samples import assert_one_distribution

CONFIG = dict(arch="dense:16@0.5,8@0.2", epochs=2, batch_size=16, eval_batch_size=16)


def tiny_dataset(n_train=96, n_val=40, size=6, seed=0):
    """Two classes whose mean brightness differs (as tests/test_train.py's)."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = (np.arange(n) % 3 != 0).astype(np.int32)
        x = rng.integers(0, 160, (n, size, size, 1)) + 60 * y[:, None, None, None]
        return SimpleNamespace(x=x.astype(np.uint8), y=y)

    return SimpleNamespace(train=split(n_train), val=split(n_val))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return device_data(tiny_dataset(), eval_batch_size=16)


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def test_only_the_models_package_imports_flax_nnx():
    leaks = [str(p.relative_to(ROOT)) for p in (ROOT / "flaxray").rglob("*.py")
             if "models" not in p.relative_to(ROOT / "flaxray").parts[:1]
             and any(n == "flax.nnx" or n.startswith("flax.nnx.") for n in imports(p))]
    assert leaks == []


def test_the_layers_import_downwards_only():
    order = ["errors", "results", "analysis", "data", "models", "core", "runtime", "report", "study", "inspect"]
    for path in (ROOT / "flaxray").rglob("*.py"):
        parts = path.relative_to(ROOT / "flaxray").with_suffix("").parts
        if parts[0] == "__init__":
            continue
        here = order.index(parts[0])
        for name in imports(path):
            if name.startswith("flaxray."):
                there = name.split(".")[1]
                assert order.index(there) <= here, f"{path.relative_to(ROOT)} imports {name}, a layer above it"
    # Statistics import no report code.
    for path in (ROOT / "flaxray" / "analysis").glob("*.py"):
        assert not [n for n in imports(path) if n.startswith("flaxray.report")], path


def test_old_sources_keep_their_keys_and_a_new_source_moves_none():
    seed, vary = 5, randomness.SOURCES
    keys = randomness.seed_keys(seed, randomness.SOURCES, vary)
    assert randomness.SOURCES == (*randomness.DRAWN_BY_ALL, "augment")
    for i, source in enumerate(randomness.DRAWN_BY_ALL):  # the arithmetic of every earlier study
        assert jnp.array_equal(jax.random.key_data(keys[source]),
                               jax.random.key_data(jax.random.fold_in(jax.random.key(seed), i)))
    floor = randomness.source_key(seed, randomness.FLOOR, (randomness.FLOOR,))
    assert jnp.array_equal(jax.random.key_data(floor), jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 3)))
    assert int(randomness.number("augment")) >= 2**31  # never one of the old numbers
    new = jax.random.key_data(keys["augment"])
    assert not any(jnp.array_equal(new, jax.random.key_data(keys[s])) for s in randomness.DRAWN_BY_ALL)
    shared = randomness.seed_keys(seed, ("order",), vary=())["order"]  # not varied: the shared seed's key
    assert jnp.array_equal(jax.random.key_data(shared), jax.random.key_data(randomness.seed_keys(9, ("order",), ())["order"]))


def test_a_new_source_changes_no_record_of_a_program_that_does_not_draw_it(monkeypatch):
    from flaxray.core import config as config_module

    before = TrainConfig(**CONFIG, vary=randomness.DRAWN_BY_ALL).record()
    assert before["vary"] == ["init", "dropout", "order"]  # as every earlier unit's fingerprint has it
    assert TrainConfig(**CONFIG).record() == before  # augment in `vary` by default: not drawn, not recorded
    monkeypatch.setattr(config_module, "SOURCES", (*randomness.SOURCES, "later"))  # `vary` may name it now
    assert TrainConfig(**CONFIG, vary=(*randomness.SOURCES, "later")).record() == before


def test_a_setting_at_its_off_value_is_left_out_of_the_program_and_the_record():
    grid = settings.normalize({"lr": (1e-3, 3e-4)})
    assert settings.present(grid) == ("lr",) and settings.record(grid) == {"lr": [1e-3, 3e-4]}
    assert settings.cross(grid) == [Settings(lr=1e-3), Settings(lr=3e-4)]
    grid = settings.normalize({"lr": [1e-3, 1e-2], "weight_decay": [0, 1e-4]})
    assert settings.present(grid) == ("lr", "weight_decay")
    assert [s.weight_decay for s in settings.cross(grid)] == [0.0, 1e-4, 0.0, 1e-4]  # lr outermost
    assert settings.group_name("p", settings.cross(grid)[1], settings.varying(grid)) == "p@lr=1e-3,wd=1e-4"
    for bad in ({"lr": (0,)}, {"dropout": (1.0,)}, {"nesterov": (0.9,)}, {"momentum": (1.0,)}, {"lr": (1e-3, 1e-3)}):
        with pytest.raises(FlaxrayError):
            settings.normalize(bad)
    stacked = settings.stack(settings.cross(settings.normalize({"dropout": (0.2, 0.5)})))
    assert stacked.weight_decay is None and stacked.dropout.dtype == np.float32 and stacked.lr.shape == (2,)


def test_init_takes_variables_a_kind_made_on_the_host(data):
    """A kind that initialises on the host (a Keras model, seed by seed) hands init its variables: the
    state is then exactly the state `init` makes itself from those variables."""
    config = TrainConfig(**CONFIG)
    trainer = make_train(config)
    model = models.model(config.arch, data.x_train.shape[1:])
    key = randomness.source_key(3, "init", config.vary)
    own, given = trainer.init(3, data), trainer.init(3, data, variables=model.init(key))
    for a, b in zip(jax.tree.leaves(own), jax.tree.leaves(given)):
        assert np.array_equal(np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a),
                              np.asarray(jax.random.key_data(b) if jnp.issubdtype(b.dtype, jax.dtypes.prng_key) else b))


def probabilities_kind(monkeypatch):
    """The NNX kind, declared as returning probabilities (its logits squashed inside `apply`)."""
    real = models.model

    def model(arch, input_shape, **kw):
        inner = real(arch, input_shape, **kw)
        squash = jax.nn.sigmoid if kw.get("num_classes", 2) == 2 else jax.nn.softmax

        def apply(variables, images, **kwargs):
            logits, state = inner.apply(variables, images, **kwargs)
            return squash(logits), state

        return inner._replace(apply=apply, output=models.PROBABILITIES)

    monkeypatch.setattr(models, "model", model)


def test_a_kind_that_outputs_probabilities_is_evaluated_and_trained_as_its_logits_twin(data, monkeypatch):
    config = dataclasses.replace(TrainConfig(**CONFIG), arch="dense:8@0.5", epochs=2)
    seeds = list(range(8))
    states, logits_history = train_seeds(config, data, seeds, progress=False, strategy="vmap")
    trainer = make_train(config)
    x, y, mask = data.x_val, data.y_val, data.val_mask
    one = jax.tree.map(lambda a: a[0], states.variables)
    counts, probs = trainer.evaluate(one, x, y, mask), trainer.predict(one, x)
    probabilities_kind(monkeypatch)
    twin_config = dataclasses.replace(config, eval_batch_size=8)  # another config: programs of their own
    twin = make_train(twin_config)
    counts2, probs2 = twin.evaluate(one, x, y, mask), twin.predict(one, x)
    np.testing.assert_array_equal(probs2, probs)  # the same sigmoid of the same logits
    np.testing.assert_array_equal(counts2.pos_hist, counts.pos_hist)
    np.testing.assert_array_equal(counts2.neg_hist, counts.neg_hist)
    # Keras's clipped cross-entropy of the probability against optax's of the logit: one formula's rounding.
    np.testing.assert_allclose(counts2.loss_sum, counts.loss_sum, rtol=1e-5)
    # Trained on its probabilities, every seed learns as its logits twin does: one distribution of curves.
    _, probs_history = train_seeds(twin_config, data, seeds, progress=False, strategy="vmap")
    assert_one_distribution(probs_history["val_loss"][:, -1], logits_history["val_loss"][:, -1],
                            "final val loss, probabilities vs logits")


def test_the_public_api_is_at_the_top():
    for name in flaxray.__all__:
        assert getattr(flaxray, name) is not None
    with pytest.raises(AttributeError):
        flaxray.no_such_thing  # noqa: B018


def test_a_dropout_rate_for_an_arch_without_one_to_set_is_refused_where_lanes_enter(data):
    for arch in ("dense:8", "resnet18"):  # no Dropout layer; a registered module's dropout is its own
        with pytest.raises(FlaxrayError, match="--dropout"):
            train_seeds(TrainConfig(**{**CONFIG, "arch": arch}), data, [0], [Settings(dropout=0.2)], progress=False)
