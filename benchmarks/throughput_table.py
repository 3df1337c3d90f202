"""The printed rows and the markdown table of `benchmarks.throughput`, from its rows (dicts as in throughput.json)."""

from __future__ import annotations

from benchmarks.timing import paired_share

SERIAL = ("sequential", "keras")  # seed after seed: their seed-epochs/s does not depend on S


def format_row(r: dict) -> str:
    took = f" ({r['strategy']}; probe {r['probe_s']:.1f} s)" if r["method"] == "auto" else ""
    return (f"{r['arch']:>10} {r['method']:>10} S={r['seeds']:<4} {r['seed_epochs_per_s']:9.3f} seed-epochs/s  "
            f"compile {r['compile_s']:6.1f} s  {100 * r['flops_fraction']:5.1f} % FLOP/s  "
            f"{100 * r['bandwidth_fraction']:5.1f} % bandwidth{took}")


def serial_rate(rate: dict, arch: str, method: str, seeds: int) -> tuple[float, bool] | None:
    """(seed-epochs/s of a seed-after-seed method at `seeds`, whether it is the rate of a smaller S, for S
    past --serial-max-seeds: the largest S measured), or None if it was not measured at or below `seeds`."""
    if (arch, method, seeds) in rate:
        return rate[arch, method, seeds], False
    below = [s for a, m, s in rate if (a, m) == (arch, method) and s < seeds]
    return (rate[arch, method, max(below)], True) if method in SERIAL and below else None


def format_table(rows: list[dict]) -> str:
    """Markdown: one row per (arch, S), a column per method (auto's with the strategy it took), and the
    speed-up of auto (else vmap, else the first of flaxray's) over each other method; past
    --serial-max-seeds, over a seed-after-seed method's rate at the largest S it was measured at (marked *,
    with a note under the table); with keras-vmap and keras, keras-vmap's over keras's too; with
    --verify-rounds, the fastest candidate's whole epoch over the one auto took, and the same round by round."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    rate = {(r["arch"], r["method"], r["seeds"]): r["seed_epochs_per_s"] for r in rows}
    took = {(r["arch"], r["seeds"]): r["strategy"] for r in rows if r["method"] == "auto"}
    lead = next((m for m in ("auto", "vmap", *methods) if m in methods and m not in SERIAL), None)
    others = [m for m in methods if m != lead]
    # a user's Keras model vmapped, against Keras's fit seed after seed
    versus = ["keras"] if "keras-vmap" in methods and "keras" in methods and lead != "keras-vmap" else []
    whole = {(r["arch"], r["seeds"]): (r["whole_epoch_s"], str(r["strategy"])) for r in rows if r.get("whole_epoch_s")}
    paired = {(r["arch"], r["seeds"]): paired_share(r["whole_epoch_rounds"], str(r["strategy"]))
              for r in rows if r.get("whole_epoch_rounds")}
    head = ["arch", "S", *methods] + ([f"{lead} / {m}" for m in others] if lead else []) + \
        [f"keras-vmap / {m}" for m in versus] + (["auto / best, whole epochs"] if whole else []) + \
        (["auto / best, round by round"] if paired else [])
    lines, marked = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)], False
    for arch, seeds in dict.fromkeys((r["arch"], r["seeds"]) for r in rows):
        cells = [arch, str(seeds)] + [
            (f"{rate[arch, m, seeds]:.3g}" + (f" ({took[arch, seeds]})" if m == "auto" else ""))
            if (arch, m, seeds) in rate else "–" for m in methods]
        if lead:
            ratios = [serial_rate(rate, arch, m, seeds) for m in others]
            cells += [f"{rate[arch, lead, seeds] / r[0]:.2f}×{'*' * r[1]}"
                      if (arch, lead, seeds) in rate and r else "–" for r in ratios]
            marked = marked or any(r and r[1] for r in ratios)
        for r in (serial_rate(rate, arch, m, seeds) for m in versus):
            cells.append(f"{rate[arch, 'keras-vmap', seeds] / r[0]:.2f}×{'*' * r[1]}"
                         if (arch, "keras-vmap", seeds) in rate and r else "–")
            marked = marked or bool(r and r[1])
        if whole:
            epochs, took_it = whole.get((arch, seeds), ({}, None))
            cells.append(f"{min(epochs.values()) / epochs[took_it]:.3f}×" if took_it in epochs else "–")
        if paired:
            cells.append(f"{paired[arch, seeds]:.3f}×" if (arch, seeds) in paired else "–")
        lines.append("| " + " | ".join(cells) + " |")
    if marked:
        lines += ["", "\\* over the seed-after-seed method's seed-epochs/s at the largest S it was measured at "
                  "(--serial-max-seeds): one seed after another, its rate does not grow with S"]
    return "\n".join(lines)
