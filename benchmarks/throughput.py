"""Seed-epochs per second of flaxray's trainer in each seed-parallel strategy, the same step seed after seed, and Keras.

    python -m benchmarks.throughput --arch pyramid --max-seeds 16
    python -m benchmarks.throughput --arch pyramid final --data ../shared/data/chest_xray --image-size 180 \\
           --max-seeds 64 --out runs/throughput-h100

For S = 1, 2, 4, ... up to --max-seeds, one process measures, one method after another:

    auto        `flaxray.runtime.runner.train_seeds` in the strategy its probe chooses here, probed once per S
                as a study of --probe-epochs epochs would (not cached), then timed as the others are (the probe's
                time counts as compilation; the row says which it took and how long the probe was)
    vmap        `train_seeds` with every seed batched into one jitted program per epoch
    map         `train_seeds` with the seeds one after another inside one jitted program (`lax.map`)
    K           (an integer, e.g. 4) `train_seeds` with groups of K seeds batched, the groups mapped
    loop        (asked for by name) `train_seeds` calling the single-seed program seed after seed
    sequential  the same jitted single-seed `run_epoch`, seed after seed (JAX without vmap)
    keras       Keras 3 `model.fit`, seed after seed, the same dense stack, data and batch size (what the
                notes' author does); needs `pip install -e ".[baseline]"`, skipped with a message otherwise
    keras-vmap  `train_seeds` in vmap of the arch's Keras counterpart, a user's Keras model as flaxray trains
                it (`--arch FILE.py:NAME`): for pyramid the notes' model in examples/keras_xray.py, for
                another dense stack (final, a spec string) the `keras` method's own Sequential compiled as
                it compiles it; convolutional archs skip it with a note, as does a machine without Keras

Throughput excludes compilation: each method first runs one epoch (compile and run), then
--epochs timed ones (the methods that call `train_seeds`: a run of 1 + --epochs epochs, whose fastest
epoch after the first, the program alone as the runner times it, counts --epochs times; a run's one-off
costs, such as its states gathered to the host at the end, are in `run_s`, not in the rate);
`compile_s` is the first epoch's time less a timed epoch's, summed over the seeds for the methods that
compile once per seed (Keras builds a model per seed). The methods that
call `train_seeds` also leave out the seeds' initial states, a one-off per run recorded as `init_s`
(flaxray's own models: one jitted init; keras-vmap: a Keras build a seed on the host). Prints a table,
writes throughput.json (rows, device, versions, config, peak figures) and throughput.png into --out.

Each row also says what fraction of the device's peak FLOP/s and memory bandwidth it reached
(`benchmarks.roofline`).

`--verify-rounds R` judges auto's choice apart from the rows' noise: at each S > 1, every candidate auto
chose from is timed at a whole epoch, in the program the study runs, the candidates taking turns epoch
by epoch for R rounds (the probe's own machinery, made a measurement: no extrapolation from short
calls, no early stop); auto's row keeps each candidate's epochs (`whole_epoch_rounds`) and fastest
epoch (`whole_epoch_s`), and the table gives the fastest over the one auto took ("auto / best, whole
epochs") and, round by round, the smallest over candidates of the median of their epoch over auto's
("auto / best, round by round", `timing.paired_share`). A slow spell of a shared machine then falls on
every candidate within seconds of each other, not on whichever method's turn it was; the round-by-round
ratio also cancels a drift across minutes that the fastest epochs, each from its own round, keep.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks import roofline
from benchmarks.keras_baseline import keras_model, keras_status, measure_keras
from benchmarks.throughput_table import SERIAL, format_row, format_table
from benchmarks.timing import measure_sequential, measure_strategy, paired_share, probe_auto, whole_epoch_rounds
from flaxray.errors import FlaxrayError
from studies import _cli, _flags

METHODS = ("auto", "vmap", "map", "sequential", "keras", "keras-vmap")  # and loop, and any group size K
# The Keras counterparts of flaxray's named archs for keras-vmap (dense spec strings: keras_counterpart)
KERAS_EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "keras_xray.py"
KERAS_ARCHS = {"pyramid": "pyramid"}  # flaxray's arch -> the builder of that name in KERAS_EXAMPLES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="Seed-epochs per second of flaxray's vmapped trainer against the same jitted step run seed "
        "after seed and Keras's model.fit, for S = 1, 2, 4, ... seeds; throughput.json, throughput.png and a table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", nargs="+", default=["pyramid"], metavar="NAME",
                   help="architectures (names or spec strings as in the studies); keras builds dense stacks only")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size per seed")
    p.add_argument("--max-seeds", type=int, default=16, help="S runs over 1, 2, 4, ... up to this")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, from {', '.join(METHODS)} and group sizes K (e.g. 4)")
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per measurement (after one untimed)")
    p.add_argument("--probe-epochs", type=int, default=20, metavar="N",
                   help="auto probes as a study of N epochs of this length would (its timing budget is a tenth of "
                        "their predicted time, 10-60 s; 20: the README's study)")
    p.add_argument("--verify-rounds", type=int, default=0, metavar="R",
                   help="at each S > 1, time every candidate of auto's at a whole epoch, taking turns epoch by epoch "
                        "for R rounds, and give auto's choice over the fastest (0: off)")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure each (method, S) this many times, the methods taking turns, and keep the fastest")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per epoch (the training split is cut to STEPS x batch size images); default: all")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype (flaxray)")
    p.add_argument("--vary", default="init,dropout,order", help="sources of randomness that differ between seeds")
    p.add_argument("--keras-backend", default=os.environ.get("KERAS_BACKEND", "jax"),
                   help="Keras 3 backend (jax needs nothing more; tensorflow needs TensorFlow installed)")
    p.add_argument("--budget-s", type=float, default=None, metavar="SECONDS",
                   help="do not start an S (of an arch) that, scaled from the last S's time by the seeds, would end "
                        "more than this many seconds after the start; the table says where it stopped")
    p.add_argument("--serial-max-seeds", type=int, default=None, metavar="S",
                   help="measure sequential and keras, which train seed after seed (so their rate does not depend on "
                        "S), at S <= this only; the table's ratios at larger S divide by their rate at the largest S "
                        "measured, marked *. Default: every S (Keras builds and compiles a model per seed)")
    p.add_argument("--keras-vmap-max-seeds", type=int, default=None, metavar="S",
                   help="measure keras-vmap at S <= this only (each of its runs builds every seed's Keras model on "
                        "the host first, a one-off kept out of its rate but not out of the wall clock). Default: every S")
    p.add_argument("--out", default="runs/throughput", metavar="DIR", help="folder for throughput.json and .png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _flags.add_data_args(p)
    return p


def seed_counts(max_seeds: int) -> list[int]:
    """1, 2, 4, ... up to `max_seeds`, which is included even when it is not a power of two."""
    counts = [2**k for k in range(int(math.log2(max_seeds)) + 1)]
    return counts + ([max_seeds] if counts[-1] != max_seeds else [])


def training_data(args, batch_size: int):
    """The data the flags describe, with the training split cut to --steps x batch size images."""
    dataset = _cli.data_spec(args).load(cache_dir=args.cache_dir, progress=not args.no_progress)
    if args.steps is not None:
        if args.steps < 1:
            raise FlaxrayError(f"--steps must be >= 1, got {args.steps}")
        n = args.steps * batch_size
        if n > len(dataset.train.y):
            raise FlaxrayError(f"--steps {args.steps} x batch {batch_size} is more than the {len(dataset.train.y)} "
                               "training images")
        dataset = SimpleNamespace(train=SimpleNamespace(x=dataset.train.x[:n], y=dataset.train.y[:n]),
                                  val=dataset.val, test=dataset.test, summary=dataset.summary,
                                  class_names=dataset.class_names)
    return dataset


def keras_counterpart(arch: str) -> tuple[str | None, str]:
    """(the arch keras-vmap trains for flaxray's `arch`, or None; why, for the note): a `FILE.py:NAME` route
    to examples/keras_xray.py for KERAS_ARCHS, else for a dense stack the `keras` method's own model
    (`keras_baseline.keras_model`, compiled as `measure_keras` compiles it, metrics aside) registered as
    `keras-ARCH`; None for anything else."""
    import re

    from flaxray.models import parse_arch, registry

    if arch in KERAS_ARCHS:
        here = Path.cwd().resolve()  # the route is the arch's name in the rows: relative where it can be
        file = KERAS_EXAMPLES.relative_to(here) if KERAS_EXAMPLES.is_relative_to(here) else KERAS_EXAMPLES
        return f"{file}:{KERAS_ARCHS[arch]}", f"the notes' model in {KERAS_EXAMPLES.name}"
    try:
        dense = all(layer.kind == "dense" for layer in parse_arch(arch))
    except FlaxrayError:
        dense = False
    if not dense:
        return None, (f"keras-vmap: no Keras counterpart of {arch} (pyramid is {KERAS_EXAMPLES.name}'s, a dense stack "
                      "the keras method's model); skipped")

    def builder(input_shape=(28, 28, 3)):
        import keras

        from flaxray.core.settings import Settings

        model = keras_model(arch, input_shape)
        model.compile(optimizer=keras.optimizers.Adam(Settings().lr), loss="binary_crossentropy")
        return model

    name = "keras-" + re.sub(r"[^A-Za-z0-9_.-]", "_", arch)
    builder.__name__ = name
    registry.register(name, builder)  # a Keras builder (no `rngs`): trained as a user's Keras model
    return name, "the keras method's Sequential"


def run(args) -> Path:
    import jax

    from flaxray import results
    from flaxray.report import estimate_plots, plots
    from flaxray.core.config import TrainConfig, device_data
    from flaxray.core.settings import Settings
    from flaxray.study.study import describe_data

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := {m for m in methods if m not in (*METHODS, "loop") and not (m.isdigit() and int(m) > 0)}:
        raise FlaxrayError(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)} or a group size K")
    if args.verify_rounds < 0:
        raise FlaxrayError(f"--verify-rounds must be >= 0, got {args.verify_rounds}")
    if min(args.max_seeds, args.epochs, args.repeats, args.probe_epochs) < 1:
        raise FlaxrayError(f"--max-seeds, --epochs, --repeats and --probe-epochs must be >= 1, got {args.max_seeds}, "
                           f"{args.epochs}, {args.repeats} and {args.probe_epochs}")
    for flag in ("serial_max_seeds", "keras_vmap_max_seeds"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise FlaxrayError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.budget_s is not None and not args.budget_s > 0:
        raise FlaxrayError(f"--budget-s must be > 0, got {args.budget_s}")
    configs = [TrainConfig(arch=a, epochs=args.epochs, batch_size=args.batch_size, vary=_cli.parse_vary(args.vary),
                           dtype=args.dtype) for a in args.arch]
    skipped = []  # methods not measured for an arch, and why (not a stop: nothing was cut short)
    if "keras" in methods and (why := keras_status(args.keras_backend)):
        print(f"skipping keras: {why}")
        methods.remove("keras")
    if "keras-vmap" in methods and (why := keras_status("jax") or (
            args.dtype != "float32" and f"--dtype {args.dtype}: a Keras model's dtype is its own")):
        skipped.append(f"keras-vmap: skipped, {why}")  # keras-vmap trains Keras on its JAX backend only
        print(skipped[-1])
        methods.remove("keras-vmap")
    dataset = training_data(args, args.batch_size)
    data = device_data(dataset, eval_batch_size=configs[0].eval_batch_size)
    print(describe_data(dataset))
    peaks = roofline.device_peaks(args.dtype)
    steps = len(dataset.train.y) // args.batch_size
    keras_archs = {}  # flaxray's arch -> the Keras arch keras-vmap trains for it
    measure = {"sequential": lambda c, s: measure_sequential(c, data, s, args.epochs),
               "keras": lambda c, s: measure_keras(c, dataset, s, args.epochs),
               "keras-vmap": lambda c, s: measure_strategy(dataclasses.replace(c, arch=keras_archs[c.arch]), data, s,
                                                           args.epochs, "vmap"),
               **{m: (lambda c, s, m=m: measure_strategy(c, data, s, args.epochs, m if not m.isdigit() else int(m)))
                  for m in methods if m not in (*SERIAL, "keras-vmap")}}
    rows, stopped, began, failed = [], [], time.monotonic(), set()
    for k, config in enumerate(configs):
        cost = roofline.step_cost(config, dataset.train.x.shape[1:])
        arch_methods = methods
        if "keras-vmap" in methods:
            keras_arch, why = keras_counterpart(config.arch)
            if keras_arch is None:
                skipped.append(why)
                print(why, flush=True)
                arch_methods = [m for m in methods if m != "keras-vmap"]
            else:
                keras_archs[config.arch] = keras_arch
                print(f"keras-vmap of {config.arch}: {keras_arch} ({why})", flush=True)
        # Each arch gets an equal share of what is left of --budget-s.
        until = began + args.budget_s if args.budget_s else math.inf
        until = time.monotonic() + (until - time.monotonic()) / (len(configs) - k)
        last, spent = None, {}  # the last S, and each method's seconds at it
        for seeds in seed_counts(args.max_seeds):
            now, now_methods = time.monotonic(), [m for m in arch_methods if m not in failed and (
                m not in SERIAL or seeds <= (args.serial_max_seeds or seeds)) and (
                m != "keras-vmap" or seeds <= (args.keras_vmap_max_seeds or seeds))]
            # Each method's last time scaled by the seeds: compilation does not grow with S, so this overestimates.
            if last is not None and now + (need := sum(spent.get(m, 0.0) for m in now_methods) * seeds / last) > until:
                stopped.append(f"{config.arch}: stopped before S={seeds} (about {need:.0f} s needed, "
                               f"{max(0.0, until - now):.0f} s left of --budget-s)")
                print(stopped[-1], flush=True)
                break
            last, spent = seeds, dict.fromkeys(now_methods, 0.0)
            if "auto" in now_methods:  # probed once per S, then measured as the others are, taking turns
                chosen, probe_s, evidence = probe_auto(config, data, seeds, args.probe_epochs)
                spent["auto"] += probe_s
                whole, per_round = {}, {}
                if args.verify_rounds and seeds > 1:
                    began_whole = time.monotonic()
                    per_round = whole_epoch_rounds(config, data, seeds, args.verify_rounds)
                    whole = {c: min(ts) for c, ts in per_round.items()}
                    spent["auto"] += time.monotonic() - began_whole
                    print(f"{config.arch:>10} whole epochs S={seeds:<4} " + ", ".join(
                        f"{c} {t:.3f} s" for c, t in sorted(whole.items(), key=lambda ct: ct[1])) +
                        f" ({args.verify_rounds} rounds, taking turns); auto took {chosen}: "
                        f"{min(whole.values()) / whole[str(chosen)]:.3f}x the fastest, "
                        f"{paired_share(per_round, str(chosen)):.3f}x round by round", flush=True)
                measure["auto"] = lambda c, s, chosen=chosen, probe_s=probe_s, evidence=evidence, whole=whole, \
                    per_round=per_round: {
                    **measure_strategy(c, data, s, args.epochs, chosen), "strategy": chosen, "probe_s": probe_s,
                    "probe": evidence, **({"whole_epoch_s": whole, "whole_epoch_rounds": per_round} if whole else {})}
            # The methods take turns at each S, best of --repeats: load from other jobs on the machine
            # then slows all of them alike instead of whichever happened to run during it.
            best = {}
            for _ in range(args.repeats):
                for method in (m for m in now_methods if m not in failed):
                    began_method = time.monotonic()
                    try:
                        m = measure[method](config, seeds)
                    except Exception as err:  # noqa: BLE001 - the baseline's failure must not lose flaxray's rows
                        if method not in ("keras", "keras-vmap"):
                            raise
                        failed.add(method)  # e.g. a Keras built for another jax: no more of its rows
                        stopped.append(f"{method} failed at {config.arch} S={seeds}: {type(err).__name__}: {err}")
                        print(stopped[-1], flush=True)
                        continue
                    spent[method] += time.monotonic() - began_method
                    if method not in best or m["seconds"] < best[method]["seconds"]:
                        best[method] = {**m, "compile_s": best.get(method, m)["compile_s"]}  # the first run's
            if "auto" in best:  # the probe's time counts as the study's compilation
                best["auto"]["compile_s"] += best["auto"]["probe_s"]
            for method in (m for m in now_methods if m in best):
                m = best[method]
                rate = seeds * args.epochs / m["seconds"]
                rows.append({"arch": config.arch, "method": method, "seeds": seeds, "seed_epochs_per_s": rate,
                             **{k: m[k] for k in ("strategy", "probe_s", "probe", "whole_epoch_s", "whole_epoch_rounds",
                                                  "init_s", "run_s") if k in m},
                             **({"keras_arch": keras_archs[config.arch]} if method == "keras-vmap" else {}),
                             "compile_s": m["compile_s"], "seconds": m["seconds"], "epochs": args.epochs,
                             "steps_per_epoch": steps,
                             "flops_fraction": rate * steps * cost["flops"] / peaks["flops"],
                             "bandwidth_fraction": rate * steps * cost["bytes"] / peaks["bytes_per_s"]})
                print(format_row(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = results.environment((*results.PACKAGES, "keras"))
    report = {"command": _cli.command("benchmarks.throughput", args), "rows": rows, "environment": env,
              "device": peaks["device"], "peaks": peaks, "keras_backend": os.environ.get("KERAS_BACKEND"),
              "load_average": os.getloadavg(), "data": dataset.summary, "image_shape": list(dataset.train.x.shape[1:]),
              "step_cost": {c.arch: roofline.step_cost(c, dataset.train.x.shape[1:]) for c in configs},
              # as study.json's configs: the config and the settings its lanes train at (train_seeds' default)
              "config": {c.arch: {**c.record(), "settings": {"lr": Settings().lr}} for c in configs},
              "keras_archs": keras_archs, "args": vars(args), "stopped": stopped, "skipped": skipped}
    results.write_json(out / "throughput.json", report)
    size = "×".join(str(d) for d in dataset.train.x.shape[1:])
    labelled = [{**r, "method": f"{r['method']} · {r['arch']}" if len(configs) > 1 else r["method"]} for r in rows]
    plots.save(estimate_plots.plot_throughput(
        labelled, title=f"{', '.join(args.arch)} · {size} · batch {args.batch_size} · {peaks['device']}"),
        out / "throughput.png")
    print()
    print(format_table(rows))
    for line in stopped + skipped:
        print(line)
    print(f"\npeaks: {peaks['flops'] / 1e12:.3g} TFLOP/s, {peaks['bytes_per_s'] / 1e9:.3g} GB/s ({peaks['source']})")
    print(f"wrote {out / 'throughput.json'}, {out / 'throughput.png'} (devices: {len(jax.devices())})")
    return out


def main(argv=None) -> int:
    return _cli.main(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
