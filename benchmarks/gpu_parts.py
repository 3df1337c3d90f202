"""What every part of `benchmarks.gpu` shares: the command line it records, a deadline, an end that says why.

    code, stopped = within(until, lambda: seed_variance.main(argv))   # a SIGINT at `until`, as Ctrl-C
    if code != 0:
        return ended(part, notes, "study", code, stopped)

A module of its own so that a part in a module of its own (`benchmarks.gpu_medmnist`) uses the same ones
as those in `benchmarks.gpu`, which imports it (run as `python -m benchmarks.gpu`, that module is
`__main__`: importing it back would run a second copy).
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
import time


def command(module: str, argv) -> str:
    return f"python -m {module} {shlex.join(argv)}"


def within(until: float, call):
    """(call(), stopped): a SIGINT at `until` (monotonic) stops it as Ctrl-C does: a study after the current
    epoch, saved, whose main then returns 130; anything else where it is."""
    fired, lock, done = threading.Event(), threading.Lock(), []

    def fire():
        with lock:  # never once `call` has returned
            if not done:
                fired.set()
                os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(max(0.0, until - time.monotonic()), fire)
    timer.daemon = True
    try:
        try:
            timer.start()  # inside: a deadline already past fires at once
            result = call()
        finally:
            timer.cancel()
            with lock:
                done.append(True)
    except KeyboardInterrupt:
        if not fired.is_set():
            raise  # a person's Ctrl-C
        return None, True
    return result, fired.is_set()


def ended(part: dict, notes: list, what: str, code, stopped: bool) -> dict:
    if code == 130 and not stopped:
        raise KeyboardInterrupt  # a person's Ctrl-C, which the sub-command's main turned into its exit code
    part["status"] = "stopped" if stopped else f"failed (exit {code})"
    notes.append(f"{what}: {part['status']}{' at its deadline' * stopped}, no figures")
    return part
