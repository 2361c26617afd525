"""Run programs as real OS processes and always reap them, whole trees included.

Every process started here is registered; ``reap_all()`` kills what is left
(at interpreter exit, on SIGTERM, and at the end of every pytest session), so a
failed, timed-out or interrupted check leaves no worker, server or port behind.
On Linux each child also gets PDEATHSIG: if the parent is SIGKILLed, the
kernel kills the child. PDEATHSIG follows the *thread* that spawned the child,
so spawn from the main thread (or a thread that lives as long as the child).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import psutil

from . import limits

_live: dict[int, "ManagedProcess"] = {}

# How long a server may take to answer after it starts before we call it hung: a hang guard, not a
# speed target (a server answers in about a second here, many at a quarter of a core under load;
# each wait returns the moment it answers, and one that exits at start is reported at once).
START_HANG_S = float(os.environ.get("LAB_START_HANG_S", "300"))


def _own_group() -> None:  # runs in the child between fork and exec
    os.setsid()  # own process group: one signal reaches the whole tree
    # A background job of a non-interactive shell (`make test &`) starts with SIGINT ignored, and
    # an ignored signal stays ignored across exec: interrupt() would then never stop the program
    # gracefully. Its own session has no terminal, so the default loses nothing.
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    except ValueError:  # forked from a thread that Python does not take for the main one
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).signal(signal.SIGINT, 0)  # SIG_DFL


def _own_group_die_with_parent() -> None:
    _own_group()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _exited(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _student_preexec(confinement: limits.Confinement):
    def preexec() -> None:  # runs in the child between fork and exec
        _own_group_die_with_parent()
        confinement.apply()
    return preexec


class ManagedProcess:
    """One started program, its output in a log file, and its process tree."""

    def __init__(self, argv: Sequence[str], *, name: str, log_path: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 detached: bool = False, student: bool = False, pass_fds: Sequence[int] = ()):
        """detached=True: a background service meant to outlive this interpreter (`lab up`).
        student=True: the program runs student code: resource limits and, in a check session,
        the write sandbox (labkit.limits). pass_fds: file descriptors the program inherits (a
        listening socket the course bound for a student server, which may not bind one itself)."""
        if student:  # tie what the program sends, and the activities it runs, to its code
            from . import attribution

            argv = attribution.wrap_argv(list(argv), dict(env) if env is not None else None)
        self.argv = list(argv)
        self.name = name
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        confinement = limits.Confinement() if student else None
        if confinement:
            preexec = _student_preexec(confinement)
        else:
            preexec = _own_group if detached else _own_group_die_with_parent
        try:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None, cwd=cwd, preexec_fn=preexec,
                pass_fds=tuple(pass_fds),
            )
        except BaseException:  # no such program, not executable, bad cwd: keep no open log behind
            self._log.close()
            raise
        finally:
            if confinement:
                confinement.close()
        self.pid = self.popen.pid
        self.started_at = time.time()
        self.killed_with: signal.Signals | None = None
        if not detached:
            _live[self.pid] = self

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.pid} {'running' if self.alive else 'exited'}>"

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        if not self._log.closed:  # closed once the process is reaped; the file stays readable
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tree(self) -> list[psutil.Process]:
        if self.popen.returncode is not None:  # reaped: its pid may be another program's by now
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        return []

    def signal_tree(self, sig: signal.Signals) -> None:
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole tree, as a crash would, and wait until it is gone."""
        self.killed_with = signal.SIGKILL
        tree = self.tree()
        self.signal_tree(signal.SIGKILL)
        self._wait_tree(tree, timeout=5)
        self._reap()

    def interrupt(self, timeout: float = 10) -> int | None:
        """SIGINT (Ctrl-C), wait for a graceful exit, SIGKILL if it does not come."""
        self.killed_with = signal.SIGINT
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.stop()
        return self.returncode

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL for whatever of the tree is left."""
        tree = self.tree()
        if tree:
            self.signal_tree(signal.SIGTERM)
            alive = self._wait_tree(tree, timeout=grace)
            for proc in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            self._wait_tree(alive, timeout=5)
        self._reap()

    def _wait_tree(self, tree: list[psutil.Process], timeout: float) -> list[psutil.Process]:
        """Wait for these processes to exit; return those still running.

        The root is waited for through Popen, never psutil: if psutil reaped it, Popen would
        lose its exit status and report 0 for a process that was SIGKILLed. Descendants count as
        exited once they are zombies: they hold no port or file any more, and the init of many
        containers reaps orphans late or never (psutil.wait_procs would wait the whole timeout).
        """
        deadline = time.monotonic() + timeout
        root = [p for p in tree if p.pid == self.pid]
        if root:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        running = [p for p in tree if p.pid != self.pid]
        while True:
            running = [p for p in running if not _exited(p)]
            if not running or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        return root + running if root and self.popen.poll() is None else running

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _reap(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._log.close()
        _live.pop(self.pid, None)


def start(argv: Sequence[str], *, name: str, log_path: Path,
          env: Mapping[str, str] | None = None, cwd: Path | None = None,
          detached: bool = False, student: bool = False, pass_fds: Sequence[int] = ()) -> ManagedProcess:
    return ManagedProcess(argv, name=name, log_path=log_path, env=env, cwd=cwd, detached=detached,
                          student=student, pass_fds=pass_fds)


def live() -> list[ManagedProcess]:
    return list(_live.values())


def reap_all(grace: float = 1.0) -> list[str]:
    """Stop every process this interpreter started and has not reaped yet."""
    reaped = []
    for proc in list(_live.values()):
        reaped.append(repr(proc))
        proc.stop(grace)
    return reaped


def _on_sigterm(signum, frame):  # pragma: no cover - exercised by process tests
    reap_all()
    raise SystemExit(128 + signum)


atexit.register(reap_all)
if hasattr(signal, "SIGTERM") and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, _on_sigterm)


class Watchdog:
    """Is a student process stuck? Judged by its progress, not by the clock: a process that is only
    slow (a loaded or slower machine) runs or waits for a CPU; one that waits for something that
    never comes (an input(), a lock, a connection nobody answers, a loop polling for a decision that
    no one will send) sleeps, and uses next to no CPU. Stuck: over the last idle_limit_s it used less
    than 5% of a CPU and was seldom runnable (a tenth of the samples); or it used cpu_limit_s of CPU
    in all (a loop that never ends). Sampled twice a second (reading /proc costs CPU too)."""

    def __init__(self, pid: int, *, idle_limit_s: float = 20.0, cpu_limit_s: float = 60.0):
        self.pid, self.idle_limit_s, self.cpu_limit_s = pid, idle_limit_s, cpu_limit_s
        self.samples: collections.deque = collections.deque()  # (time, cpu seconds, runnable)
        self.sampled_at = 0.0
        self.verdict: str | None = None

    def sample(self) -> tuple[float, bool] | None:
        try:
            root = psutil.Process(self.pid)
            total, runnable = 0.0, False
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    total += times.user + times.system
                    runnable = runnable or p.status() == psutil.STATUS_RUNNING
            return total, runnable
        except psutil.Error:
            return None

    def stuck(self) -> str | None:
        now = time.monotonic()
        if self.verdict or now - self.sampled_at < 0.5:
            return self.verdict
        self.sampled_at = now
        sample = self.sample()
        if sample is None:
            return None
        cpu, runnable = sample
        self.samples.append((now, cpu, runnable))
        while len(self.samples) > 1 and now - self.samples[1][0] >= self.idle_limit_s:
            self.samples.popleft()  # keep one sample at least idle_limit_s old
        first_at, first_cpu, _ = self.samples[0]
        window = now - first_at
        runnable_share = sum(r for _, _, r in self.samples) / len(self.samples)
        if window >= self.idle_limit_s and cpu - first_cpu < 0.05 * window and runnable_share < 0.1:
            self.verdict = (f"used {cpu - first_cpu:.2f} s of CPU in the last {window:.0f} s and was almost never "
                            "runnable: it waits for something that never comes")
        elif cpu >= self.cpu_limit_s:
            self.verdict = f"used {cpu:.0f} s of CPU without finishing: a loop that never ends"
        return self.verdict
