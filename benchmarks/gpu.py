"""Issue 14's GPU figures in one prepared script: throughput, the largest study that fits 3 minutes and
CNN vs ANN, at 180x180x3 on the real data, and issue 28's MedMNIST row at 28x28, in one process within
one wall-clock budget (default 480 s).

    python -m benchmarks.gpu --prepare            # here, once: .gpu-data/chest_xray_180.npz (~44 MiB), .whl/ (Keras)
    python -m benchmarks.gpu --tiny --out /tmp/g  # here: every part at toy sizes on the CPU, as the test does

On the device machine (one H100/H200; Python 3.12, jax 0.11.2 with the CUDA 13 plugins, flax, optax,
orbax-checkpoint; no tensorflow-datasets, no Keras, no network), from the repository root, carrying
`.gpu-data` and `.whl`: `benchmarks.gpu_setup.DEVICE_COMMAND`, which --prepare prints (why the data and
the wheels travel so: gpu_setup's docstring).

 a. (a quarter of the budget) `benchmarks.throughput` for pyramid and final, S = 1, 2, 4, ... 64, --steps
    24, every method of its METHODS (keras and keras-vmap only where Keras is installed; keras-vmap, the
    Keras pyramid of examples/keras_xray.py vmapped, for pyramid only and at S <= 16; the seed-after-seed
    ones at S <= 2), auto's choice judged on whole epochs taking turns (--verify-rounds); an S predicted
    not to fit is not started.
 b. (up to 0.45, leaving c and d 0.3) the largest `final` study that fits 3 minutes: seeds x epochs from
    a's seed-epochs/s at its largest S, for ~150 s of training; `studies.seed_variance`, default
    checkpoints (their cost as the runner records it).
 c. (0.4 of what is left) `studies.cnn_vs_ann`, 8 seeds, its epochs from what is left after a 1-epoch probe.
 d. (the rest, ~0.2) MedMNIST v2's ResNet-18 recipe (`--recipe medmnist`) on the embedded 28x28 data
    whatever --data is, seeds x epochs from a probe, test ACC and AUC per seed, their mean with a 95 % CI
    and the seed ensemble's, beside the published PneumoniaMNIST row (`benchmarks.gpu_medmnist`).
A part still running at its deadline gets a SIGINT, the trainer's own Ctrl-C: a study stops after the
current epoch, saved. gpu.json (every figure) and gpu.md (a section for RESULTS.md) go into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import shutil
import sys
import time
import traceback
from pathlib import Path

from benchmarks import gpu_report
from benchmarks.gpu_medmnist import medmnist_part
from benchmarks.gpu_parts import command, ended, within
from benchmarks.keras_baseline import KERAS_VERSION
from benchmarks.gpu_setup import (DEVICE_COMMAND, MAX_MIB, PREPARED, SHARED, SUBSET, WHEELS, choose_data,
                                  download_wheels, preflight, prepare)
from flaxray.errors import FlaxrayError
from studies import _cli

START = time.monotonic()  # the budget's start, set again by main (an import in a test suite is long before)
ARCHS, STUDY_ARCH, MAX_SEEDS, STEPS, STUDY_S, CNN_SEEDS = ("pyramid", "final"), "final", 64, 24, 150, 8
SERIAL_SEEDS = 2  # sequential and keras (seed after seed, a rate that does not grow with S) at S <= this only
# keras-vmap at S <= this only: each of its runs first builds every seed's Keras model on the host (at 180x180,
# pyramid's 100M parameters a seed), which the budget would otherwise take from the other methods' larger S
KERAS_VMAP_SEEDS = 16
# --tiny: 64 images a split of the embedded data, and stand-ins for the archs: on 2 CPU cores compilation is
# most of the time (~7 s a training program, ~18 s for a conv one), so one arch, and a dense "CNN"
TINY = {"archs": ("dense:8@0.5",), "cnn": "dense:4", "max_seeds": 2, "steps": 2, "images": 64, "serial_seeds": 1,
        "methods": ("auto", "sequential", "keras-vmap")}  # auto probes vmap, map and loop itself; keras-vmap
# (the stand-in's Keras Sequential, as a user's Keras model) where Keras is installed
VERIFY_ROUNDS = 3  # rounds of whole epochs, the candidates taking turns, that judge auto's choice
VERSIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "keras", "tensorflow-datasets")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/gpu", metavar="DIR", help="folder for gpu.json, gpu.md and the parts' runs")
    p.add_argument("--data", default=None, metavar="PATH", help=f"default: {PREPARED} if it exists, else {SHARED} "
                   "if it exists, else the embedded data (then every figure is at 28x28); with --prepare, the source")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole run, seconds")
    p.add_argument("--tiny", action="store_true", help="a CPU check: embedded data, 28x28, S <= 2, 1 epoch")
    p.add_argument("--prepare", action="store_true", help=f"write {PREPARED} from --data (default {SHARED}) and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def throughput_part(args, common, until, out, notes) -> dict:
    from benchmarks import throughput
    from flaxray import results

    archs, top, steps = (TINY["archs"], TINY["max_seeds"], TINY["steps"]) if args.tiny else (ARCHS, MAX_SEEDS, STEPS)
    methods = TINY["methods"] if args.tiny else throughput.METHODS
    part = {"steps": steps, "methods": list(methods), "rows": [], "commands": [], "status": "complete"}
    if {"keras", "keras-vmap"} & set(methods) and importlib.util.find_spec("keras") is None:
        notes.append(f"keras is not installed here: no keras or keras-vmap rows (carry {WHEELS} from --prepare, or "
                     f"pip install keras=={KERAS_VERSION}, the [baseline] extra)")
    for k, arch in enumerate(archs):
        folder, before = out / f"throughput-{k}", len(notes)  # arch names can be spec strings
        # keras-vmap (a compilation per S) for the pyramid only: final's share goes to its own S
        these = [m for m in methods if m != "keras-vmap" or arch in (ARCHS[0], *TINY["archs"])]
        # auto's choice judged on whole epochs, the candidates taking turns (--verify-rounds)
        argv = ["--arch", arch, "--max-seeds", str(top), "--steps", str(steps), "--methods", ",".join(these),
                "--verify-rounds", str(VERIFY_ROUNDS),
                "--serial-max-seeds", str(TINY["serial_seeds"] if args.tiny else SERIAL_SEEDS),
                "--keras-vmap-max-seeds", str(TINY["max_seeds"] if args.tiny else KERAS_VMAP_SEEDS),
                "--out", str(folder), *common]
        share = time.monotonic() + (until - time.monotonic()) / (len(archs) - k)  # what is left, shared out
        argv += ["--budget-s", f"{share - time.monotonic():.0f}"]  # it does not start an S predicted not to fit
        part["commands"].append(command("benchmarks.throughput", argv))
        hard = min(share + 0.05 * args.budget_s, START + args.budget_s - 10)  # if the prediction was wrong
        code, stopped = within(hard, lambda: throughput.main(argv))
        if code != 0:  # 0 although stopped: the deadline passed as it finished
            ended(part, notes, f"throughput of {arch}", code, stopped)
            continue
        got = results.read_json(folder / "throughput.json")
        part["rows"] += got["rows"]
        notes += got.get("stopped", [])
        part.update(peaks=got["peaks"], data={s: got["data"][s]["n"] for s in ("train", "val", "test")})
        if len(notes) > before and part["status"] == "complete":
            part["status"] = "partial"  # an S was not started
        # a method with nothing to measure here (keras-vmap without Keras, say): said, not partial
        notes += [n for n in got.get("skipped", []) if n not in notes]
    return part


def study_part(args, common, size, a, until, out, notes) -> dict:
    from flaxray import results
    from flaxray.study.study import Study, disk_needed
    from studies import seed_variance

    arch, folder = TINY["archs"][-1] if args.tiny else STUDY_ARCH, out / "study"
    results.clear_outputs(folder)  # an earlier run's checkpoints would count against the free disk
    one = Study(archs=(arch,), seeds=(0,))
    per_seed = disk_needed(one, {arch: one.config(arch, 2)}, (size, size, 3))  # linear in the seeds
    cap = max(1, min(4096, int(0.5 * shutil.disk_usage(out).free / per_seed)))
    steps = max(1, a.get("data", {}).get("train", 0) // 32)
    plan = {"target_s": STUDY_S * args.budget_s / 480, "disk_cap_seeds": cap, "steps_per_epoch": steps}
    rows = [r for r in a.get("rows", []) if r["arch"] == arch]
    # The trainer as a study runs it (auto), else vmap where auto was not measured.
    if measured := [r for r in rows if r["method"] == "auto"] or [r for r in rows if r["method"] == "vmap"]:
        best = max(measured, key=lambda r: r["seeds"])  # the largest S, extrapolated to more seeds
        rate = best["seed_epochs_per_s"] * best["steps_per_epoch"] / steps  # an epoch here has `steps` steps
        plan.update(from_seeds=best["seeds"], seed_epochs_per_s=rate, seed_epochs=int(rate * plan["target_s"]))
        seeds = min(cap, max(8, plan["seed_epochs"] // 20))  # 20 epochs (the studies' default) and more seeds,
        epochs = max(1, min(200, plan["seed_epochs"] // seeds))  # longer ones once the disk caps the seeds
    else:
        seeds, epochs = 8, 5
        notes.append(f"no vmap throughput of {arch}: the study runs a default 8 seeds x 5 epochs")
    seeds, epochs = (min(seeds, TINY["max_seeds"]), 1) if args.tiny else (seeds, epochs)
    argv = ["--arch", arch, "--seeds", str(seeds), "--epochs", str(epochs), "--out", str(folder), "--overwrite"]
    argv += common
    began = time.monotonic()
    code, stopped = within(until, lambda: seed_variance.main(argv))
    # What the runner recorded its checkpoints cost (checkpoints/saves.json, in group.json when finished).
    saves = [results.read_json(f) for f in (folder / "groups").glob(f"*/{results.CHECKPOINTS}/saves.json")]
    part = {"arch": arch, "seeds": seeds, "epochs": epochs, "plan": plan, "wall_s": time.monotonic() - began,
            "checkpoints": sum(r.get("checkpoints", 0) for r in saves),
            "checkpoint_s": sum(r.get("held_s", 0.0) for r in saves),
            "command": command("studies.seed_variance", argv)}
    if not (record := results.read_json(folder / "study.json") if code == 0 else {}):
        done = [int(p.name) for pattern in ("*/checkpoints/*", "*/checkpoints/chunk-*/*")
                for p in (folder / "groups").glob(pattern) if p.name.isdigit()]  # orbax's steps: epochs done
        return ended(part, notes, f"study (after epoch {max(done, default=0)} of {epochs})", code, stopped)
    train_s, summary = record["train_seconds"][arch], record["summary"][arch]
    part.update({k: summary[k]["mean"] for k in ("final_val_loss", "final_val_accuracy", "final_val_auc")},
                status="complete", train_s=train_s, seed_epochs_per_s=seeds * epochs / train_s,
                checkpoint_share=part["checkpoint_s"] / train_s, final_val_loss_std=summary["final_val_loss"]["std"])
    return part


def probe(argv, archs, seeds, out) -> dict:
    """Seconds of one epoch of each arch at `seeds` seeds on the study's own data and configs: train_seeds
    twice (the first compiles; the study then reuses that program: same config and shapes, same process)."""
    from flaxray.runtime.runner import train_seeds
    from flaxray.study.study import prepare as ready
    from studies import cnn_vs_ann

    study = _cli.study_spec(cnn_vs_ann.parser().parse_args(argv), archs, "cnn_vs_ann", test=True)
    got, seconds = ready(study, out / "probe", progress=False, checkpoint_every=0, overwrite=True), {}
    for arch in archs:
        for _ in range(2):
            began = time.monotonic()
            train_seeds(dataclasses.replace(got.configs[arch], epochs=1), got.data, range(seeds), progress=False)
            seconds[arch] = time.monotonic() - began
    return seconds


def cnn_part(args, common, until, out, notes) -> dict:
    from flaxray import results
    from studies import cnn_vs_ann

    cnn, ann = (TINY["cnn"], TINY["archs"][-1]) if args.tiny else (cnn_vs_ann.DEFAULT_CNN, cnn_vs_ann.DEFAULT_ANN)
    seeds, folder = TINY["max_seeds"] if args.tiny else CNN_SEEDS, out / "cnn_vs_ann"
    argv = ["--cnn", cnn, "--ann", ann, "--seeds", str(seeds), "--out", str(folder), "--overwrite", *common]
    part = {"cnn": cnn, "ann": ann, "seeds": seeds}
    epoch_s, stopped = within(until, lambda: probe(argv + ["--epochs", "1"], [cnn, ann], seeds, out))
    if stopped:
        return ended(part, notes, "cnn_vs_ann's probe", None, True)
    left = until - time.monotonic() - 20  # 20 s: the test evaluation's compilation and the reports
    epochs = 1 if args.tiny else max(1, min(20, int(left / sum(epoch_s.values()))))
    argv += ["--epochs", str(epochs)]
    code, stopped = within(until, lambda: cnn_vs_ann.main(argv))
    part.update(epochs=epochs, probe_epoch_s=epoch_s, command=command("studies.cnn_vs_ann", argv))
    if not (test := results.read_json(folder / "study.json").get("test") if code == 0 else None):
        return ended(part, notes, "cnn_vs_ann", code, stopped)
    part["models"] = {name: {"train_s": m["seconds"], "seed_epochs_per_s": m["seed_epochs_per_s"],
                             "params": m["params"], "accuracy": m["summary"]["accuracy"]["mean"],
                             "auc": m["summary"]["auc"]["mean"],
                             "ensemble_accuracy": m["ensemble"]["accuracy"]} for name, m in test["models"].items()}
    c = test["comparison"]["accuracy"]
    part.update(status="complete", p_cnn_better=c["p_improve"], p_ci=[c["p_improve_low"], c["p_improve_high"]],
                verdict=test["verdict"].replace("**", ""))
    return part


def run(args) -> Path:
    import jax

    from flaxray import results

    if args.prepare:
        mib = (dest := prepare(args.data or str(SHARED), PREPARED, 180, SUBSET)).stat().st_size / 2**20
        print(f"wrote {dest}: {mib:.1f} MiB, to carry to the device machine (.gpu-data/ is git-ignored)")
        if mib > MAX_MIB:
            raise FlaxrayError(f"{dest} is {mib:.1f} MiB, over {MAX_MIB}: lower SUBSET in benchmarks/gpu_setup.py")
        print(download_wheels())
        print(f"then on the device machine, carrying {PREPARED.parent} and {WHEELS}, timeout 600 s:\n  {DEVICE_COMMAND}")
        return dest
    preflight()
    # 10 s of the budget are kept back: Python's and jax's import before START, and writing the files after
    out, budget, deadline = Path(args.out), args.budget_s, START + args.budget_s - 10
    out.mkdir(parents=True, exist_ok=True)
    source, path, size, note = choose_data(args.data, args.tiny and TINY["images"], out)
    if note:
        print(f"!!! {note} !!!", flush=True)
    common = (["--data", path] if path else []) + ["--image-size", str(size)] + ["--no-progress"] * args.no_progress
    report = {"command": command("benchmarks.gpu", args.argv), "budget_s": budget, "tiny": args.tiny,
              "device": jax.devices()[0].device_kind, "environment": results.environment(VERSIONS),
              "data": {"source": source, "path": path, "image_size": size, "note": note},
              "notes": [note] if note else [], "parts": {}}
    notes, parts = report["notes"], report["parts"]
    versions = report["environment"]["versions"]
    print(f"{report['device']} ({report['environment']['backend']}); "
          + ", ".join(f"{k} {v}" for k, v in versions.items() if v), flush=True)  # first, should a part fail later
    # a: a quarter; b: ~150 s of training, its data, compilation and writes, and a hard stop that leaves c
    # and d 0.3; c: 0.4 of what is left; d: the rest (~0.2 of the budget: a ResNet-18's compilations and
    # epochs at 28x28; the probe says how many fit)
    plan = (("throughput", lambda: START + budget / 4, lambda u: throughput_part(args, common, u, out, notes)),
            ("study", lambda: min(time.monotonic() + 0.45 * budget, deadline - 0.3 * budget),
             lambda u: study_part(args, common, size, parts["throughput"], u, out, notes)),
            ("cnn_vs_ann", lambda: time.monotonic() + 0.4 * (deadline - time.monotonic()),
             lambda u: cnn_part(args, common, u, out, notes)),
            ("medmnist", lambda: deadline, lambda u: medmnist_part(args.tiny, u, out, notes, not args.no_progress)))
    for name, until, call in plan:
        began, u = time.monotonic(), until()
        try:
            parts[name] = call(u) if u > began + 1 else {"status": "skipped"}
            if u <= began + 1:
                notes.append(f"{name}: skipped, no time left in the budget")
        except Exception as err:  # noqa: BLE001 - a part that fails leaves the others' figures
            if not isinstance(err, FlaxrayError):
                traceback.print_exc()
            parts[name] = {"status": f"failed: {type(err).__name__}: {err}"}
            notes.append(f"{name} failed: {type(err).__name__}: {err}")
        parts[name]["seconds"] = time.monotonic() - began
        print(gpu_report.line(name, parts[name], STUDY_ARCH), flush=True)
    report["wall_s"] = time.monotonic() - START
    results.write_json(out / "gpu.json", report)
    with results.atomic_path(out / "gpu.md") as tmp:
        Path(tmp).write_text(gpu_report.markdown(report))
    print(f"wrote {out / 'gpu.json'}, {out / 'gpu.md'}: {report['wall_s']:.0f} s of a {budget:.0f} s budget")
    if failed := [k for k, p in parts.items() if p["status"].startswith("failed")]:
        raise FlaxrayError(f"{', '.join(failed)} failed; {out / 'gpu.json'} says why, and holds the other parts")
    return out


def main(argv=None) -> int:
    global START
    START = time.monotonic()  # CUDA's start and the data loading are in the budget
    return _cli.main(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
