"""A study: a spec in; trained units on disk, evaluation and analysis; a `Result` out.

    spec        Study, DataSpec: what a study compares (archs, seeds, settings, recipe), checked once
    study       prepare, run: the one study runner every study script calls
    units       one arch's seeds (crossed with its settings) on disk: trained once, reused after
    trained     every seed's final parameters, saved and loaded again
    replay      train one seed again, to its exact recorded curves
    race        seeds spent only where the choice between archs is still open
    datasets    several data sets: a study on each, then the archs compared across them
    catalogue   the architecture search's default archs
"""

from flaxray.study.study import DataSpec, Study, prepare, run

__all__ = ["DataSpec", "Study", "prepare", "run"]
