"""The Markdown section and the printed lines of `benchmarks.gpu`'s report (its gpu.json, as a dict).

    print(line("study", report["parts"]["study"], prefer="final"))
    Path("gpu.md").write_text(markdown(report))   # a section for benchmarks/RESULTS.md, naming the device
    medmnist_section(report["parts"]["medmnist"])  # part d's lines, with the published row beside
"""

from __future__ import annotations


def line(name: str, p: dict, prefer: str) -> str:
    """The line a part prints when it ends (of throughput's rows: vmap's at the largest S, `prefer`'s arch first)."""
    head = f"{name}: {p['status']} in {p['seconds']:.0f} s"
    if p.get("rows"):
        r = max(p["rows"], key=lambda r: (r["method"] == "vmap", r["seeds"], r["arch"] == prefer))
        return f"{head}; {r['arch']} {r['method']} S={r['seeds']}: {r['seed_epochs_per_s']:.3g} seed-epochs/s"
    if "published" in p and "auc" in p:
        acc, auc, pub = p["accuracy"], p["auc"], p["published"]
        return (f"{head}; {p['arch']}, {p['seeds']} seeds x {p['epochs']} epochs: test ACC {acc['mean']:.3f}, AUC "
                f"{auc['mean']:.3f} (seed ensemble {acc['ensemble']:.3f}, {auc['ensemble']:.3f}; published "
                f"{pub['accuracy']:.3f}, {pub['auc']:.3f})")
    if "train_s" in p:
        return (f"{head}; {p['arch']}, {p['seeds']} seeds x {p['epochs']} epochs trained in {p['train_s']:.3g} s "
                f"({p['seed_epochs_per_s']:.3g} seed-epochs/s), checkpoints {100 * p['checkpoint_share']:.1f} % of it")
    if "models" in p:
        return f"{head}; test accuracy " + ", ".join(f"{n} {m['accuracy']:.3f}" for n, m in p["models"].items())
    return head


def table(head: list[str], rows) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(map(str, r)) + " |"
                                                                          for r in rows]


def markdown(r: dict) -> str:
    from benchmarks.throughput import format_table

    env, parts, v, d = r["environment"], r["parts"], r["environment"]["versions"], r["data"]
    a, b, c, med = (parts.get(k, {}) for k in ("throughput", "study", "cnn_vs_ann", "medmnist"))
    n = a.get("data", {})
    lines = [f"## GPU: {r['device']} (issue 14, `python -m benchmarks.gpu`)", "",
             f"- **Device**: {r['device']} ({env['backend']}, {len(env['devices'])} device(s)); host {env['cpu']}, "
             f"{env['cpu_count']} cores. **Versions**: Python {env['python']}, "
             + ", ".join(f"{k} {version}" for k, version in v.items() if version) + ".",
             f"- **Command** (repository root, data as benchmarks/gpu.py says): `{r['command']}`",
             f"- **Data**: `{d['source']}`"
             + (f" (read as `{d['path']}`)" if d["path"] not in (None, d["source"]) else "")
             + f" at {d['image_size']}x{d['image_size']}x3"
             + (f": train {n['train']} / val {n['val']} / test {n['test']} images" if n else "")
             + f". Budget {r['budget_s']:.0f} s, wall {r['wall_s']:.0f} s ("
             + ", ".join(f"{k} {p['seconds']:.0f} s, {p['status']}" for k, p in parts.items()) + ")."]
    lines += [f"- **{note}**" if note == d["note"] else f"- {note}" for note in r["notes"]]
    if a.get("rows"):
        lines += ["", f"### Throughput, seed-epochs/s ({a['steps']} steps of 32 an epoch; compilation excluded)", "",
                  format_table(a["rows"]), "", *table(
                      ["arch", "method", "S", "seed-epochs/s", "compile s", "% peak FLOP/s", "% peak bandwidth",
                       "auto took (probe s)"],
                      [(x["arch"], x["method"], x["seeds"], f"{x['seed_epochs_per_s']:.3g}", f"{x['compile_s']:.1f}",
                        f"{100 * x['flops_fraction']:.1f}", f"{100 * x['bandwidth_fraction']:.1f}",
                        f"{x['strategy']} ({x['probe_s']:.1f})" if "probe_s" in x else "")
                       for x in a["rows"]]),
                  "", f"Peaks: {a['peaks']['source']}."]
    if "train_s" in b:
        lines += ["", f"### The largest `{b['arch']}` study that fits 3 minutes", "", f"`{b['command']}`", "",
                  f"{b['seeds']} seeds x {b['epochs']} epochs of {b['plan']['steps_per_epoch']} steps, planned from "
                  f"S={b['plan'].get('from_seeds')} above: trained in {b['train_s']:.3g} s ({b['wall_s']:.3g} s with "
                  f"the data and the reports), {b['seed_epochs_per_s']:.3g} seed-epochs/s compilation included; "
                  f"{b['checkpoints']} checkpoint(s) took {b['checkpoint_s']:.1f} s, {100 * b['checkpoint_share']:.1f} "
                  f"% of the training. Final val loss {b['final_val_loss']:.3f} ± {b['final_val_loss_std']:.3f}, "
                  f"accuracy {b['final_val_accuracy']:.3f}, AUC {b['final_val_auc']:.3f} (mean ± std over the seeds)."]
    if "models" in c:
        lines += ["", "### CNN vs ANN on the test split", "", f"`{c['command']}`", "", *table(
            ["model", "parameters", "train s", "seed-epochs/s", "test accuracy", "test AUC", "ensemble accuracy"],
            [(f"`{k}`", f"{m['params']:,}", f"{m['train_s']:.3g}", f"{m['seed_epochs_per_s']:.3g}",
              f"{m['accuracy']:.3f}", f"{m['auc']:.3f}", f"{m['ensemble_accuracy']:.3f}")
             for k, m in c["models"].items()]), "", c["verdict"]]
    if "auc" in med:
        lines += ["", *medmnist_section(med)]
    return "\n".join(lines) + "\n"


def medmnist_section(m: dict) -> list[str]:
    """Part d: the recipe as run, the figures per seed, their mean with its CI, the ensemble, the published row."""
    acc, auc, pub, n, p = m["accuracy"], m["auc"], m["published"], m["data"], m["plan"]
    cell = lambda x: f"{x['mean']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}]"  # noqa: E731
    out = ["### MedMNIST v2's ResNet-18 recipe on the embedded 28x28 data (issue 28)", "", f"`{m['command']}`", "",
           f"`{m['arch']}`, {m['seeds']} seeds x {m['epochs']} epochs: Adam 1e-3, x0.1 after epoch(s) "
           f"{', '.join(map(str, m['milestones'])) or 'none (too short a run)'} (50 % and 75 % of the epochs run, "
           f"rounded down), batch 128, each seed's model of its best val AUC kept (mean val AUC {m['val_auc']:.3f}); "
           f"vmap. Planned from a probe: an epoch {p['epoch_s']:.3g} s at {p['probe_seeds']} seeds after "
           f"{p['compile_s']:.3g} s of compilation; trained in {m['train_s']:.3g} s ({m['seed_epochs_per_s']:.3g} "
           f"seed-epochs/s, {'in the programs the probe compiled' if m['reused_probe'] else 'compilation included'}"
           f"). Data: {m['source']}, train {n['train']} / val {n['val']} / test {n['test']} images: "
           "PneumoniaMNIST's source and size, not its split (train 4708 / val 524 / test 624)."]
    if not m["full_length"]:
        out += ["", f"**{m['epochs']} epochs, not the published recipe's 100** ({m['short_because']}): these are the "
                    "figures of a shorter run, its milestones at 50 % and 75 % of it."]
    out += ["", *table(["", "test ACC", "test AUC"], [
        (f"flaxray, mean of {m['seeds']} seeds [95 % bootstrap CI]", cell(acc), cell(auc)),
        ("flaxray, seed ensemble (mean of the seeds' probabilities)", f"{acc['ensemble']:.3f}",
         f"{auc['ensemble']:.3f}"),
        (f"published: {pub['source']}", f"{pub['accuracy']:.3f}", f"{pub['auc']:.3f}")]),
        "", "Per seed, ACC: " + ", ".join(f"{v:.3f}" for v in acc["per_seed"])
        + "; AUC: " + ", ".join(f"{v:.3f}" for v in auc["per_seed"]) + "."]
    return out
