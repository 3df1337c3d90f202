"""Start one command as N processes of one JAX program on this machine (`flaxray.runtime.hosts`).

    python -m flaxray.runtime.launch -n 2 -- python -m studies.seed_variance --arch pyramid --seeds 16 --out runs/two

Each process gets FLAXRAY_COORDINATOR (127.0.0.1 and a free port), FLAXRAY_NUM_PROCESSES and
FLAXRAY_PROCESS_ID; a study started so joins the others, splits its seeds over every process's
devices and writes its files from process 0. If a process fails or is killed, the others are
stopped (SIGTERM, then SIGKILL after --grace seconds) and the launcher exits with that process's
code, so a broken study never waits on a dead peer; rerun it with --resume to continue.
On a cluster, SLURM (`srun --kill-on-bad-exit=1`) or Open MPI start the processes instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

# Read by `flaxray.runtime.hosts.initialize` in every process; this module stays free of jax, the launcher only waits.
COORDINATOR, PROCESSES, PROCESS_ID = "FLAXRAY_COORDINATOR", "FLAXRAY_NUM_PROCESSES", "FLAXRAY_PROCESS_ID"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command: list[str], n: int, *, port: int | None = None, grace: float = 10.0) -> int:
    """Run `command` as `n` processes; 0 when all succeed, else the first failure's exit code."""
    address = f"127.0.0.1:{port or free_port()}"
    procs = [subprocess.Popen(command, env={**os.environ, COORDINATOR: address, PROCESSES: str(n), PROCESS_ID: str(i)})
             for i in range(n)]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:  # the children got the same Ctrl-C from the terminal: let them save and stop
        for p in procs:
            p.wait()
        return 130
    for p in procs:  # a failed process: its peers would wait for it in their next collective
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if failed:
        print(f"flaxray.runtime.launch: a process exited with {failed[0]}; stopped the other {n - 1}", file=sys.stderr)
        return failed[0] if failed[0] > 0 else 128 - failed[0]
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flaxray.runtime.launch", description=__doc__.split("\n\n")[0],
                                usage="python -m flaxray.runtime.launch -n N [--port P] -- COMMAND ...")
    p.add_argument("-n", "--processes", type=int, required=True, help="how many processes to start")
    p.add_argument("--port", type=int, default=None, help="the coordinator's port on 127.0.0.1 (default: a free one)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds the others get to stop after one failed, before they are killed")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command every process runs, after --")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command after --, e.g. -- python -m studies.seed_variance --arch pyramid")
    if args.processes < 1:
        p.error(f"-n must be >= 1, got {args.processes}")
    return launch(command, args.processes, port=args.port, grace=args.grace)


if __name__ == "__main__":
    sys.exit(main())
