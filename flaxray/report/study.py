"""A study's report, written from its `Result` (`flaxray.study.result`): bands.png and report.md/html
(the architecture search's report, or with a test comparison, the CNN vs ANN report). Nothing here
trains or evaluates.
"""

from __future__ import annotations

from typing import Mapping

from flaxray import results
from flaxray.report import compare, plots, search


def describe_programs(programs: Mapping) -> str:
    """One line for the programs the units ran in (`units.program_shape` of each), e.g.
    "map (probed), 16 seeds per chunk, shifted layers" — the same line once however many units share it."""
    lines = [f"{p.get('strategy', 'vmap')} ({p.get('strategy_source', 'asked')}), {p.get('seeds_per_chunk')} seeds per "
             f"chunk, {p.get('layers', 'native')} layers" for p in programs.values() if p]
    return "; ".join(dict.fromkeys(lines))


def header(study, dataset, info: Mapping, env: Mapping, programs: Mapping | None = None) -> dict:
    """The strings a report's header shows (`flaxray.report.search.run_info`), from the study and the machine
    (`env`: `results.environment()`) and, when given, the units' program shapes."""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v and k != "flaxray")
    size, channels = dataset.summary.get("image_size"), dataset.summary.get("channels")
    seeds = list(study.seeds)
    return {"command": info.get("command", "flaxray.run (Python)"),
            "seeds": f"{len(seeds)} ({seeds[0]}..{seeds[-1]})", "epochs": study.epochs,
            "data": f"{dataset.summary['source']}, {size}×{size}×{channels}, train {len(dataset.train.y)}, "
                    f"val {len(dataset.val.y)}, test {len(dataset.test.y)}",
            "device": (f"CPU ({env['cpu_count']} cores)" if env["backend"] == "cpu"
                       else f"{env['backend']}: {env['device']} ({env['cpu_count']} CPU cores)"),
            "versions": f"Python {env['python']}, {versions}",
            **({"programs": describe_programs(programs)} if programs else {}),
            "title": f"{len(seeds)} seeds · {size}×{size}×{channels}"}


def write(result) -> None:
    """bands.png and the report of a study's `Result`, into its folder (process 0's alone)."""
    if results.elsewhere():
        return
    out, record = result.out, result.record
    head = header(result.study, result.dataset, result.info, record["environment"], record["programs"])
    histories = {n: g.history for n, g in result.groups.items()}
    plots.save(plots.plot_bands(histories, title=head["title"]), out / "bands.png")
    if result.test is not None:
        compare.write_report(out, result.test, info=head, bands=out / "bands.png")
    else:
        search.write_report(out, result.analysis, histories, info=head)


def format_diverged(diverged) -> str:
    """One line per group with diverged seeds, or '' when none did."""
    return "\n".join(
        f"diverged in {name}: " + ", ".join(f"seed {s} (epoch {e})" for s, e in seeds.items())
        + " -- non-finite loss or gradients; these seeds stopped updating and are NaN from that epoch on"
        for name, seeds in diverged.items() if seeds
    )
