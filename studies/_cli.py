"""Flags and error handling every study shares: data, seeds, training, output."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from flaxray import results
from flaxray.runtime.checkpoint import DEFAULT_EVERY
from flaxray.errors import FlaxrayError
from flaxray.core import settings
from flaxray.core.config import DTYPES
from flaxray.core.randomness import FLOOR, SOURCES, SPLIT
from flaxray.study.study import MAX_SEEDS, recorded_study
from studies import _recipe

EMBEDDED = "embedded"  # --data's name of the default data, so that it can be one of several
RESUME_FLAGS = ("--resume", "--no-progress", "--checkpoint-every", "--cache-dir")  # may differ from run.json


def add_data_args(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    p.add_argument("--data", default=None, metavar="PATH", nargs="+" if several else None,
                   action=_OneOrMore if several else "store",
                   help="a folder in the Kaggle layout {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (patients and "
                   "duplicates handled), any folder {train,val,test}/{CLASS}/* with 2+ classes, an .npz of arrays "
                   "(x_train, y_train, ...) or tfds:NAME (a TensorFlow Datasets set already prepared in --data-dir); "
                   "'embedded' names the default, the embedded 28x28 chest X-rays"
                   + ("; several (--data A B C): every arch is trained on each, a study of its own in "
                      "OUT/datasets/NAME/ (NAME: the folder's or file's name, NAME of tfds:NAME), and OUT/report.md "
                      "compares the archs across them: per-data-set min-max normalised final val loss, IQM, mean, "
                      "median, optimality gap with stratified bootstrap CIs, P(improvement) and performance profiles "
                      "(docs/datasets.md); the other data flags apply to each" if several else ""))
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="TensorFlow Datasets' data_dir for --data tfds:NAME (nothing is downloaded)")
    p.add_argument("--image-size", type=int, default=None,
                   help="images are resized to SIZE x SIZE (default: 180 for an image folder, 28 for the embedded data; "
                   "an .npz, arrays and a TFDS set keep their own size unless given)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 = grey, 3 = RGB as in the notes")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of train carved out as val, by patient")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the patient split (same for every model seed)")
    p.add_argument("--strict", action="store_true", help="unreadable images are fatal instead of skipped")
    p.add_argument("--cache-dir", default=None,
                   help="where prepared data is cached (default: $FLAXRAY_CACHE or ~/.cache/flaxray)")


class _OneOrMore(argparse.Action):
    """--data A B C as a list, --data A as the one path it always was (recorded as before)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values[0] if len(values) == 1 else list(values))


def add_training_args(p: argparse.ArgumentParser, *, seeds=16, epochs=20) -> None:
    p.add_argument("--seeds", type=int, default=seeds, help="number of seeds trained together")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are K..K+N-1, so any seed can be re-run alone")
    p.add_argument("--epochs", type=int, default=epochs, help="epochs per seed")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size per seed")
    for name, field in settings.FIELDS.items():  # every per-lane setting, each crossed with the seeds
        p.add_argument(field.flag, dest=name, type=field.parse, nargs="+", default=None, metavar=field.label.upper(),
                       help=field.help + settings.CROSSED.format(label=field.label))
    p.add_argument("--vary", default=",".join(SOURCES),
                   help="comma-separated sources of randomness that differ between seeds "
                   f"({', '.join(SOURCES)}; augment only with --augment); the others are shared by all seeds. 'none' shares all; '{FLOOR}' "
                   "nudges each seed's initial parameters by one ulp (with the rest shared: the noise floor). "
                   f"'{SPLIT}' (not in the default, which keeps the fixed split): each seed draws its own train/val "
                   "split of train+val, by patient and class as the fixed one, all of one size; each seed's val "
                   "metrics are on its own val set, test stays the official one (refused for data with its own "
                   "x_val and no groups)")
    p.add_argument("--class-weight", choices=("none", "balanced"), default="none",
                   help="'balanced' weighs each class's loss by n / (C n_class) for C classes, as sklearn and Keras users do")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="compute dtype of activations and matmuls; parameters and Adam's state stay float32")
    p.add_argument("--chunk", type=int, default=None, metavar="N",
                   help="train at most N seeds at once (default: as many as fit in the free device memory, "
                   "estimated; the seeds are split over every device of every process). Does not change the curves")
    p.add_argument("--strategy", default=None, metavar="auto|vmap|map|loop|K",
                   help="how the seeds of a chunk share a device: vmap batches them all into wider operations, map "
                   "runs them one after another inside one program, K batches groups of K seeds, the groups one "
                   "after another, loop calls the one-seed program seed after seed from the host; auto predicts "
                   "this study's epoch in each from timed short runs here and takes the simplest of the fastest "
                   "within the noise, remembered per machine in the cache folder with the epoch it then took "
                   "(default: $FLAXRAY_STRATEGY, else auto). Recorded; a resume keeps the one the run started with")
    _recipe.add_recipe_args(p)


def add_rope_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rope", type=float, default=None, metavar="DELTA",
                   help="a margin in final val loss (the ranking's value) that does not matter in practice: every "
                   "pair of archs, or of one arch's settings, is then better, worse, equivalent within +-DELTA or "
                   "undecided, from the CI of its Hodges-Lehmann shift (TOST at the study's confidence), in the "
                   "verdict, the report and the printout (default: no margin, no such verdicts)")


def add_output_args(p: argparse.ArgumentParser, *, out=None, out_help="output folder (default: a new folder under runs/)",
                    overwrite_help="start again in an --out that already holds a study (its results and "
                    "checkpoints are deleted)") -> None:
    p.add_argument("--out", default=out, metavar="DIR", help=out_help + "; a rerun into the same folder reuses "
                   "every arch trained there with the same settings and continues an unfinished one")
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the stopped or killed study in DIR, with the flags recorded in DIR/run.json, to "
                   "the curves an uninterrupted run gives; other flags given with it must equal the recorded ones "
                   "(except --no-progress, --checkpoint-every and --cache-dir)")
    p.add_argument("--replay", default=None, metavar="DIR",
                   help="train --seed K of the finished study in DIR again, in the program shape it was trained in "
                   "(its chunk of the vmapped seeds: the cost of one chunk), and check its curves and parameters "
                   "against the recorded ones, bit for bit; exit 1 if they differ")
    p.add_argument("--seed", type=int, default=None, metavar="K", help="the seed --replay trains again")
    p.add_argument("--checkpoint-every", default=DEFAULT_EVERY, metavar="N|TIME",
                   help="save every seed's training state in the --out folder's groups/*/checkpoints/ every N epochs "
                   "or every TIME of training (90s, 5min, 1h), and after the last epoch and on Ctrl-C; a kill loses "
                   "at most that much. 0: never, then --resume starts over")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write TensorBoard event files into DIR when the study is done: a run per seed and the "
                   "mean and CI band per arch (needs the [tensorboard] extra; `python -m studies.tensorboard` does it "
                   "for a finished study)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_vary(text: str) -> tuple[str, ...]:
    return () if text.strip() in ("", "none") else tuple(s.strip() for s in text.split(",") if s.strip())


def seed_list(args) -> list[int]:
    if not 1 <= args.seeds <= MAX_SEEDS:
        raise FlaxrayError(f"--seeds must be between 1 and {MAX_SEEDS}, got {args.seeds}")
    if args.first_seed < 0 or args.first_seed + args.seeds > 2**31 - 1:
        raise FlaxrayError(f"--first-seed must be >= 0 and K+N must fit in int32, got {args.first_seed}")
    return list(range(args.first_seed, args.first_seed + args.seeds))


def data_spec(args):
    from flaxray.study.study import DataSpec

    paths = args.data if isinstance(args.data, list) else [args.data]
    specs = tuple(DataSpec(path=None if path == EMBEDDED and not Path(path).exists() else path,
                           image_size=args.image_size, channels=args.channels, val_fraction=args.val_fraction,
                           split_seed=args.split_seed, strict=args.strict, data_dir=getattr(args, "data_dir", None))
                  for path in paths)
    if len(set(specs)) < len(specs):
        raise FlaxrayError(f"--data lists a data set twice: {' '.join(map(str, paths))}")
    return specs[0] if len(specs) == 1 else specs


def study_spec(args, archs, kind: str, **fields):
    """The `flaxray.study.study.Study` the flags describe (a resumed study: the one it recorded); validates
    every arch and flag before any data."""
    from flaxray.study.study import Study

    if getattr(args, "recorded_study", None) is not None:
        return args.recorded_study
    grid = {name: tuple(getattr(args, name)) for name in settings.FIELDS if getattr(args, name) is not None}
    return Study(archs=tuple(archs), data=data_spec(args), seeds=tuple(seed_list(args)), settings=grid,
                 epochs=args.epochs, batch_size=args.batch_size, vary=parse_vary(args.vary),
                 class_weight=args.class_weight, dtype=args.dtype, kind=kind, recipe=_recipe.recipe(args),
                 rope=getattr(args, "rope", None), **fields)


def given_flags(parser, argv) -> dict:
    """{destination: value} of the flags `argv` sets itself, whatever the defaults: argparse fills in a
    default only where the namespace has no value yet, so one that starts every destination unset shows
    what was given (abbreviations resolved by argparse itself)."""
    unset = object()
    names = vars(parser().parse_args([]))
    parsed = parser().parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(names, unset)))
    return {k: v for k, v in vars(parsed).items() if v is not unset}


def resume_args(parser, args):
    """The options of the study in `args.resume` (its run.json) with the few that may change, and the
    recorded `Study` itself (`args.recorded_study`); None when that study is complete. Flags given with
    --resume must equal the recorded ones (the original command with --resume added is accepted), except
    --no-progress, --checkpoint-every and --cache-dir, which only change how it runs."""
    folder = Path(args.resume)
    run = results.read_run(folder)
    if not run or "argv" not in run:
        raise FlaxrayError(f"--resume {folder}: no readable {results.RUN_JSON} there, so no study to continue")
    stored = parser().parse_args(run["argv"])
    started = Path(run.get("cwd", "."))
    for name in ("data", "cache_dir"):  # relative to where the study was started
        setattr(stored, name, _from(started, getattr(stored, name, None)))
    free = {f[2:].replace("-", "_") for f in RESUME_FLAGS}
    given = given_flags(parser, args.argv)
    for dest, value in given.items():
        if dest in free or dest == "out" and Path(value).resolve() == folder.resolve():
            continue
        recorded, flag = getattr(stored, dest, None), "--" + dest.replace("_", "-")
        if dest in ("data", "cache_dir") and value:
            same = _from(Path.cwd(), value, resolve=True) == _from(Path.cwd(), recorded, resolve=True)
        else:
            same = value == recorded
        if not same:
            was = "not given (its default)" if recorded is None else f"{recorded!r}"
            raise FlaxrayError(f"--resume continues the study recorded in {folder / results.RUN_JSON}, where "
                               f"{flag} is {was}, not {value!r}; drop {flag} or start another study")
    if run.get("status") == "complete":
        return None
    for dest in (free - {"resume"}) & set(given):
        setattr(stored, dest, given[dest])
    stored.argv, stored.out, stored.resume, stored.overwrite = list(run["argv"]), str(folder), str(folder), False
    stored.recorded_study = recorded_study(run, started)
    return stored


def _from(started: Path, value, resolve: bool = False):
    """A --data or --cache-dir value (a path, or a list of them with --data A B C) from the folder a study
    was started in (`resolve`: links and .. resolved, to compare); tfds:NAME and 'embedded' as they are."""
    if isinstance(value, list):
        return [_from(started, v, resolve) for v in value]
    if not value or str(value).startswith("tfds:") or value == EMBEDDED:
        return value
    path = started / Path(value).expanduser()
    return str(path.resolve() if resolve else path)


def run_study(args, spec, module: str, run=None):
    """`run` (default `flaxray.study.study.run`; `flaxray.study.race.race` takes the same arguments) with the flags'
    output options, recorded in run.json, the command in study.json."""
    from flaxray.study.study import prepare, run as run_fixed

    run = run or run_fixed

    if getattr(args, "resume", None) and args.overwrite:
        raise FlaxrayError("--resume continues a study and --overwrite deletes it: pass one of them")
    out = Path(args.out) if args.out else results.default_out_dir(spec.archs)
    cmd, progress = command(module, args), not args.no_progress
    options = dict(checkpoint_every=args.checkpoint_every, chunk=args.chunk, cache_dir=args.cache_dir,
                   strategy=args.strategy)
    # Every refusal happens here, before run.json or anything is written (--overwrite: the folder is cleared later).
    prepared = prepare(spec, out, progress=progress, overwrite=args.overwrite, **options)
    with results.recorded(out, study=module, command=cmd, argv=args.argv, resumed=bool(getattr(args, "resume", None)),
                          overwrite=args.overwrite, spec=spec.record()):
        flags = {k: v for k, v in vars(args).items() if k != "recorded_study"}
        result = run(spec, out, progress=progress, info={"command": cmd, "args": flags}, prepared=prepared, **options)
    if result.reused:
        print(f"reused {len(result.reused)} finished arch(s) from {out / 'groups'}: {', '.join(result.reused)}")
    if getattr(args, "tensorboard", None) and not results.elsewhere():
        from flaxray.report.views import write_tensorboard
        from flaxray.study import datasets

        # Several data sets: a study each, so a TensorBoard folder each.
        folders = ({datasets.folder(out, n): Path(args.tensorboard) / n for n in spec.datasets}
                   if len(spec.datasets) > 1 else {out: args.tensorboard})
        for folder, logdir in folders.items():
            print(f"TensorBoard: {write_tensorboard(folder, logdir)} (tensorboard --logdir {logdir})")
    return result


def several(result) -> bool:
    """Whether `result` is a study on several data sets; if so, its printout is printed."""
    from flaxray.report import datasets
    from flaxray.study.datasets import DatasetsResult

    if isinstance(result, DatasetsResult):
        print(datasets.printout(result))
    return isinstance(result, DatasetsResult)


def command(module: str, args) -> str:
    """The command line that reproduces this run."""
    return " ".join(["python -m", module, *args.argv])


def replay(args) -> int:
    """--replay DIR --seed K: 0 when every group's seed K came out bit for bit as recorded, else 1."""
    from flaxray.study.replay import format_rows, replay as replay_seed

    if not args.replay or args.seed is None:
        raise FlaxrayError("--replay DIR and --seed K go together: the study to replay and the seed to train again")
    rows = replay_seed(args.replay, args.seed, progress=not args.no_progress, cache_dir=args.cache_dir)
    print(format_rows(rows))
    return 0 if all(r["identical"] for r in rows) else 1


def _abandon(err: BaseException) -> None:
    """Exit now: one process of several failed, or lost a peer (killed, or its host is gone). A normal
    exit would wait in jax.distributed's shutdown for peers that will never come; exiting makes the
    others' next collective fail at once, and each of them exits so too (run.json says "failed")."""
    import traceback

    import jax

    traceback.print_exc()
    reason = " ".join(str(err).split())[:300]
    print(f"error: process {jax.process_index()} of {jax.process_count()} stopped ({reason}); the others stop too. "
          "Continue with --resume under the same launcher", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def main(run, parser, argv=None) -> int:
    """Run a study (`parser`: a function returning the study's ArgumentParser); user errors are one line on
    stderr and exit 2, never a traceback. Started as one
    of several processes (`python -m flaxray.runtime.launch`, SLURM), it joins them first; then only process 0
    prints and writes."""
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in study.json
    warnings.formatwarning = lambda message, category, *_, **__: f"warning: {message}\n"
    from flaxray.runtime import hosts

    if hosts.initialize() and not hosts.is_primary():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - process 0 prints the tables; errors still reach stderr
    try:
        if getattr(args, "replay", None) or getattr(args, "seed", None) is not None:
            return replay(args)
        if getattr(args, "resume", None):
            resumed = resume_args(parser, args)
            if resumed is None:
                print(f"{args.resume} holds a complete study; nothing to resume")
                return 0
            args = resumed
        if hasattr(args, "recipe") and not getattr(args, "resume", None):
            _recipe.apply_preset(args, given_flags(parser, args.argv))
        run(args)
    except FlaxrayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - only device memory is turned into a one-line message
        if "RESOURCE_EXHAUSTED" not in str(err):
            if hosts.count() > 1:
                _abandon(err)
            raise
        print("error: out of device memory; use fewer --seeds or --lr values, a smaller --batch-size, "
              "--image-size or arch", file=sys.stderr)
        return 2
    return 0
