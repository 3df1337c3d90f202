"""A study as two processes of JAX's distributed runtime on 127.0.0.1 (gloo CPU collectives), each with
its own CPU device (issue 16): the seeds are split over both processes, a process killed mid-study
makes the other fail within seconds (no hang), a resume under the same launcher completes, and the
curves are those of one process with two devices, byte for byte (the same program shape: one
seed-sharded program over a two-device mesh). A resume with another process count is refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flaxray.runtime import checkpoint
from flaxray.errors import FlaxrayError

ROOT = Path(__file__).resolve().parents[1]
STUDY = ["-m", "studies.seed_variance", "--arch", "dense:8@0.5", "--channels", "1", "--seeds", "3", "--epochs", "12",
         "--batch-size", "512", "--lr", "1e-3", "1e30", "--no-progress"]
FAIL_WITHIN_S = 30  # a killed process's peer stops within this: at its next collective (~1 s here), or
# when the launcher kills it (its --grace, 10 s, after it saw the failure)
START_S = 240  # to the first checkpoint: two processes compile the same programs on two cores


def env(cache, **extra):
    """The processes' environment: XLA_FLAGS kept (CI's AVX2 pass) and a compilation cache they share,
    so the resume does not compile its programs again (the executables, not their results, are reused)."""
    flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), extra.pop("XLA_FLAGS", None)]))
    return {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": flags, "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **extra}


def launch(out, cache):
    return subprocess.Popen([sys.executable, "-m", "flaxray.runtime.launch", "-n", "2", "--", sys.executable, *STUDY,
                             "--out", str(out), "--checkpoint-every", "1"], cwd=ROOT, env=env(cache), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # a group to kill


def children(pid: int) -> dict[int, int]:
    """{FLAXRAY_PROCESS_ID: pid} of the launcher's processes."""
    kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    ids = {}
    for kid in kids:
        variables = dict(v.split(b"=", 1) for v in Path(f"/proc/{kid}/environ").read_bytes().split(b"\0") if b"=" in v)
        ids[int(variables[b"FLAXRAY_PROCESS_ID"])] = kid
    return ids


# Not `numeric`: both sides run the one seed-sharded program over a two-device mesh under the same XLA
# flags, so the identity holds whatever kernels this CPU gets; CI's second pass under AVX2 would only
# repeat its ~90 s of process starts and compiles.
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the launcher's processes in /proc")
def test_two_processes_survive_a_kill_and_give_the_curves_of_one_process_with_two_devices(tmp_path):
    out, cache = tmp_path / "two", tmp_path / "cache"
    launcher = launch(out, cache)
    start = time.monotonic()
    try:
        while not any(p.name.isdigit() for p in out.glob("groups/*/checkpoints/*")):
            assert launcher.poll() is None, launcher.stdout.read()
            assert time.monotonic() - start < START_S, "no checkpoint in time"
            time.sleep(0.05)
        pids = children(launcher.pid)
        os.kill(pids[1], signal.SIGKILL)
        killed = time.monotonic()
        code = launcher.wait(timeout=FAIL_WITHIN_S)  # TimeoutExpired: process 0 hangs on its dead peer
    finally:
        if launcher.poll() is None:  # a failed test leaves no process behind
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    log = launcher.stdout.read()
    # Process 0 exits at its next collective ("process 0 of 2 stopped"), or the launcher stops it.
    assert code != 0 and "stopped the other 1" in log, log[-2000:]
    assert time.monotonic() - killed < FAIL_WITHIN_S
    assert not Path(f"/proc/{pids[0]}").exists()  # reaped, not left waiting
    assert json.loads((out / "run.json").read_text())["status"] in ("failed", "running")

    resumed = subprocess.run([sys.executable, "-m", "flaxray.runtime.launch", "-n", "2", "--", sys.executable,
                              "-m", "studies.seed_variance", "--resume", str(out), "--no-progress",
                              "--checkpoint-every", "1000"],  # saved after the last epoch only: quicker
                             cwd=ROOT, env=env(cache), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert resumed.stdout.count("\nwrote ") == 1  # the printout, from process 0 only
    program = json.loads(next(out.glob("groups/*/group.json")).read_text())["program"]
    assert (program["processes"], program["devices"]) == (2, 2)

    one = tmp_path / "one"
    alone = subprocess.run([sys.executable, *STUDY, "--out", str(one), "--checkpoint-every", "0"], cwd=ROOT,
                           capture_output=True, text=True,
                           env=env(cache, XLA_FLAGS="--xla_force_host_platform_device_count=2"), timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert (out / "curves.csv").read_bytes() == (one / "curves.csv").read_bytes()
    diverged = json.loads((out / "study.json").read_text())["diverged"]
    assert {g: len(d) for g, d in diverged.items()} == {"dense:8@0.5@lr=1e-3": 0, "dense:8@0.5@lr=1e+30": 3}


def test_a_checkpoint_of_two_processes_is_not_resumed_by_one(tmp_path):
    state = {"w": np.arange(4.0, dtype=np.float32)}
    counts = {"train": {"n": np.zeros((4, 1), np.float32)}}
    checkpoint.Checkpoints(tmp_path, {"seeds": [0, 1, 2, 3], "processes": 2}).save(1, state, counts)
    with pytest.raises(FlaxrayError, match=r"written by 2 process\(es\).*this run has 1: resume it with 2"):
        checkpoint.Checkpoints(tmp_path, {"seeds": [0, 1, 2, 3]}).restore(state, counts)


def test_the_launcher_needs_a_command_and_passes_on_a_failure():
    from flaxray.runtime import launch

    assert launch.launch([sys.executable, "-c", "import os, sys; sys.exit(int(os.environ['FLAXRAY_PROCESS_ID']) * 3)"],
                         2) == 3
    assert launch.launch([sys.executable, "-c", "pass"], 2) == 0
    with pytest.raises(SystemExit):
        launch.main(["-n", "2"])
