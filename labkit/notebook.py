"""Helpers for the course notebooks, so their cells stay short and about the lab.

- where things are: the repo, the lab folder (``LAB_PATH``), a state folder per session;
- the services: the course LLM, started from the notebook, and Temporal: `lab up`'s when it runs
  (its Web UI on 8233 is the one the docs and the devcontainer's forwarded port show), else one
  started here (Web UI on 8233 when that port is free); bound to 127.0.0.1, what was started here
  stopped by ``services.stop()``;
- waiting for things a human watches: a worker that polls, a retry backoff, a process that
  a human kills with ``kill -9``; a headless run (``autorun()``: nbconvert --execute, papermill,
  nbclient, CI, or ``LAB_NOTEBOOK_AUTORUN=1``) never waits for a human: it does those steps itself;
- the ``temporal`` CLI and the autograder, run as the student would type them.

Generic over labs. Cells run on the kernel's main thread, which is where processes must be
spawned (see labkit.proc, PDEATHSIG): the helpers here never spawn from another thread.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TypeVar

from . import background, course, proc, temporal
from .course import shown  # noqa: F401  (notebooks call notebook.shown)
from .aio import run_sync
from .feedback import tail
from .services import (CourseLLM, ServiceError, TemporalServer, free_port, port_open, temporal_binary,
                       temporal_ready)
from .timeline import Attempt, failed_attempts

T = TypeVar("T")
TEMPORAL_PORT, UI_PORT = background.TEMPORAL_PORT, background.TEMPORAL_UI_PORT  # 7233, 8233 in the docs


AUTORUN_VAR = "LAB_NOTEBOOK_AUTORUN"
_CI_VARS = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "TF_BUILD")


def autorun() -> bool:
    """True in a headless run: nobody is at the keyboard, so the steps that wait for a human (kill
    the worker by hand, approve from a terminal) act alone. See headless() for how it is told."""
    return headless() is not None


def headless() -> str | None:
    """Why this is a headless run, or None when a person runs the notebook.

    - ``LAB_NOTEBOOK_AUTORUN=1`` says headless, ``LAB_NOTEBOOK_AUTORUN=0`` says a person (either
      wins over what follows);
    - a CI runner (``CI`` and the like in the environment);
    - a kernel whose frontend cannot answer ``input()``: every cell is sent with ``allow_stdin``
      false by nbclient, which `jupyter nbconvert --execute`, `jupyter execute` and papermill run
      on; JupyterLab, Notebook and VS Code allow it;
    - no kernel at all (the cells run as a script) with no terminal on stdin.
    """
    chosen = os.environ.get(AUTORUN_VAR, "").strip().lower()
    if chosen in ("1", "true", "yes"):
        return f"{AUTORUN_VAR}=1"
    if chosen in ("0", "false", "no"):
        return None
    for name in _CI_VARS:
        if os.environ.get(name, "").strip().lower() not in ("", "0", "false"):
            return f"CI ({name} is set)"
    kernel = _kernel()
    if kernel is not None:
        if not getattr(kernel, "_allow_stdin", True):
            return "the frontend cannot answer input() (nbconvert --execute, papermill, nbclient)"
        return None
    if not (sys.stdin and sys.stdin.isatty()):
        return "no kernel and no terminal"
    return None


def _kernel():
    """The running IPython kernel, or None outside one (a script, a terminal IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return getattr(shell, "kernel", None) if shell is not None else None


def lab_folder(lab: course.Lab) -> Path:
    """The lab folder the notebook runs: $LAB_PATH (relative to the repo or absolute), else labs/<slug>."""
    chosen = os.environ.get("LAB_PATH")
    if not chosen:
        return lab.starter_dir
    path = Path(chosen)
    return (path if path.is_absolute() else course.REPO / path).resolve()


def state_dir(lab: course.Lab) -> Path:
    """A fresh folder for this session's logs, database and ledger, under .lab/notebooks/."""
    path = course.REPO / ".lab" / "notebooks" / f"{lab.slug}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    path.mkdir(parents=True)
    return path


def preferred_port(port: int) -> int:
    """`port` when nothing listens there, else a free one (a `lab up` server may hold the usual port)."""
    return free_port() if port_open(port) else port


@dataclass
class RunningTemporal:
    """`lab up`'s Temporal server: used by the notebook, never stopped by it."""

    address: str
    ui_url: str | None
    pid: int

    def stop(self) -> None:
        """Not ours: `lab down` stops it."""


def lab_up_temporal() -> RunningTemporal | None:
    """`lab up`'s Temporal, when it runs (its registry's PID alive) and answers, with its Web UI."""
    pid = background.running_pid("temporal")
    address = f"127.0.0.1:{TEMPORAL_PORT}"
    if pid is None or not port_open(TEMPORAL_PORT) or not run_sync(temporal_ready(address)):
        return None
    return RunningTemporal(address, f"http://localhost:{UI_PORT}" if port_open(UI_PORT) else None, pid)


@dataclass
class NotebookServices:
    temporal: TemporalServer | RunningTemporal
    llm: CourseLLM

    @property
    def address(self) -> str:
        return self.temporal.address

    def workflow_url(self, workflow_id: str) -> str:
        return f"{self.temporal.ui_url}/namespaces/default/workflows/{workflow_id}"

    def worker_env(self, lab_dir: Path, **extra: str) -> dict[str, str]:
        """The environment for `python -m <lab package>.worker` and the starter."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
        env.update(PYTHONPATH=str(Path(lab_dir).parent), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
                   TEMPORAL_ADDRESS=self.address, OPENAI_BASE_URL=self.llm.base_url,
                   TEMPORAL_UI_URL=self.temporal.ui_url or "")
        env.update(extra)
        return env

    async def client(self):
        from temporalio.client import Client

        return await Client.connect(self.address)

    def describe(self) -> str:
        if isinstance(self.temporal, RunningTemporal):
            started = f"`lab up` (pid {self.temporal.pid}; used, not stopped, by this notebook)"
        else:
            started = shlex.join([Path(self.temporal.argv()[0]).name, *self.temporal.argv()[1:]])
        return (f"Temporal dev server  {self.address}\n"
                f"Web UI               {self.temporal.ui_url}\n"
                f"course LLM           {self.llm.base_url}  (OpenAI-compatible, scripted replies, no key)\n"
                f"started as           {started}")

    def stop(self) -> None:
        self.llm.stop()
        self.temporal.stop()


def start_services(state: Path, *, course_ports: bool | None = None, use_lab_up: bool | None = None,
                   rules_files: list[Path] | None = None) -> NotebookServices:
    """Temporal (+ Web UI) and the course LLM, started in parallel, bound to 127.0.0.1.

    use_lab_up: use `lab up`'s Temporal when it runs, so the Web UI the student has open (8233, the
    port a devcontainer forwards) shows the notebook's workflows (the default, except in headless
    runs, which must not depend on what else runs on the machine). The course LLM is always the
    notebook's own: its ledger is what the notebook reads.
    course_ports: a Temporal started here runs on 7233 and its Web UI on 8233 when those are free,
    as in the docs (the default, except in headless runs, which take free ports so parallel runs
    never collide).
    """
    if course_ports is None:
        course_ports = not autorun()
    if use_lab_up is None:
        use_lab_up = not autorun()
    llm = CourseLLM(state, rules_files=rules_files or [course.COURSE_TOML])
    llm.launch()
    try:
        running = lab_up_temporal() if use_lab_up else None
        if running is not None:
            llm.wait_ready()
            return NotebookServices(temporal=running, llm=llm)
        for attempt in (1, 2):
            usual = course_ports and attempt == 1
            temporal_server = TemporalServer(state, port=preferred_port(TEMPORAL_PORT) if usual else free_port(),
                                             ui_port=preferred_port(UI_PORT) if usual else free_port())
            try:
                temporal_server.launch().wait_ready()
                break
            except BaseException as err:
                temporal_server.stop()
                # A port taken between the check and the bind: once more, on free ports.
                if attempt == 2 or not isinstance(err, ServiceError):
                    raise
        llm.wait_ready()
    except BaseException:
        llm.stop()
        raise
    return NotebookServices(temporal=temporal_server, llm=llm)


async def wait_polling(client, task_queue: str, worker: proc.ManagedProcess, known: set[str] = frozenset(),
                       timeout: float = 30) -> str:
    """The identity of the worker once it polls `task_queue`; stops it and says why if it never does."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not worker.alive:
                raise RuntimeError(f"the worker (pid {worker.pid}) exited with status {worker.returncode}:\n"
                                   + tail(worker.output()))
            fresh = await temporal.pollers(client, task_queue) - set(known)
            if fresh:
                return sorted(fresh)[0]
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the worker (pid {worker.pid}) did not poll {task_queue!r} within {timeout:.0f} s:\n"
                           + tail(worker.output()))
    except BaseException:
        worker.stop()
        raise


async def wait_for_retry(handle, activity: str, timeout: float = 30) -> Attempt:
    """Wait until `activity` has failed and waits on the server's retry timer; its failed attempt.

    The history will record only the attempt that finally runs, so keep what this returns.
    """
    deadline = time.monotonic() + timeout
    seen = "nothing yet"
    while time.monotonic() < deadline:
        description = await handle.describe()
        if description.status is not None and description.status.name != "RUNNING":
            raise RuntimeError(f"the workflow ended {description.status.name} before {activity} was retried")
        task_failure = await _workflow_task_failure(handle)
        if task_failure:
            raise RuntimeError(f"the workflow code failed in the worker: {task_failure}")
        for failed in await failed_attempts(handle):
            if failed.activity == activity and failed.retry_at and failed.retry_at > datetime.now(timezone.utc):
                return failed
        pending = await temporal.pending_activities(handle)
        seen = "; ".join(f"{p.name} attempt {p.attempt} {p.state.lower()}"
                         + (f" (last failure: {p.last_failure})" if p.last_failure else "") for p in pending) or seen
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{activity} did not reach a retry backoff within {timeout:.0f} s; pending: {seen}")


async def _workflow_task_failure(handle) -> str | None:
    from temporalio.api.enums.v1 import EventType

    for event in (await handle.fetch_history()).events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            return event.workflow_task_failed_event_attributes.failure.message.splitlines()[0][:300]
    return None


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str, every: float = 0.2) -> T:
    """Poll `predicate` until it is truthy (interrupt the kernel to give up early)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")


def temporal_cli(*args: str, address: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the `temporal` CLI against this server, showing the command as a student would type it."""
    print("$ temporal " + shlex.join(args) + f" --address {address}")
    done = subprocess.run([str(temporal_binary()), *args, "--address", address], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    output = (done.stdout + done.stderr).strip()
    if output:
        print(output)
    if check and done.returncode != 0:
        raise RuntimeError(f"`temporal {args[0]} {args[1] if len(args) > 1 else ''}` failed "
                           f"(exit status {done.returncode})")
    return done


def run_check(lab: course.Lab, lab_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`lab check NN` on the notebook's lab folder, as a student would run it in a terminal."""
    lab_cli = Path(sys.executable).parent / "lab"
    if lab_cli.exists():
        argv = [str(lab_cli), "check", lab.id]
        if Path(lab_dir).resolve() != lab.starter_dir.resolve():
            argv += ["--path", str(lab_dir)]
    else:  # the same checks through pytest
        argv = [sys.executable, "-m", "pytest", str(lab.check_path), "--lab-path", str(lab_dir), "-q"]
    print("$ " + shlex.join([Path(argv[0]).name if argv[0] == str(lab_cli) else "python", *argv[1:]]))
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_PATH", "TEMPORAL_ADDRESS")}
    env["COLUMNS"] = env.get("COLUMNS", "110")
    done = subprocess.run(argv, cwd=course.REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    print((done.stdout + done.stderr).rstrip())
    return done


def run_sweep(lab: course.Lab, lab_dir: Path, *, trials: int = 1, kills: int = 2, seed: int = 2026,
              timeout: float = 900) -> subprocess.CompletedProcess | None:
    """`lab sweep NN` on the notebook's lab folder, as a student would run it in a terminal: a few
    SIGKILLs at seeded random moments, then the invariants. None (and says so) under the notebook
    test (LAB_NOTEBOOK_TEST_TOKEN): the sweep of every solution has its own test, tests/test_crash_sweep.py."""
    lab_cli = Path(sys.executable).parent / "lab"
    argv = [str(lab_cli) if lab_cli.exists() else "lab", "sweep", lab.id, "--trials", str(trials),
            "--kills", str(kills), "--seed", str(seed)]
    if Path(lab_dir).resolve() != lab.starter_dir.resolve():
        argv += ["--path", str(lab_dir)]
    typed = "$ " + shlex.join(["lab", *argv[1:]])
    if os.environ.get("LAB_NOTEBOOK_TEST_TOKEN"):
        print(f"{typed}\n(not run under the notebook test: tests/test_crash_sweep.py sweeps every solution)")
        return None
    print(typed)
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_PATH", "TEMPORAL_ADDRESS")}
    env["COLUMNS"] = env.get("COLUMNS", "110")
    done = subprocess.run(argv, cwd=course.REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    print((done.stdout + done.stderr).rstrip())
    return done


def show_file(path: Path):
    """A source file, highlighted, as a cell's output."""
    from IPython.display import Code

    return Code(filename=str(path), language="python")
