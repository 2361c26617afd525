"""Evidence from a real Temporal server, gathered outside the student's process.

Generic helpers the checks, `lab demo` and the notebooks share: who is polling a
task queue, what an execution is waiting on, what its history says each
activity did, and whether that history replays against the student's code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest, ResetStickyTaskQueueRequest
from temporalio.client import Client, WorkflowHandle, WorkflowHistory

from . import limits


async def pollers(client: Client, task_queue: str, kind: str = "activity") -> set[str]:
    """Identities of the workers that polled this task queue recently (the server's view)."""
    queue_type = (TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY if kind == "activity"
                  else TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)
    response = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=task_queue), task_queue_type=queue_type))
    return {poller.identity for poller in response.pollers}


async def forget_sticky_queue(client: Client, workflow_id: str) -> None:
    """Tell the server a workflow's cached worker is gone, as a graceful shutdown does.

    After a SIGKILL the server would otherwise hold the next workflow task on the
    dead worker's sticky queue for sticky_queue_schedule_to_start_timeout (10 s).
    """
    await client.workflow_service.reset_sticky_task_queue(ResetStickyTaskQueueRequest(
        namespace=client.namespace, execution=WorkflowExecution(workflow_id=workflow_id)))


@dataclass
class PendingActivity:
    name: str
    attempt: int
    state: str  # SCHEDULED (waiting, maybe in a retry backoff), STARTED, CANCEL_REQUESTED
    last_failure: str | None
    next_attempt_at: datetime | None
    last_worker: str

    @property
    def in_backoff(self) -> bool:
        """Failed at least once and waiting on the server's retry timer."""
        return (self.state == "SCHEDULED" and self.last_failure is not None
                and self.next_attempt_at is not None and self.next_attempt_at > datetime.now(timezone.utc))


async def pending_activities(handle: WorkflowHandle) -> list[PendingActivity]:
    from temporalio.api.enums.v1 import PendingActivityState

    description = await handle.describe()
    found = []
    for pending in description.raw_description.pending_activities:
        next_at = (pending.next_attempt_schedule_time.ToDatetime(tzinfo=timezone.utc)
                   if pending.HasField("next_attempt_schedule_time") else None)
        found.append(PendingActivity(
            name=pending.activity_type.name,
            attempt=pending.attempt,
            state=PendingActivityState.Name(pending.state).removeprefix("PENDING_ACTIVITY_STATE_"),
            last_failure=pending.last_failure.message if pending.HasField("last_failure") else None,
            next_attempt_at=next_at,
            last_worker=pending.last_worker_identity,
        ))
    return found


@dataclass
class ActivityRun:
    """One scheduled activity as the history records it (only its last attempt is recorded)."""

    activity_id: str
    name: str
    retry_policy: dict[str, Any]
    start_to_close_s: float | None
    heartbeat_s: float | None
    scheduled_at: datetime
    attempt: int = 0
    identity: str = ""
    started_at: datetime | None = None
    closed_at: datetime | None = None
    outcome: str = "pending"  # completed | failed | timed_out | canceled | pending
    failure: str | None = None


def _seconds(duration) -> float | None:
    value = duration.ToTimedelta().total_seconds()
    return value or None


def activity_runs(history: WorkflowHistory) -> list[ActivityRun]:
    runs: dict[int, ActivityRun] = {}
    for event in history.events:
        kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
        at = event.event_time.ToDatetime(tzinfo=timezone.utc)
        if kind == "ACTIVITY_TASK_SCHEDULED":
            attrs = event.activity_task_scheduled_event_attributes
            policy = attrs.retry_policy
            runs[event.event_id] = ActivityRun(
                activity_id=attrs.activity_id, name=attrs.activity_type.name, scheduled_at=at,
                retry_policy={
                    "maximum_attempts": policy.maximum_attempts,
                    "initial_interval_s": policy.initial_interval.ToTimedelta().total_seconds(),
                    "backoff_coefficient": policy.backoff_coefficient,
                    "maximum_interval_s": policy.maximum_interval.ToTimedelta().total_seconds(),
                },
                start_to_close_s=_seconds(attrs.start_to_close_timeout),
                heartbeat_s=_seconds(attrs.heartbeat_timeout),
            )
        elif kind == "ACTIVITY_TASK_STARTED":
            attrs = event.activity_task_started_event_attributes
            run = runs[attrs.scheduled_event_id]
            run.attempt, run.identity, run.started_at = attrs.attempt, attrs.identity, at
        elif kind in ("ACTIVITY_TASK_COMPLETED", "ACTIVITY_TASK_FAILED", "ACTIVITY_TASK_TIMED_OUT",
                      "ACTIVITY_TASK_CANCELED"):
            attrs = getattr(event, kind.lower() + "_event_attributes")
            run = runs[attrs.scheduled_event_id]
            run.closed_at = at
            run.outcome = kind.removeprefix("ACTIVITY_TASK_").lower()
            if kind != "ACTIVITY_TASK_COMPLETED" and attrs.HasField("failure"):
                run.failure = attrs.failure.message
    return list(runs.values())


def workflow_task_identities(history: WorkflowHistory) -> list[str]:
    """Which workers completed workflow tasks, in order."""
    return [event.workflow_task_completed_event_attributes.identity for event in history.events
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]


def signals(history: WorkflowHistory) -> list[tuple[str, datetime]]:
    return [(event.workflow_execution_signaled_event_attributes.signal_name,
             event.event_time.ToDatetime(tzinfo=timezone.utc))
            for event in history.events
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]


@dataclass
class ReplayVerdict:
    ok: bool
    error: str = ""
    detail: str = ""
    timed_out: bool = False
    workflows: list[str] = field(default_factory=list)


class Replay:
    """Replay a recorded history against the workflow classes in `module`, in a separate process.

    Start it early: the process imports the student's module while the scenario
    runs, then replays as soon as `verdict()` hands it the history. A separate
    process keeps the student's code out of the grader's interpreter and lets a
    hanging replay be stopped.
    """

    def __init__(self, *, root: Path, module: str, workflow_id: str):
        kit_root = str(Path(__file__).resolve().parent.parent)
        self.popen = limits.popen_confined(  # it imports the student's workflows
            [sys.executable, "-m", "labkit.replay", "--root", str(root), "--module", module,
             "--workflow-id", workflow_id],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**_env_without_python_path(), "PYTHONPATH": f"{root}{os.pathsep}{kit_root}"})

    def verdict(self, history: WorkflowHistory, timeout: float = 30) -> ReplayVerdict:
        try:
            out, err = self.popen.communicate(history.to_json(), timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            return ReplayVerdict(ok=False, timed_out=True,
                                 error=f"the replay did not finish within {timeout:.0f} s")
        try:
            return ReplayVerdict(**json.loads(out.strip().splitlines()[-1]))
        except (IndexError, ValueError, TypeError):
            return ReplayVerdict(ok=False, error="the replay process crashed", detail=(err or out)[-3000:])

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.communicate()


def _env_without_python_path() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
