"""Send a human's decision to a waiting workflow: what `lab approve` and the notebooks call.

The course's convention for a workflow with an approval gate (Lab 02 and later):

    signal  approve(reviewer, comment)     fire and forget: recorded by the server even when no
    signal  reject(reviewer, reason)       worker runs, applied when one replays the history
    update  decide(decision, reviewer, note)  validated by a running worker, answered with an ack

A decision always comes from outside the workflow's process (a terminal, a notebook, a web hook),
never from input() inside it.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Literal

from temporalio.client import Client, WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

SIGNALS = {"approve": "approve", "reject": "reject"}
UPDATE = "decide"


class ApprovalError(RuntimeError):
    """The decision could not be delivered (no such workflow, already closed, no worker for an update)."""


@dataclass
class DecisionResult:
    """What happened to one decision. Printable."""

    workflow_id: str
    decision: str
    reviewer: str
    via: str  # "signal" | "update"
    accepted: bool | None  # None for a signal: the server records it; the workflow decides later
    ack: Any = None  # the update's return value
    refusal: str | None = None  # the validator's (or handler's) message when an update is refused

    def __str__(self) -> str:
        if self.via == "signal":
            return (f"signal {SIGNALS[self.decision]!r} (reviewer {self.reviewer}) recorded for "
                    f"{self.workflow_id}; the workflow applies it when a worker runs it")
        if self.accepted:
            return f"update {UPDATE!r} accepted by {self.workflow_id}: {_show(self.ack)}"
        return f"update {UPDATE!r} refused by {self.workflow_id}: {self.refusal}"


def _show(value: Any) -> str:
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    try:
        return json.dumps(value, default=str)
    except TypeError:
        return repr(value)


async def send_decision(
    address: str | None,
    workflow_id: str,
    *,
    decision: Literal["approve", "reject"],
    reviewer: str,
    comment_or_reason: str = "",
    via: Literal["signal", "update"] = "signal",
    namespace: str = "default",
    client: Client | None = None,
    update_timeout: float = 30.0,
) -> DecisionResult:
    """Approve or reject `workflow_id` as `reviewer`, by signal (default) or by the `decide` update.

    address: host:port of the Temporal frontend (None: $TEMPORAL_ADDRESS or localhost:7233);
    ignored when an already connected `client` is given.
    A refused update is a result (accepted=False, refusal=the validator's message), not an error.
    Raises ApprovalError when the workflow does not exist or is closed, or when no worker answers
    an update within update_timeout seconds (an update needs a running worker; a signal does not).
    """
    if decision not in SIGNALS:
        raise ValueError(f"decision must be one of {', '.join(SIGNALS)}, not {decision!r}")
    if via not in ("signal", "update"):
        raise ValueError(f"via must be 'signal' or 'update', not {via!r}")
    if client is None:
        address = address or os.environ.get("TEMPORAL_ADDRESS", "localhost:7233")
        try:
            client = await Client.connect(address, namespace=namespace)
        except RuntimeError as err:
            raise ApprovalError(f"cannot reach Temporal at {address}: {err}. Is it running (`lab up`)?") from err
    handle = client.get_workflow_handle(workflow_id)
    try:
        if via == "signal":
            await handle.signal(SIGNALS[decision], args=[reviewer, comment_or_reason])
            return DecisionResult(workflow_id, decision, reviewer, via, accepted=None)
        try:
            ack = await asyncio.wait_for(
                handle.execute_update(UPDATE, args=[decision, reviewer, comment_or_reason]),
                update_timeout)
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            return DecisionResult(workflow_id, decision, reviewer, via, accepted=False,
                                  refusal=getattr(cause, "message", None) or str(cause or err))
        except (asyncio.TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            raise ApprovalError(
                f"no worker answered the {UPDATE!r} update for {workflow_id} within {update_timeout:g} s: "
                "an update is validated by a running worker (a signal is not). Start the worker, or "
                "send a signal instead.") from None
        return DecisionResult(workflow_id, decision, reviewer, via, accepted=True, ack=ack)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ApprovalError(f"no running workflow {workflow_id!r} in namespace {client.namespace!r}: "
                                f"{err.message}") from err
        raise ApprovalError(f"Temporal refused the {via} for {workflow_id}: {err.message}") from err
