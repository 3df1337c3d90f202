"""Scale: chunks and devices change where seeds run, never their curves; bfloat16 stays close to float32."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxray.runtime import plan, scale
from flaxray.errors import FlaxrayError
from flaxray.runtime.runner import train_seeds
from flaxray.core.config import TrainConfig, device_data
from flaxray.core.settings import Settings
from flaxray.core.train import make_train
from tests.samples import ALPHA, assert_one_distribution, assert_same_mean
from tests.test_train import CONFIG, tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
LR = ("lr",)  # the settings in a default program (`plan.fields_of`): the learning rate alone


@pytest.fixture(scope="module")
def data():
    return device_data(tiny_dataset(), eval_batch_size=16)


def test_plan_chunk_fits_the_memory_it_is_given():
    # 1000 bytes free, 70 % usable, 100 bytes a seed: 7 seeds per device.
    assert scale.plan_chunk(1000, 100, 1000) == 7
    assert scale.plan_chunk(5, 100, 1000) == 5  # everything fits: one chunk
    assert scale.plan_chunk(1000, 100, 1000, n_devices=4) == 28  # per device, a multiple of the devices
    assert scale.plan_chunk(10, 100, 1000, n_devices=4) == 12  # 10 padded to 12, in one chunk
    assert scale.plan_chunk(1000, 10**9, 1000, n_devices=2) == 2  # never less than a seed per device
    assert [(c.start, c.stop) for c in scale.chunks(10, 4)] == [(0, 4), (4, 8), (8, 10)]
    # 1000 seeds of the notes' pyramid at 180x180x3 on an 80 GB GPU: several chunks, each under the limit.
    per_seed = scale.bytes_per_seed(TrainConfig(arch="pyramid"), (180, 180, 3))
    size = scale.plan_chunk(1000, per_seed, 80 * 2**30)
    assert 99.5e6 * 4 * 5 < per_seed and 1 < size < 1000 and size * per_seed <= 0.7 * 80 * 2**30
    assert scale.pad_seeds([3, 4, 5], 4) == [3, 4, 5, 5]


@pytest.mark.numeric
def test_chunked_run_gives_the_unchunked_curves(data, tmp_path, capsys):
    """Each chunk is the program its seeds would be alone: chunks of 2 give, bit for bit, what the
    seeds [0, 1], [2, 3] and [4] give as three separate runs (an identity: a lane's arithmetic
    depends on its inputs and the program's shape). Unchunked, 5 lanes are another program shape:
    another sample, tested as such in test_train."""
    config = TrainConfig(**CONFIG)
    seeds = [0, 1, 2, 3, 4]
    lanes = [Settings(lr=lr) for lr in (1e-3, 1e30, 1e-3, 3e-3, 1e-3)]  # seed 1 diverges, in the first chunk
    parts = [train_seeds(config, data, seeds[i:i + 2], lanes[i:i + 2], progress=False) for i in (0, 2, 4)]
    whole = {key: np.concatenate([h[key] for _, h in parts]) for key in parts[0][1]}
    chunked_states, chunked = train_seeds(config, data, seeds, lanes, max_seeds_per_chunk=2,
                                          checkpoint_dir=tmp_path / "ck")
    assert "5 seeds in 3 chunks of up to 2" in capsys.readouterr().out
    for key in whole:
        np.testing.assert_array_equal(chunked[key], whole[key], err_msg=key)
    np.testing.assert_array_equal(chunked_states.diverged, np.concatenate([np.asarray(s.diverged) for s, _ in parts]))
    assert np.asarray(chunked_states.diverged)[1] > 0
    assert {np.shape(leaf)[0] for leaf in jax.tree.leaves(chunked_states)} == {5}  # every seed's state, in order
    # The chunks checkpointed separately; a second call restores every one of them.
    assert json.loads((tmp_path / "ck" / "chunks.json").read_text())["seeds_per_chunk"] == 2
    assert sorted(p.name for p in (tmp_path / "ck").glob("chunk-*")) == ["chunk-0", "chunk-1", "chunk-2"]
    _, again = train_seeds(config, data, seeds, lanes, checkpoint_dir=tmp_path / "ck", progress=False)
    for key in whole:
        np.testing.assert_array_equal(again[key], chunked[key])
    with pytest.raises(FlaxrayError, match="must be >= 1, got 0"):  # the cap's one check (`plan.check_most`)
        train_seeds(config, data, seeds, max_seeds_per_chunk=0, progress=False)


FOUR_DEVICES = textwrap.dedent("""
    import json, jax, numpy as np
    from flaxray.runtime.runner import train_seeds
    from flaxray.core.config import TrainConfig, device_data
    from flaxray.core.settings import Settings
    from tests.test_train import CONFIG, tiny_dataset
    data = device_data(tiny_dataset(), eval_batch_size=16)
    config = TrainConfig(**CONFIG)
    # 10 seeds, two of which diverge: padded to 12 on 4 devices; the 8 healthy ones compared as samples.
    seeds, lrs = list(range(10)), [1e-3] * 2 + [1e30] + [1e-3] * 5 + [1e30, 1e-3]
    lanes = [Settings(lr=lr) for lr in lrs]
    one_states, one = train_seeds(config, data, seeds, lanes, progress=False, devices=jax.devices()[:1])
    four_states, four = train_seeds(config, data, seeds, lanes, progress=False)
    healthy = [i for i, lr in enumerate(lrs) if lr < 1]
    # map on 4 devices: each device maps over its own seeds, each seed the single-seed program.
    map_states, mapped = train_seeds(config, data, seeds, lanes, progress=False, strategy="map")
    _, map_one = train_seeds(config, data, seeds, lanes, progress=False, strategy="map", devices=jax.devices()[:1])
    print(json.dumps({
        "map_shards": len(jax.tree.leaves(map_states.params)[0].sharding.device_set),
        "map_same": all(np.array_equal(mapped[k], map_one[k], equal_nan=True) for k in mapped),
        "map_diverged": np.asarray(map_states.diverged).tolist(),
        "devices": len(jax.devices()),
        "shards": len(jax.tree.leaves(four_states.params)[0].sharding.device_set),
        "seeds": [int(np.shape(four[k])[0]) for k in four],
        "diverged": [np.asarray(four_states.diverged).tolist(), np.asarray(one_states.diverged).tolist()],
        "final_val_loss": [four["val_loss"][healthy, -1].tolist(), one["val_loss"][healthy, -1].tolist()],
    }))
""")


@pytest.mark.numeric
def test_four_devices_give_the_one_device_curves():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", FOUR_DEVICES], capture_output=True, text=True, cwd=ROOT,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["shards"] == 4  # the seed axis really was split over 4 devices
    assert set(out["seeds"]) == {10}  # the padding seeds are dropped
    four, one = out["diverged"]
    assert [d > 0 for d in four] == [d > 0 for d in one] == [lr > 1 for lr in (1e-3,) * 2 + (1e30,) + (1e-3,) * 5 + (1e30, 1e-3)]
    assert_one_distribution(*out["final_val_loss"], "final val loss, 4 devices vs 1")
    # map over 4 devices runs each seed's own program: the one-device map's curves, bit for bit.
    assert out["map_shards"] == 4 and out["map_same"]
    assert [d > 0 for d in out["map_diverged"]] == [d > 0 for d in four]


@pytest.mark.numeric
def test_bfloat16_computes_in_bfloat16_and_stays_close_to_float32():
    """The embedded default, a small dense stack, 8 seeds x 3 epochs: bfloat16 compute ends where float32
    does, as far as 8 seeds can tell: Welch's t-test of equal means of final val loss, train loss and
    val AUC, each at ALPHA / 3 (a correct bfloat16 path fails it with probability ~ALPHA)."""
    from flaxray.data import load_dataset

    dataset = load_dataset(None, channels=1, progress=False)
    data = device_data(dataset)
    f32 = TrainConfig(arch="dense:64@0.5,32@0.2", epochs=3, batch_size=64)
    bf16 = TrainConfig(arch="dense:64@0.5,32@0.2", epochs=3, batch_size=64, dtype="bfloat16")
    # The matmuls really are bfloat16, the parameters and Adam's moments float32.
    trainer = make_train(bf16)
    state = trainer.init(0, data)
    jaxpr = str(jax.make_jaxpr(trainer.run_epoch)(state, data))
    assert "bf16[64,64]" in jaxpr and "dot_general" in jaxpr
    assert {leaf.dtype for leaf in jax.tree.leaves((state.params, state.opt_state))} <= {jnp.dtype("float32"),
                                                                                         jnp.dtype("int32")}
    seeds = range(8)
    _, a = train_seeds(f32, data, seeds, progress=False)
    _, b = train_seeds(bf16, data, seeds, progress=False)
    assert not np.array_equal(a["val_loss"], b["val_loss"])  # a different computation...
    assert np.all(np.isfinite(b["val_loss"]))

    for key in ("val_loss", "loss", "val_auc"):  # ...to the same place
        assert_same_mean(b[key][:, -1], a[key][:, -1], f"final {key}, bfloat16 vs float32", alpha=ALPHA / 3)
    assert np.mean(b["val_loss"][:, -1]) < 0.45  # and it learned (ln 2 = 0.69 is a coin)


def test_bad_dtype_is_a_flaxray_error():
    with pytest.raises(FlaxrayError, match="dtype"):
        TrainConfig(dtype="float16")


def test_a_registered_models_memory_is_estimated_from_its_traced_forward_pass():
    from types import SimpleNamespace

    from flaxray.models import count_params, build_model
    from flax import nnx

    config = SimpleNamespace(arch="resnet18", dtype="float32", batch_size=32, eval_batch_size=64)
    per_seed = scale.bytes_per_seed(config, (28, 28, 1))
    params = count_params(nnx.eval_shape(lambda: build_model("resnet18", (28, 28, 1))))["total"]
    assert scale.param_count("resnet18", (28, 28, 1)) == params
    # The traced count holds every output of the layers at least: ResNet-18's 17 convs and the stem make
    # 28*28*64 * 5 + 14*14*128 * 4 + 7*7*256 * 4 + 4*4*512 * 4 numbers (plus the projections) per image.
    activations = scale.activation_count("resnet18", (28, 28, 1))
    assert activations > 28 * 28 * 64 * 5 + 14 * 14 * 128 * 4 + 7 * 7 * 256 * 4 + 4 * 4 * 512 * 4
    assert per_seed == 6 * params * 4 + activations * 4 * (32 + 64)
    # The traced count of a sequential model is ~4 numbers per hand-counted layer output, the factor
    # bytes_per_seed gives the hand count: the two estimates agree within 2x.
    hand, traced = scale.activation_count("cnn_sep", (28, 28, 1)), scale.traced_activation_count("cnn_sep", (28, 28, 1))
    assert 2 < traced / hand < 8
    assert scale.param_count("cnn_sep", (28, 28, 1), num_classes=5) == scale.param_count("cnn_sep", (28, 28, 1)) + 4 * 65


def test_the_hand_estimate_is_xlas_figure_for_the_notes_stack():
    """Far from the memory the plan trusts `bytes_per_seed`: for `pyramid` it must be XLA's own figure
    for the compiled epoch program within 25 % (a step that keeps more than it counts fails here)."""
    from flaxray.runtime import programs
    from flaxray.data import load_dataset

    data = device_data(load_dataset(None, progress=False))
    config = TrainConfig(arch="pyramid")
    compiled, _ = programs.compiled_bytes_per_seed(config, data, LR)
    assert abs(scale.bytes_per_seed(config, data.x_train.shape[1:]) - compiled) < 0.25 * compiled


def test_a_plan_near_the_memory_takes_xlas_figure_for_the_compiled_program(data, monkeypatch):
    from flaxray.runtime import programs

    config = TrainConfig(**CONFIG)
    per_seed, fixed = programs.compiled_bytes_per_seed(config, data, LR)
    # Linear in the seeds, as the plan assumes: the 4-seed program's own figure within 25 %.
    four = programs.program_bytes(config, data, LR, 4)
    assert per_seed > 0 and abs(fixed + 4 * per_seed - four) < 0.25 * four
    # Far from the memory, the estimate (no compile); near it, the compiler's figure: 2 seeds fit here.
    assert plan.memory(config, data, LR, 5, 2**40, 1) == (5, scale.bytes_per_seed(config, data.x_train.shape[1:]),
                                                          "estimated")
    free = fixed + int(2.5 * per_seed / scale.MEMORY_FRACTION)
    assert plan.memory(config, data, LR, 5, free, 1) == (2, per_seed, "compiled")
    # A backend that gives no memory analysis (jax: `memory_analysis()` may return None): the estimate.
    monkeypatch.setattr(programs, "program_bytes", lambda *_: None)
    uncached = programs._compiled_bytes_per_seed.__wrapped__  # not cached
    assert uncached(programs._Key(config), data, LR, "vmap", "shifted") is None
    monkeypatch.setattr(programs, "compiled_bytes_per_seed", lambda *_: None)
    estimate = scale.bytes_per_seed(config, data.x_train.shape[1:])
    assert plan.memory(config, data, LR, 5, free, 1) == (scale.plan_chunk(5, estimate, free), estimate, "estimated")


def test_near_the_memory_map_is_planned_by_its_own_compiled_figure(monkeypatch, tmp_path):
    """vmap keeps every seed's activations and gradients at once, map one seed's at a time: for a CNN,
    whose activations outweigh its parameters, map's compiled figure per seed is a fraction of vmap's, so
    near the memory a chunk in map holds more seeds than vmap's plan, and map's own program at that size
    still fits; train_seeds, choosing map there, trains chunks of that size."""
    from flaxray.runtime import programs

    config = TrainConfig(arch="conv:8,pool,gap,dense:4", epochs=1,
                         batch_size=16, eval_batch_size=16)
    data = device_data(tiny_dataset(size=16), eval_batch_size=16)
    vmap_seed, vmap_fixed = programs.compiled_bytes_per_seed(config, data, LR)
    map_seed, _ = programs.compiled_bytes_per_seed(config, data, LR, "map")
    assert map_seed < vmap_seed / 2
    free = vmap_fixed + int(3.5 * vmap_seed / scale.MEMORY_FRACTION)  # 3 seeds in vmap
    assert plan.memory(config, data, LR, 64, free, 1) == (3, vmap_seed, "compiled")
    size, per_seed, source = plan.memory(config, data, LR, 64, free, 1, "map")
    assert size > 6 and (per_seed, source) == (map_seed, "compiled for map")
    assert programs.program_bytes(config, data, LR, size, "map") <= free
    monkeypatch.setattr(scale, "free_memory", lambda device=None: free)
    _, history = train_seeds(config, data, range(64), strategy="map", progress=False, checkpoint_dir=tmp_path)
    assert json.loads((tmp_path / "chunks.json").read_text())["seeds_per_chunk"] == size
    assert history["val_loss"].shape == (64, 1) and np.isfinite(history["val_loss"]).all()
