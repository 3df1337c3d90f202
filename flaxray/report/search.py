"""The architecture search's report: `report.md` and the same as a self-contained `report.html`.

`write_report(out, analysis, ...)` draws the figures (PNG, beside the report), then writes one
document twice: markdown that links the PNGs, and HTML with the PNGs embedded as base64 so the
single file can be mailed or attached. No jax; everything comes from `flaxray.analysis.study.analyse`'s dict,
and the metrics it draws and tabulates are the registry's headline ones (`flaxray.analysis.metrics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from flaxray import results
from flaxray.analysis.stopping import lines as stop_lines
from flaxray.analysis import diagnose, metrics, ranking
from flaxray.report import estimate_plots, pairs, plots
from flaxray.analysis.study import settle_sentence
from flaxray.analysis.text import ci, num, prob_ci
from flaxray.report.document import Document
from flaxray.report.table import luck_lines, setting_sentence

_ABBREV = {"good": "g", "overfit": "o", "underfit": "u", "unstable": "s", "diverged": "d"}  # s: spiky
# bands_per_arch.png, not bands.png: a study's own bands.png has every group on shared axes
_FIGURES = {"bands": "bands_per_arch.png", "intervals": "intervals.png", "improvement": "improvement.png",
            "settled": "settled.png"}


def draw_figures(out, analysis: Mapping, histories: Mapping, *, title: str = "") -> dict[str, Path]:
    """bands_per_arch.png (one panel per arch), intervals.png (one panel per metric), improvement.png and
    settled.png (two archs or more)."""
    out = Path(out)
    order = [r["arch"] for r in analysis["ranking"]]
    conf = analysis["confidence"]
    subtitles = {a: diagnosis_summary(analysis["diagnosis"][a]["labels"]) for a in order}
    single = len(order) == 1  # nothing to rank or compare: no "best-ranked", no 1x1 improvement matrix
    paths = {k: out / v for k, v in _FIGURES.items()
             if not (single and k == "improvement") and (k != "settled" or "settled" in analysis)}
    plots.save(plots.plot_band_grid({a: histories[a] for a in order}, subtitles=subtitles, confidence=conf,
                                    title=("Loss curves" if single else "Loss curves per architecture, best-ranked "
                                           "first") + (f" · {title}" if title else "")), paths["bands"])
    panels = tuple(sorted(headline_keys(analysis), key=lambda m: m[0].startswith("best")))  # finals on top
    plots.save(estimate_plots.plot_intervals({a: analysis["summary"][a] for a in order}, metrics=panels,
                                             values=analysis["values"], confidence=conf, ncols=len(panels) // 2 or 1,
                                             title="IQM over seeds with its bootstrap CI"
                                                   + ("" if single else ", best-ranked arch on top")), paths["intervals"])
    if single:
        return paths
    plots.save(estimate_plots.plot_improvement_matrix(
        analysis["improvement"], confidence=conf,
        title=f"P(row improves on column) in final val loss\nbold, framed: its {100 * conf:g} % CI excludes 0.5"),
        paths["improvement"])
    if "settled" in paths:
        plots.save(estimate_plots.plot_settled(analysis["settled"]), paths["settled"])
    return paths


def headline_keys(analysis: Mapping) -> list[tuple[str, str]]:
    """(summary key, label) of the registry's headline metrics (loss, accuracy, AUC) that any arch has."""
    keys = dict.fromkeys(k for summ in analysis["summary"].values() for k in summ)
    out = []
    for key in keys:
        kind, _, name = key.partition("_val_")
        entry = metrics.find(name) if kind in ("final", "best") else None
        if entry is not None and entry.metric.headline:
            out.append((key, ranking.metric_label(key)))
    return out


def diagnosis_summary(labels) -> str:
    """'6 good, 2 overfit' in `diagnose.LABELS` order, classes with no seed left out."""
    labels = list(labels)
    return ", ".join(f"{labels.count(lab)} {lab}" for lab in diagnose.LABELS if labels.count(lab))


def ranking_table(analysis: Mapping) -> tuple[list[str], list[list[str]]]:
    """The ranking as (header, rows) of strings, best first."""
    conf = f"{100 * analysis['confidence']:g} %"
    rows = []
    for r in analysis["ranking"]:
        p_next = "" if not np.isfinite(r["p_next"]) else prob_ci(r["p_next"], r["p_next_low"], r["p_next_high"])
        rows.append([str(r["rank"]), f"`{r['arch']}`", num(r["criterion"]),
                     f"{num(r['iqm'])} {ci(r['iqm_ci_low'], r['iqm_ci_high'])}", num(r["mean"]), num(r["worst"]),
                     p_next, f"{100 * r['one_seed_win']:.0f} %",
                     diagnosis_summary(analysis["diagnosis"][r["arch"]]["labels"])])
    key = analysis["ranking"][0]["key"] if analysis["ranking"] else ranking.RANK_KEY
    header = ["rank", "arch", "criterion", f"IQM {ranking.metric_label(key)} [{conf} CI]", "mean", "worst seed",
              "P(improves on next) [CI]", "one-seed win", "diagnosis"]
    return header, rows


def ranking_markdown(analysis: Mapping) -> str:
    """The ranking table alone, as markdown (what the study prints and RESULTS.md quotes)."""
    doc = Document()
    doc.table(*ranking_table(analysis))
    return doc.markdown()


def run_info(doc: Document, info: Mapping) -> None:
    """The paragraph that says how a study was run: command, data, seeds, epochs, device, versions."""
    doc.para(f"Command: `{info.get('command', '')}`  \n"
             f"Data: {info.get('data', '')}  \n"
             f"Seeds: {info.get('seeds', '')} · epochs: {info.get('epochs', '')} · device: {info.get('device', '')}  \n"
             + (f"Programs: {info['programs']}  \n" if info.get("programs") else "") +
             f"Versions: {info.get('versions', '')}")


def title(archs) -> str:
    """The report's heading: a search when there is something to rank, else one arch's seed variance."""
    if len(archs) == 1:
        return f"Seed variance of `{archs[0]}`: how much its curves move between seeds"
    return "Architecture search: which architecture holds across seeds"


def _ranking(doc: Document, analysis: Mapping) -> None:
    conf = f"{100 * analysis['confidence']:g} %"
    doc.heading(2, "Ranking")
    doc.para(f"Ranked by the **{analysis['criterion']}** (lower is better): the loss a typical seed "
             "reaches at worst given the seeds seen, so neither one lucky seed nor a wide spread can win it. "
             f"P(improves on next): the chance a random seed of this arch ends with a lower final val loss than "
             f"a random seed of the next one ({conf} CI by a stratified bootstrap over seeds). One-seed win: the "
             "chance this arch wins when every arch is trained once with one random seed (the notes' method).")
    doc.table(*ranking_table(analysis))
    one = analysis["one_seed"]
    text = (f"Winner of the mean: `{one['winner_of_mean']}`. Trained once with one random seed per arch, the "
            f"catalogue crowns it with probability {100 * one['p_picks_winner_of_mean']:.0f} %.")
    if "winner_by_seed" in one:
        text += " With the same seed index for every arch, each seed crowns: " + ", ".join(
            f"`{a}`" for a in one["winner_by_seed"]) + "."
    doc.para(text)


def build(analysis: Mapping, figures: Mapping[str, Path], *, info: Mapping) -> Document:
    """The report as a `Document`: verdict, ranking, figures, statistics, diagnosis, decomposition."""
    doc = Document()
    conf = f"{100 * analysis['confidence']:g} %"
    order = [r["arch"] for r in analysis["ranking"]]
    doc.heading(1, title(order))
    doc.para(analysis["verdict"])
    run_info(doc, info)
    if len(order) > 1:
        _ranking(doc, analysis)
    doc.heading(2, "Curves")
    doc.para(f"Train and val loss per arch, same axes; line: mean over seeds, band: {conf} bootstrap CI of the "
             "mean, faint lines: individual seeds. Under each name, its seeds' diagnosis.")
    doc.image(figures["bands"], "loss curves per architecture")

    doc.heading(2, "Statistics over seeds")
    doc.para(f"Per metric: IQM (mean of the middle 50 % of seeds) with its {conf} bootstrap CI as a bar, every "
             "seed as a dot. In the IQM, the median and the worst seed a diverged seed counts as the worst "
             "possible value (∞ loss), never as missing; the mean, its CI and the std are over the seeds that "
             "did not diverge (how many did: the last column).")
    doc.image(figures["intervals"], "interval estimates per metric")
    for key, label in headline_keys(analysis):
        if not all(key in analysis["summary"][a] for a in order):
            continue
        doc.heading(3, label)
        rows = []
        for a in order:
            d = analysis["summary"][a][key]
            rows.append([f"`{a}`", f"{num(d['mean'])} {ci(d['ci_low'], d['ci_high'])}", num(d["median"]),
                         f"{num(d['iqm'])} {ci(d['iqm_ci_low'], d['iqm_ci_high'])}", num(d["std"]), num(d["worst"]),
                         str(d["n"] + d["n_nonfinite"]), str(d["n_nonfinite"])])
        doc.table(["arch", f"mean [{conf} CI]", "median", "IQM [CI]", "std", "worst seed", "seeds", "diverged"], rows)

    if "improvement" in figures:
        doc.heading(2, "Probability of improvement")
        doc.para("Cell (row, column): P(a random seed of the row arch ends with a lower final val loss than a random "
                 "seed of the column arch), ties counting half; 0.5 is a coin flip. As rliable defines it (Agarwal et al. "
                 "2021), the Mann-Whitney U statistic over n·m.")
        doc.image(figures["improvement"], "probability of improvement matrix")


    if "luck" in analysis:
        doc.heading(2, "How lucky was a seed")
        doc.para("Each seed's percentile among its arch's seeds on final val loss (the share of the other seeds it "
                 "beats; a diverged seed is the worst). The notes chose from one seed per arch: the luckiest seed "
                 "below is what such a pick would have seen. " + settle_sentence(analysis))
        for line in luck_lines(analysis):
            doc.para(line)

    if "settings" in analysis:

        doc.heading(2, "Settings beside seeds")
        doc.para("Each arch's settings were trained on the same seeds in one vmapped program. The variance of final "
                 "val loss is split by a two-way ANOVA of settings x seeds: the seeds' variance is the pooled "
                 "within-setting variance, the settings' is (MS settings - MS residual) / seeds (>= 0); the "
                 f"settings' share = settings / (settings + seeds), with a {conf} percentile bootstrap over seeds. "
                 "Above 0.5 the setting moves the result more than the seed does (Bouthillier et al., MLSys 2021).")
        for arch, d in analysis["settings"].items():
            doc.para(setting_sentence(f"`{arch}`", d["varies"], d) + " (groups: "
                     + ", ".join(f"`{g}`" for g in d["groups"]) + ").")
    pairs.section(doc, analysis, figures)

    if "stopping" in analysis:
        doc.heading(2, "Early stopping and model selection")
        doc.para("Each seed stopped on its own, with Keras's EarlyStopping semantics (`flaxray/runtime/stopping.py`); "
                 "its curves end at its stop epoch, and its final values are those of the model it ends with (the "
                 "best epoch's with --restore-best). Groups that differ only in their patience trained the same seeds, "
                 "so they are compared seed by seed.")
        for line in stop_lines(analysis):
            doc.para(line)

    doc.heading(2, "Diagnosis per seed")
    t = analysis["thresholds"]
    doc.para("From each seed's train and val loss curves (`flaxray/analysis/diagnose.py`, `Thresholds`): **diverged** "
             "non-finite loss; **unstable** late val-loss spikes more than "
             f"{t['spike_height']:.0%} off its running median and not shrinking below {t['spike_shrink']:.0%} of the early ones; "
             f"**overfit** val loss {t['overfit_rise']:.0%} above its minimum while train falls, or a gap above "
             f"{t['overfit_gap']:.0%} of val loss that grew; **underfit** train loss at least "
             f"{t['underfit_loss']:.0%} of the class-prior loss ({analysis['baseline_loss']:.3f}) and not below val; "
             "**good** otherwise. Thresholds: " + ", ".join(f"{k}={v}" for k, v in t.items()) + ".")
    rows = []
    for a in order:
        labels = analysis["diagnosis"][a]["labels"]
        rows.append([f"`{a}`", *[f"{labels.count(lab)}/{len(labels)}" for lab in diagnose.LABELS],
                     " ".join(_ABBREV[lab] for lab in labels)])
    doc.table(["arch", *diagnose.LABELS, "per seed (" + " ".join(_ABBREV[lab] for lab in diagnose.LABELS) + ")"],
              rows)

    if "decomposition" in analysis:
        doc.heading(2, "Where the variance comes from")
        doc.para("Each arch trained again with only one source of randomness varied between seeds (the others "
                 "shared): its share = var(final val loss, that source only) / var(all sources varied). Shares need "
                 "not add to 1: sources interact and every variance is estimated from the same few seeds. "
                 "**ulp** is the numerical-noise floor (Summers & Dinneen, ICML 2021): every source shared, only "
                 "each seed's initial parameters nudged by one ulp, so its spread is what float rounding alone "
                 "gives; under each source, its share above that floor.")
        rows = []
        for a, dec in analysis["decomposition"].items():
            cells = [f"`{a}`"]
            for source in [s for s in dec if s != "all"]:
                d = dec[source]
                cells.append(f"{num(d['share'])} {ci(d['share_ci_low'], d['share_ci_high'])}" + (
                    f"; above floor {num(d['above_floor'])} {ci(d['above_floor_ci_low'], d['above_floor_ci_high'])}"
                    if "above_floor" in d else ""))
            cells += [num(dec["all"]["std"]), num(dec["all"]["remainder"])]
            rows.append(cells)
        sources = [s for s in next(iter(analysis["decomposition"].values())) if s != "all"]
        doc.table(["arch", *[f"{s} share [{conf} CI]" for s in sources], "std, all varied", "1 - sum"], rows)
    return doc


def write_report(out, analysis: Mapping, histories: Mapping, *, info: Mapping) -> tuple[Path, Path]:
    """Figures, `report.md` and self-contained `report.html` into `out`; returns the two report paths.

    `info`: strings for the header (command, data, seeds, epochs, device, versions).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(out, analysis, histories, title=info.get("title", ""))
    doc = build(analysis, figures, info=info)
    md, page = out / "report.md", out / "report.html"
    results.write_text(md, doc.markdown())
    results.write_text(page, doc.html(title([r["arch"] for r in analysis["ranking"]]).replace("`", "")))
    return md, page

