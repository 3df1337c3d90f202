"""What the trained seeds of a finished study look at, and whether they agree.

    python -m studies.inspect runs/my_study
    python -m studies.inspect runs/my_study --image xray1.jpeg xray2.jpeg --seeds 3 --out runs/my_study/look

Reads every seed's saved parameters (groups/*/params/ of any study),
computes Grad-CAM (CNNs) or input-gradient saliency (dense networks) for all seeds at once on the study's
own test images (or the --image files, read as the study's data was), and writes PNGs, inspect.md and
inspect.json into --out (default RUN_DIR/inspect). Library calls: `flaxray.study.trained.load_trained`,
`flaxray.inspect.compute.inspect_group`, `flaxray.inspect.report.write_inspection`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from studies import _cli

MODULE = "studies.inspect"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m studies.inspect",
        description="Show what every seed of a finished study looks at: Grad-CAM (CNNs) or input-gradient saliency "
        "(dense networks) per seed over the X-ray, the seeds' mean and spread, the mean pairwise correlation of their "
        "maps per image (its spread over the images per architecture), the share of each seed's map outside a "
        "central lung box (seeds looking mostly at the border are flagged), conv feature maps, first-layer filters "
        "and dense-unit templates. Writes PNGs, inspect.md and inspect.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a finished study")
    p.add_argument("--image", nargs="+", default=None, metavar="FILE",
                   help="image files to look at instead of the study's test split; read, converted and resized "
                   "as the study's data was")
    p.add_argument("--seeds", type=int, default=4, metavar="N",
                   help="seeds drawn in the figures (every seed enters the numbers)")
    p.add_argument("--show-images", type=int, default=4, metavar="N",
                   help="images drawn in the figures (every image enters the numbers); from the test split, one "
                   "of each class in turn")
    p.add_argument("--batch-size", type=int, default=64, help="images per vmapped call (lower it if memory is short)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RUN_DIR/inspect)")
    p.add_argument("--cache-dir", default=None, help="where prepared data is cached (as for the study)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _shown_first(y, n: int):
    """Test-split order with `n` images to draw first: one of each class in turn, in file order."""
    import numpy as np

    pools = [list(np.flatnonzero(y == c)) for c in np.unique(y)]
    first = []
    while len(first) < n and any(pools):
        for pool in pools:
            if pool and len(first) < n:
                first.append(pool.pop(0))
    rest = sorted(set(range(len(y))) - set(first))
    return np.asarray(first + rest, np.int64)


def load_images(args, trained):
    """(images, labels for the figures, description) from --image or the study's test split."""
    import numpy as np

    from flaxray.errors import FlaxrayError

    size, channels = trained.input_shape[0], trained.input_shape[2]
    if args.image:
        from flaxray.data.decode import load_image

        images = []
        for f in args.image:
            try:
                images.append(load_image(f, size, channels))
            except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file, named
                why = " ".join(str(err).split()) or type(err).__name__
                raise FlaxrayError(f"cannot read image {f}: {why}") from None
        described = f"{len(images)} given files at {size}×{size}×{channels}"
        return np.stack(images), [Path(f).name for f in args.image], described
    from flaxray.study.trained import load_run_data

    dataset = load_run_data(trained, cache_dir=args.cache_dir, progress=not args.no_progress)
    test, classes = dataset.test, dataset.class_names
    if len(test.y) == 0:
        raise FlaxrayError("the study's data has an empty test split; pass --image FILE ...")
    order = _shown_first(test.y, args.show_images)
    labels = [f"{classes[test.y[i]]}\n{Path(test.files[i]).name}" for i in order]
    source = trained.data.get("path") or "the embedded default"
    return test.x[order], labels, f"the test split of {source}: {len(test.y)} images at {size}×{size}×{channels}"


def run(args) -> Path:
    from flaxray.errors import FlaxrayError
    from flaxray.inspect.compute import inspect_group
    from flaxray.inspect.report import write_inspection
    from flaxray.study.trained import load_trained

    for flag in ("seeds", "show_images", "batch_size"):
        if getattr(args, flag) < 1:
            raise FlaxrayError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    models = load_trained(args.run_dir)
    first = next(iter(models.values()))
    images, labels, described = load_images(args, first)
    out = Path(args.out) if args.out else Path(args.run_dir) / "inspect"
    groups = {name: inspect_group(t, images, batch_size=args.batch_size, progress=not args.no_progress)
              for name, t in models.items()}
    info = {"command": _cli.command(MODULE, args), "run": str(Path(args.run_dir)), "images": described,
            "seeds": ", ".join(f"{n}: {len(t.seeds)} ({t.seeds[0]}..{t.seeds[-1]})" for n, t in models.items()),
            "configs": {n: dataclasses.asdict(t.config) for n, t in models.items()}}
    record = write_inspection(out, groups, images, row_labels=labels, shown_seeds=args.seeds,
                              shown_images=min(args.show_images, len(images)), info=info)
    for name, g in record["groups"].items():
        c, sm = g["correlation"], g["correlation_smoothed"]
        flagged = ", ".join(map(str, g["flagged"])) or "none"
        border = ", ".join(f"{v:.2f}" for v in g["border_fraction"].values() if v is not None)
        if not c["n"]:  # no image where two seeds both have a map with mass
            print(f"{name}: {g['method']}; no pair of seeds has maps with any mass on the same image (all-zero maps "
                  f"per seed: {g['zero_maps']}): nothing in the images raises the logit, e.g. a model stuck on one class")
            continue
        print(f"{name}: {g['method']}; seeds' maps agree r̄ = {c['mean']:.3f} ± {c['std']:.3f} over {g['images']} "
              f"images (smoothed {sm['mean']:.3f}); border fraction per seed {border}; flagged: {flagged}")
    print(f"\nwrote {out / 'inspect.md'}, {out / 'inspect.json'} and the PNGs beside them")
    return out


def main(argv=None) -> int:
    return _cli.main(run, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
