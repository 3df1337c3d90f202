"""Analysis: numpy and scipy only, no jax, no files, no report text.

    metrics     the one metric registry: names, directions, formulas from sufficient statistics
    probs       those statistics from probabilities on the host (a test evaluation, saved predictions)
    stats       across-seed statistics of one number per seed: bootstrap CIs, IQM, bands, variance shares
    ranking     the per-arch summary, the one ranking, P(improvement)
    diagnose    each seed's loss curves: good, overfit, underfit, unstable or diverged
    study       a study's whole analysis: diagnosis, summary, ranking, verdict, seeds to settle
    compare     two models on the held-out test set, over seeds
    sequential  the race's test: exact Mann-Whitney p-values, alpha spent over the looks, futility's power
    paired      two groups on one per-seed value: paired tests, Hodges-Lehmann shifts, equivalence (TOST)
    pairs       which groups of a study are paired, their comparisons and the margin's verdicts
    settled     each epoch's ranking against the last's: Kendall's tau, the epoch the top group settles
    tasks       archs across several data sets: rliable's aggregates, stratified bootstrap, profiles
"""
