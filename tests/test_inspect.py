"""What the models look at: saved params read back, Grad-CAM and saliency against finite differences,
seed k of a vmapped batch against seed k alone, the agreement and border numbers, and the CLI end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxray.inspect import attribution, compute as fi
from flaxray.models import build_model
from flaxray.study.trained import load_run_data, load_trained
from studies import inspect as inspect_cli
from studies import seed_variance

CNN = "conv:3,pool,conv:4,gap"  # Grad-CAM at a 4x4 map of 8x8 images
DENSE = "dense:5,dense:3@0.5"


def seeds_of(arch, shape, keys):
    """(models, stacked params, stacked batch stats) of `arch` for each init key."""
    models = [build_model(arch, shape, key=k) for k in keys]
    pure = [nnx.as_pure(nnx.split(m, nnx.Param, nnx.BatchStat))[1:] for m in models]
    stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)  # noqa: E731
    return models, stack([p for p, _ in pure]), stack([b for _, b in pure])


def images(n=3, shape=(8, 8, 1), seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, *shape)), jnp.uint8)


def one(tree, k):
    return jax.tree.map(lambda a: a[k], tree)


def test_pieces_give_the_models_own_logits():
    for arch in (CNN, DENSE, "sep:3,bn,pool:same,conv:2,flatten,dense:4@0.5"):
        models, params, stats = seeds_of(arch, (8, 8, 1), [0])
        x = images()
        np.testing.assert_allclose(fi.logits(arch, one(params, 0), one(stats, 0), x), models[0](x), rtol=1e-5, atol=1e-6)


def test_grad_cam_weights_equal_finite_differences_of_the_logit():
    # The last conv map is image-sized (no upsampling in the way) and no max-pool follows it: relu zeros tie
    # in a pool window, where the gradient (to the first maximum, as Keras) and a central difference differ.
    arch = "conv:3,conv:2,dense:4"
    _, params, stats = seeds_of(arch, (8, 8, 1), [1])
    p, b, x = one(params, 0), one(stats, 0), images(2)
    (a,) = fi.layer_outputs(arch, p, b, x, (1,))  # (2, 8, 8, 2), after relu
    pieces, _, _ = fi._model(arch, p, b, x.shape[1:])
    tail = jax.jit(lambda a: fi.score(pieces.head(pieces.blocks(a, 2))))  # the logit from the conv map
    eps = 1e-2
    flat = np.asarray(a).reshape(2, -1)
    bumps = np.eye(flat.shape[1])[None] * eps  # one perturbed copy per element of the map
    grads = np.stack([(np.asarray(tail(jnp.asarray((flat[n] + bumps[0]).reshape(-1, 8, 8, 2)))) -
                       np.asarray(tail(jnp.asarray((flat[n] - bumps[0]).reshape(-1, 8, 8, 2))))) / (2 * eps)
                      for n in range(2)]).reshape(2, 8, 8, 2)
    weights = grads.mean(axis=(1, 2))
    expected = np.maximum(np.einsum("nhwc,nc->nhw", np.asarray(a), weights), 0)
    cam = np.asarray(fi.grad_cam(arch, p, b, x))
    assert cam.shape == (2, 8, 8)
    np.testing.assert_allclose(cam, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    assert expected.max() > 0  # not a vacuous all-zero comparison


def test_saliency_equals_finite_differences_of_the_models_logit():
    # The model rescales by 1/255 after a cast, so float images 255 * x perturb its input x directly.
    models, params, stats = seeds_of(DENSE, (6, 6, 2), [2])
    x = images(2, (6, 6, 2))
    grads = np.asarray(fi.input_gradients(DENSE, one(params, 0), one(stats, 0), x))
    eps = 1e-3
    base = np.asarray(x, np.float32) / 255
    bumps = np.eye(base[0].size, dtype=np.float32).reshape(-1, 6, 6, 2) * eps
    for n in range(2):
        up = models[0](jnp.asarray(255 * (base[n] + bumps)), train=False)
        down = models[0](jnp.asarray(255 * (base[n] - bumps)), train=False)
        fd = np.asarray(up - down).reshape(6, 6, 2) / (2 * eps)
        np.testing.assert_allclose(grads[n], fd, rtol=2e-2, atol=2e-3 * np.abs(fd).max())
    sal = np.asarray(fi.saliency(DENSE, one(params, 0), one(stats, 0), x))
    np.testing.assert_allclose(sal, np.abs(grads).max(axis=-1))


@pytest.mark.parametrize("arch", [CNN, DENSE])
def test_seed_k_of_the_vmapped_maps_is_seed_k_alone(arch):
    _, params, stats = seeds_of(arch, (8, 8, 1), [0, 1, 2])
    x = images(5)
    maps = fi.attribution_maps(arch, params, stats, x, batch_size=2)  # batches of 2, 2 and 1 images
    assert maps.shape == (3, 5, 8, 8)  # the image's shape, also where Grad-CAM's map was 4x4
    single = fi.grad_cam if fi.is_cnn(arch) else fi.saliency
    for k in range(3):
        np.testing.assert_allclose(maps[k], single(arch, one(params, k), one(stats, k), x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(maps[0], maps[1])


def test_dense_templates_are_each_units_weight_on_each_pixel():
    models, params, stats = seeds_of("dense:4", (5, 5, 3), [0, 1])
    templates = fi.dense_templates("dense:4", params, (5, 5, 3))
    assert templates.shape == (2, 4, 5, 5)
    dense = models[1].blocks[0].dense
    pixel = np.zeros((1, 5, 5, 3), np.float32)
    pixel[0, 2, 3] = 1.0  # one pixel, all channels
    response = np.asarray(dense(jnp.asarray(pixel.reshape(1, -1))) - dense.bias[...])[0]
    np.testing.assert_allclose(response, templates[1, :, 2, 3], rtol=1e-5, atol=1e-6)
    assert fi.dense_templates(CNN, seeds_of(CNN, (8, 8, 1), [0])[1], (8, 8, 1)) is None


def test_first_filters_of_a_separable_layer_are_its_kernels_multiplied_out():
    models, params, _ = seeds_of("sep:2,gap", (6, 6, 1), [3])
    filters = fi.first_filters("sep:2,gap", params)[0]  # (3, 3, 2)
    layer = models[0].blocks[0]
    x = np.zeros((1, 6, 6, 1), np.float32)
    x[0, 2, 2] = 1.0  # an impulse: a 3x3 cross-correlation reads its kernel back, flipped
    pre = np.asarray(layer(jnp.asarray(x), train=False, dropout_key=None))  # relu(conv + 0 bias)
    np.testing.assert_allclose(pre[0, 1:4, 1:4][::-1, ::-1], np.maximum(filters, 0), rtol=1e-5, atol=1e-7)
    assert np.abs(filters).max() > 0


def test_border_fraction_and_agreement_on_synthetic_maps():
    centre, corner, zero = np.zeros((20, 20)), np.zeros((20, 20)), np.zeros((20, 20))
    centre[8:12, 8:12] = 1
    corner[0, 0] = 5
    np.testing.assert_allclose(attribution.border_fraction(np.stack([centre, corner])), [0, 1])
    assert np.isnan(attribution.border_fraction(zero))
    assert attribution.border_fraction(np.ones((20, 20))) == pytest.approx(attribution.border_area((20, 20)))

    rng = np.random.default_rng(0)
    base = rng.random((3, 16, 16))
    same = np.stack([base, 2 * base, base])  # three seeds, the same maps up to scale
    np.testing.assert_allclose(attribution.pairwise_correlation(same), 1)
    mean, std = attribution.agreement_maps(same)
    np.testing.assert_allclose(std, 0, atol=1e-12)
    np.testing.assert_allclose(mean, attribution.normalise(base))
    unrelated = rng.random((6, 3, 16, 16))
    assert np.abs(attribution.pairwise_correlation(unrelated)).max() < 0.2
    assert np.isnan(attribution.pairwise_correlation(same[:1])).all()

    maps = np.stack([np.stack([centre] * 2), np.stack([corner, zero])])  # seed 7 central, seed 9 at the corner
    summary = attribution.summarise(maps, [7, 9])
    assert summary["border_fraction"] == {7: 0.0, 9: 1.0}
    assert summary["flagged"] == [9] and summary["zero_maps"] == {7: 0, 9: 1}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """A finished study of the embedded default: a tiny CNN and a tiny dense net, 2 seeds, 1 epoch."""
    out = tmp_path_factory.mktemp("study") / "run"
    argv = ["--arch", "conv:4,pool,conv:4,gap", "dense:8@0.5", "--seeds", "2", "--epochs", "1", "--batch-size", "256",
            "--channels", "1", "--out", str(out), "--no-progress"]
    assert seed_variance.main(argv) == 0
    return out


def test_saved_params_read_back_as_trained(tiny_study):
    models = load_trained(tiny_study)
    assert list(models) == ["conv:4,pool,conv:4,gap", "dense:8@0.5"]
    study = json.loads((tiny_study / "study.json").read_text())
    assert set(study["params"]) == set(models)
    cnn = models["conv:4,pool,conv:4,gap"]
    assert cnn.seeds == [0, 1] and cnn.input_shape == (28, 28, 1) and cnn.config.epochs == 1
    assert cnn.params["blocks"][0]["kernel"].shape == (2, 3, 3, 1, 4)
    # The saved seeds are the trained ones: retraining them in the same program shape gives their bits.
    from flaxray.runtime.runner import train_seeds
    from flaxray.core.config import device_data
    dataset = load_run_data(cnn, progress=False)
    states, _ = train_seeds(cnn.config, device_data(dataset), [0, 1], progress=False)
    jax.tree.map(lambda saved, fresh: np.testing.assert_array_equal(saved, fresh), cnn.params, states.params)
    assert dataset.test.x.shape[1:] == (28, 28, 1) and len(dataset.test.y) > 0


def test_groups_saved_before_the_settings_pytree_load_as_they_were(tiny_study, tmp_path):
    """trained.json format 1 (the group's lr, dropout and weight decay in its config, the model state saved
    as `batch_stats`) is read through flaxray.study.compat: the same config, settings and variables."""
    import shutil

    import orbax.checkpoint as ocp

    from flaxray.core.settings import Settings
    from flaxray.study import compat

    old = compat.trained_record({"format": 1, "config": {"arch": "a", "lr": 3e-4, "dropout": 0.2, "weight_decay": 1e-4}})
    assert old["config"] == {"arch": "a"} and old["state_key"] == "batch_stats"
    assert Settings(**old["settings"]) == Settings(lr=3e-4, dropout=0.2, weight_decay=1e-4)
    copy = tmp_path / "old"
    shutil.copytree(tiny_study, copy)
    saved = json.loads((tiny_study / "study.json").read_text())["params"]
    now = load_trained(tiny_study)
    for name, trained in now.items():
        folder = (copy / saved[name]).absolute()
        meta = json.loads((folder / "trained.json").read_text())
        config = {**meta.pop("settings"), **meta["config"]}
        config = {**config, "dropout": config.get("dropout"), "weight_decay": config.get("weight_decay", 0.0)}
        (folder / "trained.json").write_text(json.dumps({**meta, "format": 1, "config": config}))
        shutil.rmtree(folder / "state")
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(folder / "state", {"params": trained.params, "batch_stats": trained.model_state})
    then = load_trained(copy)
    assert list(then) == list(now)
    for name, trained in now.items():
        assert (then[name].config, then[name].settings, then[name].seeds) == (trained.config, trained.settings,
                                                                              trained.seeds)
        jax.tree.map(np.testing.assert_array_equal, then[name].variables, trained.variables)
    assert jax.tree.leaves(now["dense:8@0.5"].model_state)  # a BatchNorm's statistics, not an empty tree


def test_inspect_cli_end_to_end(tiny_study, tmp_path, capsys):
    out = tmp_path / "look"
    assert inspect_cli.main([str(tiny_study), "--out", str(out), "--seeds", "2", "--show-images", "2",
                             "--no-progress"]) == 0
    assert "conv:4,pool,conv:4,gap: Grad-CAM" in capsys.readouterr().out
    record = json.loads((out / "inspect.json").read_text())
    assert set(record["groups"]) == {"conv:4,pool,conv:4,gap", "dense:8@0.5"}
    for g in record["groups"].values():
        assert g["images"] == record["images"]["n"] > 100
        corr = [c for c in g["per_image_correlation"] if c is not None]
        assert len(corr) > 0.9 * g["images"] and all(-1 <= c <= 1 for c in corr)
        assert all(0 <= b <= 1 for b in g["border_fraction"].values())
        for name in g["figures"]:
            assert (out / name).stat().st_size > 5000
    assert "first dense layer" in (out / "inspect.md").read_text()
    assert (out / "agreement.png").exists() and "crude proxy" in (out / "inspect.md").read_text()

    xray = tmp_path / "x.png"
    from PIL import Image
    Image.fromarray(np.full((40, 30), 128, np.uint8)).save(xray)
    assert inspect_cli.main([str(tiny_study), "--image", str(xray), "--out", str(tmp_path / "one"),
                             "--no-progress"]) == 0
    assert json.loads((tmp_path / "one" / "inspect.json").read_text())["images"]["shape"] == [28, 28, 1]


def test_inspect_cli_errors_are_one_line(tiny_study, tmp_path, capsys):
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"not an image")
    assert inspect_cli.main([str(tiny_study), "--image", str(bad), "--no-progress"]) == 2
    assert f"cannot read image {bad}" in capsys.readouterr().err
    assert inspect_cli.main([str(tmp_path / "nothing")]) == 2
    assert "no study folder" in capsys.readouterr().err

    old = tmp_path / "old"  # a study from before issue 8: no params/
    old.mkdir()
    (old / "study.json").write_text("{}")
    assert inspect_cli.main([str(old)]) == 2
    err = capsys.readouterr().err
    assert "no saved parameters" in err and "again" in err and err.count("\n") == 1

    (old / "run.json").write_text(json.dumps({"status": "running", "study": "studies.seed_variance"}))
    assert inspect_cli.main([str(old)]) == 2
    assert "not finished" in capsys.readouterr().err


def test_registered_models_get_saliency_through_their_own_call_and_no_layer_views():
    from flaxray.errors import FlaxrayError
    from flaxray.models import register, unregister

    class Branches(nnx.Module):  # not sequential: two branches summed; BatchNorm
        def __init__(self, input_shape, num_outputs, *, rngs, dtype):
            self.conv = nnx.Conv(input_shape[-1], 3, (3, 3), rngs=rngs)
            self.norm = nnx.BatchNorm(3, rngs=rngs)
            self.skip = nnx.Linear(input_shape[-1], 3, rngs=rngs)
            self.head = nnx.Linear(3, num_outputs, rngs=rngs)

        def __call__(self, x, *, train, dropout_key):
            a = nnx.relu(self.norm(self.conv(x), use_running_average=not train)) + self.skip(x)
            return self.head(a.mean(axis=(1, 2)))

    arch, shape = "branches", (8, 8, 1)
    register(arch, Branches)
    models, params, stats = seeds_of(arch, shape, [0, 1])
    x = images(2, shape)
    assert fi.conv_layers(arch) == [] and not fi.is_cnn(arch)
    assert fi.method(arch).startswith("input-gradient saliency")
    np.testing.assert_allclose(fi.logits(arch, one(params, 0), one(stats, 0), x), models[0](x), rtol=1e-5, atol=1e-5)
    maps = fi.attribution_maps(arch, params, stats, x)
    assert maps.shape == (2, 2, 8, 8) and np.isfinite(maps).all() and maps.max() > 0
    assert fi.first_filters(arch, params) is None and fi.dense_templates(arch, params, shape) is None
    assert fi.conv_activations(arch, params, stats, x) == {}
    with pytest.raises(FlaxrayError, match="Grad-CAM needs"):
        fi.grad_cam(arch, one(params, 0), one(stats, 0), x)
    unregister(arch)


def test_multi_class_maps_explain_the_predicted_class():
    arch = "conv:3,gap"
    model = build_model(arch, (6, 6, 1), key=0, num_classes=4)
    _, p, b = nnx.as_pure(nnx.split(model, nnx.Param, nnx.BatchStat))
    x = images(3, (6, 6, 1))
    full = np.asarray(model(x))
    np.testing.assert_allclose(fi.logits(arch, p, b, x), full.max(axis=1), rtol=1e-5)  # class count read off the head
    assert fi.grad_cam(arch, p, b, x).shape == (3, 6, 6)
