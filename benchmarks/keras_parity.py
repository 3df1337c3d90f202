"""Keras parity of the training recipes, measured: the same arrays into flaxray and Keras 3 `model.fit`.

    KERAS_BACKEND=jax python -m benchmarks.keras_parity --seeds 12 --epochs 4 --json runs/keras_parity.json
    python -m benchmarks.keras_parity --tiny --arch dense:16@0.5 --scenarios step --json /tmp/parity.json

Each scenario trains the notes' dense stack (`--arch`, default `pyramid`) for --seeds seeds with one
recipe twice: flaxray, every seed in one vmapped program (`flaxray.run`), and Keras, seed k after
`keras.utils.set_random_seed(k)`, `fit(shuffle=True)` on the same uint8 images as float32 (the training
split cut to whole batches, as flaxray drops the last partial one). The seeds cannot agree number for
number (other initial draws, orders, masks), so the per-seed final val losses (and, for early stopping,
the stop epochs) are compared as two samples: Mann-Whitney U (two-sided) and two-sample Kolmogorov-Smirnov
p-values. A small p says the two tools do not train to one distribution: a semantic difference to look for.

    adam            control, in neither the default nor issue 28: Keras's Adam at a constant rate
    sgd-cosine      SGD momentum 0.9 (not Nesterov), 1 warm-up epoch, then cosine decay to 0 (Keras's CosineDecay)
    step            Adam, x0.1 after 50 % and 75 % of the epochs (a LearningRateScheduler callback in Keras)
    flip-translate  Adam, RandomFlip("horizontal") and RandomTranslation(0.1, 0.1) before the model's Rescaling
    early-stop      Adam, EarlyStopping(val_loss, patience 2, restore_best_weights=True)

The learning rate is --lr (1e-3), and --sgd-lr (1e-2) for SGD in both tools. The schedules are also
compared step by step, without training: "rate Δ" is the largest |flaxray - Keras| / lr over every
optimizer step, the rate each tool's optimizer is given at that step.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.keras_baseline import keras_model, keras_status
from flaxray.errors import FlaxrayError
from studies import _cli

ALL = ("adam", "sgd-cosine", "step", "flip-translate", "early-stop")
DEFAULT = ALL[1:]  # issue 28's four; `adam` is the control to run where they disagree
MILESTONES, DECAY, PATIENCE, MOMENTUM, AUGMENT = (0.5, 0.75), 0.1, 2, 0.9, "flip,translate=0.1"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.keras_parity",
        description="Do flaxray's recipes (SGD + cosine warm-up, step decay, flip + translate, early stopping) train "
        "to the same distribution of seeds as Keras 3's fit? Mann-Whitney and KS p-values per scenario, a markdown "
        "table and a JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--scenarios", default=",".join(DEFAULT), help=f"comma-separated, from {', '.join(ALL)}")
    p.add_argument("--seeds", type=int, default=12, help="seeds 0..N-1 in each tool")
    p.add_argument("--epochs", type=int, default=4,
                   help="epochs per seed (the step milestones are 50 %% and 75 %%). 4 by default: Keras's augmentation "
                        "layers make its run 8-10x longer on a 2-core CPU, so 4 scenarios x 12 seeds already take "
                        "~50 min there")
    p.add_argument("--arch", default="pyramid", help="a dense stack (name or spec string) Keras can build too")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's rate (both tools)")
    p.add_argument("--sgd-lr", type=float, default=1e-2, help="SGD's peak rate, after the warm-up (both tools)")
    p.add_argument("--tiny", action="store_true",
                   help="a seconds-long check of the plumbing: 2 seeds, 2 epochs, 256 train and 64 val images")
    p.add_argument("--out", default="runs/keras_parity", metavar="DIR", help="flaxray's study folders, one a scenario")
    p.add_argument("--json", default=None, metavar="FILE", help="the results (default: DIR/keras_parity.json)")
    return p


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One recipe, in each tool's own words (`flaxray_study`, `keras_fit`)."""

    name: str
    optimizer: str = "adam"
    schedule: str = "constant"  # constant | cosine (1 warm-up epoch) | step (MILESTONES, DECAY)
    augment: str = ""
    patience: int | None = None  # early stopping on val_loss with restored best weights


SCENARIOS = {s.name: s for s in (Scenario("adam"), Scenario("sgd-cosine", optimizer="sgd", schedule="cosine"),
                                 Scenario("step", schedule="step"), Scenario("flip-translate", augment=AUGMENT),
                                 Scenario("early-stop", patience=PATIENCE))}


def lr_of(sc: Scenario, args) -> float:
    return args.sgd_lr if sc.optimizer == "sgd" else args.lr


def flaxray_schedule(sc: Scenario, epochs: int):
    from flaxray.core.recipe import milestones_at
    from flaxray.core.schedules import Schedule

    if sc.schedule == "cosine":
        return Schedule("cosine", warmup_epochs=1)
    if sc.schedule == "step":
        milestones = milestones_at(MILESTONES, epochs)
        if not milestones:
            raise FlaxrayError(f"--epochs {epochs}: too few for a step milestone at 50 % or 75 %")
        return Schedule("step", milestones=milestones, decay=DECAY)
    return Schedule()


def flaxray_study(sc: Scenario, args, dataset):
    import flaxray
    from flaxray.core.recipe import Recipe

    recipe = Recipe(optimizer=sc.optimizer, schedule=flaxray_schedule(sc, args.epochs), augment=sc.augment,
                    restore_best=sc.patience is not None)
    settings = {"lr": (lr_of(sc, args),)}
    if sc.optimizer == "sgd":
        settings["momentum"] = (MOMENTUM,)
    if sc.patience is not None:
        settings["patience"] = (float(sc.patience),)
    return flaxray.Study(archs=(args.arch,), data=dataset, seeds=tuple(range(args.seeds)), epochs=args.epochs,
                         batch_size=args.batch_size, recipe=recipe, settings=settings, kind="keras_parity")


def run_flaxray(sc: Scenario, args, dataset) -> dict:
    """All seeds in one vmapped program; each seed's val loss of the epoch whose model it ends with."""
    import flaxray

    start = time.perf_counter()
    result = flaxray.run(flaxray_study(sc, args, dataset), Path(args.out) / sc.name, progress=False,
                         overwrite=True, strategy="vmap")
    (group,) = result.groups.values()
    final, curves = group.final_epoch, group.history["val_loss"]
    stopped = group.stopped if group.stopped is not None else np.zeros(len(final), int)
    return {"final_val_loss": [float(curves[s, e - 1]) for s, e in enumerate(final)],
            "stop_epoch": [int(e) if e > 0 else args.epochs for e in stopped],  # as len(history) in Keras
            "stopped": [int(e) for e in stopped],  # 0: not stopped (a stop at the last epoch is one, unlike len(history))
            "best_epoch": [int(e) for e in final], "val_loss": curves.tolist(),
            "seconds": time.perf_counter() - start}


def keras_step_rate(lr: float, epochs: int):
    """The per-epoch function a Keras user gives LearningRateScheduler: epoch (0-based) -> rate."""
    milestones = flaxray_schedule(SCENARIOS["step"], epochs).milestones  # the same epoch counts as flaxray's
    return lambda epoch, _lr=None: lr * DECAY ** sum(epoch >= m for m in milestones)


def keras_fit(sc: Scenario, args, seed: int, data) -> dict:
    import keras

    (x, y), val = data
    steps = len(y) // args.batch_size
    lr = lr_of(sc, args)
    keras.utils.set_random_seed(seed)
    first = [keras.layers.RandomFlip("horizontal"), keras.layers.RandomTranslation(0.1, 0.1)] if sc.augment else []
    model = keras_model(args.arch, x.shape[1:], first=first)
    if sc.optimizer == "sgd":
        schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=(args.epochs - 1) * steps,
                                                           warmup_target=lr, warmup_steps=steps)
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=MOMENTUM)
    else:
        optimizer = keras.optimizers.Adam(lr)
    callbacks = []
    if sc.schedule == "step":
        callbacks.append(keras.callbacks.LearningRateScheduler(keras_step_rate(lr, args.epochs)))
    if sc.patience is not None:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=sc.patience,
                                                       restore_best_weights=True))
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    history = model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0,
                        validation_data=val, callbacks=callbacks).history
    final = model.evaluate(*val, batch_size=args.batch_size, verbose=0, return_dict=True)["loss"]
    curve = history["val_loss"] + [float("nan")] * (args.epochs - len(history["val_loss"]))
    stopping = callbacks[-1] if sc.patience is not None else None
    best = stopping.best_epoch + 1 if stopping else args.epochs
    stopped = stopping.stopped_epoch + 1 if stopping and stopping.stopped_epoch > 0 else 0  # Keras's is 0-based
    return {"final_val_loss": float(final), "stop_epoch": len(history["loss"]), "stopped": stopped,
            "best_epoch": int(best), "val_loss": [float(v) for v in curve]}


def run_keras(sc: Scenario, args, data) -> dict:
    start = time.perf_counter()
    seeds = [keras_fit(sc, args, seed, data) for seed in range(args.seeds)]
    out = {key: [s[key] for s in seeds] for key in seeds[0]}
    return {**out, "seconds": time.perf_counter() - start}


def rate_check(sc: Scenario, args, steps: int) -> dict:
    """The rate of every optimizer step in each tool, no training: flaxray's `lr * factor(step)` in float32,
    Keras's schedule at `optimizer.iterations` (0 at the first update) or its callback's rate, as float32."""
    import keras

    from flaxray.core.schedules import factor

    total, lr = args.epochs * steps, lr_of(sc, args)
    ours = np.float32(lr) * np.asarray(factor(flaxray_schedule(sc, args.epochs), np.arange(total), steps, args.epochs))
    epoch_of = np.arange(total) // steps
    out = {}
    if sc.schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=(args.epochs - 1) * steps,
                                                           warmup_target=lr, warmup_steps=steps)
        theirs = np.array([float(schedule(i)) for i in range(total)], np.float32)
    elif sc.schedule == "step":
        per_epoch = keras_step_rate(lr, args.epochs)
        theirs = np.array([per_epoch(int(e)) for e in epoch_of], np.float32)
        # The other Keras route, PiecewiseConstantDecay on steps with boundaries at m * steps, keeps the old rate
        # for step m * steps too (it takes values[0] while step <= boundary): one step late per milestone.
        milestones = flaxray_schedule(sc, args.epochs).milestones
        piecewise = keras.optimizers.schedules.PiecewiseConstantDecay(
            [m * steps for m in milestones], [lr * DECAY**k for k in range(len(milestones) + 1)])
        naive = np.asarray(piecewise(np.arange(total)), np.float32)
        out["piecewise_steps_differing"] = int(np.sum(~np.isclose(naive, ours, rtol=1e-6)))
    else:
        theirs = np.full(total, lr, np.float32)
    return {"max_rel_diff": float(np.max(np.abs(ours - theirs)) / lr), **out}


def compare(a, b, discrete: bool = False) -> dict:
    """Mann-Whitney U (exact for continuous values; with ties, scipy's normal approximation) and KS p."""
    import scipy.stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    mw = scipy.stats.mannwhitneyu(a, b, alternative="two-sided", method="auto" if discrete else "exact")
    return {"flaxray_mean": float(a.mean()), "flaxray_std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "keras_mean": float(b.mean()), "keras_std": float(b.std(ddof=1)) if b.size > 1 else 0.0,
            "flaxray_range": [float(a.min()), float(a.max())], "keras_range": [float(b.min()), float(b.max())],
            "mannwhitney_p": float(mw.pvalue), "ks_p": float(scipy.stats.ks_2samp(a, b).pvalue)}


def load_data(args):
    """The embedded chest X-rays, the training split cut to whole batches (Keras would train on the rest)."""
    import flaxray

    d = flaxray.data.load_dataset(None, progress=False)
    (xt, yt), (xv, yv) = (d.train.x, d.train.y), (d.val.x, d.val.y)
    if args.tiny:  # a random subset: the splits are sorted by class
        rng = np.random.default_rng(0)
        it, iv = np.sort(rng.permutation(len(yt))[:256]), np.sort(rng.permutation(len(yv))[:64])
        (xt, yt), (xv, yv) = (xt[it], yt[it]), (xv[iv], yv[iv])
    n = len(yt) // args.batch_size * args.batch_size
    dataset = flaxray.data.from_arrays(xt[:n], yt[:n], xv, yv, class_names=d.class_names)
    f32 = lambda split: (split.x.astype(np.float32), split.y.astype(np.float32))  # noqa: E731
    return dataset, (f32(dataset.train), f32(dataset.val))


def cell(c: dict, tool: str, digits: int = 3) -> str:
    return f"{c[tool + '_mean']:.{digits}f} ± {c[tool + '_std']:.{digits}f}"


def format_table(rows: dict) -> str:
    lines = ["| scenario | flaxray final val loss | Keras final val loss | MW p | KS p | stop epoch flaxray | "
             "stop epoch Keras | stop MW p | rate Δ | s flaxray / Keras |", "|" + "---|" * 10]
    for name, r in rows.items():
        c, s = r["val_loss"], r.get("stop")
        stops = ["–"] * 3 if s is None else [
            f"{s[t + '_mean']:.1f} ({s[t + '_range'][0]:.0f}–{s[t + '_range'][1]:.0f}; "
            f"{sum(e > 0 for e in r[t]['stopped'])} stopped)" for t in ("flaxray", "keras")
        ] + [f"{s['mannwhitney_p']:.2g}"]
        lines.append(f"| {name} | {cell(c, 'flaxray')} | {cell(c, 'keras')} | {c['mannwhitney_p']:.2g} | "
                     f"{c['ks_p']:.2g} | {' | '.join(stops)} | {r['rate']['max_rel_diff']:.1g} | "
                     f"{r['flaxray']['seconds']:.0f} / {r['keras']['seconds']:.0f} |")
    return "\n".join(lines)


def commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True).stdout
        return rev.stdout.strip() + ("+dirty" if dirty.strip() else "") if rev.returncode == 0 else None
    except OSError:
        return None


def run(args) -> None:
    from flaxray import results

    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise FlaxrayError(f"--scenarios: unknown {unknown or 'none given'}; choose from {', '.join(ALL)}")
    if args.tiny:
        args.seeds, args.epochs = 2, 2
    if args.seeds < 2 or args.epochs < 2:
        raise FlaxrayError(f"--seeds and --epochs must be >= 2 (two samples; a warm-up epoch), got {args.seeds}, "
                           f"{args.epochs}")
    if not (args.lr > 0 and args.sgd_lr > 0):
        raise FlaxrayError(f"--lr and --sgd-lr must be > 0, got {args.lr}, {args.sgd_lr}")
    why = keras_status("jax")
    if why:
        raise FlaxrayError(why)
    for name in names:  # flag errors before any training
        flaxray_study(SCENARIOS[name], args, None)
    keras_model(args.arch, (28, 28, 3))  # an arch Keras cannot build fails now, not after flaxray's training
    dataset, arrays = load_data(args)
    steps = len(arrays[0][1]) // args.batch_size
    rows = {}
    for name in names:
        sc = SCENARIOS[name]
        ours, theirs = run_flaxray(sc, args, dataset), run_keras(sc, args, arrays)
        rows[name] = {"flaxray": ours, "keras": theirs, "rate": rate_check(sc, args, steps),
                      "val_loss": compare(ours["final_val_loss"], theirs["final_val_loss"])}
        if sc.patience is not None:
            rows[name]["stop"] = compare(ours["stop_epoch"], theirs["stop_epoch"], discrete=True)
            rows[name]["best"] = compare(ours["best_epoch"], theirs["best_epoch"], discrete=True)
        print(format_table({name: rows[name]}).splitlines()[-1], flush=True)
    config = {k: getattr(args, k) for k in ("seeds", "epochs", "arch", "batch_size", "lr", "sgd_lr", "tiny")}
    report = {"command": _cli.command("benchmarks.keras_parity", args), "commit": commit(), "config": config,
              "data": {"train": len(arrays[0][1]), "val": len(arrays[1][1]), "steps_per_epoch": steps},
              "environment": results.environment((*results.PACKAGES, "keras")), "scenarios": rows}
    path = Path(args.json) if args.json else Path(args.out) / "keras_parity.json"
    results.write_json(path, report)
    print()
    print(format_table(rows))
    print(f"\nwrote {path}")


def main(argv=None) -> int:
    return _cli.main(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
