"""The pure core of the one trainer: `make_train(config)` returns pure functions of a seed.

    trainer = make_train(TrainConfig(arch="pyramid", epochs=10))
    data = device_data(dataset)                     # the images go to the device once, as uint8
    states, stats = jax.jit(jax.vmap(trainer.train, in_axes=(0, None)))(jnp.arange(16), data)

is the whole multi-seed story: a plain `jax.vmap` over a pure function whose per-seed pytree
(`SeedState`) holds params, batch statistics, optimizer state and RNG keys (Flax's lifted vmap with
BatchNorm has open bugs; this avoids it). Nothing here does I/O: `flaxray.runtime.runner.train_seeds` runs
the same functions one epoch per call on the host side (progress bar, checkpoints, chunks, devices).

Two classes train one logit with sigmoid binary cross-entropy (as Keras's notes did); three or
more train C logits with softmax cross-entropy. Each split's metrics are accumulated on the device
as sufficient statistics (`flaxray.core.counts`; `flaxray.analysis.metrics` turns them into numbers).

Each seed carries its own learning rate (in its optimizer state, `flaxray.core.optim`) and, when the
config asks for them, its own dropout rate and weight decay (`SeedState.hparams`), so one vmapped
program can cross seeds with these settings. A seed whose loss, gradients, batch statistics or
parameters become non-finite in an epoch ends that epoch with the state it began it with and stops
updating (`SeedState.diverged`); the others are untouched, since the mask is a `jnp.where` per seed,
not a Python branch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from flaxray.errors import FlaxrayError
from flaxray import models
from flaxray.core.counts import counts_type
from flaxray.models import build_model, graphdef
from flaxray.core.optim import check_lr, check_rate, keras_adam, keras_weight_decay, with_lr  # noqa: F401 - imported from here

SOURCES = ("init", "dropout", "order")  # the sources of randomness `vary` chooses from
# Not a source of randomness but a probe of chaos: with "ulp" in `vary`, every initial parameter moves one
# ulp up or down (a coin flip per element from the seed), so a run varying only it measures how far
# float rounding alone spreads the seeds: the numerical-noise floor (Summers & Dinneen, ICML 2021).
FLOOR = "ulp"
DTYPES = ("float32", "bfloat16")  # compute dtypes; parameters and optimizer state are float32 either way


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    arch: str = "pyramid"
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    vary: tuple[str, ...] = SOURCES  # what differs between seeds; the rest comes from `shared_seed`
    shared_seed: int = 0
    class_weight: tuple[float, ...] | None = None  # loss weight of each class, as Keras's class_weight
    eval_batch_size: int = 256
    dtype: str = "float32"  # compute dtype of activations and matmuls (`DTYPES`)
    num_classes: int = 2  # 2: one logit, sigmoid; 3 or more: one logit per class, softmax
    dropout: float | None = None  # replaces every Dropout layer's rate (None: the arch's own rates)
    weight_decay: float = 0.0  # Keras's decoupled decay (AdamW); 0: plain Adam, as before it existed

    def __post_init__(self):
        models.check_arch(self.arch)  # unknown names and bad spec strings fail here, before any work
        if self.num_classes < 2:
            raise FlaxrayError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.class_weight is not None and len(self.class_weight) != self.num_classes:
            raise FlaxrayError(f"class_weight needs one weight per class ({self.num_classes}), "
                               f"got {len(self.class_weight)}")
        if unknown := set(self.vary) - {*SOURCES, FLOOR}:
            raise FlaxrayError(f"--vary: unknown source(s) {sorted(unknown)}; choose from {', '.join((*SOURCES, FLOOR))}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise FlaxrayError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_lr(self.lr)
        check_rate(self.weight_decay, "--weight-decay")
        if self.dropout is not None:
            check_rate(self.dropout, "--dropout", high=1.0)
            models.check_dropout(self.arch)
        if self.dtype not in DTYPES:
            raise FlaxrayError(f"--dtype: unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")


def config_record(config: TrainConfig) -> dict:
    """The config as a dict, without the settings added since at their defaults (dropout, weight
    decay): what a default run recorded before they existed, so its units and checkpoints still match."""
    record = dataclasses.asdict(config)
    for name, default in (("dropout", None), ("weight_decay", 0.0)):
        if record[name] == default:
            del record[name]
    return record


class SeedState(NamedTuple):
    """Everything one seed's training carries from epoch to epoch."""

    params: Any
    batch_stats: Any
    opt_state: Any
    dropout_key: jax.Array
    order_key: jax.Array
    epoch: jax.Array  # epochs done
    diverged: jax.Array  # 0 while healthy, else the epoch (1-based) in which the seed stopped updating
    hparams: Any = {}  # "dropout": its rate when `TrainConfig.dropout` is set; "weight_decay" when it is not 0


class DeviceData(NamedTuple):
    """Images as uint8 on the device; val padded to whole eval batches (`val_mask` 0 on padding)."""

    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    val_mask: jax.Array


def pad_to_batches(x, y, eval_batch_size: int):
    """Images (uint8), labels and mask on the device, zero-padded to whole eval batches (mask 0 on padding)."""
    n = len(y)
    pad = -n % eval_batch_size
    x = np.concatenate([np.asarray(x, np.uint8), np.zeros((pad, *np.shape(x)[1:]), np.uint8)])
    return (jnp.asarray(x, jnp.uint8), jnp.asarray(np.concatenate([y, np.zeros(pad)]), jnp.float32),
            jnp.asarray(np.arange(n + pad) < n, jnp.float32))


def device_data(dataset, eval_batch_size: int = 256) -> DeviceData:
    """Put a `flaxray.data.Dataset`'s train and val splits on the device once, as uint8 (labels as
    float32: the sigmoid loss takes them so, and small class indices are exact in float32)."""
    if len(dataset.train.y) == 0 or len(dataset.val.y) == 0:
        raise FlaxrayError("the data has an empty train or validation split; add images or lower --val-fraction")
    x_val, y_val, val_mask = pad_to_batches(dataset.val.x, dataset.val.y, eval_batch_size)
    return DeviceData(x_train=jnp.asarray(dataset.train.x, jnp.uint8), y_train=jnp.asarray(dataset.train.y, jnp.float32),
                      x_val=x_val, y_val=y_val, val_mask=val_mask)


def check_batch_size(config: TrainConfig, n_train: int) -> None:
    if config.batch_size > n_train:
        raise FlaxrayError(f"batch size {config.batch_size} is larger than the training split ({n_train} images)")


def all_finite(tree) -> jax.Array:
    """One boolean: every element of every leaf is finite.

    As a float sum of `leaf - leaf` (0 for a finite element, NaN for inf or NaN; a sum keeps a NaN),
    which XLA fuses into one pass that writes nothing, rather than `jnp.all(jnp.isfinite(leaf))`, which
    XLA:CPU runs as a boolean array and then a slow tree of reduce-windows. (A max of magnitudes would
    not do: XLA:CPU's max reduction drops NaN.) It runs once an epoch: vmapped over a whole kernel
    ([seeds, 2352, 1024]) this reduce was measured falling off a cliff on XLA:CPU at 13 seeds and more
    (~80 ms a call at 16), ~1 % of an epoch but a third of a step when it ran every step; the dot with
    ones that avoided it then materialised `leaf - leaf`, 2.2x the epoch program's memory.
    """
    return jnp.isfinite(sum(jnp.sum((leaf - leaf).astype(jnp.float32)) for leaf in jax.tree.leaves(tree)))


def seed_keys(seed, vary: Sequence[str], shared_seed: int = 0) -> dict[str, jax.Array]:
    """One key per source of randomness: from `seed` if the source varies, else from `shared_seed`."""
    return {
        source: jax.random.fold_in(jax.random.key(seed if source in vary else shared_seed), i)
        for i, source in enumerate(SOURCES)
    }


def nudge_one_ulp(params, key):
    """Every element one ulp up or down, by a coin flip from `key` (`FLOOR`)."""
    leaves, tree = jax.tree.flatten(params)
    ups = [jax.random.bernoulli(k, 0.5, leaf.shape) for k, leaf in zip(jax.random.split(key, len(leaves)), leaves)]
    return tree.unflatten([jnp.nextafter(leaf, jnp.where(up, jnp.inf, -jnp.inf).astype(leaf.dtype))
                           for leaf, up in zip(leaves, ups)])


class Trainer(NamedTuple):
    """Pure functions of one seed; `jax.vmap` them over seeds."""

    init: Any  # (seed, data, lr=config.lr, dropout=config.dropout, weight_decay=config.weight_decay) -> SeedState
    run_epoch: Any  # (SeedState, data) -> (SeedState, {"train": counts, "val": counts})
    train: Any  # (seed, data, lr=config.lr, ...) -> (SeedState, counts with a leading epoch axis)
    evaluate: Any  # (params, batch_stats, x, y, mask) -> BinaryCounts or ClassCounts
    predict: Any  # (params, batch_stats, x) -> probabilities (N,) or (N, C), x whole eval batches


def make_train(config: TrainConfig) -> Trainer:
    tx = keras_adam(config.lr)
    class_weight = jnp.asarray(config.class_weight or (1.0,) * config.num_classes, jnp.float32)
    binary = config.num_classes == 2
    Counts = counts_type(config.num_classes)

    def sample_losses(logits, y):
        if binary:
            return optax.sigmoid_binary_cross_entropy(logits, y)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(jnp.int32))

    def forward(params, batch_stats, x, *, train, dropout_key=None, hparams=None):
        model = nnx.merge(graphdef(config.arch, x.shape[1:], config.dtype, config.num_classes), params, batch_stats)
        rate = (hparams or {}).get("dropout")
        logits = model(x, train=train, dropout_key=dropout_key, **({} if rate is None else {"dropout_rate": rate}))
        return logits, nnx.as_pure(nnx.state(model, nnx.BatchStat))

    def init(seed, data: DeviceData, lr=None, dropout=None, weight_decay=None) -> SeedState:
        keys = seed_keys(seed, config.vary, config.shared_seed)
        model = build_model(config.arch, data.x_train.shape[1:], key=keys["init"], dtype=config.dtype,
                            num_classes=config.num_classes)
        # Pure arrays, not Variables: the state crosses jit, vmap and grad as a plain pytree.
        _, params, batch_stats = nnx.as_pure(nnx.split(model, nnx.Param, nnx.BatchStat))
        if FLOOR in config.vary:  # its own key: the other sources' draws are those of a run without it
            params = nudge_one_ulp(params, jax.random.fold_in(jax.random.key(seed), len(SOURCES)))
        opt_state = tx.init(params)
        # The rates are leaves of the state, so they can differ between vmapped seeds.
        opt_state = with_lr(opt_state, jnp.asarray(config.lr if lr is None else lr, jnp.float32))
        hparams = {}  # only the settings the config asks for: without them, the program of before they existed
        if config.dropout is not None:
            hparams["dropout"] = jnp.asarray(config.dropout if dropout is None else dropout, jnp.float32)
        if config.weight_decay:
            hparams["weight_decay"] = jnp.asarray(config.weight_decay if weight_decay is None else weight_decay,
                                                  jnp.float32)
        return SeedState(params, batch_stats, opt_state, keys["dropout"], keys["order"], jnp.int32(0), jnp.int32(0),
                         hparams)

    def loss_fn(params, batch_stats, x, y, dropout_key, hparams):
        logits, batch_stats = forward(params, batch_stats, x, train=True, dropout_key=dropout_key, hparams=hparams)
        # Keras's class_weight scales each sample's loss; the batch loss is their mean.
        losses = class_weight[y.astype(jnp.int32)] * sample_losses(logits, y)
        return jnp.mean(losses), (losses, logits, batch_stats)

    def evaluate(params, batch_stats, x, y, mask) -> Counts:
        size = config.eval_batch_size
        batches = (x.reshape(-1, size, *x.shape[1:]), y.reshape(-1, size), mask.reshape(-1, size))

        def body(counts, batch):
            xb, yb, mb = batch
            logits, _ = forward(params, batch_stats, xb, train=False)
            return counts.add(sample_losses(logits, yb), logits, yb, mb), None

        return jax.lax.scan(body, Counts.zeros(config.num_classes), batches)[0]

    def predict(params, batch_stats, x):
        xb = x.reshape(-1, config.eval_batch_size, *x.shape[1:])
        logits = jax.lax.map(lambda b: forward(params, batch_stats, b, train=False)[0], xb)
        if binary:
            return jax.nn.sigmoid(logits.reshape(-1))
        return jax.nn.softmax(logits.reshape(-1, config.num_classes))

    def run_epoch(state: SeedState, data: DeviceData):
        n, size = data.x_train.shape[0], config.batch_size
        check_batch_size(config, n)
        steps = n // size  # the last partial batch is dropped; each epoch draws a fresh order
        order = jax.random.permutation(jax.random.fold_in(state.order_key, state.epoch), n)
        order = order[: steps * size].reshape(steps, size)
        epoch_key = jax.random.fold_in(state.dropout_key, state.epoch)

        alive = state.diverged == 0  # a stopped seed stays as it is: no update, whatever its gradients

        def step(carry, inputs):
            params, batch_stats, opt_state, counts = carry
            i, idx = inputs
            x, y = data.x_train[idx], data.y_train[idx]  # gathered on the device, no host round trip
            grads, (losses, logits, new_batch_stats) = jax.grad(loss_fn, has_aux=True)(
                params, batch_stats, x, y, jax.random.fold_in(epoch_key, i), state.hparams
            )
            # `alive` is known before the epoch, so these selects fuse into Adam's elementwise passes (a
            # zero gradient at rate 0 leaves the parameters exactly as they were).
            grads = jax.tree.map(lambda g: jnp.where(alive, g, 0), grads)
            lr = opt_state.hyperparams["learning_rate"]
            step_lr = jnp.where(alive, lr, 0)
            updates, opt_state = tx.update(grads, with_lr(opt_state, step_lr), params)
            if "weight_decay" in state.hparams:  # Keras's AdamW: decay the weights, then Adam's step
                params = keras_weight_decay(params, state.hparams["weight_decay"], step_lr)
            params, opt_state = optax.apply_updates(params, updates), with_lr(opt_state, lr)
            batch_stats = jax.tree.map(lambda new, old: jnp.where(alive, new, old), new_batch_stats, batch_stats)
            return (params, batch_stats, opt_state, counts.add(losses, logits, y, jnp.ones_like(y))), None

        start = (state.params, state.batch_stats, state.opt_state)
        (params, batch_stats, opt_state, train_counts), _ = jax.lax.scan(
            step, (*start, Counts.zeros(config.num_classes)), (jnp.arange(steps), order)
        )
        # Divergence is judged once an epoch, not every step: a non-finite loss, gradient or batch statistic
        # leaves a non-finite value that stays in the loss sum, the batch statistics or, through Adam's
        # moments, the parameters (NaN and inf do not come back), so one check of the epoch's end finds it.
        # A seed that diverged ends the epoch as it began it and stops; keeping the start costs ~1.3 copies
        # of the parameters in the epoch program's memory (`scale.bytes_per_seed` counts one). Checking every
        # step cost ~25 % of a step on XLA:CPU (a reduction over every gradient before Adam could start).
        healthy = all_finite((params, batch_stats, opt_state, train_counts.loss_sum))
        newly = alive & ~healthy
        params, batch_stats, opt_state = jax.tree.map(lambda old, new: jnp.where(newly, old, new), start,
                                                      (params, batch_stats, opt_state))
        val_counts = evaluate(params, batch_stats, data.x_val, data.y_val, data.val_mask)
        diverged = jnp.where(newly, state.epoch + 1, state.diverged)
        state = state._replace(params=params, batch_stats=batch_stats, opt_state=opt_state, epoch=state.epoch + 1,
                               diverged=diverged)
        return state, {"train": train_counts, "val": val_counts}

    def train(seed, data: DeviceData, lr=None, dropout=None, weight_decay=None):
        state = init(seed, data, lr, dropout, weight_decay)
        return jax.lax.scan(lambda s, _: run_epoch(s, data), state, None, length=config.epochs)

    return Trainer(init, run_epoch, train, evaluate, predict)
