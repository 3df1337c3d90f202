"""Checkpoints of a multi-seed training run (orbax), and a Ctrl-C that waits for the next one.

A folder holds the checkpoints of one vmapped program: orbax step E is the state after E epochs,
with every seed's `SeedState` (params, model state, optimizer state, a key per source of randomness,
settings, epoch, diverged), the metrics' sufficient statistics of epochs 1..E (not the metrics
themselves: a metric added to `flaxray.analysis.metrics` later is computed from them on resume), and a
JSON of what was trained (config, seeds, settings) so a resume with other settings fails instead of
mixing runs.

Orbax writes a step into a temporary folder and renames it when complete, so a write killed
half-way leaves no step that `latest` returns; opening the folder again removes the leftovers.
Only the latest step is kept. With `background`, a save copies the states to host memory (the next
epoch donates the device buffers) and orbax writes the copy in a background thread while training
goes on: the training loop waits only for the copy, and for the last write before it returns.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from flaxray.errors import FlaxrayError

FORMAT = 4  # 1 saved the curves; 2 the statistics they are computed from; 3 each seed's dropout rate; 4 keys by name, settings in the state


def _is_key(x) -> bool:
    import jax  # here, not at the top: the policy (`every`) is read where jax is not loaded (groups, race)

    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _savable(states):
    """Typed PRNG keys -> their raw uint32 data (what orbax can write)."""
    import jax

    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, states)


def _unsavable(saved, template):
    import jax

    return jax.tree.map(
        lambda x, t: jax.random.wrap_key_data(x, dtype=t.dtype) if _is_key(t) else x, saved, template
    )


class Checkpoints:
    """The checkpoints of one run in `directory`; `meta` (JSON-able) must match to restore."""

    def __init__(self, directory, meta: dict, *, background: bool = False):
        import orbax.checkpoint as ocp  # imported here: only runs that checkpoint pay for it

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.meta = json.loads(json.dumps({"format": FORMAT, **meta}))  # as it reads back
        options = ocp.CheckpointManagerOptions(
            max_to_keep=1,  # the older step is deleted only after the new one is complete
            # From host copies only: the next epoch donates the device buffers. Several processes write
            # their own shards of global arrays, which a host copy of one process cannot hold: in place.
            enable_async_checkpointing=background,
            create=True,
            cleanup_tmp_directories=True,  # half-written steps of a killed run
        )
        self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"), options=options)
        self.background = background

    def latest(self) -> int | None:
        """Epochs done in the latest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, epoch: int, states, counts: dict[str, dict[str, np.ndarray]]) -> None:
        """Step `epoch`: `states` and `counts` {split: {field: (seeds, epochs, ...)}}."""
        ocp = self._ocp
        tree = {"states": _savable(states), "counts": counts}
        if self.background:  # np.array copies, also where the CPU's numpy view would share the buffer
            import jax

            tree = jax.tree.map(np.array, tree)
        self._manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                          meta=ocp.args.JsonSave(self.meta)), force=True)

    def wait(self) -> None:
        """Until the last save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def restore(self, template, counts_template):
        """(states, counts) of the latest step; `template` gives the states' shapes and key types,
        `counts_template` the statistics' (numpy, so they are restored as numpy)."""
        import jax

        ocp, epoch = self._ocp, self.latest()
        meta = self._manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("format") != FORMAT:
            raise FlaxrayError(f"the checkpoint in {self.directory} was written by an older flaxray (format "
                               f"{meta.get('format')}); run the study again with --overwrite")
        saved, here = meta.get("processes", 1), self.meta.get("processes", 1)
        if saved != here:
            raise FlaxrayError(f"the checkpoint in {self.directory} was written by {saved} process(es), each its own "
                               f"seeds' shards, and this run has {here}: resume it with {saved} (python -m "
                               f"flaxray.runtime.launch -n {saved} -- ...), or start again with --overwrite")
        if meta != self.meta:
            changed = sorted(k for k in {*meta, *self.meta} if meta.get(k) != self.meta.get(k))
            raise FlaxrayError(f"the checkpoint in {self.directory} was written with other settings "
                               f"({', '.join(changed)} differ); use another --out or --overwrite")
        target = {"states": jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(template)),
                  "counts": counts_template}
        tree = self._manager.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
        counts = {s: {k: tree["counts"][s][k] for k in fields} for s, fields in counts_template.items()}
        return _unsavable(tree["states"], template), counts


DEFAULT_EVERY = "5min"  # by wall time: on a GPU an epoch takes seconds, and a save of every seed's state more
_UNITS = {"s": 1, "min": 60, "h": 3600}


def every(value) -> tuple[int, float]:
    """A checkpoint policy, `--checkpoint-every`, as (epochs, seconds): N epochs ("2" or 2), a wall time
    ("90s", "5min", "1h") or never (0). A checkpoint is also saved after the last epoch and on Ctrl-C."""
    text = str(value).strip()
    unit = next((u for u in sorted(_UNITS, key=len, reverse=True) if text.endswith(u)), None)
    try:
        number = float(text[: -len(unit)]) if unit else int(text)
    except ValueError:
        number = -1
    if number < 0 or (unit and number == 0):
        raise FlaxrayError(f"--checkpoint-every takes N epochs (0: no checkpoints) or a wall time like 90s, 5min "
                           f"or 1h, got {value!r}")
    return (0, number * _UNITS[unit]) if unit else (int(number), 0.0)


class Stopped(KeyboardInterrupt):
    """A first Ctrl-C that came in a run's last epoch: nothing was left to stop, every epoch trained
    and saved. `result` is what the run returns, for a caller that finishes its own work with it (a
    study's last unit) before it stops or, with nothing after it, returns."""

    def __init__(self, message: str, result):
        super().__init__(message)
        self.result = result


@contextlib.contextmanager
def deferred_interrupt(enabled: bool = True):
    """Yields `interrupted()`: while active, a first Ctrl-C only sets it (the training loop saves a
    checkpoint and stops after the current epoch: `Stopped` after the last); a second Ctrl-C
    interrupts at once."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False  # signal handlers can only be set from the main thread
        return
    hits = []

    def handler(signum, frame):
        if hits:
            raise KeyboardInterrupt
        hits.append(signum)
        print("\nstopping after this epoch, once it is saved (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)
