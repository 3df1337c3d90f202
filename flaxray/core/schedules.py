"""Learning-rate schedules as a multiplier of the peak rate, per optimizer step.

    schedule = Schedule("step", milestones=(2, 3), decay=0.1, warmup_epochs=1)
    schedule.check(epochs)                                   # one-line FlaxrayError naming the flag
    lr_t = lr * factor(schedule, step, steps_per_epoch, epochs)   # `step` traced, 0-based

`--lr` is the peak; the factor scales it, so every lane keeps its own rate and one compiled program
serves every rate. The factor at `step` is the one of the update made at that step, as a Keras schedule
given `optimizer.iterations` is (the first update at step 0).

- constant: 1 (exactly 1.0 without a warm-up, so the trainer can leave the default program as it was).
- step: `milestones` are epoch counts after which the rate is multiplied by `decay` (PyTorch's MultiStepLR
  stepped per epoch): with milestones (2, 3) the rate is lr in epochs 1-2, lr*G in epoch 3, lr*G**2 from
  epoch 4 (1-based). The factor after k milestones is `jnp.float32(decay) ** k` (k a Python int: JAX's
  integer power, float32 products), computed once on the host, so it is those bits exactly.
- exponential: `decay` per epoch, as Keras's `ExponentialDecay(1.0, steps_per_epoch, decay, staircase=True)`
  computes it: `jnp.power(float32(decay), float32(epoch))`.
- cosine: Keras 3's `CosineDecay` (alpha 0), from 1 to 0 over the steps after the warm-up, per step.
- warm-up (any kind): linear from 0 over the first `warmup_epochs` epochs' W steps, step / W in float32 as
  Keras's `CosineDecay(0.0, ..., warmup_target=1.0, warmup_steps=W)` computes it (0 at the first update).
  The schedule then sees step - W: its epochs (milestones, exponential) and its length exclude the warm-up.

A schedule may also be any callable step -> multiplier (an optax schedule); `factor` just calls it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp

from flaxray.errors import FlaxrayError

KINDS = ("constant", "step", "exponential", "cosine")
F32 = jnp.float32


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The rate's shape over training, relative to the peak `--lr` (see the module's doc)."""

    kind: str = "constant"  # constant | step | exponential | cosine
    milestones: tuple[int, ...] = ()  # step: epoch counts after which the rate is multiplied by `decay`
    decay: float = 0.1  # step: the factor per milestone; exponential: the factor per epoch
    warmup_epochs: int = 0

    def __post_init__(self):
        object.__setattr__(self, "milestones", tuple(self.milestones))  # a list from argparse, hashable

    def check(self, epochs: int) -> None:
        """A one-line `FlaxrayError` naming the flag unless this schedule fits a run of `epochs` epochs.

        `--decay` is a finite number in (0, 1] for step (a milestone never raises the rate) and in (0, inf)
        for exponential (a rate that grows per epoch is allowed: a range test); the other kinds take none.
        """
        if self.kind not in KINDS:
            raise FlaxrayError(f"--schedule: unknown {self.kind!r} (choose from {', '.join(KINDS)})")
        warmup = self.warmup_epochs
        if not _is_int(warmup) or not 0 <= warmup < epochs:
            raise FlaxrayError(f"--warmup-epochs: must be a whole number from 0 to {epochs - 1} (below --epochs "
                               f"{epochs}), got {warmup!r}")
        if self.milestones and self.kind != "step":
            raise FlaxrayError(f"--milestones: only for --schedule step, not {self.kind}")
        if self.kind == "step":
            ms, after = self.milestones, epochs - warmup
            if not ms:
                raise FlaxrayError("--milestones: --schedule step needs at least one epoch count")
            if not all(_is_int(m) and m > 0 for m in ms) or any(a >= b for a, b in zip(ms, ms[1:])):
                raise FlaxrayError(f"--milestones: must be strictly increasing positive whole numbers, got "
                                   f"{' '.join(map(str, ms))}")
            if ms[-1] >= after:
                raise FlaxrayError(f"--milestones: {ms[-1]} is a milestone at or past the last epoch (the schedule "
                                   f"has {after} epochs after {warmup} of warm-up)")
        decay = self.decay
        finite = isinstance(decay, numbers.Real) and not isinstance(decay, bool) and math.isfinite(decay)
        if self.kind == "step" and not (finite and 0 < decay <= 1):
            raise FlaxrayError(f"--decay: must be a finite number in (0, 1] for --schedule step, got {decay!r}")
        if self.kind == "exponential" and not (finite and decay > 0):
            raise FlaxrayError(f"--decay: must be a finite number > 0 for --schedule exponential, got {decay!r}")
        if self.kind in ("constant", "cosine") and decay != Schedule.decay:
            raise FlaxrayError(f"--decay: only for --schedule step or exponential, not {self.kind}")

    def is_default(self) -> bool:
        """Constant with no warm-up: a factor of exactly 1 that the trainer need not multiply by."""
        return self.kind == "constant" and self.warmup_epochs == 0

    def record(self) -> dict:
        """JSON-able, for a run's record."""
        return {"kind": self.kind, "milestones": list(self.milestones), "decay": self.decay,
                "warmup_epochs": self.warmup_epochs}


ScheduleLike = Union[Schedule, Callable[[Any], Any]]


def check(schedule: ScheduleLike, epochs: int) -> None:
    """`Schedule.check`; a callable is the user's own and is taken as it is."""
    if isinstance(schedule, Schedule):
        schedule.check(epochs)
    elif not callable(schedule):
        raise FlaxrayError(f"--schedule: a Schedule or a callable step -> multiplier, got {schedule!r}")


def is_default(schedule: ScheduleLike) -> bool:
    return isinstance(schedule, Schedule) and schedule.is_default()


def record(schedule: ScheduleLike) -> dict:
    if isinstance(schedule, Schedule):
        return schedule.record()
    return {"kind": "callable", "repr": repr(schedule)}


def factor(schedule: ScheduleLike, step, steps_per_epoch: int, epochs: int):
    """The float32 multiplier of the peak rate for the update made at global optimizer step `step` (0-based,
    an int32 array, traced); `steps_per_epoch` and `epochs` are static."""
    if not isinstance(schedule, Schedule):
        return jnp.asarray(schedule(step), F32)
    if schedule.is_default():
        return jnp.ones([], F32)
    step = jnp.asarray(step, jnp.int32)
    warmup = schedule.warmup_epochs * steps_per_epoch
    after = jnp.maximum(step - warmup, 0)  # the schedule's own step (0 throughout the warm-up)
    epoch = after // steps_per_epoch
    if schedule.kind == "constant":
        rate = jnp.ones([], F32)
    elif schedule.kind == "step":
        with jax.ensure_compile_time_eval():  # constants, not ops of the caller's program
            table = jnp.stack([F32(schedule.decay) ** k for k in range(len(schedule.milestones) + 1)])
        passed = sum((epoch >= m).astype(jnp.int32) for m in schedule.milestones)
        rate = table[passed]
    elif schedule.kind == "exponential":
        rate = jnp.power(F32(schedule.decay), epoch.astype(F32))
    else:  # cosine: Keras's `_decay_function`, alpha 0 (its (1 - alpha) * c + alpha and 1.0 * c are c exactly)
        decay_steps = F32((epochs - schedule.warmup_epochs) * steps_per_epoch)
        fraction = jnp.minimum(after.astype(F32), decay_steps) / decay_steps
        rate = 0.5 * (1.0 + jnp.cos(F32(math.pi) * fraction))
    if warmup == 0:
        return rate
    return jnp.where(step < warmup, step.astype(F32) / F32(warmup), rate)


def rate_per_epoch(schedule: ScheduleLike, lr: float, steps_per_epoch: int, epochs: int) -> list[float]:
    """Each epoch's rate at its last step, as the program computes it (float32 `lr` times the factor),
    written as the shortest decimal that reads back as that float32 (curves.csv's `lr` column)."""
    last = jnp.arange(1, epochs + 1, dtype=jnp.int32) * steps_per_epoch - 1
    rates = jax.device_get(F32(lr) * factor(schedule, last, steps_per_epoch, epochs))
    return [float(str(r)) for r in rates.astype("float32")]
