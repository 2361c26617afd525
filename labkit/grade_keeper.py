"""Keep one grading run: run its pytest, adopt whatever escapes, and leave nothing running.

    python -m labkit.grade_keeper PROGRAM [ARGS...]

The grader starts this (in a session of its own) in place of pytest. It makes itself a child
subreaper (PR_SET_CHILD_SUBREAPER), so a student process that double-forks, calls setsid and
execs with an empty environment, out of reach of both the process-group kill and the
LAB_GRADE_RUN sweep, is re-parented here rather than to init. pytest inherits stdin (the
report key; this process never reads it) and stdout (the signed report). When pytest exits,
or when the grader sends SIGTERM (the time limit), the keeper SIGKILLs every descendant it
still has, reaps them, and exits with pytest's status. It lists what it had to kill in the
file LAB_KEEPER_NOTE names (outside the student's sandbox), for the verdict.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

import psutil

PR_SET_CHILD_SUBREAPER = 36
NOTE_ENV = "LAB_KEEPER_NOTE"  # where to write what was left behind (one line per process)


def _reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _running_descendants() -> list[psutil.Process]:
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def kill_descendants(grace: float = 1.0, timeout: float = 10.0) -> list[str]:
    """Give the run's own processes `grace` seconds to finish dying (PDEATHSIG was sent when pytest
    exited), then SIGKILL every descendant until none is left (a fork loop gets several rounds) and
    reap them. Returns the ones that had to be killed."""
    deadline = time.monotonic() + grace
    while _running_descendants() and time.monotonic() < deadline:
        time.sleep(0.02)
        _reap_zombies()
    left: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _running_descendants()
        if not found:
            break
        for process in found:  # freeze them all first: a fork loop cannot outrun a frozen parent
            with contextlib.suppress(psutil.Error):
                process.suspend()
        for process in found:
            with contextlib.suppress(psutil.Error):
                left.append(f"pid {process.pid}: {' '.join(process.cmdline())[:160]}")
                process.kill()
        time.sleep(0.02)
        _reap_zombies()
    _reap_zombies()
    return left


def main(argv: list[str]) -> int:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = subprocess.Popen(argv)

    def stop(signum, frame):  # the time limit: pytest's own processes die with it (PDEATHSIG)
        with contextlib.suppress(ProcessLookupError):
            child.kill()

    signal.signal(signal.SIGTERM, stop)
    code = child.wait()
    left = kill_descendants()
    note = os.environ.get(NOTE_ENV)
    if note and left:
        with open(note, "w") as handle:
            handle.write("\n".join(left) + "\n")
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
