"""The host side of the one trainer: what runs the core's pure functions, where and when.

    programs    the compiled programs, once per config and process; their memory
    scale       how many seeds fit at once; the seed axis over devices
    runner      train_seeds: chunks, devices, checkpoints, progress, Ctrl-C
    checkpoint  orbax checkpoints of every seed's state; the checkpoint policy
    hosts       several processes, one study (jax.distributed)
    launch      `python -m flaxray.runtime.launch -n N -- CMD`: N processes on this machine
"""

from flaxray.runtime.runner import evaluate_seeds, predict, train_seeds

__all__ = ["evaluate_seeds", "predict", "train_seeds"]
