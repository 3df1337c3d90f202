"""Train one seed of a finished study again, to its exact recorded curves and parameters.

    rows = replay("runs/my_study", seed=3)     # one row per group holding seed 3: identical or not

A seed's arithmetic depends on its own inputs (seed, rate, data) and on the shape of the program it
ran in: the number of lanes of the vmapped program (its chunk), the devices they were split over, the
form of its convolutions and pools (`flaxray.models.conv.form`), and the machine, whose XLA compiles
other kernels (`groups.program_shape` records them all). A seed trained in another shape is another
sample of the same distribution, not the same numbers: Adam's first steps and BatchNorm amplify a
last-bit difference into a visible one within an epoch (docs/resume_and_determinism.md). So the replay runs the
chunk the seed was trained in, every lane of it as it was, and compares the seed's lane with what the
study recorded, bit for bit. The cost is one chunk's training: with one chunk (the default when the
seeds fit in memory) that is the whole unit.
"""

from __future__ import annotations

import jax
import numpy as np

from flaxray import results
from flaxray.core import settings
from flaxray.core.config import data_for
from flaxray.errors import FlaxrayError
from flaxray.models.conv import ENV, form
from flaxray.results import slug
from flaxray.runtime import scale
from flaxray.runtime import runner
from flaxray.study import compat
from flaxray.study.study import DataSpec
from flaxray.study.trained import check_run_dir, load_folder
from flaxray.study.units import group_names, read_record


def _tree_equal(a, b) -> tuple[bool, float]:
    """(every leaf bitwise equal, the largest absolute difference)."""
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    same = all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True) for x, y in pairs)
    diff = max((float(np.nanmax(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
                for x, y in pairs), default=0.0)
    return same, diff


def replay(out, seed: int, *, dataset=None, progress: bool = True, cache_dir=None) -> list[dict]:
    """Re-train `seed` in every group of the finished study in `out` that holds it, in the program shape
    it was trained in, and compare it with what the study recorded.

    Args:
      out: the finished study's folder.
      seed: the seed to train again.
      dataset: the data, when the study was trained on arrays given in memory (a folder, .npz or TFDS
        set is loaded again from the record).
    Returns:
      One row per group: group, seed, lanes, identical (curves and params bit for bit),
      curves_max_diff, params_max_diff, same_machine.
    """
    out = check_run_dir(out)
    record = results.read_json(out / "study.json")
    if dataset is None:
        spec = record["spec"]["data"]
        if spec.get("in_memory"):
            raise FlaxrayError(f"{out} was trained on arrays given in memory; pass them: replay(out, seed, dataset=...)")
        dataset = DataSpec(**spec).load(cache_dir=cache_dir, progress=progress)
    if dataset.summary.get("fingerprint") != record["data"].get("fingerprint"):
        raise FlaxrayError(f"the data changed since the study in {out} (its fingerprint differs); a replay needs the same data")
    here = {"devices": len(jax.devices()), "device_kind": jax.devices()[0].device_kind, "cpu": results.cpu_model()}
    layers = form()
    data, rows = None, []
    for unit in dict.fromkeys(record["groups"].values()):
        folder = out / unit
        meta = read_record(folder)
        fp, program = meta["fingerprint"], meta.get("program")
        if program is None:
            raise FlaxrayError(f"{folder} records no program shape (trained before replays existed); run the study "
                               "again to replay its seeds")
        seeds, grid = fp["seeds"], settings.normalize(fp["settings"])
        if seed not in seeds:
            continue
        lanes = [(s, lane) for lane in settings.cross(grid) for s in seeds]  # the order train_unit trained them in
        parts, done = scale.chunks(len(lanes), program["seeds_per_chunk"]), {}
        names = group_names(meta["name"], grid)
        trained = {n: load_folder(folder / "params" / slug(n)) for n in names}
        config = trained[names[0]].config
        if here["devices"] != program["devices"]:
            raise FlaxrayError(f"{folder} was trained on {program['devices']} device(s), this machine has "
                               f"{here['devices']}: the seed would run in another program shape")
        trained_layers = compat.program_layers(program)
        if trained_layers != layers:  # a choice, unlike the machine: refused with the setting that replays it
            raise FlaxrayError(f"{folder} was trained with {trained_layers} convolutions and pools, this process runs "
                               f"{layers} ones: the seed would run in another program shape; set "
                               f"{ENV}={trained_layers} to replay it")
        recorded, _ = results.read_curves_csv(folder / "curves.csv")
        if data is None:  # once: every unit trained on the same data
            data = data_for(dataset, config)
        # The seed has one lane per setting; a chunk holds consecutive lanes, so each may be in another chunk.
        for j, name in enumerate(names):
            lane = j * len(seeds) + seeds.index(seed)
            part = next(p for p in parts if p.start <= lane < p.stop)
            if (part.start, part.stop) not in done:
                chunk = lanes[part]
                done[part.start, part.stop] = runner.train_seeds(
                    config, data, [s for s, _ in chunk], [lane for _, lane in chunk],
                    class_names=tuple(dataset.class_names), progress=progress,
                    desc=f"replay {meta['name']} [{part.start}:{part.stop}]", max_seeds_per_chunk=len(chunk),
                    strategy=program.get("strategy", "vmap"))
            states, history = done[part.start, part.stop]
            k = lane - part.start
            curves_same, curves_diff = _tree_equal({key: v[seeds.index(seed)] for key, v in recorded[name].items()},
                                                   {key: history[key][k] for key in recorded[name]})
            saved = trained[name]
            i = saved.seeds.index(seed)
            params_same, params_diff = _tree_equal(jax.tree.map(lambda a: a[i], saved.variables),
                                                   jax.tree.map(lambda a: a[k], states.variables))
            rows.append({"group": name, "seed": seed, "lanes": [part.start, part.stop],
                         "identical": curves_same and params_same, "curves_max_diff": curves_diff,
                         "params_max_diff": params_diff,
                         "same_machine": all(program.get(k2) == v for k2, v in here.items())})
    if not rows:
        raise FlaxrayError(f"seed {seed} is not one of the seeds of the study in {out}")
    return rows


def format_rows(rows) -> str:
    """One line per replayed group: identical, or by how much it differs and whether that is expected."""
    lines = []
    for r in rows:
        what = (f"seed {r['seed']} of {r['group']} (lanes {r['lanes'][0]}..{r['lanes'][1] - 1} trained again): ")
        if r["identical"]:
            lines.append(what + "curves and parameters identical, bit for bit")
        else:
            why = ("" if r["same_machine"] else
                   " -- it ran on another machine than the study (another CPU or device: XLA compiles other "
                   "kernels), so another sample of the same distribution is expected, not the same numbers")
            lines.append(what + f"DIFFERENT: curves by up to {r['curves_max_diff']:.3g}, parameters by up to "
                         f"{r['params_max_diff']:.3g}{why}")
    return "\n".join(lines)
