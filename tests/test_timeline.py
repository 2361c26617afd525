"""labkit.timeline: the picture of one workflow run, from its history plus what the caller saw.

Recorded histories (tests/data/timeline, from the Lab 01 reference solution on a real
dev server): `normal` (SIGKILL in the backoff, sticky queue reset, new worker),
`stall` (the same without the reset: the 10 s sticky-queue wait), `paused` (the retry
held with `temporal activity pause` while the worker was killed). Synthetic histories
cover a run still in progress and repeated activity names.
"""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import WorkflowHistory

from labkit import timeline
from labkit.temporal import PendingActivity

DATA = Path(__file__).parent / "data" / "timeline"
SVG = "{http://www.w3.org/2000/svg}"


def recorded(variant: str) -> tuple[WorkflowHistory, PendingActivity, list[timeline.Mark]]:
    history = WorkflowHistory.from_json(f"analyze-{variant}", (DATA / f"lab01_{variant}.history.json").read_text())
    notes = json.loads((DATA / f"lab01_{variant}.notes.json").read_text())
    raw = notes["pending"]
    pending = PendingActivity(name=raw["name"], attempt=raw["attempt"], state=raw["state"],
                              last_failure=raw["last_failure"],
                              next_attempt_at=datetime.fromisoformat(raw["next_attempt_at"]),
                              last_worker=raw["last_worker"])
    marks = [timeline.Mark(at=datetime.fromisoformat(at), label=label, kind=kind, worker=worker)
             for kind, at, label, worker in notes["marks"]]
    return history, pending, marks


def spans(found: timeline.Timeline, row: str, kind: str | None = None) -> list[timeline.Span]:
    return [s for s in found.spans if s.row == row and (kind is None or s.kind == kind)]


def rendered(found: timeline.Timeline, width: int = 100) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(timeline.rich_table(found))
    return console.export_text()


def svg_tree(found: timeline.Timeline) -> ET.Element:
    return ET.fromstring(timeline.svg(found))  # well-formed XML, or this raises


def svg_texts(root: ET.Element) -> list[str]:
    return [el.text or "" for el in root.iter(f"{SVG}text")]


# --- recorded histories --------------------------------------------------------------------------

def test_normal_run_shows_the_failed_attempt_the_backoff_the_kill_and_the_new_worker():
    history, pending, marks = recorded("normal")
    old, new = pending.last_worker, marks[-1].worker
    found = timeline.build(history, attempts=[timeline.Attempt.from_pending(pending)], marks=marks,
                           workers={old: "worker1", new: "worker2"})

    assert found.status == "completed" and found.workflow_type == "AnalyzeWorkflow"
    assert found.rows == [timeline.WORKFLOW_ROW, "call_llm", "parse_json", "save_to_db"]
    assert list(found.workers) == [old, new]

    first, backoff = spans(found, "parse_json", "attempt")[0], spans(found, "parse_json", "backoff")[0]
    assert (first.attempt, first.outcome, first.worker, first.recorded) == (1, "failed", old, False)
    assert first.note == "deliberate failure on the first attempt (lab 01)"
    # failed_at is inferred from the retry policy: the timer fires initial_interval (2 s) after the failure
    assert backoff.end == pending.next_attempt_at
    assert (backoff.end - backoff.start).total_seconds() == pytest.approx(2.0)
    assert backoff.start == first.end

    last = spans(found, "parse_json", "attempt")[-1]
    assert (last.attempt, last.outcome, last.worker, last.recorded) == (2, "completed", new, True)
    assert last.start >= backoff.end
    assert [s.worker for s in spans(found, "call_llm")] == [old]
    assert [s.worker for s in spans(found, "save_to_db")] == [new]
    tasks = spans(found, timeline.WORKFLOW_ROW, "task")
    assert {t.worker for t in tasks} == {old, new} and all(t.outcome == "completed" for t in tasks)
    assert not spans(found, timeline.WORKFLOW_ROW, "wait"), "the sticky queue was reset: no stall"

    kill = next(m for m in found.marks if m.kind == "kill")
    assert backoff.start < kill.at < backoff.end, "the recorded kill landed in the backoff"


def test_normal_run_renders_for_the_terminal():
    history, pending, marks = recorded("normal")
    old, new = pending.last_worker, marks[-1].worker
    text = rendered(timeline.build(history, attempts=[timeline.Attempt.from_pending(pending)], marks=marks,
                                   workers={old: "worker1", new: "worker2"}))
    for expected in ("AnalyzeWorkflow analyze-normal: completed", "call_llm", "save_to_db", "backoff 2.0 s",
                     "✖ killed", "▶ started", "SIGKILL", "worker1", "worker2",
                     "deliberate failure on the first attempt (lab 01)"):
        assert expected in text, f"{expected!r} missing from:\n{text}"
    lines = text.splitlines()
    kill_line = next(line for line in lines if "✖ killed" in line)
    retry_line = next(line for line in lines if "parse_json" in line and "completed" in line)
    assert lines.index(kill_line) < lines.index(retry_line), "rows are in time order"


def test_rich_table_fits_an_80_column_terminal():
    history, pending, marks = recorded("normal")
    text = rendered(timeline.build(history, attempts=[timeline.Attempt.from_pending(pending)], marks=marks,
                                   workers={pending.last_worker: "worker1", marks[-1].worker: "worker2"}), 80)
    assert max(len(line) for line in text.splitlines()) <= 80


def test_normal_run_svg_has_rows_bars_backoff_and_the_kill_line():
    history, pending, marks = recorded("normal")
    old, new = pending.last_worker, marks[-1].worker
    found = timeline.build(history, attempts=[timeline.Attempt.from_pending(pending)], marks=marks,
                           workers={old: "worker1", new: "worker2"})
    root = svg_tree(found)
    texts = svg_texts(root)
    for row in found.rows:
        assert row in texts
    assert "backoff 2.0 s" in texts
    assert any(t.startswith("✖ SIGKILL") for t in texts)
    assert "worker1" in texts and "worker2" in texts  # the legend
    kill_lines = [el for el in root.iter(f"{SVG}line") if el.get("stroke") == timeline.KILL]
    assert len(kill_lines) == 1
    # bars are coloured by worker: worker1's colour and worker2's colour both appear on rects
    fills = {el.get("fill") for el in root.iter(f"{SVG}rect")}
    assert {found.colour(old), found.colour(new)} <= fills and found.colour(old) != found.colour(new)
    # the kill line sits between the failed attempt and the retry, on the same time scale as the bars
    x_kill = float(kill_lines[0].get("x1"))
    backoff = next(el for el in root.iter(f"{SVG}line") if el.get("stroke") == timeline.BACKOFF
                   and el.get("stroke-dasharray"))
    assert float(backoff.get("x1")) <= x_kill <= float(backoff.get("x2"))


def test_without_annotations_the_earlier_attempt_is_shown_as_unrecorded():
    history, _, _ = recorded("normal")
    found = timeline.build(history)
    unrecorded = spans(found, "parse_json", "unrecorded")
    assert len(unrecorded) == 1
    assert unrecorded[0].attempt == 1 and not unrecorded[0].recorded
    assert timeline.UNRECORDED_NOTE in unrecorded[0].note
    assert "deliberate failure on the first attempt" in unrecorded[0].note  # from ActivityTaskStarted.last_failure
    assert "attempt 1 failed: only last_failure is recorded" in svg_texts(svg_tree(found))
    assert "failed, not in history" in rendered(found)
    assert not spans(found, "call_llm", "unrecorded"), "call_llm succeeded on attempt 1"


def test_stall_shows_the_workflow_task_waiting_on_the_dead_workers_sticky_queue():
    history, pending, marks = recorded("stall")
    found = timeline.build(history, attempts=[timeline.Attempt.from_pending(pending)], marks=marks)
    (stall,) = spans(found, timeline.WORKFLOW_ROW, "wait")
    assert stall.outcome == "timed_out" and "sticky" in stall.note
    assert (stall.end - stall.start).total_seconds() == pytest.approx(10.0, abs=0.5)
    assert any("stalled on the gone worker's sticky queue" in t for t in svg_texts(svg_tree(found)))
    assert "sticky stall 10.0 s" in rendered(found)


def test_paused_retry_shows_the_backoff_then_the_wait_until_unpause():
    history, pending, marks = recorded("paused")
    found = timeline.build(history, attempts=[timeline.Attempt.from_pending(pending)], marks=marks)
    backoff = spans(found, "parse_json", "backoff")[0]
    (wait,) = spans(found, "parse_json", "wait")
    retry = spans(found, "parse_json", "attempt")[-1]
    assert wait.start == backoff.end and wait.end == retry.start
    unpaused = next(m for m in found.marks if m.label == "unpaused")
    assert (retry.start - unpaused.at).total_seconds() == pytest.approx(0, abs=1.0)
    texts = svg_texts(svg_tree(found))
    assert any(t.startswith("• paused") for t in texts) and any(t.startswith("• unpaused") for t in texts)


def test_default_worker_labels_and_colours_follow_first_appearance():
    history, pending, marks = recorded("normal")
    found = timeline.build(history)
    assert list(found.workers.values()) == [timeline.default_worker_label(i) for i in found.workers]
    assert timeline.default_worker_label("4242@host") == "pid 4242"
    assert timeline.default_worker_label("my-worker") == "my-worker"
    assert found.colour(list(found.workers)[0]) == timeline.PALETTE[0]
    assert found.colour("unknown") == timeline.NOTE


# --- synthetic histories -------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def event(event_id: int, seconds: float, kind: str, **attrs) -> HistoryEvent:
    stamp = Timestamp()
    stamp.FromDatetime(T0 + timedelta(seconds=seconds))
    found = HistoryEvent(event_id=event_id, event_time=stamp, event_type=EventType.Value(f"EVENT_TYPE_{kind}"))
    field = getattr(found, kind.lower() + "_event_attributes")
    for path, value in attrs.items():
        target = field
        *parents, leaf = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, value)
    return found


def synthetic(events: list[HistoryEvent]) -> WorkflowHistory:
    return WorkflowHistory("synthetic-1", events)


def test_a_run_in_progress_has_open_spans_and_no_close():
    history = synthetic([
        event(1, 0.0, "WORKFLOW_EXECUTION_STARTED", workflow_type__name="Fetch"),
        event(2, 0.0, "WORKFLOW_TASK_SCHEDULED"),
        event(3, 0.1, "WORKFLOW_TASK_STARTED", scheduled_event_id=2, identity="1@h"),
        event(4, 0.2, "WORKFLOW_TASK_COMPLETED", scheduled_event_id=2, identity="1@h"),
        event(5, 0.2, "ACTIVITY_TASK_SCHEDULED", activity_id="1", activity_type__name="download"),
        event(6, 0.3, "ACTIVITY_TASK_STARTED", scheduled_event_id=5, identity="1@h", attempt=1),
        event(7, 0.5, "ACTIVITY_TASK_SCHEDULED", activity_id="2", activity_type__name="download"),
    ])
    found = timeline.build(history)
    assert found.status == "running" and found.closed_at is None
    assert found.rows == [timeline.WORKFLOW_ROW, "download #1", "download #2"]
    (running,) = spans(found, "download #1")
    assert running.kind == "attempt" and running.outcome == "pending" and running.end is None
    (queued,) = spans(found, "download #2")
    assert queued.kind == "wait" and queued.end is None
    assert "…" in rendered(found)
    svg_tree(found)


def test_a_failed_activity_and_a_failed_workflow():
    history = synthetic([
        event(1, 0.0, "WORKFLOW_EXECUTION_STARTED", workflow_type__name="W"),
        event(2, 0.0, "ACTIVITY_TASK_SCHEDULED", activity_id="1", activity_type__name="charge",
              retry_policy__maximum_attempts=3),
        event(3, 6.0, "ACTIVITY_TASK_STARTED", scheduled_event_id=2, identity="7@h", attempt=3,
              last_failure__message="card declined"),
        event(4, 6.5, "ACTIVITY_TASK_FAILED", scheduled_event_id=2, failure__message="card declined"),
        event(5, 6.6, "WORKFLOW_EXECUTION_FAILED"),
    ])
    found = timeline.build(history)
    assert found.status == "failed"
    unrecorded, last = spans(found, "charge")
    assert unrecorded.kind == "unrecorded" and "attempts 1-2 failed" in unrecorded.note
    assert last.outcome == "failed" and last.note == "card declined" and last.attempt == 3
    assert "card declined" in rendered(found)
    svg_tree(found)


def test_rich_text_and_svg_escape_what_they_are_given():
    history = synthetic([
        event(1, 0.0, "WORKFLOW_EXECUTION_STARTED", workflow_type__name="W<&>"),
        event(2, 0.0, "ACTIVITY_TASK_SCHEDULED", activity_id="1", activity_type__name="a<b>"),
        event(3, 0.1, "ACTIVITY_TASK_STARTED", scheduled_event_id=2, identity='x"&<y>', attempt=1),
        event(4, 0.2, "ACTIVITY_TASK_COMPLETED", scheduled_event_id=2),
    ])
    found = timeline.build(history, marks=[timeline.Mark.note(T0, "[bold]not markup[/bold] & <b>")])
    root = svg_tree(found)
    assert "a<b>" in svg_texts(root)
    assert any("[bold]not markup[/bold] & <b>" in t for t in svg_texts(root))
    assert "[bold]not markup[/bold]" in rendered(found)


def test_a_retry_started_before_its_timer_cuts_the_backoff_short():
    """`temporal activity unpause` (or a reset) starts the next attempt at once, timer or not."""
    history = synthetic([
        event(1, 0.0, "WORKFLOW_EXECUTION_STARTED", workflow_type__name="W"),
        event(2, 0.0, "ACTIVITY_TASK_SCHEDULED", activity_id="1", activity_type__name="parse",
              retry_policy__initial_interval__seconds=2, retry_policy__backoff_coefficient=2.0),
        event(3, 1.0, "ACTIVITY_TASK_STARTED", scheduled_event_id=2, identity="2@h", attempt=2),
        event(4, 1.1, "ACTIVITY_TASK_COMPLETED", scheduled_event_id=2),
    ])
    failed = timeline.Attempt("parse", 1, worker="1@h", ended_at=T0 + timedelta(seconds=0.2),
                              retry_at=T0 + timedelta(seconds=2.2), failure="boom")
    found = timeline.build(history, attempts=[failed])
    first, backoff, retry = spans(found, "parse")
    assert (first.kind, backoff.kind, retry.kind) == ("attempt", "backoff", "attempt")
    assert first.start == T0 and first.end == T0 + timedelta(seconds=0.2)
    assert backoff.end == retry.start == T0 + timedelta(seconds=1) and backoff.due == failed.retry_at
    assert "started 1.2 s before it was due" in backoff.note
    assert "backoff cut at 0.8 s" in svg_texts(svg_tree(found))
    assert "backoff cut at 0.8 s" in rendered(found)


def test_history_without_a_start_is_refused():
    with pytest.raises(ValueError, match="WorkflowExecutionStarted"):
        timeline.build(synthetic([event(1, 0.0, "WORKFLOW_TASK_SCHEDULED")]))


# --- annotations ---------------------------------------------------------------------------------

def test_retry_interval_follows_the_policy():
    policy = {"initial_interval_s": 2.0, "backoff_coefficient": 2.0, "maximum_interval_s": 5.0}
    assert [timeline.retry_interval(policy, n) for n in (1, 2, 3)] == [2.0, 4.0, 5.0]
    assert timeline.retry_interval({"initial_interval_s": 0.0}, 1) is None


def test_attempt_from_pending_needs_a_failure_before_it():
    pending = PendingActivity(name="p", attempt=1, state="STARTED", last_failure=None, next_attempt_at=None,
                              last_worker="1@h")
    with pytest.raises(ValueError):
        timeline.Attempt.from_pending(pending)


def test_failed_attempts_reads_exact_times_from_describe():
    info = PendingActivityInfo(activity_id="2", attempt=2, last_worker_identity="9@h")
    info.activity_type.name = "parse_json"
    info.last_failure.message = "boom"
    info.last_attempt_complete_time.FromDatetime(T0 + timedelta(seconds=1))
    info.next_attempt_schedule_time.FromDatetime(T0 + timedelta(seconds=3))
    first_try = PendingActivityInfo(activity_id="3", attempt=1)
    first_try.activity_type.name = "save"

    class Handle:
        async def describe(self):
            return SimpleNamespace(raw_description=SimpleNamespace(pending_activities=[info, first_try]))

    (found,) = asyncio.run(timeline.failed_attempts(Handle()))
    assert (found.activity, found.attempt, found.worker, found.failure, found.activity_id) == (
        "parse_json", 1, "9@h", "boom", "2")
    assert found.ended_at == T0 + timedelta(seconds=1) and found.retry_at == T0 + timedelta(seconds=3)
    assert found.started_at is None
