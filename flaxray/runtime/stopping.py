"""Early stopping and model selection per seed, decided on the host between epochs as Keras's callbacks are.

    decision = decide(history["val_loss"], patience, min_delta=0.0, lower_is_better=True)
    decision.stopped      # (S,) the epoch (1-based) after which each seed stopped; 0: it trained every epoch
    decision.best         # (S,) the epoch of the monitor's best value so far (the weights `--restore-best` keeps)

A decision is a pure function of the monitor's values so far (the same float64 numbers curves.csv
holds), so a resumed run, a reused unit and a report all find the same stop and best epochs from the
curves, and the device only carries what the host decided (`SeedState.stopped`, `.keep`). Each seed
follows Keras 3's `EarlyStopping` exactly: `wait` counts the epochs since the last improvement, an
improvement is `current - min_delta` below the best (above, for a metric where higher is better), the
first epoch always improves, a seed stops once `wait >= patience` after its first epoch, and with
`restore_best_weights` the weights of the best epoch are restored at the end whether it stopped or not.
`--restore-best` without `--early-stopping` is that with an infinite patience: model selection on the
monitor (MedMNIST keeps the model of the best val AUC).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flaxray.analysis.metrics import mask_diverged
from flaxray.errors import FlaxrayError
from flaxray.runtime import hosts


class Decision(NamedTuple):
    stopped: np.ndarray  # (S,) int: the epoch (1-based) after which the seed stopped, 0 if it did not
    best: np.ndarray  # (S,) int: the epoch (1-based) of its best monitor value so far (0 before any epoch)


def decide(values, patience, *, min_delta: float = 0.0, lower_is_better: bool = True) -> Decision:
    """Keras's `EarlyStopping` over each seed's monitor `values` (S, E so far); `patience` (S,), inf: never stops."""
    values = np.atleast_2d(np.asarray(values, np.float64))
    patience = np.broadcast_to(np.asarray(patience, np.float64), values.shape[:1])
    stopped, best_epoch = np.zeros(len(values), np.int64), np.zeros(len(values), np.int64)
    sign = 1.0 if lower_is_better else -1.0  # Keras: monitor_op less (min) or greater (max), min_delta signed
    for s, curve in enumerate(values):
        wait, best = 0, None
        for epoch, current in enumerate(curve):
            wait += 1
            if best is None or sign * (current + sign * min_delta) < sign * best:  # Keras's _is_improvement
                best, best_epoch[s], wait = current, epoch + 1, 0
                continue
            if wait >= patience[s] and epoch > 0:
                stopped[s] = epoch + 1
                break
    return Decision(stopped, best_epoch)


def final_epochs(decision: Decision, epochs: int, *, restore_best: bool) -> np.ndarray:
    """(S,) the epoch (1-based) whose model each seed ends with: the best with `restore_best`, else the
    stop epoch, else the last."""
    if restore_best:
        return np.where(decision.best > 0, decision.best, epochs)
    return np.where(decision.stopped > 0, decision.stopped, epochs)


def mask_stopped(history: dict[str, np.ndarray], stopped) -> dict[str, np.ndarray]:
    """NaN after the epoch each seed stopped (`stopped[s]`, 1-based; 0 = never): its curves end there, as a
    Keras History does; padded to the same epochs for every seed. A diverged seed's mask, one epoch later."""
    stopped = np.asarray(stopped)
    return mask_diverged(history, np.where(stopped > 0, stopped + 1, 0))


def watch(config, patience) -> "Watch | None":
    """What watches a chunk's seeds (`patience`: each lane's, stacked, or None), None if nothing does."""
    if not config.recipe.restore_best and patience is None:
        return None
    return Watch(config, None if patience is None else np.asarray(patience))


class Watch:
    """Early stopping and model selection of a chunk's seeds between epochs (`flaxray.runtime.stopping`):
    the host decides from the monitor's curve so far and writes what it decided into the states."""

    def __init__(self, config, patience):
        self.recipe, self.patience = config.recipe, patience  # patience (lanes,): inf or None: never stops

    def decide(self, history: dict, n: int) -> Decision:
        if self.recipe.monitor not in history:
            raise FlaxrayError(f"--monitor {self.recipe.monitor} is not among this data's curves ({', '.join(history)})")
        patience = np.inf if self.patience is None else self.patience[:n]
        return decide(history[self.recipe.monitor], patience, min_delta=self.recipe.min_delta,
                      lower_is_better=self.recipe.lower_is_better)

    def after_epoch(self, states, history: dict, n: int):
        """`states` with each seed's stop (`stopped`) and whether its weights now are its best (`keep`), and
        whether every seed has stopped or diverged."""
        decision = self.decide(history, n)
        diverged = np.asarray(hosts.gather(states.diverged))[:n]
        lanes = states.diverged.shape[0]
        grow = lambda a: np.concatenate([a, np.repeat(a[-1:], lanes - n)])  # noqa: E731 - the padding seeds
        if states.stopped is not None:
            stopped = np.where(diverged > 0, 0, decision.stopped)
            states = states._replace(stopped=put(grow(stopped).astype(np.int32), states.stopped))
        if states.keep is not None:
            states = states._replace(keep=put(grow(decision.best == history[self.recipe.monitor].shape[1]), states.keep))
        done = states.stopped is not None and bool(np.all((decision.stopped > 0) | (diverged > 0)))
        return states, done


def put(values: np.ndarray, like):
    """Host values as an array placed and split as `like` (every process passes the whole array). On one
    device, left uncommitted as the states the program was first called with are: a committed leaf
    would be another signature, and the epoch program would compile again."""
    if len(like.sharding.device_set) == 1 and jax.process_count() == 1:
        return jnp.asarray(values)
    return jax.make_array_from_callback(values.shape, like.sharding, lambda index: values[index])


@jax.jit
def restore_best(states):
    """Each seed's variables of its best epoch: those it holds now where they are the best (`keep`), else
    the copy kept when they were."""
    pick = lambda now, best: jnp.where(states.keep.reshape((-1,) + (1,) * (now.ndim - 1)), now, best)  # noqa: E731
    variables = jax.tree.map(pick, states.variables, states.best)
    return states._replace(params=variables.params, model_state=variables.state)
