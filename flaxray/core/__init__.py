"""The pure core: `make_train(config)` returns pure functions of one seed; no I/O, no host loop.

    train       TrainConfig, SeedState, make_train: init, run_epoch, train, evaluate, predict
    optim       Keras's optimizers as optax transforms, rates as per-seed state
    counts      a split's metrics as on-device sufficient statistics
    strategy    how the seeds of one program share a device (vmap, map, groups): pure transforms

`jax.jit(jax.vmap(make_train(config).train, in_axes=(0, None)))(seeds, data)` is the whole multi-seed story.
"""

from flaxray.core.train import DeviceData, SeedState, TrainConfig, device_data, make_train

__all__ = ["DeviceData", "SeedState", "TrainConfig", "device_data", "make_train"]
