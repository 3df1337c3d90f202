"""The inspection of a study's seeds as files: PNGs, `inspect.md` (tables and figures) and `inspect.json`
(the numbers). Takes what `flaxray.inspect.compute.inspect_group` computed, as numpy; no jax here.

    groups = {name: inspect_group(t, images) for name, t in load_trained(run_dir).items()}
    write_inspection("runs/x/inspect", groups, images, row_labels=labels, info={...})
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from flaxray import results
from flaxray.inspect import attribution, plots as inspect_plots
from flaxray.report.plots import save
from flaxray.results import slug

BOX_NOTE = ("The lung box is a fixed central rectangle (rows {top:.0%}–{bottom:.0%} of the height, columns "
            "{left:.0%}–{right:.0%} of the width): a crude proxy for the lung fields, not a segmentation. The border "
            "(everything outside it, {area:.0%} of the pixels) holds the corners' markers and text, the shoulders "
            "and the collimator's edge, but also the lung apices and bases of some patients; a map spread evenly "
            "puts {area:.2f} of its mass there. A seed is flagged when its mean share outside the box exceeds "
            "{flag:g}.")


def _fmt(x) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.3f}"


def _figures(out: Path, name: str, i: int, g: Mapping, images, row_labels, shown_seeds: int,
             shown_images: int) -> list[tuple[str, Path]]:
    """Write one group's PNGs; returns (caption, path) in the order inspect.md shows them."""
    stem, seeds = f"{i}-{slug(name)[:24]}", g["seeds"][:shown_seeds]  # short: spec strings are long
    figures = [(f"{g['method']} per seed, their mean and spread",
                save(inspect_plots.plot_attribution(images[:shown_images], g["maps"][:shown_seeds, :shown_images], seeds,
                                                    title=f"{name} · {g['method']}",
                                                    row_labels=row_labels[:shown_images]), out / f"{stem}_maps.png"))]
    if g["filters"] is not None:
        figures.append(("first conv layer's filters", save(inspect_plots.plot_filters(
            g["filters"][:shown_seeds], seeds, title=f"{name} · first-layer filters"), out / f"{stem}_filters.png")))
    if g["templates"] is not None:
        figures.append(("first dense layer's units as images", save(inspect_plots.plot_templates(
            g["templates"][:shown_seeds], seeds, title=f"{name} · first dense layer, unit templates"),
            out / f"{stem}_templates.png")))
    feature_seeds = seeds[:3]
    for layer, (kind, acts) in g["activations"].items():
        figures.append((f"feature maps of layer {layer} ({kind})", save(inspect_plots.plot_feature_maps(
            acts[: len(feature_seeds), 0], images[0], feature_seeds,
            title=f"{name} · layer {layer} ({kind}) · {row_labels[0].replace(chr(10), ' ') if row_labels else 'image 0'}"),
            out / f"{stem}_features_{layer}.png")))
    return figures


def write_inspection(out, groups: Mapping[str, Mapping], images, *, row_labels: Sequence[str] = (),
                     shown_seeds: int = 4, shown_images: int = 4, info: Mapping | None = None) -> dict:
    """Write every group's figures, `agreement.png`, `inspect.md` and `inspect.json` into `out`; returns what
    inspect.json holds. `groups`: {name: `inspect_group(...)`}; `images` (N, H, W, C) uint8, the maps'
    images, of which the first `shown_images` are drawn; `info`: command, data, device and the like, recorded."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images, info = np.asarray(images), dict(info or {})
    summaries = {name: attribution.summarise(g["maps"], g["seeds"]) for name, g in groups.items()}
    figures = {name: _figures(out, name, i, g, images, list(row_labels), shown_seeds, shown_images)
               for i, (name, g) in enumerate(groups.items())}
    area = attribution.border_area(images.shape[1:3])
    agreement = save(inspect_plots.plot_agreement(
        {n: s["per_image_correlation"] for n, s in summaries.items()},
        {n: s["border_fraction"] for n, s in summaries.items()},
        title=f"seed agreement over {len(images)} images", border_area=area,
        smoothed={n: s["per_image_correlation_smoothed"] for n, s in summaries.items()}), out / "agreement.png")
    record = {
        **info,
        "images": {"n": len(images), "shape": list(images.shape[1:]), "labels": list(row_labels)},
        "lung_box": summaries[next(iter(summaries))]["box"] if summaries else None,
        "groups": {name: {"arch": g["arch"], "method": g["method"], "seeds": g["seeds"], **summaries[name],
                          "figures": [p.name for _, p in figures[name]]}
                   for name, g in groups.items()},
        "environment": results.environment(),
    }
    results.write_json(out / "inspect.json", record)
    _write_markdown(out / "inspect.md", record, summaries, figures, agreement, info, area)
    return record


def _write_markdown(path: Path, record, summaries, figures, agreement: Path, info: Mapping, area: float) -> None:
    box = attribution.LUNG_BOX
    lines = ["# What the seeds look at", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items() if isinstance(v, (str, int, float))]
    lines += ["", "## Seed agreement per architecture", "",
              "r̄ is, per image, the mean Pearson correlation between the maps of every pair of seeds (1: the "
              "seeds draw the same map up to scale; 0: unrelated maps); below, its mean ± std over the images, the "
              "95 % bootstrap CI of that mean and its quartiles; smoothed: the same after a Gaussian blur of σ = "
              f"{attribution.SMOOTH_SIGMA:.3g} of the image side (saliency varies pixel by pixel, Grad-CAM is as coarse "
              "as the last conv map, so only the smoothed r̄ compares across the two). Border: each seed's mean share "
              "of its map outside the lung box.", "",
              "| arch | method | seeds | images | r̄ mean ± std | 95 % CI | quartiles | r̄ smoothed | border "
              "fraction per seed | flagged seeds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        c, sm, g = s["correlation"], s["correlation_smoothed"], record["groups"][name]
        quartiles = " / ".join(_fmt(q) for q in s["correlation_quartiles"] or [])
        border = ", ".join(f"{seed}: {_fmt(b)}" for seed, b in s["border_fraction"].items())
        flagged = ", ".join(map(str, s["flagged"])) or "none"
        lines.append(f"| `{name}` | {g['method']} | {len(g['seeds'])} | {s['images']} | {_fmt(c['mean'])} ± "
                     f"{_fmt(c['std'])} | [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}] | {quartiles or '—'} | "
                     f"{_fmt(sm['mean'])} ± {_fmt(sm['std'])} | {border} | {flagged} |")
    lines += ["", BOX_NOTE.format(top=box[0], bottom=box[1], left=box[2], right=box[3], area=area,
                                  flag=attribution.BORDER_FLAG), ""]
    zero = {n: {k: v for k, v in s["zero_maps"].items() if v} for n, s in summaries.items()}
    if any(zero.values()):
        lines += ["All-zero maps (no region raises the explained logit, that of class 1 or of the predicted class; "
                  "left out of the means): " + "; ".join(
            f"`{n}` " + ", ".join(f"seed {k}: {v}" for k, v in z.items()) for n, z in zero.items() if z), ""]
    lines += [f"![agreement]({agreement.name})", ""]
    for name, figs in figures.items():
        lines += [f"## `{name}`", ""]
        for caption, p in figs:
            lines += [f"**{caption[0].upper() + caption[1:]}**", "", f"![{caption}]({p.name})", ""]
    with results.atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines), "utf-8")
