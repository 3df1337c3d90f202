"""A user's Keras 3 model, unchanged, as an arch: seed k's lane is `model.fit` for seed k.

Identities first (seed k's initial weights and seed-generator states are those of a plain
`set_random_seed(k)` build; its data order is the one fit draws), then lane k's first epoch against
fit's for seed k (two programs, so within rounding), then the later epochs as samples of one
distribution (`tests.samples`, a stated false-failure rate)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import keras
import numpy as np
import pytest

import flaxray
from flaxray import models
from flaxray.core.config import TrainConfig, device_data
from flaxray.core.settings import Settings
from flaxray.errors import FlaxrayError
from flaxray.models import keras_kind
from flaxray.runtime import runner
from studies import seed_variance
from tests.samples import assert_one_distribution

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "keras_xray.py"
MODELS = textwrap.dedent('''
    import keras
    from keras import layers

    def stack(input_shape=(8, 8, 3), num_classes=2):
        inputs = keras.Input(input_shape)
        x = layers.Rescaling(1 / 255)(inputs)
        x = layers.Flatten()(x)
        x = layers.Dense(16, activation="relu")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Dropout(0.3)(x)
        out = layers.Dense(1, activation="sigmoid")(x) if num_classes == 2 else layers.Dense(num_classes, activation="softmax")(x)
        model = keras.Model(inputs, out)
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss="binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy")
        return model

    def uncompiled(input_shape=(8, 8, 3), num_classes=2):
        inputs = keras.Input(input_shape)
        x = layers.Dense(8, activation="relu")(layers.Flatten()(inputs))
        return keras.Model(inputs, layers.Dense(1)(layers.Dropout(0.2)(x)))

    def fixed():
        inputs = keras.Input((180, 180, 3))
        return keras.Model(inputs, layers.Dense(1)(layers.Flatten()(inputs)))

    def not_a_model():
        return "a string"

    class Noisy(layers.Layer):
        def call(self, x, training=False):
            return x + keras.random.normal(keras.ops.shape(x)) if training else x

    def unseeded(input_shape=(8, 8, 3)):
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, layers.Dense(1)(Noisy()(layers.Flatten()(inputs))))

    def regularised(input_shape=(8, 8, 3), strength=1.0):
        inputs = keras.Input(input_shape)
        x = layers.Dense(8, activation="relu", kernel_regularizer=keras.regularizers.L2(strength))(layers.Flatten()(inputs))
        return keras.Model(inputs, layers.Dense(1, bias_regularizer=keras.regularizers.L1(strength))(x))

    def unregularised(input_shape=(8, 8, 3)):
        return regularised(input_shape, strength=0.0)

    def cnn(input_shape=(8, 8, 3), num_classes=2):
        inputs = keras.Input(input_shape)
        x = layers.Conv2D(4, 3, padding="same", activation="relu")(layers.Rescaling(1 / 255)(inputs))
        x = layers.SeparableConv2D(3, 3, padding="same", activation="relu")(layers.BatchNormalization()(x))
        return keras.Model(inputs, layers.Dense(1)(layers.Dropout(0.2)(layers.Flatten()(x))))

    def sequential_cnn(input_shape=(8, 8, 3)):
        return keras.Sequential([keras.Input(input_shape), layers.Conv2D(2, 3, activation="relu"),
                                 layers.Flatten(), layers.Dense(1, activation="sigmoid")])

    def branched(input_shape=(8, 8, 3)):
        inputs = keras.Input(input_shape)
        x = layers.Add()([layers.Conv2D(2, 3, padding="same", activation="relu")(inputs), layers.Conv2D(2, 1)(inputs)])
        return keras.Model(inputs, layers.Dense(1)(layers.Flatten()(x)))

    def activity(input_shape=(8, 8, 3)):
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, layers.Dense(1, activity_regularizer="l2")(layers.Flatten()(inputs)))

    from flax import nnx

    class Nnx(nnx.Module):
        def __init__(self, input_shape, num_outputs, *, rngs, dtype):
            self.head = nnx.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_outputs, rngs=rngs)

        def __call__(self, x, *, train, dropout_key):
            return self.head(x.reshape(x.shape[0], -1))
''')


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "mine.py"
    path.write_text(MODELS)
    return path


@pytest.fixture(scope="module")
def arrays():
    rs = np.random.RandomState(0)
    y = rs.randint(0, 2, 400)
    x = np.clip(rs.normal(100 + 60 * y[:, None, None, None], 50, (400, 8, 8, 3)), 0, 255).astype(np.uint8)
    return flaxray.from_arrays(x[:300], y[:300], x[300:], y[300:])


def arch(user_file, name):
    return f"{user_file}:{name}"


def fit(builder, seed, dataset, epochs, batch_size):
    keras.utils.set_random_seed(seed)
    model = builder()
    drawn, real = [], np.random.permutation

    def record(n):
        drawn.append(real(n))
        return drawn[-1]

    np.random.permutation = record
    try:
        history = model.fit(dataset.train.x.astype("float32"), dataset.train.y.astype("float32"), batch_size=batch_size,
                            epochs=epochs, verbose=0, validation_data=(dataset.val.x.astype("float32"),
                                                                        dataset.val.y.astype("float32")))
    finally:
        np.random.permutation = real
    return history.history, drawn


def test_seed_k_starts_as_a_plain_set_random_seed_build(user_file):
    from flaxray.models import user

    builder = user.load(arch(user_file, "stack"))
    model = models.model(arch(user_file, "stack"), (8, 8, 3))
    for seed in (0, 5):
        keras.utils.set_random_seed(seed)
        plain = builder()
        got = model.host_init(seed, seed)
        assert all(np.array_equal(np.asarray(v.value), a) for v, a in zip(plain.trainable_variables, got.params))
        assert all(np.array_equal(np.asarray(v.value), a) for v, a in zip(plain.non_trainable_variables, got.state))
    random_state = np.random.get_state()[1][:4].copy()
    model.host_init(9, 9)
    assert np.array_equal(np.random.get_state()[1][:4], random_state), "the process's NumPy state moved"
    # --vary without dropout: every seed's generators are the shared seed's, its weights its own.
    a, b = model.host_init(1, 0), model.host_init(2, 0)
    seeds_at = [i for i, v in enumerate(keras_kind.build(builder, (8, 8, 3), 2, "x").non_trainable_variables)
                if v.path.endswith("seed_generator_state")]
    assert seeds_at and all(np.array_equal(a.state[i], b.state[i]) for i in seeds_at)
    assert not np.array_equal(a.params[0], b.params[0])
    c = model.host_init(1, 1)
    assert not all(np.array_equal(a.state[i], c.state[i]) for i in seeds_at)


@pytest.mark.numeric
def test_lane_k_is_fit_for_seed_k(user_file, arrays):
    """Fit's order is flaxray's (an identity); epoch 1's losses agree within rounding; the later epochs'
    final val losses are one distribution (Mann-Whitney at 1e-3, 8 seeds each)."""
    from flaxray.models import user

    name, seeds, epochs, batch = arch(user_file, "stack"), list(range(8)), 3, 64
    config = TrainConfig(arch=name, epochs=epochs, batch_size=batch)
    _, history = runner.train_seeds(config, device_data(arrays), seeds, progress=False, strategy="vmap")
    model = models.model(name, (8, 8, 3))
    finals = []
    for k in seeds:
        theirs, drawn = fit(user.load(name), k, arrays, epochs, batch)
        assert all(np.array_equal(d, model.order(k, e, 300)) for e, d in enumerate(drawn[1:]))
        assert len(drawn) == epochs + 1  # one for fit's symbolic build, one per epoch
        np.testing.assert_allclose(history["loss"][k, 0], theirs["loss"][0], rtol=1e-3)
        np.testing.assert_allclose(history["val_loss"][k, 0], theirs["val_loss"][0], rtol=1e-3)
        finals.append(theirs["val_loss"][-1])
    assert_one_distribution(history["val_loss"][:, -1], finals, "final val loss, flaxray lanes vs fit")


def test_a_keras_study_runs_resumes_to_the_same_bytes_and_comes_back_to_keras(user_file, tmp_path, monkeypatch):
    from tests.test_resume import ctrl_c_in_epoch

    study = ["--arch", arch(user_file, "stack"), "--seeds", "2", "--epochs", "2",
             "--batch-size", "1024", "--channels", "1", "--strategy", "vmap", "--no-progress"]
    clean = tmp_path / "clean"
    assert seed_variance.main([*study, "--out", str(clean)]) == 0
    record = json.loads((clean / "study.json").read_text())
    described = record["models"][arch(user_file, "stack")]
    assert described["kind"] == "keras" and described["compiled"] and described["rescales"]
    assert described["outputs"] == "probabilities"
    assert models.model(arch(user_file, "uncompiled"), (8, 8, 3)).output == "logits"

    ctrl_c_in_epoch(monkeypatch, 1)
    out = tmp_path / "stopped"
    assert seed_variance.main([*study, "--checkpoint-every", "1", "--out", str(out)]) == 130
    monkeypatch.undo()
    assert seed_variance.main(["--resume", str(out)]) == 0
    assert (out / "curves.csv").read_bytes() == (clean / "curves.csv").read_bytes()

    trained = flaxray.load_trained(clean)[arch(user_file, "stack")]
    back = trained.to_keras(1)
    dataset = flaxray.load_dataset(None, channels=1)
    ours = runner.predict(trained.config, trained, dataset.val.x[:16])[1]
    np.testing.assert_allclose(back.predict(dataset.val.x[:16].astype("float32"), verbose=0)[:, 0], ours, atol=1e-5)
    back.save(tmp_path / "seed1.keras")
    assert keras.models.load_model(tmp_path / "seed1.keras").count_params() == back.count_params()


def test_python_objects_are_archs(user_file, arrays, tmp_path):
    from flaxray.models import user

    builder = user.load(arch(user_file, "stack"))
    instance = builder()
    result = flaxray.run(flaxray.Study(archs=(builder, instance), data=arrays, seeds=(0, 1), epochs=1,
                                       batch_size=128), tmp_path / "py", progress=False, strategy="vmap")
    assert set(result.groups) == {"stack", "functional"} or len(result.groups) == 2
    assert all(np.isfinite(g.history["val_loss"]).all() for g in result.groups.values())


def test_an_nnx_factory_by_file(user_file, arrays):
    config = TrainConfig(arch=arch(user_file, "Nnx"), epochs=1, batch_size=128)
    _, history = runner.train_seeds(config, device_data(arrays), [0, 1], progress=False, strategy="vmap")
    assert np.isfinite(history["val_loss"]).all() and history["val_loss"][0, 0] != history["val_loss"][1, 0]


@pytest.mark.parametrize("name, needle", [
    ("fixed", "cannot build the model on images of shape (8, 8, 3)"),
    ("not_a_model", "returned a str, not a keras.Model"),
    ("unseeded", "without a SeedGenerator"),
    ("missing", "has no 'missing'"),
    ("activity", "adds losses as it runs"),
])
def test_models_that_cannot_be_trained_are_one_line_errors(user_file, arrays, name, needle):
    with pytest.raises(FlaxrayError) as err:
        config = TrainConfig(arch=arch(user_file, name), epochs=1, batch_size=128)
        runner.train_seeds(config, device_data(arrays), [0], progress=False, strategy="vmap")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_compile_owns_its_optimizer(user_file, arrays):
    from flaxray.core.recipe import Recipe

    data, name = device_data(arrays), arch(user_file, "stack")
    with pytest.raises(FlaxrayError, match="--optimizer"):
        runner.train_seeds(TrainConfig(arch=name, epochs=1, batch_size=128, recipe=Recipe(optimizer="sgd")), data, [0],
                           progress=False, strategy="vmap")
    # A compiled rate is the lane's --lr: crossed in one program, the lanes differ.
    _, history = runner.train_seeds(TrainConfig(arch=name, epochs=1, batch_size=128), data, [0, 0],
                                    [Settings(lr=1e-3), Settings(lr=1e-2)], progress=False, strategy="vmap")
    assert history["loss"][0, 0] != history["loss"][1, 0]


def test_an_uncompiled_models_regularisers_train_it(user_file, arrays):
    """The penalty is the model's own `losses` for a seed's weights (an identity), and it is in the gradient:
    from the same seed, four epochs with L2(1) and L1(1) end with smaller weights (0.69 of them here) than
    with the same regularisers at zero strength."""
    from flaxray.models import user

    name = arch(user_file, "regularised")
    model = models.model(name, (8, 8, 3))
    variables = model.host_init(3, 3)
    built = keras_kind.build(user.load(name), (8, 8, 3), 2, name, seed=3)
    np.testing.assert_allclose(float(model.penalty(variables.params)), float(sum(built.losses)), rtol=1e-6)
    norms = {}
    for which in ("regularised", "unregularised"):
        config = TrainConfig(arch=arch(user_file, which), epochs=4, batch_size=32)
        states, _ = runner.train_seeds(config, device_data(arrays), [3], progress=False, strategy="vmap")
        norms[which] = float(np.linalg.norm(np.asarray(states.params[0])))
    assert norms["regularised"] < 0.85 * norms["unregularised"], norms


def test_a_keras_model_trains_on_each_seeds_own_split():
    """`--vary split` with a Keras model: fit's order runs over each lane's own train images."""
    from flaxray.core.randomness import SOURCES, SPLIT

    dataset = flaxray.load_dataset(None, channels=1)
    config = TrainConfig(arch=f"{EXAMPLES}:tiny", epochs=1, batch_size=256, vary=(*SOURCES[:3], SPLIT))
    states, history = runner.train_seeds(config, device_data(dataset, config.eval_batch_size, resample=True), [1, 2],
                                         progress=False, strategy="vmap")
    split = states.split
    assert not np.array_equal(split.train[0], split.train[1]) and np.isfinite(history["val_loss"]).all()
    assert sorted(np.asarray(states.order[0]).tolist()) == list(range(split.train.shape[1]))
    assert history["val_loss"][0, 0] != history["val_loss"][1, 0]


def test_a_subclassed_instance_and_another_backend_are_refused(tmp_path):
    class Sub(keras.Model):
        def call(self, x):
            return x

    from flaxray.models import user

    with pytest.raises(FlaxrayError, match="cannot be cloned"):
        user.as_factory(Sub(), "sub")
    for env, needle in (({"KERAS_BACKEND": "numpy"}, "KERAS_BACKEND=jax"),
                        ({"KERAS_NNX_ENABLED": "true"}, "KERAS_NNX_ENABLED")):
        code = ("import flaxray\nfrom flaxray import models\n"
                f"models.model('{EXAMPLES}:tiny', (28, 28, 3))")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "KERAS_BACKEND": "jax", **env})
        assert needle in run.stderr.strip().splitlines()[-1], run.stderr[-800:]


def test_dropout_is_shared_under_vary_without_it(user_file, arrays):
    config = TrainConfig(arch=arch(user_file, "stack"), epochs=1, batch_size=128, vary=("init", "order"))
    states, _ = runner.train_seeds(config, device_data(arrays), [3, 4], progress=False, strategy="vmap")
    model = models.model(config.arch, (8, 8, 3))
    seeds_at = [i for i, a in enumerate(jax.eval_shape(model.init, 0).state) if a.shape == (2,)]
    first = [np.asarray(states.model_state[i]) for i in seeds_at]
    assert all(np.array_equal(s[0], s[1]) for s in first)


def test_a_keras_chain_is_cut_into_its_layers_and_a_branched_model_is_not(user_file):
    from flaxray.inspect import compute

    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3)).astype(np.float32) / 255
    for name, convs in (("cnn", (1, 3)), ("sequential_cnn", (0,))):
        model = models.model(arch(user_file, name), (8, 8, 3))
        variables = model.host_init(3, 3)
        pieces = model.pieces(variables)
        assert pieces.convs == convs and len(pieces.labels) == pieces.depth
        # the blocks, one after another, are the model's own inference-mode call (a Rescaling first included)
        whole = np.asarray(model.call(variables, x))
        np.testing.assert_allclose(pieces.head(pieces.blocks(x)), whole, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pieces.head(pieces.blocks(pieces.blocks(x, 0, 2), 2)), whole, rtol=1e-5, atol=1e-6)
    assert compute.method(arch(user_file, "cnn"), (8, 8, 3)).startswith(
        "Grad-CAM of the output at layer 3 (SeparableConv2D ")  # Keras numbers its layers' names
    assert models.model(arch(user_file, "branched"), (8, 8, 3)).pieces is None
    said = compute.method(arch(user_file, "branched"), (8, 8, 3))
    assert said.startswith("input-gradient saliency") and "not a chain of layers" in said
    assert compute.method(arch(user_file, "uncompiled"), (8, 8, 3)) == "input-gradient saliency |d output / d pixel|"


def test_a_keras_cnn_gets_grad_cam_and_feature_maps_per_seed(user_file, arrays, tmp_path):
    from flaxray.inspect import compute

    config = TrainConfig(arch=arch(user_file, "cnn"), epochs=1, batch_size=100)
    states, _ = runner.train_seeds(config, device_data(arrays), [0, 1], progress=False, strategy="vmap")
    images = arrays.val.x[:5]
    maps = compute.attribution_maps(config.arch, states.params, states.model_state, images, batch_size=2)
    assert maps.shape == (2, 5, 8, 8) and np.isfinite(maps).all() and (maps >= 0).all()
    one = lambda tree, k: jax.tree.map(lambda a: a[k], tree)  # noqa: E731
    np.testing.assert_allclose(maps[1], compute.grad_cam(config.arch, one(states.params, 1),
                                                         one(states.model_state, 1), images), rtol=1e-5, atol=1e-6)
    # At the last conv layer (3 channels before a Dense) every channel's weight may be negative, and the
    # map then 0 everywhere; at the first (4 channels) the seeds' maps are not 0, and differ.
    first = [compute.grad_cam(config.arch, one(states.params, k), one(states.model_state, k), images, layer=1)
             for k in (0, 1)]
    assert min(float(np.max(m)) for m in first) > 0 and not np.allclose(first[0], first[1])
    acts = compute.conv_activations(config.arch, states.params, states.model_state, images[:2])
    assert sorted(acts) == [1, 3] and acts[1].shape == (2, 2, 8, 8, 4) and (acts[1] >= 0).all()
    assert compute.first_filters(config.arch, states.params) is None

    study = ["--arch", arch(user_file, "cnn"), arch(user_file, "branched"), "--seeds", "2", "--epochs", "1",
             "--batch-size", "512", "--channels", "1", "--strategy", "vmap", "--no-progress"]
    assert seed_variance.main([*study, "--out", str(tmp_path / "run")]) == 0
    from studies import inspect as inspect_cli
    assert inspect_cli.main([str(tmp_path / "run"), "--out", str(tmp_path / "look"), "--seeds", "2",
                             "--no-progress"]) == 0
    record = json.loads((tmp_path / "look" / "inspect.json").read_text())
    methods = {name: g["method"] for name, g in record["groups"].items()}
    assert methods[arch(user_file, "cnn")].startswith("Grad-CAM of the output at layer 3")
    assert "not a chain of layers" in methods[arch(user_file, "branched")]
    assert "Conv2D" in (tmp_path / "look" / "inspect.md").read_text()


def test_fit_order_is_the_same_whatever_order_the_epochs_are_asked_in():
    # Each seed's generator is kept between calls (a study's epochs cost a draw each); asked out of order
    # or again, an epoch's permutation is still the one a fresh generator gives.
    from flaxray.models.keras_kind import fit_order

    def fresh(seed, epoch, n):
        rng = np.random.RandomState(seed)
        for _ in range(epoch + 1):  # fit's build's permutation, then one per earlier epoch
            rng.permutation(n)
        return rng.permutation(n)

    for seed, epoch, n in [(3, 0, 50), (3, 1, 50), (4, 2, 50), (3, 2, 50), (3, 2, 50), (3, 0, 50), (3, 5, 50),
                           (3, 1, 40), (3, 6, 50)]:
        np.testing.assert_array_equal(fit_order(seed, epoch, n), fresh(seed, epoch, n))
