"""One trainer for every study: `make_train(config)` returns pure functions of a seed.

    trainer = make_train(TrainConfig(arch="pyramid", epochs=10))
    data = device_data(dataset)                     # the images go to the device once, as uint8
    states, stats = jax.jit(jax.vmap(trainer.train, in_axes=(0, None)))(jnp.arange(16), data)

is the whole multi-seed story: a plain `jax.vmap` over a pure function whose per-seed pytree
(`SeedState`) holds params, batch statistics, optimizer state and RNG keys (Flax's lifted vmap with
BatchNorm has open bugs; this avoids it). `train_seeds` runs the same functions one epoch per call,
for a progress bar and checkpoints, and returns a Keras-style History with a leading seed axis; it
splits the seeds into chunks that fit the device memory and the seed axis over every device
(`flaxray.scale`).

Each seed carries its own learning rate (in its optimizer state, through `optax.inject_hyperparams`),
so one vmapped program can cross seeds with learning rates. A seed whose loss, gradients or update
become non-finite keeps its last finite parameters and batch statistics and stops updating
(`SeedState.diverged`); the others are untouched, since the mask is a `jnp.where` per seed, not a
Python branch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from flaxray.errors import FlaxrayError
from flaxray.metrics import NUM_BINS, history_from_counts, mask_diverged
from flaxray.models import build_model, graphdef, parse_arch

SOURCES = ("init", "dropout", "order")  # the sources of randomness `vary` chooses from
DTYPES = ("float32", "bfloat16")  # compute dtypes; parameters and optimizer state are float32 either way


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    arch: str = "pyramid"
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    vary: tuple[str, ...] = SOURCES  # what differs between seeds; the rest comes from `shared_seed`
    shared_seed: int = 0
    class_weight: tuple[float, float] | None = None  # loss weight of (NORMAL, PNEUMONIA), as Keras's
    eval_batch_size: int = 256
    dtype: str = "float32"  # compute dtype of activations and matmuls (`DTYPES`)

    def __post_init__(self):
        parse_arch(self.arch)  # unknown names and bad spec strings fail here, before any work
        if unknown := set(self.vary) - set(SOURCES):
            raise FlaxrayError(f"--vary: unknown source(s) {sorted(unknown)}; choose from {', '.join(SOURCES)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise FlaxrayError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_lr(self.lr)
        if self.dtype not in DTYPES:
            raise FlaxrayError(f"--dtype: unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")


def check_lr(lr) -> None:
    ok = isinstance(lr, numbers.Real) and not isinstance(lr, bool)  # numpy scalars too
    if not (ok and math.isfinite(lr) and lr > 0):
        raise FlaxrayError(f"learning rate must be a finite number > 0, got {lr!r}")


def keras_adam(learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7):
    """Adam as Keras computes it.

    Keras adds `eps` to sqrt(v) *before* bias correction, which is optax's Adam with
    eps_t = eps / sqrt(1 - b2**t): larger than optax's placement in the first steps.
    `inject_hyperparams` also keeps the learning rate in the optimizer state, per seed.
    """
    return optax.inject_hyperparams(optax.adam)(
        learning_rate=learning_rate, b1=b1, b2=b2, eps=lambda count: eps / jnp.sqrt(1.0 - b2 ** (count + 1))
    )


class SeedState(NamedTuple):
    """Everything one seed's training carries from epoch to epoch."""

    params: Any
    batch_stats: Any
    opt_state: Any
    dropout_key: jax.Array
    order_key: jax.Array
    epoch: jax.Array  # epochs done
    diverged: jax.Array  # 0 while healthy, else the epoch (1-based) in which the seed stopped updating


class DeviceData(NamedTuple):
    """Images as uint8 on the device; val padded to whole eval batches (`val_mask` 0 on padding)."""

    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    val_mask: jax.Array


class Counts(NamedTuple):
    """Sufficient statistics of one split's metrics (see `flaxray.metrics.binary_metrics`)."""

    loss_sum: jax.Array
    count: jax.Array
    pos_hist: jax.Array
    neg_hist: jax.Array

    @classmethod
    def zeros(cls):
        return cls(jnp.float32(0), jnp.float32(0), jnp.zeros(NUM_BINS), jnp.zeros(NUM_BINS))

    def add(self, losses, logits, labels, mask):
        bins = jnp.clip((jax.nn.sigmoid(logits) * NUM_BINS).astype(jnp.int32), 0, NUM_BINS - 1)
        return Counts(
            self.loss_sum + jnp.sum(mask * losses),
            self.count + jnp.sum(mask),
            self.pos_hist.at[bins].add(mask * labels),
            self.neg_hist.at[bins].add(mask * (1 - labels)),
        )


def pad_to_batches(x, y, eval_batch_size: int):
    """Images (uint8), labels and mask on the device, zero-padded to whole eval batches (mask 0 on padding)."""
    n = len(y)
    pad = -n % eval_batch_size
    x = np.concatenate([np.asarray(x, np.uint8), np.zeros((pad, *np.shape(x)[1:]), np.uint8)])
    return (jnp.asarray(x, jnp.uint8), jnp.asarray(np.concatenate([y, np.zeros(pad)]), jnp.float32),
            jnp.asarray(np.arange(n + pad) < n, jnp.float32))


def device_data(dataset, eval_batch_size: int = 256) -> DeviceData:
    """Put a `flaxray.data.Dataset`'s train and val splits on the device once, as uint8."""
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
    which XLA vectorizes, rather than `jnp.all(jnp.isfinite(leaf))`, which XLA:CPU runs as a boolean
    array and then a slow tree of reduce-windows: that took ~9 % of a training step. (A max of
    magnitudes would not do: XLA:CPU's max reduction drops NaN.)
    """
    # As a dot with ones: a vmapped reduce over a whole kernel ([seeds, 2352, 1024]) fell off a cliff on
    # XLA:CPU at 13 seeds and more (0.5 s per seed-epoch instead of 0.04).
    def total(leaf):
        flat = (leaf - leaf).reshape(-1).astype(jnp.float32)
        return flat @ jnp.ones_like(flat)

    return jnp.isfinite(sum(total(leaf) for leaf in jax.tree.leaves(tree)))


def seed_keys(seed, vary: Sequence[str], shared_seed: int = 0) -> dict[str, jax.Array]:
    """One key per source of randomness: from `seed` if the source varies, else from `shared_seed`."""
    return {
        source: jax.random.fold_in(jax.random.key(seed if source in vary else shared_seed), i)
        for i, source in enumerate(SOURCES)
    }


def with_lr(opt_state, lr):
    """`keras_adam`'s state with another learning rate."""
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})


class Trainer(NamedTuple):
    """Pure functions of one seed; `jax.vmap` them over seeds."""

    init: Any  # (seed, data, lr=config.lr) -> SeedState
    run_epoch: Any  # (SeedState, data) -> (SeedState, {"train": Counts, "val": Counts})
    train: Any  # (seed, data, lr=config.lr) -> (SeedState, counts with a leading epoch axis)
    evaluate: Any  # (params, batch_stats, x, y, mask) -> Counts
    predict: Any  # (params, batch_stats, x) -> probabilities, x a whole number of eval batches


def make_train(config: TrainConfig) -> Trainer:
    tx = keras_adam(config.lr)
    class_weight = jnp.asarray(config.class_weight or (1.0, 1.0), jnp.float32)

    def forward(params, batch_stats, x, *, train, dropout_key=None):
        model = nnx.merge(graphdef(config.arch, x.shape[1:], config.dtype), params, batch_stats)
        logits = model(x, train=train, dropout_key=dropout_key)
        return logits, nnx.as_pure(nnx.state(model, nnx.BatchStat))

    def init(seed, data: DeviceData, lr=None) -> SeedState:
        keys = seed_keys(seed, config.vary, config.shared_seed)
        model = build_model(config.arch, data.x_train.shape[1:], key=keys["init"], dtype=config.dtype)
        # Pure arrays, not Variables: the state crosses jit, vmap and grad as a plain pytree.
        _, params, batch_stats = nnx.as_pure(nnx.split(model, nnx.Param, nnx.BatchStat))
        opt_state = tx.init(params)
        # The learning rate is a leaf of the optimizer state, so it can differ between vmapped seeds.
        opt_state = with_lr(opt_state, jnp.asarray(config.lr if lr is None else lr, jnp.float32))
        return SeedState(params, batch_stats, opt_state, keys["dropout"], keys["order"], jnp.int32(0), jnp.int32(0))

    def loss_fn(params, batch_stats, x, y, dropout_key):
        logits, batch_stats = forward(params, batch_stats, x, train=True, dropout_key=dropout_key)
        # Keras's class_weight scales each sample's loss; the batch loss is their mean.
        losses = class_weight[y.astype(jnp.int32)] * optax.sigmoid_binary_cross_entropy(logits, y)
        return jnp.mean(losses), (losses, logits, batch_stats)

    def evaluate(params, batch_stats, x, y, mask) -> Counts:
        size = config.eval_batch_size
        batches = (x.reshape(-1, size, *x.shape[1:]), y.reshape(-1, size), mask.reshape(-1, size))

        def body(counts, batch):
            xb, yb, mb = batch
            logits, _ = forward(params, batch_stats, xb, train=False)
            return counts.add(optax.sigmoid_binary_cross_entropy(logits, yb), logits, yb, mb), None

        return jax.lax.scan(body, Counts.zeros(), batches)[0]

    def predict(params, batch_stats, x):
        xb = x.reshape(-1, config.eval_batch_size, *x.shape[1:])
        logits = jax.lax.map(lambda b: forward(params, batch_stats, b, train=False)[0], xb)
        return jax.nn.sigmoid(logits.reshape(-1))

    def run_epoch(state: SeedState, data: DeviceData):
        n, size = data.x_train.shape[0], config.batch_size
        check_batch_size(config, n)
        steps = n // size  # the last partial batch is dropped; each epoch draws a fresh order
        order = jax.random.permutation(jax.random.fold_in(state.order_key, state.epoch), n)
        order = order[: steps * size].reshape(steps, size)
        epoch_key = jax.random.fold_in(state.dropout_key, state.epoch)

        def step(carry, inputs):
            params, batch_stats, opt_state, healthy, counts = carry
            i, idx = inputs
            x, y = data.x_train[idx], data.y_train[idx]  # gathered on the device, no host round trip
            grads, (losses, logits, new_batch_stats) = jax.grad(loss_fn, has_aux=True)(
                params, batch_stats, x, y, jax.random.fold_in(epoch_key, i)
            )
            # Once the loss, a gradient or a batch statistic is non-finite the seed stops for good: a
            # select per seed, so the vmapped program has no branch and the other seeds are unchanged.
            # Checked *before* the update, the select fuses into Adam's one elementwise pass (a zero
            # gradient at rate 0 leaves the parameters exactly as they were); selecting between the
            # old and the new state after it cost a third of the step (benchmarks/RESULTS.md, issue 7).
            # With finite gradients, Keras's Adam moves a weight by at most ~3.2 x lr, so the
            # parameters stay finite for any float32 rate below ~1e38.
            healthy = healthy & all_finite((losses, grads, new_batch_stats))
            grads = jax.tree.map(lambda g: jnp.where(healthy, g, 0), grads)
            lr = opt_state.hyperparams["learning_rate"]
            updates, opt_state = tx.update(grads, with_lr(opt_state, jnp.where(healthy, lr, 0)), params)
            params, opt_state = optax.apply_updates(params, updates), with_lr(opt_state, lr)
            batch_stats = jax.tree.map(lambda new, old: jnp.where(healthy, new, old), new_batch_stats, batch_stats)
            return (params, batch_stats, opt_state, healthy, counts.add(losses, logits, y, jnp.ones_like(y))), None

        carry = (state.params, state.batch_stats, state.opt_state, state.diverged == 0, Counts.zeros())
        (params, batch_stats, opt_state, healthy, train_counts), _ = jax.lax.scan(
            step, carry, (jnp.arange(steps), order)
        )
        val_counts = evaluate(params, batch_stats, data.x_val, data.y_val, data.val_mask)
        diverged = jnp.where((state.diverged == 0) & ~healthy, state.epoch + 1, state.diverged)
        state = state._replace(params=params, batch_stats=batch_stats, opt_state=opt_state, epoch=state.epoch + 1,
                               diverged=diverged)
        return state, {"train": train_counts, "val": val_counts}

    def train(seed, data: DeviceData, lr=None):
        state = init(seed, data, lr)
        return jax.lax.scan(lambda s, _: run_epoch(s, data), state, None, length=config.epochs)

    return Trainer(init, run_epoch, train, evaluate, predict)


def counts_to_numpy(counts) -> dict[str, dict[str, np.ndarray]]:
    """{"train": Counts, "val": Counts} of device arrays -> nested dict of numpy arrays."""
    return {split: {k: np.asarray(v) for k, v in c._asdict().items()} for split, c in counts.items()}


@functools.lru_cache(maxsize=16)
def _vmapped(config: TrainConfig):
    """`init` and `run_epoch`, vmapped over seeds and jitted, once per config and process: a resume
    or a study run again in the same notebook reuses the compiled programs. The third program runs
    one seed without `vmap`: a vmap over a single seed compiles to worse-shaped matmuls on XLA:CPU
    (each weight gradient computed transposed, then transposed back) and ran at half the speed."""
    trainer = make_train(config)

    def one_seed(state, data):
        state, counts = trainer.run_epoch(jax.tree.map(lambda a: a[0], state), data)
        return jax.tree.map(lambda a: a[None], (state, counts))

    return (jax.jit(jax.vmap(trainer.init, in_axes=(0, None, 0))),
            jax.jit(jax.vmap(trainer.run_epoch, in_axes=(0, None)), donate_argnums=0),
            jax.jit(one_seed, donate_argnums=0))


def train_seeds(config: TrainConfig, data: DeviceData, seeds: Sequence[int], *, lrs: Sequence[float] | None = None,
                progress: bool = True, desc=None, checkpoint_dir=None, checkpoint_every: int = 1,
                max_seeds_per_chunk: int | None = None, devices=None):
    """Train `seeds` together, one jitted call per epoch (for the progress bar and checkpoints).

    `lrs` gives each seed its own learning rate (default: `config.lr` for all); a seed may appear
    several times with different rates. Returns the final per-seed `SeedState` (leading seed axis)
    and a Keras-style History whose values have shape (seeds, epochs), NaN from the epoch a seed
    diverged in (`states.diverged`). Same functions as `make_train(config).train`, so the same curves.

    Seeds that do not fit in the device memory together are trained in chunks, one after another
    (`flaxray.scale.bytes_per_seed` against the free memory; `max_seeds_per_chunk` caps a chunk), and
    each chunk's seeds are split over `devices` (default: all), the count padded to a multiple of
    them with copies of the last seed, which are dropped. Neither changes a seed's curves. With
    several chunks the returned states are numpy arrays on the host (typed keys on the CPU).

    With `checkpoint_dir`, every seed's state and the curves so far are saved there with orbax every
    `checkpoint_every` epochs and after the last one, and a run finds its latest checkpoint there
    and continues from it, to the same curves. While it trains, a first Ctrl-C stops it after the
    current epoch, saved; a second one stops it at once (the last checkpoint stays valid).
    """
    from flaxray import scale

    seeds = [int(s) for s in seeds]
    lrs = [float(config.lr)] * len(seeds) if lrs is None else [float(lr) for lr in lrs]
    if len(lrs) != len(seeds) or not seeds:
        raise ValueError(f"need one learning rate per seed and at least one seed, got {len(lrs)} for {len(seeds)}")
    for lr in lrs:
        check_lr(lr)
    check_batch_size(config, data.x_train.shape[0])
    devices = jax.devices() if devices is None else list(devices)
    per_seed, free = scale.bytes_per_seed(config, data.x_train.shape[1:]), scale.free_memory(devices[0])
    size = _chunk_size(scale.plan_chunk(len(seeds), per_seed, free, len(devices)), max_seeds_per_chunk,
                       len(seeds), len(devices), checkpoint_dir)
    parts = scale.chunks(len(seeds), size)
    if progress and (len(parts) > 1 or len(devices) > 1):
        print(scale.describe(len(seeds), size, per_seed, free, len(devices)), flush=True)
    done = []
    for k, part in enumerate(parts):
        folder = checkpoint_dir
        if checkpoint_dir is not None and len(parts) > 1:
            folder = Path(checkpoint_dir) / f"chunk-{k}"
        label = (desc or config.arch) + (f" [{k + 1}/{len(parts)}]" if len(parts) > 1 else "")
        done.append(_train_chunk(config, data, seeds[part], lrs[part], devices, progress=progress, desc=label,
                                 checkpoint_dir=folder, checkpoint_every=checkpoint_every))
    if len(done) == 1:
        return done[0]
    states = jax.tree.map(lambda *parts: _host_concat(parts), *[s for s, _ in done])
    return states, {key: np.concatenate([h[key] for _, h in done]) for key in done[0][1]}


def _chunk_size(planned: int, cap: int | None, n_seeds: int, n_devices: int, checkpoint_dir) -> int:
    """The seeds per chunk: `planned`, capped by `cap` (rounded up to the devices), or the size the
    run in `checkpoint_dir` was started with, so a resume finds its chunks' checkpoints again (a
    run in several chunks writes its size to chunks.json; one in a single chunk is an orbax folder)."""
    import json

    from flaxray import results

    if cap is not None:
        if cap < 1:
            raise FlaxrayError(f"max_seeds_per_chunk must be >= 1, got {cap}")
        planned = min(planned, -(-cap // n_devices) * n_devices)
    if checkpoint_dir is None:
        return planned
    plan = Path(checkpoint_dir) / "chunks.json"
    if plan.exists():
        return int(json.loads(plan.read_text())["seeds_per_chunk"])
    if Path(checkpoint_dir).exists() and any(Path(checkpoint_dir).iterdir()):
        return n_seeds  # a run checkpointed in one chunk, before chunks or with all seeds in one
    if planned < n_seeds:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        results.write_json(plan, {"seeds_per_chunk": planned})  # atomic: a kill mid-write cannot break a resume
    return planned


def _host_concat(arrays):
    """Concatenate chunks' leaves on the host: numpy, or typed PRNG keys on the CPU device."""
    if jax.dtypes.issubdtype(arrays[0].dtype, jax.dtypes.prng_key):
        cpu = jax.devices("cpu")[0]
        return jnp.concatenate([jax.device_put(a, cpu) for a in arrays])
    return np.concatenate([np.asarray(a) for a in arrays])


def _train_chunk(config: TrainConfig, data: DeviceData, seeds: list[int], lrs: list[float], devices, *, progress,
                 desc, checkpoint_dir, checkpoint_every):
    """`train_seeds` for seeds that fit on `devices` together: the seed axis split over them."""
    from tqdm.auto import tqdm

    from flaxray import checkpoint, scale

    # The rate is state and the epochs a loop here, not part of the program: one compile serves them all.
    init, run_epoch, run_one = _vmapped(dataclasses.replace(config, lr=1.0, epochs=1))
    mesh = scale.seed_mesh(devices)
    n = len(seeds)
    padded = scale.pad_seeds(seeds, len(devices)), scale.pad_seeds(lrs, len(devices))
    if mesh is None and n == 1:
        run_epoch = run_one
    data = scale.replicate(mesh, data)
    seed_array, lr_array = scale.shard_seeds(mesh, (jnp.asarray(padded[0], jnp.int32), jnp.asarray(padded[1], jnp.float32)))
    states = init(seed_array, data, lr_array)
    epochs = []  # per epoch, a History of (seeds,) arrays: computed the same way fresh or resumed
    saver = None
    if checkpoint_dir is not None and checkpoint_every > 0:
        meta = {"config": dataclasses.asdict(config), "seeds": seeds, "lrs": lrs}
        if len(padded[0]) > n:
            meta["padded_to"] = len(padded[0])  # the states saved hold the padding seeds too
        saver = checkpoint.Checkpoints(checkpoint_dir, meta)
        if saver.latest() is not None:
            states, done = saver.restore(states)
            epochs = [{k: v[:, e] for k, v in done.items()} for e in range(next(iter(done.values())).shape[1])]
    start = len(epochs)
    with checkpoint.deferred_interrupt(enabled=saver is not None) as interrupted, tqdm(
        range(start, config.epochs), initial=start, total=config.epochs, desc=desc, unit="epoch",
        disable=not progress,
    ) as bar:
        for epoch in bar:
            states, counts = run_epoch(states, data)
            epochs.append({k: v[:n] for k, v in history_from_counts(counts_to_numpy(counts)).items()})
            bar.set_postfix(val_loss=f"{np.mean(epochs[-1]['val_loss']):.4f}", seeds=n,
                            diverged=int(np.count_nonzero(np.asarray(states.diverged)[:n])))
            if saver is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == config.epochs
                                      or interrupted()):
                saver.save(epoch + 1, states, stack_epochs(epochs))
            if interrupted():
                raise KeyboardInterrupt(f"stopped after epoch {epoch + 1}, saved in {checkpoint_dir}")
    if len(padded[0]) > n:
        states = jax.tree.map(lambda a: a[:n], states)
    return states, mask_diverged(stack_epochs(epochs), np.asarray(states.diverged))


def evaluate_seeds(config: TrainConfig, states: SeedState, x, y) -> dict[str, np.ndarray]:
    """Counts of every seed's final model (`states` from `train_seeds`) on images `x` with labels `y`:
    {"loss_sum", "count", "pos_hist", "neg_hist"}, leading seed axis, for `metrics.binary_metrics`."""
    xd, yd, mask = pad_to_batches(x, y, config.eval_batch_size)
    evaluate = jax.jit(jax.vmap(make_train(config).evaluate, in_axes=(0, 0, None, None, None)))
    return {k: np.asarray(v) for k, v in evaluate(states.params, states.batch_stats, xd, yd, mask)._asdict().items()}


def predict(config: TrainConfig, states: SeedState, x) -> np.ndarray:
    """Predicted P(PNEUMONIA) of every seed's final model on images `x`: (seeds, N) float32."""
    xd, _, _ = pad_to_batches(x, np.zeros(len(x)), config.eval_batch_size)
    probs = jax.jit(jax.vmap(make_train(config).predict, in_axes=(0, 0, None)))(states.params, states.batch_stats, xd)
    return np.asarray(probs)[:, : len(x)]


def stack_epochs(epochs: Sequence[dict]) -> dict[str, np.ndarray]:
    """Per-epoch Histories of (seeds,) arrays -> one History of (seeds, epochs) arrays."""
    return {key: np.stack([e[key] for e in epochs], axis=1) for key in epochs[0]}
