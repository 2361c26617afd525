"""Run a lab's worker as real processes for a check: start it, wait until it polls, kill it, restart it.

Generic over labs: the lab's package supplies `python -m <pkg>.worker`, which reads
TEMPORAL_ADDRESS, TEMPORAL_TASK_QUEUE and the OpenAI variables from its environment.
Failures become teaching messages (CheckFailed), never bare asserts.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import Client, WorkflowHandle, WorkflowHistory

from . import attribution, limits, proc, temporal
from .feedback import CheckFailed, parse_error, student_error, tail, unfinished


BENIGN_TASK_FAILURES = {
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND,
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_STICKY_TASK_QUEUE,
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_FORCE_CLOSE_COMMAND,
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_FAILOVER_CLOSE_COMMAND,
    WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW,
}


class WorkerHarness:
    """The student's worker processes for one check scenario, on their own task queue and LLM key.

    `wait_for_llm=False` hands the workers the course LLM's address before it answers, so they start
    while it finishes starting; the scenario then reads `services.llm` before any workflow needs it.
    A scenario that starts a replay process keeps it in `replay`; `close()` stops it and the workers."""

    # what worker.py registers, in the teaching message for a worker that never polls
    registers = "the workflow and the activities"

    def __init__(self, target, services, workdir: Path, *, lab: str, key: str, wait_for_llm: bool = True,
                 **env: str):
        self.target, self.services, self.workdir, self.lab = target, services, Path(workdir), lab
        self.task_queue = f"lab{lab}-{key}"
        self.api_key = f"lab-{key}"
        self.attempt_log = self.workdir / f"attempts-{key}.jsonl"  # every activity attempt (labkit.attribution)
        self.env = target.python_env(
            TEMPORAL_ADDRESS=services.temporal_address,
            TEMPORAL_TASK_QUEUE=self.task_queue,
            OPENAI_BASE_URL=services.llm.base_url if wait_for_llm else services.llm_base_url,
            OPENAI_API_KEY=self.api_key,
            **{attribution.ATTEMPT_LOG_ENV: str(self.attempt_log)},
            **env,
        )
        self.workers: list[proc.ManagedProcess] = []
        self.replay = None  # a labkit.temporal.Replay or labkit.replays.ReplaySet, when the scenario starts one

    def next_host(self) -> tuple[Path, dict[str, str]]:
        """The working directory and environment of the next worker, as if it ran on a host of its
        own: a fresh, empty working directory, TMPDIR and HOME, so nothing the previous worker kept
        in local files (a "failed once" marker, a cache) is there for the next one. What survives a
        crash must live on the servers: Temporal's history, the database, the ledger."""
        host = self.workdir / f"host{len(self.workers) + 1}"
        for sub in ("tmp", "home"):
            (host / sub).mkdir(parents=True, exist_ok=True)
        return host, dict(self.env, TMPDIR=str(host / "tmp"), HOME=str(host / "home"))

    def start_worker(self) -> proc.ManagedProcess:
        n = len(self.workers) + 1
        cwd, env = self.next_host()
        worker = proc.start([sys.executable, "-m", self.target.module("worker")], name=f"worker{n}",
                            log_path=self.workdir / f"worker{n}.log", env=env, cwd=cwd, student=True)
        self.workers.append(worker)
        return worker

    async def wait_polling(self, client: Client, worker: proc.ManagedProcess, known: set[str] = frozenset(),
                           timeout: float = proc.START_HANG_S) -> set[str]:
        """Identities of the workers that started polling the task queue (and are not in `known`).

        How long a worker may take to start is not a verdict (a quarter of a core under load takes
        many times what a quiet machine does): it is given up on when it has stopped making progress
        (proc.Watchdog: asleep and all but idle, or a CPU-bound loop), or at `timeout`, a hang guard."""
        deadline = time.monotonic() + timeout
        watch = proc.Watchdog(worker.pid, cpu_limit_s=30.0)  # a worker's imports cost 1-4 s of CPU
        verdict = None
        while time.monotonic() < deadline:
            if not worker.alive:
                log = worker.output()
                error = student_error(log) or f"exit status {worker.returncode}"
                raise CheckFailed(
                    f"Your worker exited before it started polling: {error}",
                    observed=f"`python -m {self.target.module('worker')}` stopped with exit status {worker.returncode}",
                    expected="a worker that keeps polling its task queue until it is stopped",
                    revisit=limits.explain(worker.returncode, log) or start_error_advice(log),
                    details=tail(log))
            fresh = await temporal.pollers(client, self.task_queue) - set(known)
            if fresh:
                return fresh
            verdict = watch.stuck()
            if verdict:
                break
            await asyncio.sleep(0.05)
        how = f"it {verdict}" if verdict else f"it was still starting after {timeout:.0f} s"
        stuck = await asyncio.to_thread(stuck_importing, worker, self.target.root)
        if stuck:
            raise CheckFailed(
                f"The worker never started: your module {stuck[0]} did not finish importing "
                f"(stuck at line {stuck[1]})",
                observed=f"the worker was still running the top level of {stuck[0]}, line {stuck[1]}: "
                         f"{stuck[2]}; {how}",
                expected="importing a module defines things and returns at once; the work starts later, "
                         "in main() or in an activity",
                revisit="Code at a module's top level runs on import, in the worker and in every replay. "
                        "Move loops, waits and calls into functions.",
                details=tail(worker.output()))
        raise CheckFailed(
            "Your worker never started polling its task queue",
            observed=f"no worker polled task queue {self.task_queue!r}; the process is still running: {how}",
            expected="`async with Worker(...)` (or `await worker.run()`) polling the task queue from "
                     "TEMPORAL_TASK_QUEUE",
            revisit=f"worker.py: connect the client, build the Worker with {self.registers}, and run it. "
                    "Something before that may be blocking (an input(), a loop).",
            details=tail(worker.output()))

    def require_running(self, worker, doing: str) -> None:
        """Raise the teaching message if the worker has exited (os._exit, a crash, a limit) while the
        scenario still needs it, instead of waiting for the workflow until a timeout."""
        if worker.alive or worker.killed_with is not None:
            return
        log = worker.output()
        code = worker.returncode
        how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exit status {code}")
        raise CheckFailed(
            f"Your worker exited while {doing} ({how})",
            observed=f"`python -m {self.target.module('worker')}` stopped on its own: "
                     + (student_error(log) or how),
            expected="a worker that keeps running until the check stops it; an activity that fails "
                     "raises an exception, which Temporal records and retries",
            revisit=limits.explain(code, log) or
                    "Nothing in a worker or an activity may end the process (os._exit, sys.exit in a "
                    "thread, a crash): a dead worker runs nothing until another one starts.",
            details=tail(log))

    async def workflow_task_failure(self, handle: WorkflowHandle, expected: str,
                                    history: WorkflowHistory | None = None) -> CheckFailed | None:
        """The teaching message for a workflow task that failed (a TODO, an exception, a sandbox error).

        Only failures of the student's code count; the server's own retries of a task
        (a signal arriving mid-task, a reset sticky queue) are not the student's fault.
        """
        history = history or await handle.fetch_history()
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                attrs = event.workflow_task_failed_event_attributes
                if attrs.cause in BENIGN_TASK_FAILURES:
                    continue
                message = attrs.failure.message
                return unfinished(message, self.lab) or CheckFailed(
                    f"Your workflow code failed inside the worker: {message.splitlines()[0][:200]}",
                    observed="the workflow task failed, so the workflow cannot make progress",
                    expected=expected,
                    revisit="Workflow code runs in Temporal's sandbox and is replayed: import activities and "
                            "models under `with workflow.unsafe.imports_passed_through():`, and do no I/O, "
                            "clock reads or randomness in the workflow (facts: §64.2.1 API names).",
                    details=tail(message, 12))
        return None

    def attempts(self, activity_type: str | None = None) -> list[attribution.Attempt]:
        """Every activity attempt the workers ran, as they recorded it (history keeps only the last
        attempt of each activity; this has them all, including those cut short by a kill)."""
        return [a for a in attribution.read_attempts(self.attempt_log)
                if activity_type is None or a.activity_type == activity_type]

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    def close(self) -> None:
        """Stop every worker and the replay process, if any: the scenario fixture's teardown."""
        self.stop_all()
        if self.replay is not None:
            self.replay.close()


def start_error_advice(log: str) -> str:
    """What to revisit when the worker died before polling: a file that does not parse is not a
    missing name, and the fix is in that file and line."""
    unparsed = parse_error(log)
    if unparsed:
        where = re.search(r"\(([^()]+):(\d+)\)$", unparsed)
        file, line = where.groups() if where else ("the file", "named above")
        return (f"Python could not parse {file}, so none of it ran (a syntax error is found before any "
                f"code runs, not by the check): fix line {line} (`python -m py_compile {file}` in the "
                "lab folder shows the same error).")
    return ("Fix the error above (run the worker yourself from the lab folder to see it whole). A "
            "missing name usually means something the worker imports is not defined yet.")


def stuck_importing(worker, root: Path) -> tuple[str, int, str] | None:
    """Where a worker that never polled is stuck, if it is still importing one of the student's
    modules: (file, line, source line). Asks the process for its stack with SIGABRT, which
    PYTHONFAULTHANDLER (set for student processes) turns into a traceback in its log; the process
    ends there (and leaves no core file: RLIMIT_CORE is 0)."""
    if not worker.alive:
        return None
    before = len(worker.output())
    try:  # once, to the worker alone: a second SIGABRT during the dump would cut it short
        os.kill(worker.pid, signal.SIGABRT)
    except ProcessLookupError:
        return None
    worker.wait(3)
    dump = worker.output()[before:]
    frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', dump)
    for path, line, function in frames:  # most recent call first: the innermost frame of student code
        if not Path(path).resolve().is_relative_to(Path(root).resolve()):
            continue
        if function != "<module>":  # stuck in a function (main() blocking, say): not an import
            return None
        source = Path(path).read_text(errors="replace").splitlines()
        text = source[int(line) - 1].strip() if 0 < int(line) <= len(source) else ""
        return Path(path).name, int(line), text
    return None
