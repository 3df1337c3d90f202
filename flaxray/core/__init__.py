"""The pure core: `make_train(config)` returns pure functions of one seed; no I/O, no host loop.

    config      TrainConfig (what the compiled program depends on), DeviceData, device_data
    settings    Settings: what may differ between the lanes of one program (lr, dropout, weight decay)
    randomness  one key per named source of randomness (init, dropout, order), from the seed and the name
    train       SeedState, make_train: init, run_epoch, train, evaluate, predict
    optim       Keras's Adam and decoupled weight decay as optax transforms
    counts      a split's metrics as on-device sufficient statistics
    strategy    how the seeds of one program share a device (vmap, map, groups): pure transforms
    augment     Keras's image augmentation layers (flip, rotate, translate, zoom, contrast) in pure JAX
    resample    each seed's own train/val split of train+val (--vary split), by patient, every lane one size

`jax.jit(jax.vmap(make_train(config).train, in_axes=(0, None)))(seeds, data)` is the whole multi-seed story.
"""

from flaxray.core.config import DeviceData, TrainConfig, device_data
from flaxray.core.settings import Settings
from flaxray.core.train import SeedState, make_train

__all__ = ["DeviceData", "SeedState", "Settings", "TrainConfig", "device_data", "make_train"]
