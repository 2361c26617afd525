"""The timeline of one workflow run: which worker ran which attempt, when, and what happened around it.

A Temporal history tells most of the story, but not all of it:
- it records only the *last* attempt of an activity (ActivityTaskStarted with attempt=N;
  the attempt before it survives only as that event's ``last_failure``);
- it knows nothing about processes: that a worker was killed at 12:00:03.2, or that a
  new one was started.
So a timeline is built from the history plus annotations the caller observed (earlier
attempts seen with ``describe()``, kills, restarts, pauses), and drawn two ways: a Rich
table for the terminal and a small, self-contained SVG (a Gantt chart: one row per
activity, bars coloured by worker, retry backoffs, a vertical line at each kill).

    found = build(history,
                  attempts=[Attempt.from_pending(p)],       # e.g. seen during a backoff
                  marks=[Mark.kill(killed_at, identity)],
                  workers={identity: "worker1 (pid 4242)"})
    console.print(rich_table(found))
    Path("run.svg").write_text(svg(found))
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Sequence
from xml.sax.saxutils import escape

from temporalio.api.enums.v1 import EventType, TaskQueueKind, TimeoutType
from temporalio.client import WorkflowHandle, WorkflowHistory

from .temporal import PendingActivity, activity_runs

WORKFLOW_ROW = "workflow tasks"
PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#0891b2", "#ca8a04"]  # one colour per worker
KILL = "#dc2626"
NOTE = "#6b7280"
BACKOFF = "#d97706"
UNRECORDED_NOTE = "recorded only as last_failure"


# --- what the caller knows and the history does not ----------------------------------------------

@dataclass
class Attempt:
    """An activity attempt that is not a history event (history keeps only the last attempt)."""

    activity: str
    attempt: int
    outcome: str = "failed"
    worker: str | None = None  # worker identity
    started_at: datetime | None = None
    ended_at: datetime | None = None
    retry_at: datetime | None = None  # when the server's retry timer was due to fire
    failure: str | None = None
    activity_id: str | None = None  # to tell apart two activities of the same name

    @classmethod
    def from_pending(cls, pending: PendingActivity, activity_id: str | None = None) -> Attempt:
        """From a pending activity seen waiting for attempt N: attempt N-1 failed."""
        if pending.attempt < 2 or pending.last_failure is None:
            raise ValueError(f"{pending.name} attempt {pending.attempt} has no failed attempt before it")
        return cls(activity=pending.name, attempt=pending.attempt - 1, worker=pending.last_worker or None,
                   retry_at=pending.next_attempt_at, failure=pending.last_failure, activity_id=activity_id)


async def failed_attempts(handle: WorkflowHandle) -> list[Attempt]:
    """Every pending activity's previous, failed attempt, with the times describe() knows.

    Call it while the run is in a retry backoff: once the next attempt completes,
    the earlier one is gone from both describe() and the history.
    """
    description = await handle.describe()
    found = []
    for pending in description.raw_description.pending_activities:
        if pending.attempt < 2 or not pending.HasField("last_failure"):
            continue
        found.append(Attempt(
            activity=pending.activity_type.name, attempt=pending.attempt - 1,
            worker=pending.last_worker_identity or None,
            started_at=_time(pending, "last_started_time"),
            ended_at=_time(pending, "last_attempt_complete_time"),
            retry_at=_time(pending, "next_attempt_schedule_time"),
            failure=pending.last_failure.message, activity_id=pending.activity_id))
    return found


def _time(message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    return getattr(message, name).ToDatetime(tzinfo=timezone.utc)


@dataclass
class Mark:
    """Something that happened at one instant outside the history: a kill, a start, a pause."""

    at: datetime
    label: str
    kind: str = "note"  # kill | start | note
    worker: str | None = None  # the identity it concerns, if any

    @classmethod
    def kill(cls, at: datetime, worker: str | None = None, label: str = "SIGKILL") -> Mark:
        return cls(at=at, label=label, kind="kill", worker=worker)

    @classmethod
    def start(cls, at: datetime, worker: str | None = None, label: str = "worker started") -> Mark:
        return cls(at=at, label=label, kind="start", worker=worker)

    @classmethod
    def note(cls, at: datetime, label: str, worker: str | None = None) -> Mark:
        return cls(at=at, label=label, kind="note", worker=worker)


# --- the timeline --------------------------------------------------------------------------------

@dataclass
class Span:
    """One bar: an attempt, a workflow task, a backoff or a wait, on one row."""

    row: str
    kind: str  # attempt | task | backoff | wait | unrecorded
    start: datetime
    end: datetime | None  # None: still going when the history was read
    worker: str | None = None
    attempt: int = 0
    outcome: str = ""  # completed | failed | timed_out | canceled | pending, for attempts and tasks
    note: str = ""
    recorded: bool = True  # False: from an annotation or inferred, not a history event
    due: datetime | None = None  # backoff: when the server's timer was due (the span may end earlier)


@dataclass
class Timeline:
    workflow_id: str
    workflow_type: str
    status: str  # running | completed | failed | timed_out | canceled | terminated | continued_as_new
    started_at: datetime
    closed_at: datetime | None
    rows: list[str]
    spans: list[Span]
    marks: list[Mark]
    workers: dict[str, str]  # identity -> label, in order of first appearance

    @property
    def t0(self) -> datetime:
        return min([self.started_at, *(s.start for s in self.spans), *(m.at for m in self.marks)])

    @property
    def t_end(self) -> datetime:
        times = [self.started_at, *(m.at for m in self.marks)]
        for span in self.spans:
            times += [span.start] + ([span.end] if span.end else [])
        if self.closed_at:
            times.append(self.closed_at)
        return max(times)

    @property
    def duration(self) -> float:
        return max((self.t_end - self.t0).total_seconds(), 1e-3)

    def offset(self, at: datetime) -> float:
        """Seconds since the first thing on the timeline."""
        return (at - self.t0).total_seconds()

    def label(self, identity: str | None) -> str:
        return self.workers.get(identity, identity or "") if identity else ""

    def colour(self, identity: str | None) -> str:
        if not identity or identity not in self.workers:
            return NOTE
        return PALETTE[list(self.workers).index(identity) % len(PALETTE)]

    def items(self) -> list[Span | Mark]:
        """Spans and marks in time order (a mark before the spans that start at its instant)."""
        def key(item):
            return (item.at, 0) if isinstance(item, Mark) else (item.start, 1)
        return sorted([*self.spans, *self.marks], key=key)


def default_worker_label(identity: str) -> str:
    """Temporal's default identity is "pid@host": show it as "pid N"."""
    found = re.match(r"^(\d+)@", identity)
    return f"pid {found.group(1)}" if found else identity


def retry_interval(policy: dict, failed_attempt: int) -> float | None:
    """Seconds the server waits after `failed_attempt` fails (initial * coefficient^(n-1), capped)."""
    initial = policy.get("initial_interval_s") or 0.0
    if not initial:
        return None
    interval = initial * (policy.get("backoff_coefficient") or 2.0) ** (failed_attempt - 1)
    cap = policy.get("maximum_interval_s") or 0.0
    return min(interval, cap) if cap else interval


def build(history: WorkflowHistory, *, attempts: Iterable[Attempt] = (), marks: Iterable[Mark] = (),
          workers: dict[str, str] | None = None) -> Timeline:
    """The timeline of the run in `history`, completed with what the caller observed."""
    attempts, marks = list(attempts), sorted(marks, key=lambda m: m.at)
    started_at = closed_at = None
    workflow_type, status = "", "running"
    spans: list[Span] = []
    task_scheduled: dict[int, tuple[datetime, bool]] = {}
    task_started: dict[int, tuple[datetime, str]] = {}
    activity_ids: dict[int, str] = {}
    last_failures: dict[str, str] = {}
    for event in history.events:
        kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
        at = event.event_time.ToDatetime(tzinfo=timezone.utc)
        if kind == "WORKFLOW_EXECUTION_STARTED":
            started_at = at
            workflow_type = event.workflow_execution_started_event_attributes.workflow_type.name
        elif kind.startswith("WORKFLOW_EXECUTION_") and kind.removeprefix("WORKFLOW_EXECUTION_") in (
                "COMPLETED", "FAILED", "TIMED_OUT", "CANCELED", "TERMINATED", "CONTINUED_AS_NEW"):
            closed_at, status = at, kind.removeprefix("WORKFLOW_EXECUTION_").lower()
        elif kind == "WORKFLOW_TASK_SCHEDULED":
            queue = event.workflow_task_scheduled_event_attributes.task_queue
            task_scheduled[event.event_id] = (at, queue.kind == TaskQueueKind.TASK_QUEUE_KIND_STICKY)
        elif kind == "WORKFLOW_TASK_STARTED":
            attrs = event.workflow_task_started_event_attributes
            task_started[attrs.scheduled_event_id] = (at, attrs.identity)
        elif kind in ("WORKFLOW_TASK_COMPLETED", "WORKFLOW_TASK_FAILED", "WORKFLOW_TASK_TIMED_OUT"):
            attrs = getattr(event, kind.lower() + "_event_attributes")
            outcome = kind.removeprefix("WORKFLOW_TASK_").lower()
            if kind == "WORKFLOW_TASK_TIMED_OUT" and attrs.timeout_type == TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START:
                scheduled, sticky = task_scheduled.get(attrs.scheduled_event_id, (at, False))
                spans.append(Span(WORKFLOW_ROW, "wait", scheduled, at, outcome="timed_out", note=(
                    "workflow task waited on the sticky queue of a worker that is gone" if sticky
                    else "no worker took the workflow task")))
                continue
            begun, identity = task_started.get(attrs.scheduled_event_id, (at, ""))
            note = attrs.failure.message if kind == "WORKFLOW_TASK_FAILED" and attrs.HasField("failure") else ""
            spans.append(Span(WORKFLOW_ROW, "task", begun, at, worker=identity or None, outcome=outcome, note=note))
        elif kind == "ACTIVITY_TASK_SCHEDULED":
            activity_ids[event.event_id] = event.activity_task_scheduled_event_attributes.activity_id
        elif kind == "ACTIVITY_TASK_STARTED":
            attrs = event.activity_task_started_event_attributes
            if attrs.HasField("last_failure"):
                last_failures[activity_ids.get(attrs.scheduled_event_id, "")] = attrs.last_failure.message
    if started_at is None:
        raise ValueError("the history has no WorkflowExecutionStarted event")

    runs = activity_runs(history)
    names = [run.name for run in runs]
    rows = [WORKFLOW_ROW]
    for run in runs:
        row = run.name if names.count(run.name) == 1 else f"{run.name} #{run.activity_id}"
        rows.append(row)
        mine = sorted((a for a in attempts if a.activity == run.name
                       and (a.activity_id is None or a.activity_id == run.activity_id)
                       and (not run.attempt or a.attempt < run.attempt)), key=lambda a: a.attempt)
        spans += _earlier_attempts(row, run, mine, last_failures.get(run.activity_id))
        if run.started_at:
            spans.append(Span(row, "attempt", run.started_at, run.closed_at, worker=run.identity or None,
                              attempt=run.attempt, outcome=run.outcome, note=run.failure or ""))
        elif not mine:
            spans.append(Span(row, "wait", run.scheduled_at, run.closed_at, outcome=run.outcome,
                              note="scheduled, not started yet"))

    seen: dict[str, str] = {}
    for item in sorted([*spans, *marks], key=lambda i: i.at if isinstance(i, Mark) else i.start):
        if item.worker and item.worker not in seen:
            seen[item.worker] = (workers or {}).get(item.worker) or default_worker_label(item.worker)
    for identity, label in (workers or {}).items():
        seen.setdefault(identity, label)
    return Timeline(workflow_id=history.workflow_id, workflow_type=workflow_type, status=status,
                    started_at=started_at, closed_at=closed_at, rows=rows, spans=spans, marks=marks,
                    workers=seen)


def _earlier_attempts(row: str, run, known: Sequence[Attempt], last_failure: str | None) -> list[Span]:
    """Spans for the attempts before the recorded one: the caller's, or one placeholder."""
    spans: list[Span] = []
    cursor = run.scheduled_at  # attempt 1 is dispatched when the activity is scheduled
    for index, attempt in enumerate(known):
        interval = retry_interval(run.retry_policy, attempt.attempt)
        start = attempt.started_at or cursor
        end = attempt.ended_at
        if end is None and attempt.retry_at is not None and interval is not None:
            end = max(start, attempt.retry_at - timedelta(seconds=interval))
        end = end or start
        spans.append(Span(row, "attempt", start, end, worker=attempt.worker, attempt=attempt.attempt,
                          outcome=attempt.outcome, note=attempt.failure or "", recorded=False))
        cursor = end
        following = known[index + 1].started_at if index + 1 < len(known) else run.started_at
        if attempt.retry_at is not None:
            planned = (attempt.retry_at - end).total_seconds()
            stop = attempt.retry_at if following is None else max(end, min(attempt.retry_at, following))
            note = f"retry timer: {planned:.1f} s, kept by the server"
            if stop < attempt.retry_at:
                note += (f"; attempt {attempt.attempt + 1} started {(attempt.retry_at - stop).total_seconds():.1f} s "
                         "before it was due (unpaused, or reset)")
            spans.append(Span(row, "backoff", end, stop, attempt=attempt.attempt + 1, note=note, recorded=False,
                              due=attempt.retry_at))
            cursor = stop
        if following is not None and (following - cursor).total_seconds() > 0.25:
            spans.append(Span(row, "wait", cursor, following, attempt=attempt.attempt + 1,
                              note="due, but not started yet: no worker polling, or the activity paused",
                              recorded=False))
            cursor = following
    missing = [n for n in range(1, run.attempt) if n not in {a.attempt for a in known}]
    if missing:
        which = f"attempt {missing[0]}" if len(missing) == 1 else f"attempts {missing[0]}-{missing[-1]}"
        end = run.started_at or cursor
        spans.append(Span(row, "unrecorded", min(cursor, end), end, attempt=missing[0], outcome="failed",
                          note=f"{which} failed ({UNRECORDED_NOTE}"
                               + (f": {last_failure})" if last_failure else ")"),
                          recorded=False))
    return spans


# --- the terminal: a Rich table ------------------------------------------------------------------

def _outcome(span: Span) -> str:
    """A few words for the outcome column; the long story goes to a footnote."""
    seconds = (span.end - span.start).total_seconds() if span.end else None
    if span.kind == "backoff":
        if seconds is None:
            return "backoff"
        if span.due and span.end and span.end < span.due:
            return f"backoff cut at {seconds:.1f} s"
        return f"backoff {seconds:.1f} s"
    if span.kind == "wait":
        what = "sticky stall" if "sticky" in span.note else "waited"
        return f"{what} {seconds:.1f} s" if seconds is not None else "waiting"
    if span.kind == "unrecorded":
        return "failed, not in history"
    return span.outcome


def _footnote(span: Span) -> str:
    if span.kind == "attempt" and not span.recorded:
        return ((span.note + "; ") if span.note else "") + (
            "seen while pending, not a history event: the history keeps only an activity's last attempt")
    if span.kind == "unrecorded" or (span.note and span.kind in ("attempt", "task")):
        return span.note
    if span.kind in ("wait", "backoff") and span.note and (span.kind == "wait" or "before it was due" in span.note):
        return span.note
    return ""


class RichTimeline:
    """A Rich renderable: one line per attempt, backoff, workflow task and mark, with a bar column
    sized to the console's width."""

    def __init__(self, timeline: Timeline, *, workflow_tasks: bool = True):
        self.timeline, self.workflow_tasks = timeline, workflow_tasks

    def __rich_console__(self, console, options):
        yield self.table(max(12, min(48, options.max_width - 78)))

    def table(self, bar_width: int):
        from rich import box
        from rich.table import Table
        from rich.text import Text

        tl = self.timeline
        elapsed = ((tl.closed_at or tl.t_end) - tl.started_at).total_seconds()
        table = Table(title=f"{tl.workflow_type} {tl.workflow_id}: {tl.status}, {elapsed:.1f} s",
                      title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
        table.add_column("what", no_wrap=True)
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("worker", no_wrap=True)
        table.add_column("time (s)", no_wrap=True)
        table.add_column("outcome", overflow="fold")
        table.add_column("timeline", no_wrap=True, width=bar_width)
        scale = (bar_width - 1) / tl.duration

        def column(at: datetime) -> int:
            return max(0, min(bar_width - 1, round(tl.offset(at) * scale)))

        def bar(span: Span | None = None, mark: Mark | None = None) -> Text:
            cells = [(" ", "")] * bar_width
            for other in tl.marks:
                cells[column(other.at)] = ("┆", KILL if other.kind == "kill" else tl.colour(other.worker))
            if span is not None:
                glyph, style = {"attempt": ("█", tl.colour(span.worker)), "task": ("▮", tl.colour(span.worker)),
                                "backoff": ("╌", BACKOFF), "wait": ("·", NOTE), "unrecorded": ("▒", KILL)}[span.kind]
                if span.kind == "attempt" and span.outcome != "completed":
                    style = KILL
                for index in range(column(span.start), column(span.end or tl.t_end) + 1):
                    cells[index] = (glyph, style)
            if mark is not None:
                cells[column(mark.at)] = ("┃", "bold " + (KILL if mark.kind == "kill" else tl.colour(mark.worker)))
            text = Text()
            for glyph, style in cells:
                text.append(glyph, style or None)
            return text

        notes: list[str] = []
        for item in tl.items():
            if isinstance(item, Mark):
                colour = KILL if item.kind == "kill" else tl.colour(item.worker)
                what = {"kill": "✖ killed", "start": "▶ started"}.get(item.kind, "• note")
                table.add_row(Text(what, style="bold " + colour), "",
                              Text(tl.label(item.worker), style=tl.colour(item.worker)),
                              f"{tl.offset(item.at):.2f}", Text(item.label, style=colour), bar(mark=item))
                continue
            if item.kind == "task" and not self.workflow_tasks:
                continue
            outcome = Text(_outcome(item))
            if item.outcome in ("failed", "timed_out") or item.kind == "unrecorded":
                outcome.stylize(KILL)
            elif item.kind == "backoff":
                outcome.stylize(BACKOFF)
            elif item.kind in ("task", "wait"):
                outcome.stylize("dim")
            note = _footnote(item)
            if note:
                if note not in notes:
                    notes.append(note)
                outcome.append(f" [{notes.index(note) + 1}]", style="dim")
            end = f"{tl.offset(item.end):.2f}" if item.end else "…"
            table.add_row(Text(item.row, style="dim" if item.kind == "task" else ""),
                          str(item.attempt) if item.attempt and item.kind in ("attempt", "unrecorded") else "",
                          Text(tl.label(item.worker), style=tl.colour(item.worker)),
                          f"{tl.offset(item.start):.2f}–{end}", outcome, bar(span=item))
        caption = Text()
        for number, note in enumerate(notes, 1):
            caption.append(f"[{number}] {note}\n", style="dim")
        caption.append("█ attempt ▮ workflow task ╌ retry backoff (a server timer) · waiting "
                       "▒ not a history event ┃ kill/start   ", style="dim")
        for identity, label in tl.workers.items():
            caption.append("■ ", style=tl.colour(identity)).append(f"{label}  ", style="dim")
        table.caption, table.caption_justify = caption, "left"
        return table


def rich_table(timeline: Timeline, *, workflow_tasks: bool = True) -> RichTimeline:
    """The run for the terminal (or a notebook): ``console.print(rich_table(found))``."""
    return RichTimeline(timeline, workflow_tasks=workflow_tasks)


# --- a picture: a small self-contained SVG -------------------------------------------------------

def _tick_step(duration: float) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600):
        if duration / step <= 12:
            return step
    return 10 ** math.ceil(math.log10(duration / 10))


def svg(timeline: Timeline, *, width: int = 860) -> str:
    """The run as a Gantt-like SVG: one row per activity, bars coloured by worker, marks as lines."""
    left, right, top, row_h, bar_h = 170, 24, 58, 30, 14
    plot_w = width - left - right
    rows_bottom = top + row_h * len(timeline.rows)
    marks_h = 16 * len(timeline.marks) + (8 if timeline.marks else 0)
    legend_y = rows_bottom + marks_h + 22
    height = legend_y + 40
    duration = timeline.duration

    def x(at: datetime) -> float:
        return left + timeline.offset(at) / duration * plot_w

    def row_y(row: str) -> float:
        return top + row_h * timeline.rows.index(row)

    def text(tx, ty, body, size=11, anchor="start", fill="#111827", weight="normal", extra=""):
        return (f'<text x="{tx:.1f}" y="{ty:.1f}" font-size="{size}" text-anchor="{anchor}" '
                f'fill="{fill}" font-weight="{weight}"{extra}>{escape(body)}</text>')

    def tip(body: str) -> str:
        return f"<title>{escape(body)}</title>"

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="ui-sans-serif, system-ui, -apple-system, '
           f'Segoe UI, Helvetica, Arial, sans-serif">',
           '<defs><pattern id="unrecorded" width="6" height="6" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f3f4f6"/>'
           f'<line x1="0" y1="0" x2="0" y2="6" stroke="{NOTE}" stroke-width="2"/></pattern></defs>',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>']
    elapsed = ((timeline.closed_at or timeline.t_end) - timeline.started_at).total_seconds()
    out.append(text(12, 20, f"{timeline.workflow_type} {timeline.workflow_id}", 14, weight="bold"))
    out.append(text(12, 36, f"{timeline.status}, {elapsed:.1f} s from start to "
                            f"{'close' if timeline.closed_at else 'now'}; time in seconds", 11, fill=NOTE))

    # axis and grid
    step = _tick_step(duration)
    tick = 0.0
    while tick <= duration + 1e-9:
        tx = left + tick / duration * plot_w
        out.append(f'<line x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{rows_bottom}" stroke="#e5e7eb"/>')
        out.append(text(tx, top - 10, f"{tick:g}", 10, "middle", NOTE))
        tick += step
    for index, row in enumerate(timeline.rows):
        ry = top + row_h * index
        if index % 2:
            out.append(f'<rect x="0" y="{ry}" width="{width}" height="{row_h}" fill="#f9fafb" fill-opacity="0.7"/>')
        out.append(text(left - 10, ry + row_h / 2 + 4, row, 12, "end",
                        NOTE if row == WORKFLOW_ROW else "#111827", "normal" if row == WORKFLOW_ROW else "bold"))

    # bars
    for span in timeline.spans:
        ry = row_y(span.row)
        mid = ry + row_h / 2
        x1 = x(span.start)
        x2 = x(span.end or timeline.t_end)
        details = (f"{span.row}: {span.kind}"
                   + (f" attempt {span.attempt}" if span.attempt and span.kind == "attempt" else "")
                   + (f" on {timeline.label(span.worker)} ({span.worker})" if span.worker else "")
                   + f", {timeline.offset(span.start):.2f}–{timeline.offset(span.end or timeline.t_end):.2f} s"
                   + (f", {span.outcome}" if span.outcome else "") + (f": {span.note}" if span.note else "")
                   + ("" if span.recorded else " [not a history event]"))
        if span.kind in ("attempt", "task"):
            w = max(x2 - x1, 3.0)
            h = bar_h if span.kind == "attempt" else bar_h - 6
            failed = span.outcome not in ("completed", "")
            stroke = (f' stroke="{KILL}" stroke-width="2"' if failed else "") + (
                ' stroke-dasharray="3 2"' if not span.recorded and failed else "")
            opacity = "1" if span.recorded else "0.55"
            out.append(f'<rect x="{x1:.1f}" y="{mid - h / 2:.1f}" width="{w:.1f}" height="{h}" rx="2" '
                       f'fill="{timeline.colour(span.worker)}" fill-opacity="{opacity}"{stroke}>{tip(details)}</rect>')
            if span.kind == "attempt":
                if failed:  # left of the bar: the right side is where the retry story goes
                    out.append(text(x1 - 3, mid + 4, f"#{span.attempt} ✗", 10, "end", KILL))
                else:
                    out.append(text(x1 + w + 3, mid + 4, f"#{span.attempt}", 10, fill="#374151"))
        elif span.kind == "backoff":
            out.append(f'<line x1="{x1:.1f}" y1="{mid}" x2="{x2:.1f}" y2="{mid}" stroke="{BACKOFF}" '
                       f'stroke-width="2" stroke-dasharray="5 3">{tip(details)}</line>')
            out.append(f'<line x1="{x2:.1f}" y1="{mid - 5}" x2="{x2:.1f}" y2="{mid + 5}" stroke="{BACKOFF}" '
                       f'stroke-width="2"/>')
            out.append(text((x1 + x2) / 2, mid - 6, _outcome(span), 10, "middle", BACKOFF))
        elif span.kind == "wait":
            out.append(f'<line x1="{x1:.1f}" y1="{mid}" x2="{x2:.1f}" y2="{mid}" stroke="{NOTE}" '
                       f'stroke-width="2" stroke-dasharray="1 3">{tip(details)}</line>')
            if span.end and (span.end - span.start).total_seconds() / duration > 0.08:
                waited = (span.end - span.start).total_seconds()
                label = (f"{waited:.1f} s stalled on the gone worker's sticky queue" if "sticky" in span.note
                         else f"waiting {waited:.1f} s")
                out.append(text((x1 + x2) / 2, mid - 6, label, 10, "middle", NOTE))
        elif span.kind == "unrecorded":
            w = max(x2 - x1, 6.0)
            out.append(f'<rect x="{x1:.1f}" y="{mid - bar_h / 2:.1f}" width="{w:.1f}" height="{bar_h}" '
                       f'fill="url(#unrecorded)" stroke="{KILL}" stroke-dasharray="3 2">{tip(details)}</rect>')
            out.append(text(x1 + 2, mid + bar_h / 2 + 10, f"attempt {span.attempt} failed: "
                                                         f"only last_failure is recorded", 9, fill=KILL))

    # marks: a vertical line across the rows, the label on its own line below them
    for index, mark in enumerate(timeline.marks):
        mx = x(mark.at)
        colour = KILL if mark.kind == "kill" else timeline.colour(mark.worker)
        dash = "" if mark.kind == "kill" else ' stroke-dasharray="4 3"'
        label_y = rows_bottom + 16 * (index + 1)
        body = f"{'✖' if mark.kind == 'kill' else '▶' if mark.kind == 'start' else '•'} {mark.label}" + (
            f" ({timeline.label(mark.worker)})" if mark.worker and timeline.label(mark.worker) not in mark.label
            else "") + f" at {timeline.offset(mark.at):.2f} s"
        out.append(f'<line x1="{mx:.1f}" y1="{top - 4}" x2="{mx:.1f}" y2="{label_y - 4}" stroke="{colour}" '
                   f'stroke-width="{2 if mark.kind == "kill" else 1.5}"{dash}>{tip(body)}</line>')
        anchor = "end" if mx > left + plot_w * 0.6 else "start"
        out.append(text(mx + (-4 if anchor == "end" else 4), label_y, body, 10, anchor, colour,
                        "bold" if mark.kind == "kill" else "normal"))

    # legend
    lx = 12
    for identity, label in timeline.workers.items():
        out.append(f'<rect x="{lx}" y="{legend_y - 9}" width="12" height="10" rx="2" '
                   f'fill="{timeline.colour(identity)}">{tip(identity)}</rect>')
        out.append(text(lx + 16, legend_y, label, 11))
        lx += 30 + 7 * len(label)
    ly = legend_y + 20
    out.append(f'<line x1="12" y1="{ly - 4}" x2="36" y2="{ly - 4}" stroke="{BACKOFF}" stroke-width="2" '
               f'stroke-dasharray="5 3"/>')
    out.append(text(40, ly, "retry backoff (a timer on the server)", 10, fill=NOTE))
    out.append(f'<line x1="250" y1="{ly - 4}" x2="274" y2="{ly - 4}" stroke="{NOTE}" stroke-width="2" '
               f'stroke-dasharray="1 3"/>')
    out.append(text(278, ly, "due, not started yet (no worker, or paused)", 10, fill=NOTE))
    out.append(f'<rect x="520" y="{ly - 9}" width="14" height="10" fill="#2563eb" fill-opacity="0.55"/>')
    out.append(text(538, ly, "pale: seen with describe(), not in history", 10, fill=NOTE))
    out.append("</svg>")
    return "\n".join(out)
