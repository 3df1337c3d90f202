"""Per-lane settings: what may differ between the lanes of one compiled program, as one pytree.

    grid = normalize({"lr": (1e-3, 3e-4), "dropout": (0.2, 0.5)})   # what a study crosses with its seeds
    lanes = cross(grid)                   # [Settings(lr=0.001, dropout=0.2, weight_decay=None), ...]
    stacked = stack(lanes)                # Settings of float32 arrays with a leading lane axis

A `Settings` rides in every seed's state (`SeedState.settings`), so one program trains each lane
with its own values, and `jax.vmap` crosses them with the seeds like any other leaf. A field that is
None is not in the program at all (`dropout` None: each layer keeps its own rate; `weight_decay`
None: plain Adam): a grid whose every value of a field is that field's `off` leaves it out, so a
study that does not use a setting runs the program of before the setting existed, to the same bits.

A new per-lane setting is one field here (its name, default, label, words, off value and check)
and the code in `flaxray.core.train` that reads `state.settings.<name>`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from flaxray.errors import FlaxrayError


class Settings(NamedTuple):
    """One lane's settings (floats), or every lane's (arrays with a leading lane axis); None: not in the program."""

    lr: Any = 1e-3  # the learning rate
    dropout: Any = None  # replaces every Dropout layer's rate (None: the arch's own)
    weight_decay: Any = None  # Keras's decoupled weight decay (AdamW)
    momentum: Any = None  # SGD's and RMSprop's momentum (None: the optimizer's Keras default)
    patience: Any = None  # early stopping's patience in epochs (inf: "none", no early stopping in this lane)


def check_rate(value, flag: str, *, low: float = 0.0, high: float | None = None, low_ok: bool = True) -> None:
    """One-line error naming `flag` unless `value` is a finite real in [low, high) (or (low, ...))."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)  # numpy too
    ok = ok and (value >= low if low_ok else value > low) and (high is None or value < high)
    if not ok:
        where = ("[" if low_ok else "(") + f"{low:g}, " + ("inf)" if high is None else f"{high:g})")
        raise FlaxrayError(f"{flag} must be a finite number in {where}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Field:
    flag: str  # the command line's flag (its values: several are crossed with the seeds)
    label: str  # in group names: NAME@label=value
    words: str  # in reports: "the learning rate"
    off: Any  # the value that leaves it out of the program; `ALWAYS`: always in it
    check: Callable[[Any], None]
    help: str  # the flag's --help
    parse: Callable[[str], Any] = float  # a command-line value
    text: Callable[[Any], str] | None = None  # a value in group names (default: `label`)


ALWAYS = object()
CROSSED = " Several values are crossed with the seeds (and the other settings) in one vmapped program, groups NAME@{label}=VALUE."
FIELDS = {
    "lr": Field("--lr", "lr", "the learning rate", ALWAYS, lambda v: check_rate(v, "--lr", low_ok=False),
                "the learning rate of --optimizer (its peak under a --schedule); default 1e-3 for every optimizer, "
                "where Keras's own defaults differ (SGD 0.01)."),
    "dropout": Field("--dropout", "dropout", "dropout", None, lambda v: check_rate(v, "--dropout", high=1.0),
                     "replace the rate of every Dropout layer (and dense block) of each arch, 0 <= RATE < 1 (default: "
                     "each layer's own rate); with several, the variance of final val loss is split into the "
                     "setting's share and the seeds' share."),
    "weight_decay": Field("--weight-decay", "wd", "weight decay", 0.0, lambda v: check_rate(v, "--weight-decay"),
                          "decoupled weight decay as Keras's AdamW applies it (every weight -= weight * WD * lr "
                          "before each Adam step; default 0: plain Adam)."),
    "momentum": Field("--momentum", "momentum", "momentum", None, lambda v: check_rate(v, "--momentum", high=1.0),
                      "momentum of --optimizer sgd or rmsprop, 0 <= M < 1 (default: Keras's, 0)."),
    "patience": Field("--early-stopping", "es", "early stopping", None, lambda v: check_patience(v),
                      "stop each seed on its own once --monitor has not improved by --min-delta for PATIENCE epochs "
                      "(Keras's EarlyStopping; the seed is then frozen and its curves end there); 'none' trains "
                      "without, so '--early-stopping none 3' asks whether early stopping changes the ranking, on "
                      "the same seeds (default: none).",
                      parse=lambda text: math.inf if text == "none" else float(text),
                      text=lambda v: "none" if v == math.inf else f"{int(v)}"),
}
assert tuple(FIELDS) == Settings._fields


def check_patience(value) -> None:
    """A patience is a whole number of epochs >= 0, or inf ("none")."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value >= 0
    if not ok or (value != math.inf and value != int(value)):
        raise FlaxrayError(f"--early-stopping takes whole numbers of epochs >= 0 or 'none', got {value!r}")


def normalize(grid: Mapping[str, Sequence] | None = None) -> dict[str, tuple]:
    """`grid` ({field: values}) checked, every field given (the default where missing), in field order;
    one-line errors for an unknown field, no value, a value twice or a bad value."""
    grid = dict(grid or {})
    if unknown := set(grid) - set(FIELDS):
        raise FlaxrayError(f"unknown setting(s) {sorted(unknown)}; the settings are {', '.join(FIELDS)}")
    out = {}
    for name, field in FIELDS.items():
        default = getattr(Settings(), name)
        values = grid.get(name, (field.off if field.off is not ALWAYS else default,))
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        values = tuple(field.parse(v) if isinstance(v, str) else v for v in values)  # a record's "none"
        if not values or len(set(values)) < len(values):
            raise FlaxrayError(f"{field.flag} lists a value twice (or none): {' '.join(map(str, values))}")
        for v in values:
            if v is not None or field.off is not None:
                field.check(v)
        if None in values and len(values) > 1:
            raise FlaxrayError(f"{field.flag}: a value or none, not both")
        out[name] = tuple(v if v is None else float(v) for v in values)
    return out


def present(grid: Mapping[str, tuple]) -> tuple[str, ...]:
    """The fields in the program: those always in it, and those some lane sets to other than `off`."""
    return tuple(n for n, f in FIELDS.items() if f.off is ALWAYS or any(v != f.off for v in grid[n]))


def cross(grid: Mapping[str, tuple]) -> list[Settings]:
    """Every combination of a normalized grid, the first field outermost (the order lanes train in);
    fields not in the program are None."""
    fields = present(grid)
    return [Settings(**{n: v for n, v in zip(FIELDS, values) if n in fields})
            for values in itertools.product(*(grid[n] for n in FIELDS))]


def varying(grid: Mapping[str, tuple]) -> tuple[str, ...]:
    """The fields that take several values."""
    return tuple(n for n in FIELDS if len(grid[n]) > 1)


def label(value) -> str:
    """Shortest text that reads back as `value`: 3e-4, 0.01, 1e+30, 0."""
    value = float(value)
    if value == 0 or 1e-2 <= value < 1e4:
        return np.format_float_positional(value, trim="-")
    return np.format_float_scientific(value, trim="-", exp_digits=1)


def group_name(name: str, settings: Settings, fields: Sequence[str]) -> str:
    """`NAME`, or `NAME@` and the values of `fields` (those that vary): `pyramid@lr=3e-4,wd=1e-4`."""
    if not fields:
        return name
    return f"{name}@" + ",".join(f"{FIELDS[f].label}={(FIELDS[f].text or label)(getattr(settings, f))}" for f in fields)


def record(grid: Mapping[str, tuple]) -> dict[str, list]:
    """The grid as JSON, every field at its `off` left out, so that a setting added later changes no record."""
    return {n: ["none" if v == math.inf else v for v in grid[n]] for n, f in FIELDS.items()
            if f.off is ALWAYS or grid[n] != (f.off,)}  # JSON has no inf


def stack(lanes: Sequence[Settings]) -> Settings:
    """Every lane's settings as float32 arrays with a leading lane axis (None where not in the program)."""
    return Settings(*(None if lanes[0][i] is None else np.asarray([lane[i] for lane in lanes], np.float32)
                      for i in range(len(FIELDS))))


def check_lanes(lanes: Sequence[Settings]) -> None:
    """One-line errors unless every lane sets the same fields (one program) to valid values."""
    shapes = {tuple(v is None for v in lane) for lane in lanes}
    if len(shapes) > 1:
        raise FlaxrayError("every lane must set the same settings (one program): a field is None in some lanes only")
    for lane in lanes:
        for name, value in lane._asdict().items():
            if value is not None:
                FIELDS[name].check(value)
