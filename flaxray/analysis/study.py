"""The architecture comparison as plain data: diagnosis, the one summary, the one robust ranking, verdict.

    analysis = analyse(histories, baseline=diagnose.baseline_loss(dataset.train.y))
    report.write_report("runs/search", analysis, histories, info=...)

`histories[arch]` is a Keras-style History {key: (seeds, epochs)} of any class count
(`flaxray.analysis.metrics.curve_keys`). No jax: this runs on a laptop against saved curves.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Mapping, Sequence

import numpy as np
import scipy.stats

from flaxray.analysis import diagnose, pairs, ranking, settled, stats
from flaxray.analysis import paired as paired_test
from flaxray.errors import FlaxrayError

TOTAL = "all"  # the decomposition's run where every source of randomness varies
FLOOR = "ulp"  # the decomposition's run where only a one-ulp nudge of the initial parameters varies (train.FLOOR)


def _held(history, stopped) -> dict:
    """For the diagnosis: a seed that stopped early (`stopped[s]`, 1-based; 0: it did not) holds its
    stop epoch's values to the end (its curves end there; NaN would read as diverged)."""
    if stopped is None or not np.any(stopped):
        return history
    stopped = np.asarray(stopped)
    epochs = np.arange(len(next(iter(history.values()))[0]))
    take = np.where((stopped[:, None] > 0) & (epochs[None, :] >= stopped[:, None]), stopped[:, None] - 1, epochs[None, :])
    return {k: np.take_along_axis(np.asarray(v, float), take, axis=1) for k, v in history.items()}


def _final_val_loss(history, final_epoch=None) -> np.ndarray:
    return ranking.per_seed(history, "val_loss", "final", lower_is_better=True, final_epoch=final_epoch)


def seed_percentiles(values, lower_is_better: bool = True) -> np.ndarray:
    """Each seed's percentile among its arch's seeds: the share of the other seeds it beats, ties half,
    times 100 (100: better than every other seed; a diverged seed counts as the worst). NaN for one seed."""
    s = stats.as_scores(np.ravel(values), lower_is_better) * (-1.0 if lower_is_better else 1.0)  # higher = better
    if s.size < 2:
        return np.full(s.size, np.nan)
    beats = (s[:, None] > s[None, :]).sum(1) + 0.5 * ((s[:, None] == s[None, :]).sum(1) - 1)
    return 100 * beats / (s.size - 1)


SETTLE_SEEDS = (3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def seeds_to_settle(a, b, *, power: float = 0.8, alpha: float = 0.05, sims: int = 400, seed: int = 0,
                    paired: bool = False) -> int | None:
    """Seeds per arch at which a two-sided Mann-Whitney U test at `alpha` tells `a` from `b` in a share
    `power` of simulated studies, whose seeds are drawn with replacement from the observed per-seed
    values (a diverged seed as the worst); None when 512 seeds would not. A bootstrap power estimate:
    it takes the observed difference as the true one, so with few seeds it is itself rough.
    `paired`: a and b are the same seeds at two settings; a simulated study draws whole seeds (their
    differences) and the test is Wilcoxon's signed-rank test of the differences (`flaxray.analysis.paired`)."""
    a, b = stats.as_scores(np.ravel(a)), stats.as_scores(np.ravel(b))
    rng = np.random.default_rng(seed)
    for n in SETTLE_SEEDS:
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # all-tied draws: p is NaN, counted as not told apart
            warnings.simplefilter("ignore", UserWarning)  # ties among the differences: scipy's normal null
            if paired:
                p = scipy.stats.wilcoxon(rng.choice(paired_test.difference(a, b), (sims, n)), axis=1,
                                         method="asymptotic").pvalue
            else:
                xa, xb = rng.choice(a, (sims, n)), rng.choice(b, (sims, n))
                p = scipy.stats.mannwhitneyu(xa, xb, axis=1, method="asymptotic").pvalue
        if np.mean(p < alpha) >= power:
            return n
    return None


def _components(y):
    """(setting variance, seeds' variance, MS settings, MS residual) of (..., settings, seeds) arrays."""
    k, n = y.shape[-2:]
    rows, cols = y.mean(-1, keepdims=True), y.mean(-2, keepdims=True)
    grand = rows.mean(-2, keepdims=True)
    ms_setting = n * ((rows - grand) ** 2).sum((-2, -1)) / (k - 1)
    ms_residual = ((y - rows - cols + grand) ** 2).sum((-2, -1)) / ((k - 1) * (n - 1))
    seed_var = ((y - rows) ** 2).sum((-2, -1)) / (k * (n - 1))
    return np.maximum(0.0, (ms_setting - ms_residual) / n), seed_var, ms_setting, ms_residual


def setting_shares(values, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict:
    """How much of the variance of a per-seed value (final val loss) the settings explain, against the seeds.

    `values[i, j]`: setting i (e.g. a dropout rate), seed j; the same seeds at every setting, as a
    unit trains them (seeds with a non-finite value anywhere are left out). A two-way ANOVA of this
    crossed design, the settings fixed (the grid asked for) and the seeds random:
    seeds' variance = the pooled within-setting variance (what the seed moves at one setting);
    setting variance = (MS settings - MS residual) / seeds, >= 0: the spread of the settings' true
    means (a seed's effect shared by every setting cancels from it, so it is unbiased even when a seed
    is lucky at every setting). `share` = setting / (setting + seeds); above 0.5 the setting moves the
    result more than the seed does (Bouthillier et al., MLSys 2021). CI: a percentile bootstrap over
    seeds (whole columns, so the crossing is kept); `p`: the F-test of no setting effect.
    """
    y = np.asarray(values, float)
    y = y[:, np.isfinite(y).all(0)]
    k, n = y.shape
    out = {"settings": k, "n": n, **{key: float("nan") for key in
                                     ("setting_var", "seed_var", "share", "share_ci_low", "share_ci_high", "p")}}
    if k < 2 or n < 2:
        return out
    setting_var, seed_var, ms_setting, ms_residual = _components(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        out.update(setting_var=float(setting_var), seed_var=float(seed_var),
                   share=float(setting_var / (setting_var + seed_var)),
                   p=float(scipy.stats.f.sf(ms_setting / ms_residual, k - 1, (k - 1) * (n - 1))))
        boot = _components(y[:, np.random.default_rng(seed).integers(0, n, (n_resamples, n))].transpose(1, 0, 2))
        out["share_ci_low"], out["share_ci_high"] = stats.percentile_ci(boot[0] / (boot[0] + boot[1]), confidence)
    return out



def analyse(histories: Mapping[str, Mapping[str, np.ndarray]], *, baseline: float = float(np.log(2)),
            decomposition: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]] | None = None,
            confidence: float = 0.95, thresholds: diagnose.Thresholds = diagnose.THRESHOLDS,
            seeds: Mapping[str, Sequence[int]] | None = None, settings: Mapping[str, Mapping] | None = None,
            final_epochs: Mapping[str, np.ndarray] | None = None, stopped: Mapping[str, np.ndarray] | None = None,
            rope: float | None = None) -> dict:
    """Everything the report shows, as plain data (numpy arrays and floats).

    Works for any class count: everything per metric comes from the registry (`flaxray.analysis.metrics`).
    Keys: diagnosis {arch: {labels, fractions, measures}}, summary {arch: `ranking.summarize`, diverged
    seeds counted as the worst}, values {arch: {summary key: per-seed values, diverged seeds NaN}},
    ranking (`ranking.rank` rows, best first, with
    p_next / p_next_low / p_next_high = P(this arch improves on the next one) and one_seed_win),
    improvement (`ranking.improvement_matrix` of final val loss, in ranking order), one_seed
    (the notes' one-run-per-arch choice: win probabilities, the winner of the mean, the chance a
    single seed picks it, and the winner of each seed index), decomposition {arch:
    `stats.variance_shares`} when given, criterion (what ranks), thresholds, baseline, confidence,
    luck {arch: {seed: percentile of its final val loss among the arch's seeds}} (`seeds` names them;
    default 0..S-1) and settle (`seeds_to_settle` of the first two archs of the ranking).
    `settings` {arch: {"varies": "dropout", "groups": [group names, one per setting]}} (the groups of
    one unit, same seeds; optional "levels": {group: {setting: value}}) adds settings {arch: `setting_shares` +
    varies} and paired (`pairs.analyse`: groups of one arch differing in one setting, compared seed by seed,
    each with settle {paired, unpaired}: `seeds_to_settle` both ways); `rope` (a margin in final val loss)
    adds rope (every pair better, worse, equivalent or undecided). settled (`settled.analyse`, two groups or
    more): each epoch's ranking against the last's. `final_epochs` {arch: (S,)}:
    the epoch whose model each seed ends with (early stopping, model selection; default the last);
    `stopped` {arch: (S,)}: the epoch each seed stopped after (0: it did not).
    """
    final_epochs, stopped = final_epochs or {}, stopped or {}
    if not histories:
        raise FlaxrayError("no architecture to analyse")
    diagnosis, summary, values = {}, {}, {}
    for arch, history in histories.items():
        final = final_epochs.get(arch)
        labels, measures = diagnose.diagnose(_held(history, stopped.get(arch)), baseline=baseline, thresholds=thresholds)
        diverged = labels == "diverged"
        diagnosis[arch] = {"labels": list(labels), "fractions": diagnose.fractions(labels), "measures": measures}
        summary[arch] = ranking.summarize(history, diverged=diverged, confidence=confidence, final_epoch=final)
        values[arch] = ranking.per_seed_values(history, diverged=diverged, final_epoch=final)

    ranked = ranking.rank(summary)
    order = [r["arch"] for r in ranked]
    scores = {a: values[a][ranking.RANK_KEY] for a in order}
    matrix = ranking.improvement_matrix(scores, confidence=confidence)
    wins = ranking.one_seed_win_probability(scores)
    for i, row in enumerate(ranked):
        nxt = i + 1 < len(ranked)
        row["p_next"], row["p_next_low"], row["p_next_high"] = (
            (matrix["p"][i, i + 1], matrix["low"][i, i + 1], matrix["high"][i, i + 1]) if nxt else (np.nan,) * 3)
        row["one_seed_win"] = wins[row["arch"]]
        row["good"] = diagnosis[row["arch"]]["fractions"]["good"]

    mean_winner = ranking.winner_of_mean(scores)
    one_seed = {"win_probability": wins, "winner_of_mean": mean_winner, "p_picks_winner_of_mean": wins[mean_winner]}
    n_seeds = {len(v) for v in scores.values()}
    if len(n_seeds) == 1 and len(order) > 1:
        # The same seed index for every arch: which arch each single seed would have crowned.
        table = np.stack([stats.as_scores(scores[a]) for a in order])
        one_seed["winner_by_seed"] = [order[i] for i in np.argmin(table, axis=0)]

    out = {"criterion": ranking.RANK_CRITERION, "confidence": confidence, "baseline_loss": baseline,
           "thresholds": dataclasses.asdict(thresholds), "diagnosis": diagnosis, "summary": summary,
           "values": values, "ranking": ranked, "improvement": matrix, "one_seed": one_seed}
    out["luck"] = {a: dict(zip((seeds or {}).get(a, range(len(scores[a]))), seed_percentiles(scores[a])))
                   for a in order}
    if len(order) > 1:
        out["settle"] = {"archs": order[:2], "power": 0.8, "alpha": 0.05,
                         "seeds": seeds_to_settle(scores[order[0]], scores[order[1]])}
    if decomposition:
        out["decomposition"] = {
            arch: stats.variance_shares({s: _final_val_loss(h) for s, h in runs.items()}, total=TOTAL,
                                        confidence=confidence, floor=FLOOR)
            for arch, runs in decomposition.items()
        }
    if settings:
        out["settings"] = {arch: {"varies": d["varies"], "groups": list(d["groups"]), **setting_shares(
            [_final_val_loss(histories[g], final_epochs.get(g)) for g in d["groups"]], confidence=confidence)} for arch, d in settings.items()}
    out.update(pairs.analyse(scores, order, settings, confidence=confidence, rope=rope))
    for p in out.get("paired", []):  # the seeds a claim needs, paired against unpaired, on the same values
        p["settle"] = {way: seeds_to_settle(scores[p["a"]], scores[p["b"]], paired=way == "paired")
                       for way in ("paired", "unpaired")}
    if len(order) > 1:
        out["settled"] = settled.analyse({a: _held(histories[a], stopped.get(a))["val_loss"] for a in order}, order,
                                         confidence=confidence)
    out["verdict"] = verdict(out)
    return out


def _pct(p: float) -> str:
    return f"{100 * p:.0f} %"


def verdict(analysis: Mapping) -> str:
    """A few sentences naming the most robust arch, by how much, and how sure that is (markdown)."""
    ranked, conf = analysis["ranking"], analysis["confidence"]
    first = ranked[0]
    s = analysis["summary"][first["arch"]][ranking.RANK_KEY]
    diag = analysis["diagnosis"][first["arch"]]["labels"]
    others = ", ".join(f"{diag.count(lab)} {lab}" for lab in diagnose.LABELS if lab != "good" and diag.count(lab))
    health = f"{diag.count('good')} of {len(diag)} seeds diagnosed good{' (' + others + ')' if others else ''}"
    about = (f"IQM {s['iqm']:.4g} (95 % CI {s['iqm_ci_low']:.4g}–{s['iqm_ci_high']:.4g}) over "
             f"{s['n'] + s['n_nonfinite']} seeds, "
             f"worst seed {s['worst']:.4g}")
    if len(ranked) == 1:
        return (f"**{first['arch']}** is the only architecture, so nothing is ranked: {about}; {health}.")
    second = ranked[1]
    s2 = analysis["summary"][second["arch"]][ranking.RANK_KEY]
    lead = second["criterion"] - first["criterion"]
    relative = f", {lead / second['criterion']:.1%}" if np.isfinite(lead) and second["criterion"] > 0 else ""
    text = (f"**{first['arch']}** holds best across seeds by the {analysis['criterion']}: "
            f"{first['criterion']:.4g} against {second['criterion']:.4g} for the runner-up **{second['arch']}** "
            f"({lead:.3g} lower{relative}). {first['arch']}: {about}; {health}. {second['arch']}: IQM "
            f"{s2['iqm']:.4g} (CI {s2['iqm_ci_low']:.4g}–{s2['iqm_ci_high']:.4g}), worst seed {s2['worst']:.4g}. "
            f"P({first['arch']} improves on {second['arch']}) = {first['p_next']:.2f} "
            f"({100 * conf:g} % CI {first['p_next_low']:.2f}–{first['p_next_high']:.2f})")
    if np.isfinite(first["p_next_low"]) and first["p_next_low"] > 0.5:
        text += ": the CI excludes 0.5, so the lead holds over these seeds."
    else:
        text += ": the CI includes 0.5, so on these seeds the two are not told apart."
    one = analysis["one_seed"]
    text += (f" The winner of the mean is **{one['winner_of_mean']}**; choosing from one seed per arch, as the "
             f"notes did, picks it with probability {_pct(one['p_picks_winner_of_mean'])}")
    if "winner_by_seed" in one:
        k = one["winner_by_seed"].count(one["winner_of_mean"])
        text += f" (seed by seed here: {k} of {len(one['winner_by_seed'])})"
    likeliest = max(one["win_probability"], key=one["win_probability"].get)
    if likeliest != one["winner_of_mean"]:
        rank = next(r["rank"] for r in ranked if r["arch"] == likeliest)
        text += (f"; the one-seed method's likeliest pick is **{likeliest}** "
                 f"({_pct(one['win_probability'][likeliest])}), ranked {rank} of {len(ranked)} here")
    return text + ". " + settle_sentence(analysis) + pairs.sentences(analysis)


def settle_sentence(analysis: Mapping) -> str:
    """How many seeds would tell the first two archs apart, in words ('' with one arch)."""
    settle = analysis.get("settle")
    if not settle:
        return ""
    a, b = settle["archs"]
    how = (f"about {settle['seeds']} seeds per arch" if settle["seeds"] else "more than 512 seeds per arch")
    return (f"Seeds a claim needs: {how} would tell **{a}** from **{b}** on final val loss with "
            f"{_pct(settle['power'])} power (a Mann-Whitney test at {settle['alpha']:g}, simulated from the "
            "observed seeds).")
