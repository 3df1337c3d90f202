"""The plan of a run: how many seeds train at once, in which strategy, by which memory figure; one record.

    plan = make_plan(config, data, lanes, jax.devices(), "auto")   # lanes: every seed's Settings, stacked
    plan.seeds_per_chunk, plan.strategy           # what `train_seeds` runs
    plan.record()                                 # what a checkpointed run keeps in chunks.json

Memory first: the hand estimate (`scale.bytes_per_seed`, vmap's, the most any strategy keeps at once)
when the seeds take less than half the free memory by it; else XLA's own figure for the compiled
program, so a plan near the memory is the compiler's, not a guess. Then the strategy: as asked, or
auto's probe (`flaxray.runtime.probe`: the epoch each candidate would take on this device), remembered
per machine in the cache folder (`strategies.json`) with its evidence and, once a run measured it, the
epoch the chosen program took. Near the memory, a chunk trained in map or groups is re-planned by that
program's own figure, since they keep one seed's or group's activations at a time. A resumed run keeps
its recorded plan, so it finds its chunks' checkpoints again and continues in the same program.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import jax
import numpy as np

from flaxray import results
from flaxray.core import strategy as strategies
from flaxray.core.config import DeviceData, TrainConfig, train_count
from flaxray.core.settings import Settings
from flaxray.errors import FlaxrayError
from flaxray.models import conv
from flaxray.runtime import hosts, probe, programs, scale

PLAN = "chunks.json"  # a checkpointed run's plan


@dataclasses.dataclass(frozen=True)
class Plan:
    seeds_per_chunk: int
    strategy: str | int
    strategy_source: str  # asked, probed, probed here before, one seed per device, recorded
    evidence: dict | None = None  # auto's: each candidate's predicted epoch, the noise, ... (`probe.Choice`)
    bytes_per_seed: int = 0
    memory_source: str = "estimated"  # or "compiled", "compiled for map", ...
    free: int = 0  # bytes free per device when planned
    key: str | None = None  # the machine cache's key of auto's choice

    def record(self) -> dict:
        """What chunks.json keeps: enough to resume in the same chunks and program, and auto's evidence."""
        return {"seeds_per_chunk": self.seeds_per_chunk, "strategy": self.strategy,
                "strategy_source": self.strategy_source, **({"evidence": self.evidence} if self.evidence else {})}

    def describe(self, n_lanes: int, n_devices: int) -> str:
        return scale.describe(n_lanes, self.seeds_per_chunk, self.bytes_per_seed, self.free, n_devices,
                              self.memory_source)

    def describe_strategy(self, n_lanes: int, n_devices: int) -> str:
        """The printed line: which strategy, for how many seeds per device, and why."""
        per_device = -(-min(self.seeds_per_chunk, n_lanes) // n_devices)
        line = f"strategy {strategies.name(self.strategy)} for {per_device} seeds per device ({self.strategy_source}"
        predicted = (self.evidence or {}).get("predicted_epoch_s")
        if not predicted:
            return line + ")"
        own = predicted[str(self.strategy)]
        others = ", ".join(f"{k} {v / own:.2f}x" for k, v in predicted.items() if k != str(self.strategy))
        tied = [k for k in self.evidence["within_noise"] if k != str(self.strategy)]
        tie = (f"{self.evidence['tie']:.0%} of the fastest (the noise, at most {probe.TIE_CAP:.0%})"
               if "tie" in self.evidence else f"the noise ({self.evidence['noise']:.0%}) of the fastest")  # an older record
        why = (f"; {', '.join(tied)} within {tie}, and "
               f"{strategies.name(self.strategy)} preferred" if tied else "")
        lengths = sorted({int(n) for by in (self.evidence.get("seconds") or {}).values() for n in by})
        calls = f" from calls of {' and '.join(map(str, lengths))} steps" if lengths else ""  # an older record: none
        how = f"timed whole at {own:.3g} s" if len(lengths) == 1 else f"predicted at {own:.3g} s{calls}"
        return line + f": an epoch {how}, the others at {others} that{why})"


def recorded(checkpoint_dir, n_lanes: int) -> Plan | None:
    """The plan the run in `checkpoint_dir` was started with; None for a fresh run."""
    if checkpoint_dir is None:
        return None
    path = Path(checkpoint_dir) / PLAN
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return Plan(int(saved["seeds_per_chunk"]), strategies.parse(saved["strategy"]), "recorded")


def memory(config: TrainConfig, data: DeviceData, fields, n_lanes: int, free: int, n_devices: int,
           strategy=strategies.VMAP) -> tuple[int, int, str]:
    """(seeds per chunk, bytes per seed, where the figure is from), by the estimate or, near the memory,
    by the compiled program in `strategy` (loop is planned as vmap; the estimate where the backend gives
    no figure)."""
    per_seed = scale.bytes_per_seed(config, data.x_train.shape[1:])
    seeds_per_device = -(-n_lanes // n_devices)
    measured = strategies.VMAP if strategy == strategies.LOOP else strategy
    if (seeds_per_device * per_seed <= free // 2
            or (figure := programs.compiled_bytes_per_seed(config, data, fields, measured)) is None):
        return scale.plan_chunk(n_lanes, per_seed, free, n_devices), per_seed, "estimated"
    per_seed, fixed = figure
    source = "compiled" if measured == strategies.VMAP else f"compiled for {strategies.name(measured)}"
    return scale.plan_chunk(n_lanes, per_seed, max(0, free - fixed), n_devices), per_seed, source


def cap(planned: int, most: int | None, n_devices: int) -> int:
    """The seeds per chunk: `planned`, capped by `most` rounded up to the devices."""
    return planned if most is None else min(planned, -(-most // n_devices) * n_devices)


def fields_of(lanes: Settings) -> tuple[str, ...]:
    """The settings in the program: the fields of `lanes` that are not None."""
    return tuple(f for f in Settings._fields if getattr(lanes, f) is not None)


def make_plan(config: TrainConfig, data: DeviceData, lanes: Settings, devices, asked, *,
              most: int | None = None, cache_dir=None) -> Plan:
    """The plan for training every lane of `lanes` (each seed's settings, stacked) over `devices`: the
    chunk size (at most `most` seeds at once) and the strategy (`asked`: "auto", "vmap", "map", "loop"
    or K). Process 0's plan holds on every process."""
    fields, n_lanes = fields_of(lanes), len(lanes.lr)
    local = [d for d in devices if d.process_index == jax.process_index()] or jax.local_devices()
    free = scale.free_memory(local[0])
    planned, per_seed, source = memory(config, data, fields, n_lanes, free, len(devices))
    size = hosts.agree(cap(planned, most, len(devices)))
    chosen = choose_strategy(config, data, lanes, asked, min(size, n_lanes), devices, cache_dir=cache_dir)
    if source == "compiled" and chosen["strategy"] not in (strategies.VMAP, strategies.LOOP):
        # Planned near the memory by vmap's figure, the most a strategy keeps at once: the chosen one's own.
        planned, per_seed, source = memory(config, data, fields, n_lanes, free, len(devices), chosen["strategy"])
        size = hosts.agree(cap(planned, most, len(devices)))
    whole = strategies.multiple(chosen["strategy"]) * len(devices)
    if whole <= size < n_lanes:  # chunks fill the memory: a padded group would overfill it
        size -= size % whole
    return Plan(size, chosen["strategy"], chosen["source"], chosen.get("evidence"), per_seed, source, free,
                chosen.get("key"))


def probe_key(config: TrainConfig, data, fields, per_device: int, devices) -> str:
    """What the fastest strategy depends on: the program, the shapes, the seeds per device and the machine."""
    record = {k: v for k, v in config.record().items() if k not in ("epochs", "vary", "shared_seed")}
    return json.dumps({**record, "settings": list(fields), "input": list(data.x_train.shape[1:]),
                       "per_device": per_device, "devices": len(devices), "device_kind": devices[0].device_kind,
                       "backend": jax.default_backend(), "cpu": results.cpu_model(), "jax": jax.__version__,
                       "xla_flags": os.environ.get("XLA_FLAGS", ""), "layers": conv.form(),
                       "rule": probe.RULE}, sort_keys=True)


def probe_data(config: TrainConfig, data: DeviceData, steps: int) -> DeviceData:
    """A short epoch: `steps` training batches, and the whole validation split, which every epoch evaluates."""
    n = steps * config.batch_size
    if data.resample is not None:  # the pool stays whole (the lanes index into it); each lane trains its first n
        return data._replace(resample=dataclasses.replace(data.resample, epoch_images=n))
    return data._replace(x_train=data.x_train[:n], y_train=data.y_train[:n])


def contradicted(known: dict) -> bool:
    """Whether a cached choice's measured epoch was slower than another candidate's prediction by more than
    the noise: it is probed again, not reused forever."""
    evidence = known.get("evidence") or {}
    measured, predicted = evidence.get("measured_epoch_s"), evidence.get("predicted_epoch_s") or {}
    others = [v for k, v in predicted.items() if k != str(known["strategy"])]
    return bool(measured and others and measured > min(others) * (1 + evidence.get("noise", probe.NOISE_FLOOR)))


def choose_strategy(config: TrainConfig, data, lanes: Settings, asked, count: int, devices, *, cache_dir=None,
                    fresh=False) -> dict:
    """The strategy for `count` seeds (with settings like `lanes`) over `devices`: {"strategy", "source",
    "evidence"?, "key"?}. `asked` is kept unless auto; auto probes each candidate on this device
    (`flaxray.runtime.probe`: the epoch each would take) and remembers the choice for this machine, so a
    run again here takes the same program without probing, unless what it measured then contradicts the
    choice (`fresh`: probe anyway, remember nothing)."""
    fields, per_device = fields_of(lanes), -(-count // len(devices))
    if asked != strategies.AUTO:
        return {"strategy": strategies.canonical(asked, per_device), "source": "asked"}
    if per_device == 1:
        return {"strategy": strategies.VMAP, "source": "one seed per device"}
    key = probe_key(config, data, fields, per_device, devices)
    known = cached_choice(key, cache_dir) if hosts.is_primary() and not fresh else None
    if known is not None and contradicted(known):
        known = None
    if hosts.agree(known is not None):
        code = hosts.agree(strategies.encode(strategies.parse(known["strategy"])) if known else 0)
        return {"strategy": strategies.decode(code), "evidence": (known or {}).get("evidence"), "key": key,
                "source": "probed here before"}
    mesh, cands = scale.seed_mesh(devices), strategies.candidates(per_device, len(devices))
    full, steps = scale.replicate(mesh, data), train_count(data) // config.batch_size
    short = {n: scale.replicate(mesh, probe_data(config, data, n)) for n in probe.lengths(steps)}
    # Every candidate runs on one chain of states, donated from call to call, of the largest count that
    # every candidate's groups divide and the chunk holds: the probe needs no more memory than the run
    # it is for (a chunk is planned to fill the device), and the candidates are timed on the same seeds.
    m = max(strategies.multiple(c) for c in cands)
    count = len(devices) * (per_device // m) * m
    chain = [programs.initial_states(config, full, list(range(count)),
                                     jax.tree.map(lambda a: np.resize(a, count), lanes), mesh)]

    def step(program, probe_data):
        chain[0] = program(chain[0], probe_data)[0]
        return chain[0]

    # Short epochs no run uses again: programs of their own, whose executables go once the probe is done
    # (kept, hundreds of them pile up in a long process: XLA:CPU maps each into memory). A whole epoch is
    # timed in the program the study runs.
    whole = list(short) == [steps]
    calls = {c: {n: functools.partial(step, programs.epoch(config, c, mesh, cached=whole), d)
                 for n, d in short.items()} for c in cands}
    choice = probe.probe(calls, steps=steps, epochs=config.epochs, block=jax.block_until_ready)
    best = strategies.decode(hosts.agree(strategies.encode(choice.best)))
    chosen = {"strategy": best, "evidence": choice.record()}
    if hosts.is_primary() and not fresh:
        remember(key, chosen, cache_dir)
    return {**chosen, "key": key, "source": "probed"}


def measured(plan: Plan, epoch_s: float | None, checkpoint_dir=None, cache_dir=None) -> Plan:
    """`plan` with auto's evidence completed by the epoch the chosen program took here (`epoch_s`, an
    epoch after the first, which compiles): kept in chunks.json and in the machine's cache, where it
    makes a later run probe again if it contradicts the choice."""
    if not plan.evidence or epoch_s is None:
        return plan
    plan = dataclasses.replace(plan, evidence={**plan.evidence, "measured_epoch_s": round(epoch_s, 6)})
    if checkpoint_dir is not None:
        results.write_json(Path(checkpoint_dir) / PLAN, plan.record())
    if plan.key is not None and hosts.is_primary():
        remember(plan.key, {"strategy": plan.strategy, "evidence": plan.evidence}, cache_dir)
    return plan


def cache_file(cache_dir=None) -> Path:
    return results.cache_root(cache_dir) / "strategies.json"


def cached_choice(key: str, cache_dir=None) -> dict | None:
    """The probe's result for `key` made earlier on this machine, or None."""
    return results.read_json(cache_file(cache_dir)).get(key)


def remember(key: str, choice: dict, cache_dir=None) -> None:
    """Add `choice` under `key` to the machine's cache, atomically (best effort: a read-only home only
    costs a probe)."""
    path = cache_file(cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        results.write_json(path, {**results.read_json(path), key: choice})
    except OSError:
        pass


def check_most(most: int | None) -> None:
    if most is not None and most < 1:
        raise FlaxrayError(f"--chunk must be >= 1, got {most}")
