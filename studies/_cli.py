"""What every study shares past its flags (`studies._flags`): the study spec from them, resume, replay,
run.json and one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from flaxray import results
from flaxray.errors import FlaxrayError
from flaxray.core import settings
from flaxray.study.study import MAX_SEEDS, recorded_study
from studies import _recipe
from studies._flags import EMBEDDED

RESUME_FLAGS = ("--resume", "--no-progress", "--checkpoint-every", "--cache-dir")  # may differ from run.json


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
