"""Temporal parts every worker sweep shares: where a kill found a workflow, and the cleanup after it.

After a SIGKILL nobody tells the server the worker is gone. Two waits follow, neither of which
the invariants depend on, so the sweep does what a graceful shutdown or a heartbeat timeout
would have done, and says so in its report:
- the workflow's sticky queue (10 s): `labkit.temporal.forget_sticky_queue`, as the checks do;
- an activity attempt that was running (its start_to_close_timeout, 30 s in Lab 01): the sweep
  fails that attempt by id on the server, as a heartbeat timeout would have. The retry policy
  applies as for a timeout: the attempt counts, the next one waits its backoff.
A workflow task that was running waits out the task timeout the sweep starts workflows with
(WORKFLOW_TASK_TIMEOUT), a start option of the caller, not of the lab's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta, timezone

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from labkit import prefork, temporal
from labkit.harness import BENIGN_TASK_FAILURES, WorkerHarness

WORKFLOW_TASK_TIMEOUT = timedelta(seconds=3)  # the server's default is 10 s
STARTED = PendingActivityState.PENDING_ACTIVITY_STATE_STARTED


async def landing(handle: WorkflowHandle) -> str:
    """Where the (frozen) workflow stood right after the kill, in the course's words."""
    description = await handle.describe()
    if description.status != WorkflowExecutionStatus.RUNNING:
        return f"workflow {description.status.name.lower()}"
    pending = description.raw_description.pending_activities
    if not pending:
        return "workflow task or between activities"
    labels = []
    now = datetime.now(timezone.utc)
    for activity in pending:
        name = activity.activity_type.name
        if activity.state == STARTED:
            labels.append(f"{name} running (attempt {activity.attempt})")
        elif activity.HasField("last_failure") and activity.HasField("next_attempt_schedule_time") and \
                activity.next_attempt_schedule_time.ToDatetime(tzinfo=timezone.utc) > now:
            labels.append(f"{name} retry backoff")
        else:
            labels.append(f"{name} scheduled, not yet picked up")
    return " + ".join(sorted(labels))


async def release_dead_worker(client: Client, handle: WorkflowHandle) -> int:
    """Fail the dead worker's running attempts and forget its sticky queue; returns attempts failed."""
    description = await handle.describe()
    if description.status != WorkflowExecutionStatus.RUNNING:
        return 0
    failed = 0
    for activity in description.raw_description.pending_activities:
        if activity.state != STARTED:
            continue
        with contextlib.suppress(RPCError):  # it completed just before the kill: nothing to fail
            await client.get_async_activity_handle(workflow_id=handle.id, activity_id=activity.activity_id).fail(
                ApplicationError("the worker running this attempt was SIGKILLed by the crash sweep"))
            failed += 1
    with contextlib.suppress(RPCError):
        await temporal.forget_sticky_queue(client, handle.id)
    return failed


async def completed_activities(handle: WorkflowHandle) -> set[str]:
    """Names of the activities whose result the history records."""
    history = await handle.fetch_history()
    return {run.name for run in temporal.activity_runs(history) if run.outcome == "completed"}


class WorkflowTaskFailing(Exception):
    """The run's workflow code raised (or replayed differently): the server retries the task, never the run."""


async def results_of(handles: dict[str, WorkflowHandle], feed: asyncio.Task, timeout_s: float) -> dict[str, object]:
    """Each workflow's result, or the exception it failed with, or a TimeoutError when it did not
    finish within `timeout_s` of now (the last restart); `feed` (the task starting them) first.
    A run whose workflow task failed in the workflow's own code gets WorkflowTaskFailing at once, as a
    check's verdict would (labkit.harness.workflow_task_failure): no restart makes that code finish."""
    deadline = time.monotonic() + timeout_s
    await asyncio.wait_for(feed, timeout=timeout_s)
    results: dict[str, object] = {}
    for workflow_id, handle in handles.items():
        outcome = asyncio.ensure_future(handle.result())
        try:
            while True:
                done, _ = await asyncio.wait({outcome}, timeout=max(0.1, min(0.5, deadline - time.monotonic())))
                if done:
                    results[workflow_id] = outcome.exception() or outcome.result()  # a failed run: verify() says so
                    break
                if (failing := await failing_task(handle)) is not None:
                    results[workflow_id] = WorkflowTaskFailing(f"its workflow task fails: {failing}")
                    break
                if time.monotonic() >= deadline:
                    results[workflow_id] = TimeoutError(f"not finished within {timeout_s:.0f} s of the last restart")
                    break
        finally:
            outcome.cancel()
    return results


async def failing_task(handle: WorkflowHandle) -> str | None:
    """The message of the run's last workflow-task failure that is the workflow code's (a student's
    exception, a non-determinism error), not the server's housekeeping; None if there is none."""
    from temporalio.api.enums.v1 import EventType

    with contextlib.suppress(RPCError):
        history = await handle.fetch_history()
        for event in reversed(history.events):
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                attrs = event.workflow_task_failed_event_attributes
                if attrs.cause not in BENIGN_TASK_FAILURES:
                    return (attrs.failure.message.splitlines() or [""])[0][:300]
    return None


class ForkedWorkers(WorkerHarness):
    """labkit's worker harness, its workers forked from the warm interpreter when one runs."""

    def __init__(self, *args, forks: prefork.ForkServer | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.forks = forks

    def start_worker(self):
        if self.forks is None:
            return super().start_worker()
        n = len(self.workers) + 1
        worker = self.forks.start(self.target.module("worker"), [], name=f"worker{n}",
                                  log_path=self.workdir / f"worker{n}.log", env=self.env, cwd=self.workdir)
        self.workers.append(worker)
        return worker


class WorkerScenario:
    """What every Temporal sweep scenario does the same way: its runs start once the first worker
    polls (staggered by the subclass's `_start_runs`), a kill kills the latest worker, a restart
    starts a new one, and the landings say where each workflow stood.
    Needs: harness, client, identities, feed, plan, handles, _start_runs()."""

    async def wait_ready(self) -> None:
        worker = self.harness.workers[-1]
        self.identities |= await self.harness.wait_polling(self.client, worker, self.identities)
        if self.feed is None:  # the first worker polls: start the runs, staggered
            self.feed = asyncio.create_task(self._start_runs())

    def processes(self) -> list:
        return [self.harness.workers[-1]]

    async def landings(self) -> list[str]:
        found = []
        for workflow_id in self.plan:
            handle = self.handles.get(workflow_id)
            found.append(await landing(handle) if handle else "workflow not started yet")
        return found

    async def restart(self) -> None:
        self.harness.start_worker()
