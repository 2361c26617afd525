"""Read what a workflow's event history says about signals, updates and timers.

Companion to labkit.temporal (activities, pollers): evidence gathered outside the
student's process, straight from the server's record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter


def kind(event) -> str:
    """An event's type without the prefix: TIMER_STARTED, WORKFLOW_EXECUTION_SIGNALED, ..."""
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")


def _at(event) -> datetime:
    return event.event_time.ToDatetime(tzinfo=timezone.utc)


def _decode(payloads) -> list[Any]:
    converter = DataConverter.default.payload_converter
    values = []
    for payload in payloads:
        try:
            values.append(converter.from_payloads([payload])[0])
        except Exception:  # an undecodable payload is still evidence
            values.append(f"<{payload.metadata.get('encoding', b'?').decode(errors='replace')} payload>")
    return values


def kinds(history: WorkflowHistory) -> list[str]:
    """Every event's type, in order: WORKFLOW_EXECUTION_STARTED, WORKFLOW_TASK_SCHEDULED, ..."""
    return [kind(event) for event in history.events]


@dataclass
class Signal:
    event_id: int
    name: str
    args: list[Any]
    at: datetime
    identity: str  # who sent it (the client's identity)


def signals(history: WorkflowHistory) -> list[Signal]:
    found = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            attrs = event.workflow_execution_signaled_event_attributes
            found.append(Signal(event.event_id, attrs.signal_name, _decode(attrs.input.payloads), _at(event),
                                attrs.identity))
    return found


@dataclass
class Update:
    event_id: int
    update_id: str
    name: str
    args: list[Any]
    accepted_at: datetime
    outcome: str = "pending"  # completed | failed | pending
    result: Any = None


def updates(history: WorkflowHistory) -> list[Update]:
    """Accepted updates and their outcomes. A validator's refusal writes nothing, so it is never here."""
    found: dict[str, Update] = {}
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            attrs = event.workflow_execution_update_accepted_event_attributes
            request = attrs.accepted_request
            found[request.meta.update_id] = Update(
                event.event_id, request.meta.update_id, request.input.name, _decode(request.input.args.payloads),
                _at(event))
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
            attrs = event.workflow_execution_update_completed_event_attributes
            update = found.get(attrs.meta.update_id)
            if update is not None:
                if attrs.outcome.HasField("failure"):
                    update.outcome, update.result = "failed", attrs.outcome.failure.message
                else:
                    update.outcome = "completed"
                    update.result = (_decode(attrs.outcome.success.payloads) or [None])[0]
    return list(found.values())


@dataclass
class Timer:
    timer_id: str
    seconds: float
    started_event_id: int
    started_at: datetime
    outcome: str = "pending"  # fired | canceled | pending
    closed_event_id: int | None = None
    closed_at: datetime | None = None


def timers(history: WorkflowHistory) -> list[Timer]:
    found: dict[str, Timer] = {}
    for event in history.events:
        what = kind(event)
        if what == "TIMER_STARTED":
            attrs = event.timer_started_event_attributes
            found[attrs.timer_id] = Timer(attrs.timer_id, attrs.start_to_fire_timeout.ToTimedelta().total_seconds(),
                                          event.event_id, _at(event))
        elif what in ("TIMER_FIRED", "TIMER_CANCELED"):
            attrs = getattr(event, what.lower() + "_event_attributes")
            timer = found.get(attrs.timer_id)
            if timer is not None:
                timer.outcome = what.removeprefix("TIMER_").lower()
                timer.closed_event_id, timer.closed_at = event.event_id, _at(event)
    return list(found.values())


@dataclass
class Closure:
    status: str  # COMPLETED | FAILED | TIMED_OUT | CANCELED | TERMINATED | CONTINUED_AS_NEW
    at: datetime
    event_id: int
    result: Any = None
    failure: str = ""


def closure(history: WorkflowHistory) -> Closure | None:
    """How the run ended, or None while it runs."""
    for event in reversed(history.events):
        what = kind(event)
        if what.startswith("WORKFLOW_EXECUTION_") and what.removeprefix("WORKFLOW_EXECUTION_") in (
                "COMPLETED", "FAILED", "TIMED_OUT", "CANCELED", "TERMINATED", "CONTINUED_AS_NEW"):
            status = what.removeprefix("WORKFLOW_EXECUTION_")
            found = Closure(status, _at(event), event.event_id)
            if status == "COMPLETED":
                found.result = (_decode(event.workflow_execution_completed_event_attributes.result.payloads)
                                or [None])[0]
            elif status == "FAILED":
                found.failure = event.workflow_execution_failed_event_attributes.failure.message
            return found
    return None
