"""Reports: files a person reads, written from results; nothing here trains or evaluates.

    document        markdown/HTML documents and number formatting
    plots           curves and confidence bands (functions return axes; the caller saves)
    estimate_plots  intervals, P(improvement), throughput, when a ranking settles, a race's trace
    search          the architecture search's report.md/html
    pairs           the paired comparisons, the margin's verdicts and the settled epoch, in the report and printout
    study           a study's own files: curves.csv, study.json, bands.png, the report
    race            a race's files
    datasets        a study on several data sets: the comparison across them, each one's best arch
    views           a finished study as pandas DataFrames and TensorBoard runs
"""
