"""`lab hold` and `lab release`: keep a failed activity's retry from starting until a person says so.

A retry's backoff is seconds long (Lab 01: 2 s), too short to find a terminal and type `kill -9`.
`lab hold` watches the running workflows (or the one named), and as soon as an activity has failed
and waits on the server's retry timer, pauses that activity on the server: PauseActivity, what
`temporal activity pause` sends. The next attempt then waits until `lab release` unpauses it
(`temporal activity unpause`), however long the person takes. The pause is not a history event: the
history only shows the next attempt starting later than its timer said.

It says which worker ran the failed attempt (a worker's identity is pid@host by default), so the
person knows which process to kill. If the next attempt started before the pause reached the server
(a very slow machine), it says so: that run can no longer be held.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

POLL_S = 0.05  # how often the running workflows are described while we wait for a failure


@dataclass
class Held:
    workflow_id: str
    activity: str
    activity_id: str
    failed_attempt: int
    failure: str
    worker: str  # identity of the worker that ran the failed attempt
    too_late: bool = False  # the next attempt had started before the pause

    @property
    def worker_pid(self) -> str | None:
        pid = self.worker.split("@", 1)[0]
        return pid if pid.isdigit() else None


def address() -> str:
    return os.environ.get("TEMPORAL_ADDRESS", "localhost:7233")


def namespace() -> str:
    return os.environ.get("TEMPORAL_NAMESPACE", "default")


async def connect():
    from temporalio.client import Client

    return await Client.connect(address(), namespace=namespace())


async def _running_ids(client, workflow_id: str | None) -> list[str]:
    if workflow_id:
        return [workflow_id]
    return [w.id async for w in client.list_workflows("ExecutionStatus = 'Running'")]


async def hold(client, workflow_id: str | None = None, activity: str | None = None,
               timeout: float = 600.0) -> Held:
    """Wait for the first activity (of `workflow_id`, or of any running workflow; named `activity`,
    or any) that failed and waits for its retry; pause it. TimeoutError after `timeout` s of none."""
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import PauseActivityRequest

    from temporalio.service import RPCError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = await _running_ids(client, workflow_id)
        except RPCError:  # the server is busy or restarting: look again
            running = []
        for wid in running:
            try:
                description = await client.get_workflow_handle(wid).describe()
            except RPCError:  # finished or gone meanwhile
                continue
            for pending in description.raw_description.pending_activities:
                if pending.attempt < 2 or not pending.HasField("last_failure") or pending.paused:
                    continue
                if activity and pending.activity_type.name != activity:
                    continue
                await client.workflow_service.pause_activity(PauseActivityRequest(
                    namespace=client.namespace, execution=WorkflowExecution(workflow_id=wid), id=pending.activity_id,
                    identity="lab hold", reason="a person is about to kill the worker"))
                held = Held(workflow_id=wid, activity=pending.activity_type.name, activity_id=pending.activity_id,
                            failed_attempt=pending.attempt - 1, failure=pending.last_failure.message,
                            worker=pending.last_worker_identity)
                held.too_late = await _started_since(client, held)
                return held
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"no activity{' ' + activity if activity else ''} failed and waited for a retry within "
                       f"{timeout:.0f} s" + (f" in {workflow_id}" if workflow_id else " in any running workflow"))


async def _started_since(client, held: Held) -> bool:
    """Did the attempt after the failed one start before the pause took hold?"""
    from temporalio.api.enums.v1 import PendingActivityState

    description = await client.get_workflow_handle(held.workflow_id).describe()
    for pending in description.raw_description.pending_activities:
        if pending.activity_id == held.activity_id:
            return pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
    return True  # no longer pending: the next attempt ran (and completed) already


async def release(client, workflow_id: str) -> list[str]:
    """Unpause every paused activity of the workflow; the names of those unpaused."""
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import UnpauseActivityRequest

    description = await client.get_workflow_handle(workflow_id).describe()
    released = []
    for pending in description.raw_description.pending_activities:
        if pending.paused:
            await client.workflow_service.unpause_activity(UnpauseActivityRequest(
                namespace=client.namespace, execution=WorkflowExecution(workflow_id=workflow_id),
                id=pending.activity_id, identity="lab release"))
            released.append(f"{pending.activity_type.name} (activity id {pending.activity_id})")
    return released
