"""The pure core of the one trainer: `make_train(config)` returns pure functions of a seed.

    trainer = make_train(TrainConfig(arch="pyramid", epochs=10))
    data = device_data(dataset)                     # the images go to the device once, as uint8
    states, stats = jax.jit(jax.vmap(trainer.train, in_axes=(0, None)))(jnp.arange(16), data)

is the whole multi-seed story: a plain `jax.vmap` over a pure function whose per-seed pytree
(`SeedState`) holds the model's variables, the optimizer state, one key per named source of
randomness and the lane's settings (Flax's lifted vmap with BatchNorm has open bugs; this avoids
it). Nothing here does I/O: `flaxray.runtime.runner.train_seeds` runs the same functions one epoch
per call on the host side (progress bar, checkpoints, chunks, devices).

The model is whatever `flaxray.models.model(arch, ...)` returns (`init`, `apply`); two classes train
one output with sigmoid binary cross-entropy (as Keras's notes did), three or more C outputs with
softmax cross-entropy. Each split's metrics are accumulated on the device as sufficient statistics
(`flaxray.core.counts`; `flaxray.analysis.metrics` turns them into numbers).

Each seed carries its own settings (`SeedState.settings`: learning rate, and when the program has
them, a dropout rate and a weight decay), so one vmapped program can cross seeds with settings. A
seed whose loss, gradients, batch statistics or parameters become non-finite in an epoch ends that
epoch with the state it began it with and stops updating (`SeedState.diverged`); the others are
untouched, since the mask is a `jnp.where` per seed, not a Python branch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from flaxray import models
from flaxray.core.config import DeviceData, LaneSplit, TrainConfig, check_batch_size, train_count, val_of
from flaxray.core.counts import counts_type
from flaxray.core.losses import per_sample
from flaxray.core import augment as augmentation
from flaxray.core import optim
from flaxray.core.optim import keras_weight_decay, with_lr
from flaxray.core.randomness import FLOOR, SPLIT, nudge_one_ulp, seed_keys, source_key
from flaxray.core import schedules
from flaxray.core.schedules import factor
from flaxray.core.settings import Settings
from flaxray.errors import FlaxrayError
from flaxray.models import LOGITS, PROBABILITIES, Variables

class SeedState(NamedTuple):
    """Everything one seed's training carries from epoch to epoch."""

    params: Any
    model_state: Any  # the model's non-trainable variables (BatchNorm's statistics)
    opt_state: Any
    keys: dict  # {source: key} of the sources an epoch draws from (`flaxray.core.randomness`)
    settings: Settings  # this lane's settings; a field not in the program is None
    epoch: jax.Array  # epochs done
    diverged: jax.Array  # 0 while healthy, else the epoch (1-based) in which the seed stopped updating
    # Early stopping and model selection, decided on the host between epochs as Keras's callbacks are
    # (`flaxray.runtime.stopping`); None where the program has none, so its state is that of before.
    stopped: Any = None  # 0 while training, else the epoch (1-based) after which early stopping froze it
    best: Any = None  # `Variables` of the monitor's best epoch so far (`Recipe.restore_best`)
    keep: Any = None  # True: the variables this state holds now are the new best (set by the host)
    # The next epoch's order of the training images, written by the host where the model's kind brings
    # its own (a Keras model: fit's NumPy permutations); None: drawn here from the `order` key.
    order: Any = None
    split: Any = None  # this lane's split of the pool (`LaneSplit`) where the lanes resample theirs; None: the data's

    @property
    def variables(self) -> Variables:
        return Variables(self.params, self.model_state)


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


def lane_settings(settings: Settings | None) -> Settings:
    """`settings` (default: `Settings()`) as float32 scalars, None fields kept out of the program."""
    return jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), Settings() if settings is None else settings)


def batches(config: TrainConfig, model, n: int) -> tuple[int, int]:
    """(whole batches, size of the partial last batch that is trained) of an epoch over `n` images:
    flaxray drops the partial batch (0); a kind with its own order (fit's) trains it, as fit does."""
    steps = n // config.batch_size
    return steps, (n - steps * config.batch_size if model.order is not None else 0)


class Trainer(NamedTuple):
    """Pure functions of one seed; `jax.vmap` them over seeds."""

    init: Any  # (seed, data, settings=Settings(), variables=None, split=None) -> SeedState
    run_epoch: Any  # (SeedState, data) -> (SeedState, {"train": counts, "val": counts})
    train: Any  # (seed, data, settings=Settings(), split=None) -> (SeedState, counts with a leading epoch axis)
    evaluate: Any  # (variables, x, y, mask, index=None) -> BinaryCounts or ClassCounts
    predict: Any  # (variables, x) -> probabilities (N,) or (N, C), x whole eval batches


def make_train(config: TrainConfig) -> Trainer:
    """The pure functions of one seed that `config` describes.

    Args:
      config: the arch, epochs, batch sizes, classes, dtype and sources of randomness.
    Returns:
      A `Trainer` (init, run_epoch, train, evaluate, predict): `jax.vmap` them over seeds (and their
      `Settings`), `jax.jit` the result.
    """
    recipe = config.recipe
    tx = (optim.keras_optimizer(recipe.optimizer, nesterov=recipe.nesterov) if isinstance(recipe.optimizer, str)
          else optax.inject_hyperparams(recipe.optimizer)(learning_rate=1e-3))
    scheduled = not schedules.is_default(recipe.schedule)
    smoothing = recipe.label_smoothing
    class_weight = jnp.asarray(config.class_weight or (1.0,) * config.num_classes, jnp.float32)
    binary = config.num_classes == 2
    Counts = counts_type(config.num_classes)

    def model_of(x):
        return models.model(config.arch, x.shape[1:], dtype=config.dtype, num_classes=config.num_classes)

    def sample_losses(outputs, y, output=LOGITS):
        return per_sample(outputs, y, output, num_classes=config.num_classes, smoothing=smoothing)

    def rate(lr, step, steps):
        """The lane's rate at global optimizer step `step`: `lr` times the schedule's multiplier."""
        if not scheduled:
            return lr
        return lr * factor(recipe.schedule, step, steps, config.epochs)

    def measure(counts, model, outputs, y, mask, losses=None):
        """`counts` plus this batch (its per-sample `losses`, else computed here)."""
        losses = sample_losses(outputs, y, model.output) if losses is None else losses
        return counts.add(losses, outputs, y, mask, probabilities=model.output == PROBABILITIES)

    def init(seed, data: DeviceData, settings: Settings | None = None, variables: Variables | None = None,
             split=None) -> SeedState:
        """`variables`: the initial variables a kind of model made on the host (else `model.init` of the
        seed's init key); `split`: the lane's `LaneSplit` where the data is a pool the lanes resample (drawn
        on the host: `flaxray.runtime.programs.initial_states`)."""
        if (split is None) != (data.resample is None):  # drawn on the host: `programs.initial_states` does
            raise FlaxrayError("a lane's split is given where, and only where, the data is a pool the lanes resample")
        settings = lane_settings(settings)
        keys = seed_keys(seed, [s for s in config.drawn if s not in (FLOOR, SPLIT)], config.vary, config.shared_seed)
        model = model_of(data.x_train)
        if variables is None:
            if model.host_init is not None:
                raise FlaxrayError(f"{config.arch} is built on the host, seed by seed: pass its variables "
                                   "(flaxray.runtime.programs.initial_states does)")
            variables = model.init(keys.pop("init"))
        keys.pop("init", None)
        params = variables.params
        if FLOOR in config.vary:  # its own key: the other sources' draws are those of a run without it
            params = nudge_one_ulp(params, source_key(seed, FLOOR, config.vary))
        opt_state = model.compiled.opt_init(settings.lr) if model.compiled else with_lr(tx.init(params), settings.lr)
        stopped = None if settings.patience is None else jnp.int32(0)
        best, keep = (Variables(params, variables.state), jnp.bool_(False)) if recipe.restore_best else (None, None)
        order = None if model.order is None else jnp.arange(train_count(data), dtype=jnp.int32)
        return SeedState(params, variables.state, opt_state, keys, settings, jnp.int32(0), jnp.int32(0),
                         stopped, best, keep, order, None if split is None else LaneSplit(*split))

    def loss_fn(params, model_state, x, y, key, settings):
        model = model_of(x)
        outputs, model_state = model.apply(Variables(params, model_state), x, train=True, key=key,
                                           dropout=settings.dropout)
        # Keras's class_weight scales each sample's loss; the batch loss is their mean.
        losses = class_weight[y.astype(jnp.int32)] * sample_losses(outputs, y, model.output)
        penalty = model.penalty(params) if model.penalty else 0.0  # in the gradient; the recorded losses are the data's
        return jnp.mean(losses) + penalty, (losses, outputs, model_state)

    def evaluate(variables: Variables, x, y, mask, index=None) -> Counts:
        """`index`: where the images are a lane's split of a pool, its positions in `x` (padded as `mask`),
        gathered a batch at a time, so no lane holds a copy of its images."""
        size = config.eval_batch_size
        batches = ((x.reshape(-1, size, *x.shape[1:]), y.reshape(-1, size)) if index is None
                   else (index.reshape(-1, size),)) + (mask.reshape(-1, size),)

        def body(counts, batch):
            xb, yb, mb = batch if index is None else (x[batch[0]], y[batch[0]], batch[1])
            model = model_of(xb)
            outputs, _ = model.apply(variables, xb, train=False)
            losses = model.compiled.losses(variables, xb, yb, outputs) if model.compiled else None
            return measure(counts, model, outputs, yb, mb, losses), None

        return jax.lax.scan(body, Counts.zeros(config.num_classes), batches)[0]

    def predict(variables: Variables, x):
        xb = x.reshape(-1, config.eval_batch_size, *x.shape[1:])
        model = model_of(xb[0])
        outputs = jax.lax.map(lambda b: model.apply(variables, b, train=False)[0], xb)
        outputs = outputs.reshape(-1) if binary else outputs.reshape(-1, config.num_classes)
        if model.output == PROBABILITIES:
            return outputs
        return jax.nn.sigmoid(outputs) if binary else jax.nn.softmax(outputs)

    def run_epoch(state: SeedState, data: DeviceData):
        n, size = train_count(data), config.batch_size
        check_batch_size(config, n)
        model = model_of(data.x_train)
        compiled = model.compiled
        steps, rest = batches(config, model, n)  # flaxray drops the partial last batch; fit (a Keras model) takes it
        total = steps + (rest > 0)  # optimizer steps an epoch: what a schedule counts
        if state.order is None:  # each epoch draws a fresh order
            order = jax.random.permutation(jax.random.fold_in(state.keys["order"], state.epoch), n)
        else:
            order = state.order
        if state.split is not None:  # positions in the lane's own training images -> in the pool
            order = state.split.train[order]
        last, order = order[steps * size:], order[: steps * size].reshape(steps, size)
        epoch_key = jax.random.fold_in(state.keys["dropout"], state.epoch)
        if recipe.augment:
            augment_key = jax.random.fold_in(state.keys["augment"], state.epoch)
        best = state.best
        if best is not None:  # the variables this epoch starts from are the best so far: keep a copy
            best = jax.tree.map(lambda new, old: jnp.where(state.keep, new, old), state.variables, best)

        alive = state.diverged == 0  # a stopped seed stays as it is: no update, whatever its gradients
        if state.stopped is not None:
            alive &= state.stopped == 0
        lr, decay = state.settings.lr, state.settings.weight_decay
        step_lr = jnp.where(alive, lr, 0)
        hyper = {} if state.settings.momentum is None else {"momentum": state.settings.momentum}

        def step(carry, inputs):
            params, model_state, opt_state, counts = carry
            i, idx = inputs
            x, y = data.x_train[idx], data.y_train[idx]  # gathered on the device, no host round trip
            if recipe.augment:  # float32 in [0, 255]: the models rescale whatever they are given
                x = augmentation.apply(recipe.augment, jax.random.fold_in(augment_key, i), x.astype(jnp.float32))
            if compiled:  # the model's own compile: its loss, regularisers and optimizer, as its train_step
                weights = class_weight[y.astype(jnp.int32)] if config.class_weight else None  # fit's class_weight
                params, new_model_state, opt_state, outputs, loss = compiled.step(params, model_state, opt_state, x,
                                                                                 y, weights)
                losses = jnp.full(y.shape, loss)  # fit's loss tracker weighs each batch's mean by its size
            else:
                lr_i = rate(step_lr, state.epoch * total + i, total)
                grads, (losses, outputs, new_model_state) = jax.grad(loss_fn, has_aux=True)(
                    params, model_state, x, y, jax.random.fold_in(epoch_key, i), state.settings
                )
                # `alive` is known before the epoch, so these selects fuse into Adam's elementwise passes (a
                # zero gradient at rate 0 leaves the parameters exactly as they were).
                grads = jax.tree.map(lambda g: jnp.where(alive, g, 0), grads)
                updates, opt_state = tx.update(grads, optim.with_hyperparams(opt_state, learning_rate=lr_i, **hyper),
                                               params)
                if decay is not None:  # Keras's AdamW: decay the weights, then Adam's step
                    params = keras_weight_decay(params, decay, lr_i)
                params, opt_state = optax.apply_updates(params, updates), with_lr(opt_state, lr)
            model_state = jax.tree.map(lambda new, old: jnp.where(alive, new, old), new_model_state, model_state)
            return (params, model_state, opt_state, measure(counts, model_of(x), outputs, y, jnp.ones_like(y), losses)), None

        start = (state.params, state.model_state, state.opt_state)
        carry, _ = jax.lax.scan(step, (*start, Counts.zeros(config.num_classes)), (jnp.arange(steps), order))
        if rest:  # fit's partial last batch: one more step, of its own (static) size
            carry, _ = step(carry, (jnp.int32(steps), last))
        params, model_state, opt_state, train_counts = carry
        # Divergence is judged once an epoch, not every step: a non-finite loss, gradient or batch statistic
        # leaves a non-finite value that stays in the loss sum, the batch statistics or, through Adam's
        # moments, the parameters (NaN and inf do not come back), so one check of the epoch's end finds it.
        # A seed that diverged ends the epoch as it began it and stops; keeping the start costs ~1.3 copies
        # of the parameters in the epoch program's memory (`scale.bytes_per_seed` counts one). Checking every
        # step cost ~25 % of a step on XLA:CPU (a reduction over every gradient before Adam could start).
        healthy = all_finite((params, model_state, opt_state, train_counts.loss_sum))
        newly = alive & ~healthy
        # A lane that was not alive ends the epoch exactly as it began it, whatever the optimizer would
        # have done with a zero gradient (moments decay, a schedule's rate): frozen, bit for bit.
        params, model_state, opt_state = jax.tree.map(lambda old, new: jnp.where(newly | ~alive, old, new), start,
                                                      (params, model_state, opt_state))
        val_counts = evaluate(Variables(params, model_state), *val_of(data, state.split))
        diverged = jnp.where(newly, state.epoch + 1, state.diverged)
        state = state._replace(params=params, model_state=model_state, opt_state=opt_state, epoch=state.epoch + 1,
                               diverged=diverged, best=best, keep=None if best is None else jnp.bool_(False))
        return state, {"train": train_counts, "val": val_counts}

    def train(seed, data: DeviceData, settings: Settings | None = None, split=None):
        state = init(seed, data, settings, split=split)
        return jax.lax.scan(lambda s, _: run_epoch(s, data), state, None, length=config.epochs)

    return Trainer(init, run_epoch, train, evaluate, predict)

