"""Lab 02 autograder: a human decision gates the save, and neither a crash nor a race loses or doubles it.

Scenario, run once for the module against a fresh Temporal dev server and course LLM.
Five AnalyzeWorkflow runs share the student's worker (a real process):
  approve  waits at the gate; the worker is SIGKILLed; `approve` is signalled while no worker
           runs; a new worker starts (as on another host) and finishes it.
  reject   the same kill window: `reject` (bob, a reason), a contradicting `approve` (mallory), and
           a `decide("approve")` update (dave) that the next worker's validator must refuse.
  expire   a short approval_timeout_seconds in its input (drawn per run), and nobody decides.
  update   after the restart: two unknown decisions by `decide` (drawn per run: must be refused,
           and change nothing), then `decide("approve")` (carol), which must be acknowledged; the
           status is queried after each of these, and while the approved run saves.
  early    started with its `approve` signal (signal-with-start): the decision arrives before the
           workflow has even called the LLM.
Reviewers, notes, the reason, the unknown decisions, the expiry and the LLM's analysis are drawn at
random per run of the check (within the lab's contract), so no answer can be written in advance.
Each check below reads its evidence from outside the student's process: the `status` query, the
Temporal history (signals, updates, timers, activities), the SQLite rows, the LLM ledger (each
request tied to the activity that sent it), a replay.

The scenario's shared parts (the run's input, the rows, a run's LLM requests, the invariant on the
rows after a decision) live in checks/scenario_lab02_approval_signal.py and Lab 01's, which the crash
sweep (`lab sweep 02`) runs at many random moments; this check is its chosen kills and decisions.

Timing: nothing here waits for a fixed time or races the clock. Every wait ends on a state seen
from outside: a history event, the server's pending workflow task and activities, an update the
server admitted. A run that waits with nothing running and no timer due is *stuck* (it waits for
something that will not come): that is a verdict at once, not after a timeout. The expiry is proven
by the timer in the history. PATIENCE_S only stops a run that stopped moving; a worker that never
polls is judged by the harness's progress watchdog (labkit.proc.Watchdog), not by a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import shutil
import signal
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, PendingActivityState, UpdateWorkflowExecutionLifecycleStage
from temporalio.api.update.v1 import UpdateRef, WaitPolicy
from temporalio.api.workflowservice.v1 import PollWorkflowExecutionUpdateRequest
from temporalio.client import (Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory,
                               WorkflowQueryFailedError, WorkflowUpdateFailedError)
from temporalio.service import RPCError, RPCStatusCode

from labkit import history as hist
from labkit import proc, temporal
from labkit.approval import ApprovalError, send_decision
from labkit.feedback import CheckFailed, NotChecked, tail, unfinished
from labkit.harness import BENIGN_TASK_FAILURES, WorkerHarness
from labkit.llm import LedgerEntry
from labkit.replays import ReplaySet, ReplaySetVerdict

from scenario_lab01_temporal_crash import analysis_rows, requests_of
from scenario_lab02_approval_signal import rows_as_decided
from scenario_lab02_approval_signal import start_input as analysis_input

LAB = "02"
DEFAULT_TIMEOUT_S = 24 * 60 * 60  # the lab's default approval timeout
EXPIRE_CHOICES_S = (2.0, 2.5, 3.0, 3.5, 4.0)  # the expire run's approval_timeout_seconds, one drawn per run
PATIENCE_S = 60.0  # hang guard: a run whose history and pending work did not change for this long
AWAITING = "awaiting_approval"
UNKNOWN_WORDS = ("later", "hold", "escalate", "abstain", "defer", "pending", "unsure", "skip")

REVISIT_STATE = ("Keep the decision on the workflow instance (fields set in __init__), set it from the "
                 "signal and update handlers, and wait with `workflow.wait_condition(lambda: ..., "
                 "timeout=...)`. The history records every signal and update, so a new worker rebuilds "
                 "the same fields by replaying it (§64.2.1; the text's `workflow.condition` and "
                 "`workflow.signal_handler` do not exist).")
REVISIT_SIDE_EFFECT = ("Call it with workflow.execute_activity: side effects belong in activities. The workflow "
                       "schedules call_llm, parse_json and save_to_db (`await workflow.execute_activity(save_to_db, "
                       "self._row, start_to_close_timeout=..., retry_policy=...)`); calling the activity function "
                       "itself, or building the LLM client or the database engine in workflow code, runs the side "
                       "effect inside the workflow, where the sandbox forbids it and a replay would repeat it.")
SENTIMENTS = ("positive", "neutral", "negative")
TOPICS = ("delivery", "support", "refund", "packaging", "price", "courier", "tracking", "quality")


@dataclass
class People:
    """Who decides what, drawn per run of the check."""

    alice: str
    bob: str
    mallory: str
    dave: str
    carol: str
    erin: str
    alice_note: str
    reason: str
    carol_note: str
    unknown: tuple[str, str]  # two decisions outside the contract ("approve" / "reject")


def draw_people(rng: random.Random) -> People:
    def name(base: str) -> str:
        return f"{base}-{rng.randrange(100, 1000)}"
    return People(alice=name("alice"), bob=name("bob"), mallory=name("mallory"), dave=name("dave"),
                  carol=name("carol"), erin=name("erin"),
                  alice_note=f"looks right (ticket {rng.randrange(10 ** 4)})",
                  reason=rng.choice(("the summary misses the refund", "wrong product", "the topics are off",
                                     "the sentiment is too positive")) + f" (ticket {rng.randrange(10 ** 4)})",
                  carol_note=f"approved by update (ticket {rng.randrange(10 ** 4)})",
                  unknown=(rng.choice(UNKNOWN_WORDS), rng.choice(("approved", "rejected", "yes", "no", "ok"))))


@dataclass
class Gate:
    """What the approval gate looked like when the workflow reached it."""

    by: str  # "query" (status said awaiting_approval) or "history" (waiting after parse_json, no save)
    status: Any  # the status query's answer, or None
    query_error: str | None
    rows: list[tuple]
    save_scheduled: bool
    elapsed_s: float  # from the start of the wait for it
    at: float  # time.monotonic() when it was seen


@dataclass
class Sent:
    what: str  # "approve(alice-123)", "decide('hold')", ...
    at: datetime
    outcome: str  # "recorded" | "accepted" | "refused" | "error"
    detail: Any = None  # the ack, the refusal message, the error


@dataclass
class Seen:
    """One answer of the status query, and when in the run it was asked."""

    moment: str  # "at the gate", "after the restart", "after decide('hold') was refused", ...
    status: Any
    error: str | None = None


@dataclass
class Run:
    key: str
    workflow_id: str
    marker: str
    reply: dict  # the analysis the course LLM gives this run
    timeout_s: float | None = None  # None: not passed, the workflow's default applies
    handle: WorkflowHandle | None = None
    gate: Gate | None = None
    gate_failure: CheckFailed | None = None
    sent: list[Sent] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)  # the status query's answers, in order
    saving_seen: bool = False  # the run went on to save after the update's decision (and was queried then)
    result: Any = None
    finish_failure: CheckFailed | None = None
    still_running: bool = False  # finish_failure because it waits for something that will not come
    finished_at: datetime | None = None
    history: WorkflowHistory | None = None
    final_status: Any = None
    final_status_error: str | None = None
    rows: list[tuple] = field(default_factory=list)  # (id, workflow_id, sentiment, summary, topics)
    llm_calls: list[LedgerEntry] = field(default_factory=list)

    def reached_gate(self) -> Gate:
        if self.gate is None:
            reason = self.gate_failure.summary if self.gate_failure else "it was never started"
            raise NotChecked(f"not checked: the {self.key} run never waited at the approval gate ({reason})")
        return self.gate

    def finished(self) -> Any:
        if self.finish_failure is not None:
            raise self.finish_failure
        return self.result


@dataclass
class Scenario:
    paths: dict[str, Run]  # by key: approve, reject, expire, update, early
    people: People
    old_identities: set[str] = field(default_factory=set)
    new_identities: set[str] = field(default_factory=set)
    killed_pid: int = 0
    killed_returncode: int | None = None
    killed_at: datetime | None = None
    restarted_at: datetime | None = None
    replay: ReplaySetVerdict | None = None
    failure: CheckFailed | None = None

    approve = property(lambda self: self.paths["approve"])
    reject = property(lambda self: self.paths["reject"])
    expire = property(lambda self: self.paths["expire"])
    update = property(lambda self: self.paths["update"])
    early = property(lambda self: self.paths["early"])

    def require(self) -> Scenario:
        if self.failure is not None:
            raise NotChecked(f"not checked: the scenario did not run ({self.failure.summary})")
        return self


# --- looking at a run from outside -----------------------------------------------------------------

@dataclass
class Look:
    history: WorkflowHistory
    closed: hist.Closure | None
    pending: list[temporal.PendingActivity]
    task_pending: bool  # a workflow task is scheduled or running

    @property
    def idle(self) -> bool:
        """Open, and nothing to do: no workflow task, no activity. Only a timer firing, a signal or an
        update can move it now."""
        return self.closed is None and not self.task_pending and not self.pending

    def timers_due_within(self, seconds: float) -> list[hist.Timer]:
        now = datetime.now(timezone.utc)
        return [t for t in hist.timers(self.history) if t.outcome == "pending"
                and t.started_at + timedelta(seconds=t.seconds) <= now + timedelta(seconds=seconds)]

    @property
    def stuck(self) -> bool:
        """Idle with no timer due soon: it waits for something that will not come by itself."""
        return self.idle and not self.timers_due_within(PATIENCE_S)

    def parsed(self) -> bool:
        return any(r.name == "parse_json" and r.outcome == "completed" for r in temporal.activity_runs(self.history))

    def state(self) -> tuple:
        return len(self.history.events), tuple((p.name, p.attempt, p.state) for p in self.pending), self.task_pending


def pending_of(description) -> list[temporal.PendingActivity]:
    """The pending activities of a description (labkit.temporal.pending_activities, without a second call)."""
    found = []
    for pending in description.raw_description.pending_activities:
        found.append(temporal.PendingActivity(
            name=pending.activity_type.name, attempt=pending.attempt,
            state=PendingActivityState.Name(pending.state).removeprefix("PENDING_ACTIVITY_STATE_"),
            last_failure=pending.last_failure.message if pending.HasField("last_failure") else None,
            next_attempt_at=(pending.next_attempt_schedule_time.ToDatetime(tzinfo=timezone.utc)
                             if pending.HasField("next_attempt_schedule_time") else None),
            last_worker=pending.last_worker_identity))
    return found


async def look(handle: WorkflowHandle) -> Look:
    """One consistent snapshot: the server's pending work and the history of the same moment (the
    description's history length must match the history read after it, else look again)."""
    while True:
        description = await handle.describe()
        raw = description.raw_description
        history = await handle.fetch_history()
        recorded = raw.workflow_execution_info.history_length
        # Equal: the same moment. Longer: either newer (look again) or the transient events of a workflow
        # task being retried after a failure, which the description shows as pending (not idle either way).
        if len(history.events) == recorded or (len(history.events) > recorded
                                                and raw.HasField("pending_workflow_task")):
            break
        await asyncio.sleep(0.05)
    return Look(history=history, closed=hist.closure(history), pending=pending_of(description),
                task_pending=raw.HasField("pending_workflow_task"))


class Progress:
    """A hang guard that restarts whenever the watched state changes."""

    def __init__(self, patience: float = PATIENCE_S):
        self.patience, self.state, self.since = patience, None, time.monotonic()

    def stalled(self, state) -> bool:
        if state != self.state:
            self.state, self.since = state, time.monotonic()
        return time.monotonic() - self.since > self.patience


def pending_timers(history: WorkflowHistory) -> str:
    timers = [t for t in hist.timers(history) if t.outcome == "pending"]
    return ", ".join(f"{t.seconds:g} s" for t in timers) or "none"


# --- the scenario --------------------------------------------------------------------------------

class Lab02Harness(WorkerHarness):
    def __init__(self, target, services, workdir: Path, key: str):
        # The database is the one thing the workers share, as a real database server would be.
        (Path(workdir) / "database").mkdir(parents=True, exist_ok=True)
        self.db_path = Path(workdir) / "database" / "lab02.sqlite"
        super().__init__(target, services, workdir, lab=LAB, key=key,
                         LAB02_DATABASE_URL=f"sqlite:///{self.db_path}")
        self.replay: ReplaySet | None = None
        self.pristine_code = self.workdir / "code"
        shutil.copytree(target.root, self.pristine_code, ignore=shutil.ignore_patterns("__pycache__"))

    def start_worker(self) -> proc.ManagedProcess:
        """Worker n runs as on host n: its own working directory, TMPDIR and HOME; from the second
        on, its own copy of the code. Nothing the first worker wrote on its disk is there."""
        n = len(self.workers) + 1
        host = self.workdir / f"host{n}"
        cwd, tmp, home = host / "cwd", host / "tmp", host / "home"
        for folder in (cwd, tmp, home):
            folder.mkdir(parents=True)
        env = dict(self.env, TMPDIR=str(tmp), HOME=str(home))
        if n > 1:
            shutil.copytree(self.pristine_code, host / "code")
            env["PYTHONPATH"] = str(host / "code")
        worker = proc.start([sys.executable, "-m", self.target.module("worker")], name=f"worker{n}",
                            log_path=self.workdir / f"worker{n}.log", env=env, cwd=cwd, student=True)
        self.workers.append(worker)
        return worker

    def push_replies(self, runs: list[Run]) -> None:
        self.services.llm.push_rules([{"name": f"lab02-{run.workflow_id}", "match": re.escape(run.marker),
                                       "reply_json": run.reply} for run in runs])

    def rows(self, workflow_id: str) -> list[tuple]:
        return analysis_rows(self.db_path, workflow_id)  # none before the table exists: nothing saved yet

    @contextlib.contextmanager
    def database_held(self):
        """Hold the database (an exclusive SQLite lock): a save_to_db that starts now waits for it, so
        a run that goes on to save stays in its 'saving' stage until the check has looked."""
        db = sqlite3.connect(self.db_path, timeout=10, isolation_level=None)
        try:
            db.execute("BEGIN EXCLUSIVE")
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            db.close()

    async def workflow_task_failure(self, handle: WorkflowHandle, expected: str,
                                    history: WorkflowHistory | None = None) -> CheckFailed | None:
        """The harness's verdict on a failed workflow task, with the idea named when the workflow
        ran a side effect itself (an activity function called directly, an LLM client built there)."""
        history = history or await handle.fetch_history()
        failure = await super().workflow_task_failure(handle, expected, history)
        if failure is None or failure.summary.startswith("Not implemented yet"):
            return failure
        if side_effect_in_workflow(task_failure_text(history), self.target.name):
            failure.summary = ("Your workflow ran a side effect itself instead of scheduling an activity: "
                               + failure.summary.removeprefix("Your workflow code failed inside the worker: "))
            failure.revisit = REVISIT_SIDE_EFFECT
        return failure


def task_failure_text(history: WorkflowHistory) -> str:
    texts = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            attrs = event.workflow_task_failed_event_attributes
            if attrs.cause not in BENIGN_TASK_FAILURES:
                texts.append(f"{attrs.failure.message}\n{attrs.failure.stack_trace}")
    return "\n".join(texts)


def side_effect_in_workflow(text: str, package: str) -> bool:
    """True when a failed workflow task ran an activity's body or an I/O client inside the workflow."""
    if f"{package}/activities.py" in text or "Not in activity context" in text:
        return True
    lowered = text.lower()
    return "restricted" in lowered and any(word in lowered for word in (
        "openai", "httpx", "urllib", "socket", "ssl", "sqlite", "sqlalchemy", "sqlmodel", "http.client"))


def start_input(path: Run) -> dict:
    return analysis_input(path.marker, path.timeout_s)


async def query_status(handle: WorkflowHandle) -> tuple[Any, str | None]:
    try:
        return await handle.query("status", rpc_timeout=timedelta(seconds=PATIENCE_S)), None
    except WorkflowQueryFailedError as err:
        return None, str(err)
    except RPCError as err:
        return None, f"{err.status.name if err.status else 'RPC error'}: {err.message}"


async def ask_status(path: Run, moment: str) -> Seen:
    status, error = await query_status(path.handle)
    seen = Seen(moment, status, error)
    path.seen.append(seen)
    return seen


def _stage(status: Any) -> Any:
    return status.get("stage") if isinstance(status, dict) else None


async def reach_gate(harness: Lab02Harness, path: Run) -> None:
    """Wait until the run waits for a decision (parse_json done, nothing left to run); record what the
    gate looked like, or why it never did."""
    began = time.monotonic()
    progress = Progress()
    while True:
        seen = await look(path.handle)
        if seen.closed is not None:
            if path.timeout_s is not None and isinstance(seen.closed.result, dict) \
                    and seen.closed.result.get("status") == "expired" and hist.timers(seen.history):
                # A short timeout can pass before this look sees the wait: its timer shows it did wait.
                path.gate = Gate(by="history", status=None, query_error=None, rows=harness.rows(path.workflow_id),
                                 save_scheduled=False, elapsed_s=time.monotonic() - began, at=time.monotonic())
                return
            path.gate_failure = closed_before_gate(harness, path, seen.closed, seen.history)
            return
        failed = await harness.workflow_task_failure(
            path.handle, expected="AnalyzeWorkflow.run calls call_llm and parse_json, then waits for a decision",
            history=seen.history)
        if failed is not None:
            path.gate_failure = failed
            return
        if seen.idle and seen.parsed():
            status = await ask_status(path, "at the gate")
            if status.error and "TODO(lab02)" in status.error:
                path.gate_failure = unfinished(status.error, LAB)
                return
            save_scheduled = any(r.name == "save_to_db" for r in temporal.activity_runs(seen.history))
            path.gate = Gate(by="query" if _stage(status.status) == AWAITING else "history", status=status.status,
                             query_error=status.error, rows=harness.rows(path.workflow_id),
                             save_scheduled=save_scheduled, elapsed_s=time.monotonic() - began, at=time.monotonic())
            return
        if seen.stuck or progress.stalled(seen.state()):
            runs = temporal.activity_runs(seen.history)
            status, query_error = await query_status(path.handle)
            path.gate_failure = CheckFailed(
                f"The {path.key} run stopped before the approval gate: it waits, but not for a decision",
                observed=("activities so far: " + (", ".join(f"{r.name} ({r.outcome})" for r in runs) or "none")
                          + f"; timers pending: {pending_timers(seen.history)}"
                          + f"; status query: {status if query_error is None else query_error}"),
                expected=f"call_llm and parse_json complete, then the workflow waits: the status query says {AWAITING!r}",
                revisit="After parse_json, set the stage to awaiting_approval and await "
                        "workflow.wait_condition(...). " + REVISIT_STATE,
                details=tail(harness.workers[-1].output()))
            return
        await asyncio.sleep(0.1)


async def settle(harness: Lab02Harness, path: Run) -> None:
    """Wait until the run has finished or waits with no activity running: a kill now costs it nothing.

    (SIGKILL during a running activity would cost that activity's start_to_close_timeout.)
    """
    progress = Progress()
    while True:
        seen = await look(path.handle)
        if seen.closed is not None or seen.idle or progress.stalled(seen.state()):
            return
        if await harness.workflow_task_failure(path.handle, expected="", history=seen.history) is not None:
            return
        await asyncio.sleep(0.1)


def closed_before_gate(harness: Lab02Harness, path: Run, closed: hist.Closure,
                       history: WorkflowHistory) -> CheckFailed:
    runs = temporal.activity_runs(history)
    rows = harness.rows(path.workflow_id)
    if closed.status == "COMPLETED":
        return CheckFailed(
            f"The {path.key} run finished before anyone decided: nothing made it wait",
            observed=(f"it completed with {closed.result!r} before any decision was sent; activities: "
                      + ", ".join(f"{r.name} ({r.outcome})" for r in runs) + f"; rows saved: {len(rows)}"),
            expected=f"after parse_json it waits (status {AWAITING!r}) until approve, reject or the timeout",
            revisit="The gate: `await workflow.wait_condition(lambda: <a decision arrived>, timeout=...)` "
                    "between parse_json and save_to_db, and the decision set only by the handlers of "
                    "THIS workflow run. " + REVISIT_STATE)
    return CheckFailed(
        f"The {path.key} run ended {closed.status} before the approval gate: {closed.failure[:200]}",
        observed=f"AnalyzeWorkflow ended {closed.status}",
        expected=f"it waits for a decision after parse_json (status {AWAITING!r})",
        revisit="Read the cause above and the worker log.",
        details=tail(harness.workers[-1].output()))


async def send(harness: Lab02Harness, path: Run, client: Client, *, decision: str, reviewer: str, note: str,
               via: str) -> Sent:
    at = datetime.now(timezone.utc)
    what = f"{decision}({reviewer})" if via == "signal" else f"decide({decision!r}, {reviewer})"
    try:
        if via == "signal":  # what `lab approve` does
            await send_decision(None, path.workflow_id, decision=decision, reviewer=reviewer,
                                comment_or_reason=note, via=via, client=client)
            sent = Sent(what, at, "recorded")
        else:  # the update, as `lab approve --update` sends it (and decisions it would not even send)
            sent = await update_outcome(what, at, path.handle.execute_update(
                "decide", args=[decision, reviewer, note], rpc_timeout=timedelta(seconds=PATIENCE_S)),
                harness, path.handle)
    except (ApprovalError, RPCError) as err:
        sent = Sent(what, at, "error", str(err))
    path.sent.append(sent)
    return sent


async def update_outcome(what: str, at: datetime, call, harness: Lab02Harness | None = None,
                         handle: WorkflowHandle | None = None) -> Sent:
    """The update's answer: accepted (its ack), refused (the validator's message), or an error. An update
    that can never be answered because the workflow's task keeps failing is an error at once."""
    task = asyncio.ensure_future(call)
    deadline = time.monotonic() + PATIENCE_S
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return Sent(what, at, "accepted", task.result())
            if harness is not None and handle is not None:
                failed = await harness.workflow_task_failure(handle, expected="")
                if failed is not None:
                    return Sent(what, at, "error", f"no answer: the workflow task failed ({failed.summary})")
            if time.monotonic() > deadline:
                return Sent(what, at, "error", f"no worker answered within {PATIENCE_S:.0f} s")
    except WorkflowUpdateFailedError as err:
        return Sent(what, at, "refused", getattr(err.cause, "message", None) or str(err.cause or err))
    except RPCError as err:
        return Sent(what, at, "error", str(err))
    finally:
        task.cancel()


async def wait_admitted(client: Client, workflow_id: str, update_id: str) -> None:
    """Wait until the server holds the update (admitted): a state, instead of a sleep and a hope."""
    request = PollWorkflowExecutionUpdateRequest(
        namespace=client.namespace, identity="lab-check",
        update_ref=UpdateRef(workflow_execution=WorkflowExecution(workflow_id=workflow_id), update_id=update_id),
        wait_policy=WaitPolicy(
            lifecycle_stage=UpdateWorkflowExecutionLifecycleStage.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_ADMITTED))
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        try:
            await client.workflow_service.poll_workflow_execution_update(request, timeout=timedelta(seconds=5))
            return
        except RPCError as err:
            if err.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.DEADLINE_EXCEEDED):
                return  # the update's own call reports what went wrong
        await asyncio.sleep(0.05)


async def wait_result(harness: Lab02Harness, path: Run) -> None:
    """Wait until the run ends; a run that waits for something that will not come (idle, no timer due)
    is a verdict at once."""
    progress = Progress()
    while True:
        seen = await look(path.handle)
        if seen.closed is not None:
            break
        failed = await harness.workflow_task_failure(
            path.handle, expected="AnalyzeWorkflow runs to the end once a decision arrives", history=seen.history)
        if failed is not None:
            path.finish_failure = failed
            return
        if seen.stuck or progress.stalled(seen.state()):
            status, query_error = await query_status(path.handle)
            path.still_running = True
            path.finish_failure = CheckFailed(
                f"The {path.key} run did not finish: it waits for something that will not come",
                observed=(f"still running, with nothing to run: status query: "
                          f"{status if query_error is None else query_error}; timers pending: "
                          f"{pending_timers(seen.history)}"
                          + ("; pending: " + ", ".join(f"{p.name} attempt {p.attempt}" for p in seen.pending)
                             if seen.pending else "")),
                expected="it ends once a decision arrives (or its approval timeout passes)",
                revisit=REVISIT_STATE,
                details=tail(harness.workers[-1].output()))
            return
        await asyncio.sleep(0.1)
    try:
        path.result = await path.handle.result()
    except WorkflowFailureError as err:
        path.finish_failure = CheckFailed(
            f"The {path.key} run failed: {err.cause}",
            observed="AnalyzeWorkflow ended FAILED",
            expected="it completes and returns an AnalyzeResult (status, row_id, reviewer, note)",
            revisit="Read the cause above. A rejection or an expiry is a normal result, not an exception.",
            details=tail(harness.workers[-1].output()))
    path.finished_at = datetime.now(timezone.utc)


def update_accepted_after(history: WorkflowHistory, reviewer: str) -> int | None:
    """The event id of the accepted update `decide(..., reviewer)`, if any."""
    found = next((u for u in hist.updates(history) if reviewer in u.args[1:2]), None)
    return found.event_id if found else None


async def decide_by_update(harness: Lab02Harness, client: Client, scenario: Scenario) -> None:
    """The update run, on the new worker: the status, two unknown decisions (each refused, each followed
    by the status), then carol's approval, and the status while the approved run saves."""
    update, people = scenario.update, scenario.people
    await ask_status(update, "after the restart, before any decision")
    # The database is held from here until the saving run was looked at: a save that starts (after
    # carol's approval, or after an unknown decision wrongly let through) waits, and the run stays open.
    with harness.database_held():
        for word in people.unknown:
            await send(harness, update, client, decision=word, reviewer=people.carol, note="not sure", via="update")
            await ask_status(update, f"after decide({word!r}) was sent")
        await send(harness, update, client, decision="approve", reviewer=people.carol, note=people.carol_note, via="update")
        progress = Progress()
        while True:
            seen = await look(update.handle)
            accepted = update_accepted_after(seen.history, people.carol)
            saving = accepted is not None and any(
                p.name == "save_to_db" for p in seen.pending) and any(
                e.event_id > accepted and hist.kind(e) == "ACTIVITY_TASK_SCHEDULED" for e in seen.history.events)
            if saving:
                await ask_status(update, "while the approved run saved")
                update.saving_seen = True
                break
            if seen.closed is not None or seen.stuck or accepted is None or progress.stalled(seen.state()):
                break
            await asyncio.sleep(0.05)


async def run_scenario(harness: Lab02Harness, scenario: Scenario) -> None:
    client = await Client.connect(harness.services.temporal_address)
    p, people = scenario.paths, scenario.people
    worker1 = harness.start_worker()
    scenario.old_identities = await harness.wait_polling(client, worker1)
    # Started now, the replay process imports the workflow module while the scenario runs.
    replay = harness.replay = ReplaySet(root=harness.target.root, module=harness.target.module("workflows"))
    harness.push_replies(list(p.values()))

    # The early run first: its decision travels with the start.
    p["early"].handle = await client.start_workflow(
        "AnalyzeWorkflow", start_input(p["early"]), id=p["early"].workflow_id, task_queue=harness.task_queue,
        start_signal="approve", start_signal_args=[people.erin, "approved before the analysis"])
    p["early"].sent.append(Sent(f"approve({people.erin}) with the start", datetime.now(timezone.utc), "recorded"))
    for key in ("approve", "reject", "update", "expire"):
        p[key].handle = await client.start_workflow(
            "AnalyzeWorkflow", start_input(p[key]), id=p[key].workflow_id, task_queue=harness.task_queue)
    await asyncio.gather(settle(harness, p["early"]),
                         *(reach_gate(harness, p[key]) for key in ("approve", "reject", "update", "expire")))

    # The fault: SIGKILL the worker while the runs wait for people.
    worker1.kill()
    scenario.killed_pid, scenario.killed_returncode = worker1.pid, worker1.returncode
    scenario.killed_at = datetime.now(timezone.utc)
    for path in p.values():
        with contextlib.suppress(RPCError):  # do what a graceful shutdown would have; see temporal.forget_sticky_queue
            await temporal.forget_sticky_queue(client, path.workflow_id)

    # Decisions while no worker runs: the server records the signals.
    if p["approve"].gate:
        await send(harness, p["approve"], client, decision="approve", reviewer=people.alice, note=people.alice_note,
                   via="signal")
    late = None
    if p["reject"].gate:
        reject = p["reject"]
        await send(harness, reject, client, decision="reject", reviewer=people.bob, note=people.reason, via="signal")
        await send(harness, reject, client, decision="approve", reviewer=people.mallory, note="ship it", via="signal")
        # And a late decision by update. An update waits for a worker to validate it; that worker
        # sees the two signals first (they are earlier in the history), so it must refuse it.
        update_id = f"dave-{uuid.uuid4().hex[:8]}"
        what = f"decide('approve', {people.dave})"
        late_at = datetime.now(timezone.utc)
        late = asyncio.ensure_future(reject.handle.execute_update(
            "decide", args=["approve", people.dave, "overruling bob"], id=update_id,
            rpc_timeout=timedelta(seconds=PATIENCE_S)))
        await wait_admitted(client, reject.workflow_id, update_id)  # the server holds it before any worker runs

    scenario.restarted_at = datetime.now(timezone.utc)
    worker2 = harness.start_worker()
    try:
        scenario.new_identities = await harness.wait_polling(client, worker2, scenario.old_identities)
        if late is not None:  # answered once the new worker runs the reject run
            p["reject"].sent.append(await update_outcome(what, late_at, late, harness, p["reject"].handle))
        await asyncio.gather(*(wait_result(harness, p[key]) for key in ("approve", "reject", "expire", "early")
                               if p[key].gate or key == "early"))
        if p["update"].gate:
            await decide_by_update(harness, client, scenario)
            await wait_result(harness, p["update"])

        ledger = harness.services.llm.ledger().entries(caller=harness.api_key)
        for path in p.values():
            path.history = await path.handle.fetch_history()
            path.rows = harness.rows(path.workflow_id)
            path.llm_calls = requests_of(ledger, path.marker)

        async def final_status(path: Run) -> None:
            path.final_status, path.final_status_error = await query_status(path.handle)

        await asyncio.gather(*(final_status(p[key]) for key in ("approve", "reject", "expire", "update")
                               if hist.closure(p[key].history)))
        worker2.signal_tree(signal.SIGINT)  # shuts down gracefully while the replay runs
        histories = {path.workflow_id: path.history for path in p.values() if hist.closure(path.history)}
        scenario.replay = await asyncio.to_thread(replay.verdict, histories, PATIENCE_S)
    finally:
        replay.close()
        if late is not None:
            late.cancel()


@pytest.fixture(scope="module")
def scenario(lab_target, services, tmp_path_factory) -> Scenario:
    key = uuid.uuid4().hex[:8]
    rng = random.Random(key)  # a new draw per run of the check; the key reproduces it
    harness = Lab02Harness(lab_target, services, tmp_path_factory.mktemp("lab02-run"), key)

    def analysis() -> dict:
        return {"sentiment": rng.choice(SENTIMENTS), "summary": f"Late parcel, quick support (case {rng.randrange(10 ** 6):06d}).",
                "topics": rng.sample(TOPICS, rng.randint(1, 3))}

    paths = {name: Run(name, f"analyze-{name}-{key}", f"[run {name}-{key}]", analysis())
             for name in ("approve", "reject", "expire", "update", "early")}
    paths["expire"].timeout_s = rng.choice(EXPIRE_CHOICES_S)
    found = Scenario(paths=paths, people=draw_people(rng))
    try:
        asyncio.run(run_scenario(harness, found))
    except CheckFailed as failure:
        found.failure = failure
    finally:
        harness.close()
    return found


def sent_by(path: Run) -> str:
    return "; ".join(f"{s.what} -> {s.outcome}" + (f" ({s.detail})" if s.detail else "") for s in path.sent)


# --- the checks ----------------------------------------------------------------------------------

@pytest.mark.check("waits-for-approval")
def test_waits_for_a_decision_before_saving(scenario, evidence):
    """Given a run whose analysis is parsed,
    Then it waits at the approval gate, and no row exists while it waits."""
    if scenario.failure:
        raise scenario.failure
    approve = scenario.approve
    if approve.gate_failure:
        raise approve.gate_failure
    gate = approve.reached_gate()
    evidence.update(rows_at_gate=len(gate.rows))
    if gate.rows or gate.save_scheduled:
        raise CheckFailed(
            "A row was saved before anyone approved it",
            observed=(f"while the run waited (status {_stage(gate.status)!r}), table analysis already held "
                      f"{len(gate.rows)} row(s) for it" + ("; save_to_db had been scheduled" if gate.save_scheduled
                                                           else "")),
            expected="no save_to_db, and no row, until an approve decision arrives",
            revisit="The gate sits between parse_json and save_to_db: parse, wait, then save only if approved. "
                    + REVISIT_STATE)


def _show(seen: Seen) -> str:
    return f"{seen.moment}: " + (repr(seen.status) if seen.error is None else seen.error)


@pytest.mark.check("status-query")
def test_status_query_reports_the_stage_and_the_row(scenario, evidence):
    """Then the `status` query, asked after each change, says what the run is doing now: awaiting_approval
    with the parsed row at the gate (and still after a refused decision), saving with carol's decision
    once her update was accepted, and done / rejected / expired at the end."""
    scenario.require()
    approve, update, people = scenario.approve, scenario.update, scenario.people
    gate = approve.reached_gate()
    revisit = ("`@workflow.query def status(self) -> ApprovalStatus`: build the answer from the workflow's fields "
               "each time it is asked (stage, parsed row, reviewer, note). A query reads state; it must not "
               "change it, await anything, or keep an answer from an earlier call.")
    if gate.query_error:
        raise CheckFailed("The status query failed", observed=gate.query_error,
                          expected=f"an ApprovalStatus with stage {AWAITING!r} and the parsed row", revisit=revisit)
    if _stage(gate.status) != AWAITING:
        raise CheckFailed(
            "The status query does not say the run awaits approval",
            observed=f"the run waited after parse_json (seen in its history), and status answered {gate.status!r}",
            expected=f"stage {AWAITING!r}", revisit=revisit)
    row = gate.status.get("row")
    if not isinstance(row, dict) or any(row.get(k) != approve.reply[k] for k in ("sentiment", "summary", "topics")):
        raise CheckFailed(
            "The status query does not show the row the reviewer is asked to approve",
            observed=f"row = {row!r}",
            expected=f"the parsed analysis: {approve.reply} (the LLM's reply for this run)",
            revisit="Keep parse_json's result on the workflow (self._row) and return it in the status.")
    # The update run, on the new worker: after each change (or non-change) the answer must follow.
    if update.gate is not None:
        for seen in update.seen[1:]:
            if seen.moment.startswith("after decide(") and _stage(seen.status) != AWAITING:
                raise CheckFailed(
                    "The status changed after a decision the validator should have refused",
                    observed=_show(seen), expected=f"stage {AWAITING!r}: a refused update changes nothing",
                    revisit=revisit)
        saving = next((s for s in update.seen if s.moment.startswith("while the approved run saved")), None)
        accepted = update_accepted_after(update.history, people.carol) if update.history else None
        saved_after = accepted is not None and any(
            e.event_id > accepted and hist.kind(e) == "ACTIVITY_TASK_SCHEDULED"
            and e.activity_task_scheduled_event_attributes.activity_type.name == "save_to_db"
            for e in update.history.events)
        if saving is None and saved_after:
            raise CheckFailed(  # the database was held, so a run that saved after carol's approval was seen saving
                f"The check could not see the update run saving after decide('approve', {people.carol})",
                observed="; ".join(_show(s) for s in update.seen),
                expected="save_to_db scheduled after the accepted update, the run in stage 'saving' until it ends",
                revisit="Save after the decision arrives, in run(), with workflow.execute_activity(save_to_db, ...).")
        if saving is not None and (_stage(saving.status) != "saving" or not isinstance(saving.status, dict)
                                   or saving.status.get("reviewer") != people.carol):
            raise CheckFailed(
                f"After decide('approve', {people.carol}) was accepted, the status query still answers as before",
                observed="; ".join(_show(s) for s in update.seen),
                expected=f"while save_to_db runs: stage 'saving', reviewer {people.carol!r}",
                revisit=revisit + " Set the stage on every change: 'saving' before save_to_db, then 'done'.")
    # Each ended run's last answer must match how it ended (whether it ended right is its own check's job).
    final_stage = {"approved": "done", "rejected": "rejected", "expired": "expired"}
    for key in ("approve", "reject", "expire", "update"):
        path = scenario.paths[key]
        ended = path.result.get("status") if isinstance(path.result, dict) else None
        if path.finish_failure or path.gate is None or ended not in final_stage:
            continue
        status = path.final_status
        wrong = _stage(status) != final_stage[ended] or (
            ended != "expired" and isinstance(status, dict) and status.get("reviewer") != path.result.get("reviewer"))
        if wrong:
            raise CheckFailed(
                f"After the {key} run ended {ended}, the status query does not say so",
                observed=f"status = {status if path.final_status_error is None else path.final_status_error}",
                expected=f"stage {final_stage[ended]!r}, reviewer {path.result.get('reviewer')!r}",
                revisit=revisit + " Set the stage on every way out of run().")
    evidence["queried"] = ",".join(str(_stage(s.status)) for s in update.seen)


@pytest.mark.check("approval-survives-crash")
def test_approval_sent_while_no_worker_runs_is_applied(scenario, evidence):
    """Given the worker SIGKILLed while the run waited,
    When `approve` is signalled while no worker runs, and then a new worker starts (as on another host),
    Then the run completes there: approved, by alice."""
    scenario.require()
    approve, alice = scenario.approve, scenario.people.alice
    approve.reached_gate()
    evidence.update(restarts=1, killed_pid=scenario.killed_pid)
    if scenario.killed_returncode != -signal.SIGKILL:
        raise CheckFailed("The worker was not killed", observed=f"exit status {scenario.killed_returncode}",
                          expected="killed by SIGKILL (-9) while the run waited")
    signals = [s for s in hist.signals(approve.history) if s.name == "approve"]
    if not signals:
        raise CheckFailed("The approve signal is not in the run's history",
                          observed=sent_by(approve), expected="one WorkflowExecutionSignaled event 'approve'")
    first = signals[0]
    if not (scenario.killed_at <= first.at <= scenario.restarted_at):
        raise CheckFailed("The approval was not sent while the worker was down",
                          observed=f"killed {scenario.killed_at}, signal recorded {first.at}, "
                                   f"restart {scenario.restarted_at}",
                          expected="kill < signal < restart")
    result = approve.finished()
    if not isinstance(result, dict) or result.get("status") != "approved" or result.get("reviewer") != alice:
        raise CheckFailed(
            "The approval sent while the worker was dead was not applied",
            observed=f"the run returned {result!r}",
            expected=f"AnalyzeResult(status='approved', row_id=<the row>, reviewer={alice!r}, "
                     f"note={scenario.people.alice_note!r})",
            revisit="The new worker replays the history, signal included, so the handler runs again and sets "
                    "the decision. " + REVISIT_STATE)
    save = next((r for r in temporal.activity_runs(approve.history) if r.name == "save_to_db"), None)
    if save is None or save.identity not in scenario.new_identities:
        raise CheckFailed(
            "The save did not run on the new worker",
            observed=f"save_to_db ran on {save.identity if save else 'no worker'!r}",
            expected=f"a worker started after the kill: {sorted(scenario.new_identities)}",
            revisit="The kill must stop the whole worker process; a second worker must not be running.")


@pytest.mark.check("one-row-after-approval")
def test_one_row_and_one_llm_call(scenario, evidence):
    """Then the approved run left exactly one row, holding the analysis the LLM gave it, its id is the
    result's row_id, and the LLM was called once, by call_llm, despite the crash and the wait."""
    scenario.require()
    approve = scenario.approve
    approve.reached_gate()
    result = approve.finished()
    evidence.update(rows=len(approve.rows), llm_calls=len(approve.llm_calls))
    row_id = result.get("row_id") if isinstance(result, dict) else None
    if not rows_as_decided(approve.rows, approve.workflow_id, "approve", row_id):
        raise CheckFailed(
            f"The approved run left {len(approve.rows)} row(s)",
            observed=f"rows {[r[:2] for r in approve.rows]}, result row_id {row_id!r}",
            expected="exactly one row for the workflow id, and its id as AnalyzeResult.row_id",
            revisit="After an approval, save_to_db(row) once; return its id in the result (not a magic -1).")
    _, _, sentiment, summary, topics = approve.rows[0]
    want = approve.reply
    if sentiment != want["sentiment"] or summary != want["summary"] or \
            [t.strip() for t in topics.split(",") if t.strip()] != want["topics"]:
        raise CheckFailed(
            "The approved run's row does not hold the analysis the reviewer approved",
            observed=f"row {approve.rows[0][0]}: sentiment={sentiment!r}, summary={summary!r}, topics={topics!r}",
            expected=f"the parsed analysis: {want}",
            revisit="Save the row parse_json returned (the one the status query showed the reviewer): "
                    "save_to_db(self._row).")
    strangers = [c for c in approve.llm_calls if c.activity_type != "call_llm"]
    if len(approve.llm_calls) != 1 or strangers:
        raise CheckFailed(
            f"call_llm reached the LLM {len(approve.llm_calls)} times for one run" if not strangers else
            "The LLM was called from somewhere other than call_llm",
            observed=f"{len(approve.llm_calls)} requests in the course LLM's ledger, sent by "
                     + ", ".join(str(c.activity_type or "code outside any activity") for c in approve.llm_calls),
            expected="exactly 1, by call_llm: the wait and the worker's death must not repeat the analysis",
            revisit="The LLM call is an activity; its result is in the history and replay reuses it. Never "
                    "call the LLM (or re-run the analysis) from a signal handler or after the wait.")


@pytest.mark.check("signal-recorded-once")
def test_history_shows_the_signal_exactly_once(scenario, evidence):
    """Then the run's history holds exactly one `approve` signal event, with alice's arguments."""
    scenario.require()
    approve, people = scenario.approve, scenario.people
    approve.reached_gate()
    signals = hist.signals(approve.history)
    evidence["signals"] = ",".join(s.name for s in signals)
    approvals = [s for s in signals if s.name == "approve"]
    if len(approvals) != 1 or approvals[0].args[:1] != [people.alice]:
        raise CheckFailed(
            f"The history shows {len(approvals)} approve signal(s)",
            observed="; ".join(f"event {s.event_id}: {s.name}{tuple(s.args)}" for s in signals) or "no signals",
            expected=f"exactly one: approve({people.alice!r}, {people.alice_note!r}) - one decision, one event",
            revisit="The signal is `approve(reviewer, comment)` (two arguments), sent once from outside the "
                    "workflow (`lab approve`). The history, not the worker, is the record of it.")


@pytest.mark.check("reject-keeps-reason")
def test_reject_saves_nothing_and_keeps_the_reason(scenario, evidence):
    """Given `reject` (bob, a reason), a contradicting `approve` signal (mallory) and `decide` update (dave),
    all sent while no worker ran,
    Then the first decision wins: status rejected, no row, bob and his reason in the result."""
    scenario.require()
    reject, people = scenario.reject, scenario.people
    reject.reached_gate()
    result = reject.finished()
    evidence["rows"] = len(reject.rows)
    expected = (f"AnalyzeResult(status='rejected', row_id=None, reviewer={people.bob!r}, note={people.reason!r}), "
                "and no row")
    if reject.rows or not isinstance(result, dict) or result.get("status") != "rejected":
        raise CheckFailed(
            "The rejected run did not end rejected" + (" - and it saved a row" if reject.rows else ""),
            observed=f"result {result!r}; rows {[r[:2] for r in reject.rows]}; decisions sent: {sent_by(reject)}",
            expected=expected,
            revisit="The first decision wins: a signal cannot be refused, so a handler ignores a decision "
                    "that comes after one was made. A rejection returns without calling save_to_db.")
    if result.get("reviewer") != people.bob or result.get("note") != people.reason or result.get("row_id") is not None:
        raise CheckFailed(
            "The rejection's reviewer or reason was not kept",
            observed=f"result {result!r}", expected=expected,
            revisit="reject(reviewer, reason): keep both on the workflow and return them in AnalyzeResult.")


@pytest.mark.check("timeout-expires")
def test_nobody_decides_and_the_run_expires(scenario, evidence):
    """Given a short approval_timeout_seconds in the input (drawn per run) and no decision,
    Then the run ends expired and saves nothing, when its timer of that length fires."""
    scenario.require()
    expire = scenario.expire
    expire.reached_gate()
    if expire.finish_failure and not expire.still_running:
        raise expire.finish_failure
    if expire.finish_failure:
        raise CheckFailed(
            f"Nobody decided, and the run did not expire: nothing will ever end its wait "
            f"(approval_timeout_seconds={expire.timeout_s:g})",
            observed=expire.finish_failure.observed,
            expected=f"a timer of {expire.timeout_s:g} s, then AnalyzeResult(status='expired', row_id=None, ...)",
            revisit="Pass the input's timeout to the wait: `await workflow.wait_condition(fn, "
                    "timeout=timedelta(seconds=request.approval_timeout_seconds))`, and catch "
                    "asyncio.TimeoutError to return an expired result (the default is 24 h).")
    result = expire.result
    saves = [r for r in temporal.activity_runs(expire.history) if r.name == "save_to_db"]
    if not isinstance(result, dict) or result.get("status") != "expired" or result.get("row_id") is not None \
            or expire.rows or saves:
        raise CheckFailed(
            "The timed-out run did not end expired with nothing saved",
            observed=f"result {result!r}; rows {[r[:2] for r in expire.rows]}; "
                     f"save_to_db scheduled {len(saves)} time(s)",
            expected="AnalyzeResult(status='expired', row_id=None, reviewer=None), no save_to_db, no row",
            revisit="On asyncio.TimeoutError from wait_condition, return the expired result: an expired "
                    "approval is an answer, not a failure, and nothing is saved.")
    fired = [t for t in hist.timers(expire.history) if t.outcome == "fired"]
    if not fired:
        raise CheckFailed("The run ended expired, but no timer fired",
                          observed=f"timers: {[(t.seconds, t.outcome) for t in hist.timers(expire.history)]}",
                          expected=f"the {expire.timeout_s:g} s timer of the wait fires, then the run ends expired",
                          revisit="Expire when the wait's timeout passes (asyncio.TimeoutError), not from a "
                                  "clock you read yourself.")
    evidence["expired_after_timer"] = f"{fired[-1].seconds:g}s"


@pytest.mark.check("durable-wait")
def test_the_wait_is_one_durable_timer(scenario, evidence):
    """Then each wait is one server-side timer as long as the approval timeout (24 h by default,
    the input's value for the expire run), and the approved run saved without any timer firing first."""
    scenario.require()
    approve, expire = scenario.approve, scenario.expire
    approve.reached_gate()
    approve.finished()
    revisit = ("`workflow.wait_condition(fn, timeout=...)` is one durable timer plus a condition the workflow "
               "re-checks whenever a signal or update changes its state: it reacts at once and writes two "
               "events. A loop of sleeps wakes the workflow on every tick, writes a timer per tick and reacts "
               "late.")
    for path, seconds in ((approve, DEFAULT_TIMEOUT_S), (expire, expire.timeout_s)):
        if path.history is None or path.gate is None:
            continue
        timers = hist.timers(path.history)
        if len(timers) != 1 or abs(timers[0].seconds - seconds) > 0.01:
            raise CheckFailed(
                f"The {path.key} run's wait is not one timer of {seconds:g} s",
                observed=f"{len(timers)} timer(s): " + (", ".join(f"{t.seconds:g} s ({t.outcome})" for t in timers)
                                                       or "none"),
                expected=f"one timer of {seconds:g} s (approval_timeout_seconds"
                         + (", default 24 h" if path.timeout_s is None else " from the input") + ")",
                revisit=revisit)
    save = next(r for r in temporal.activity_runs(approve.history) if r.name == "save_to_db")
    fired = [t for t in hist.timers(approve.history) if t.outcome == "fired" and t.closed_at <= save.scheduled_at]
    if fired:
        raise CheckFailed("The approved run waited for a timer before it saved",
                          observed=f"timer {fired[0].timer_id} fired before save_to_db was scheduled",
                          expected="the decision wakes the workflow; no timer fires", revisit=revisit)
    evidence["timers"] = f"1x24h,1x{expire.timeout_s:g}s"


@pytest.mark.check("update-acknowledged")
def test_update_returns_an_ack(scenario, evidence):
    """When `decide("approve", carol)` is sent as an update,
    Then the caller gets an acknowledgement back, and the run completes approved by carol."""
    scenario.require()
    update, carol = scenario.update, scenario.people.carol
    update.reached_gate()
    valid = next((s for s in update.sent if s.what.startswith("decide('approve'")), None)
    if valid is None or valid.outcome != "accepted":
        raise CheckFailed(
            "The decide update was not accepted",
            observed=sent_by(update),
            expected=f"decide('approve', {carol!r}, note) answered with a DecisionAck",
            revisit="`@workflow.update def decide(self, decision, reviewer, note) -> DecisionAck`: record the "
                    "decision and return the ack. The validator must let a valid first decision through.")
    ack = valid.detail
    if not isinstance(ack, dict) or ack.get("decision") != "approve" or ack.get("reviewer") != carol:
        raise CheckFailed("The update's acknowledgement does not say what was accepted",
                          observed=f"the caller received {ack!r}",
                          expected=f"DecisionAck(workflow_id, decision='approve', reviewer={carol!r}, accepted_at)",
                          revisit="Return a DecisionAck from the update handler: that is what makes an update "
                                  "different from a fire-and-forget signal.")
    evidence["ack"] = "yes"
    result = update.finished()
    if not isinstance(result, dict) or result.get("status") != "approved" or result.get("reviewer") != carol \
            or len(update.rows) != 1:
        raise CheckFailed(f"The run decided by update did not end approved by {carol} with one row",
                          observed=f"result {result!r}; rows {[r[:2] for r in update.rows]}; sent: {sent_by(update)}",
                          expected=f"AnalyzeResult(status='approved', row_id=<row>, reviewer={carol!r})",
                          revisit="The update sets the same decision fields as the signals do.")


@pytest.mark.check("validator-refuses")
def test_validator_refuses_without_a_trace(scenario, evidence):
    """When two unknown decisions (drawn per run) are sent with `decide`, and `decide("approve")` reaches a
    run already rejected by signal,
    Then the validator refuses all three, and none leaves a trace in the history."""
    scenario.require()
    update, reject, people = scenario.update, scenario.reject, scenario.people
    update.reached_gate()
    reject.reached_gate()
    revisit = ("`@decide.validator` runs before the update is written to history: raise there to refuse any "
               "decision that is not exactly 'approve' or 'reject', or any decision once one was made (by a "
               "signal or an update). A refusal leaves no event; an exception in the handler itself comes too "
               "late (the update is already in the history).")
    expected_refusals = [(update, f"decide({word!r}", f"an unknown decision ({word!r})") for word in people.unknown]
    expected_refusals.append((reject, f"decide('approve', {people.dave}", "a decision after the run was already rejected"))
    for run, prefix, why in expected_refusals:
        sent = next((s for s in run.sent if s.what.startswith(prefix)), None)
        if sent is None or sent.outcome != "refused":
            raise CheckFailed(
                f"The validator did not refuse {why}",
                observed=(f"{sent.what} -> {sent.outcome}" + (f": {sent.detail!r}" if sent.detail else "")
                          if sent else "it was never sent") + f"  (decisions sent to the {run.key} run: "
                                                               f"{sent_by(run)})",
                expected="refused by the validator (the caller gets WorkflowUpdateFailedError)",
                revisit=revisit)
    accepted = {run.key: hist.updates(run.history) for run in (update, reject)}
    evidence["updates_in_history"] = sum(len(found) for found in accepted.values())
    carol = next((s for s in update.sent if s.what.startswith("decide('approve'")), None)
    allowed = 1 if carol is not None and carol.outcome == "accepted" else 0  # only an accepted update is written
    wrong = accepted["reject"] or len(accepted["update"]) > allowed or any(
        u.args[:2] != ["approve", people.carol] for u in accepted["update"])
    if wrong:
        raise CheckFailed(
            "Refused updates left a trace in the history",
            observed="; ".join(f"{key} run, event {u.event_id}: {u.name}{tuple(u.args)} {u.outcome}"
                               for key, found in accepted.items() for u in found) or "no accepted update",
            expected=f"exactly one accepted update, decide('approve', {people.carol!r}, ...), in the update run; "
                     "none in the rejected run",
            revisit=revisit)


@pytest.mark.check("early-signal")
def test_a_signal_before_the_wait_is_not_lost(scenario, evidence):
    """Given a run started together with its `approve` signal (before it even called the LLM),
    Then the decision is kept and the run completes approved by erin, with one row."""
    scenario.require()
    early, erin = scenario.early, scenario.people.erin
    revisit = ("Handlers can run before run() does (signal-with-start), or while an activity runs: set up "
               "the decision fields in __init__, never at the top of run() or just before the wait, or an "
               "early decision is overwritten. " + REVISIT_STATE)
    if early.finish_failure and not early.still_running:
        raise early.finish_failure
    if early.finish_failure:
        raise CheckFailed("An approval that arrived before the wait was lost",
                          observed=f"the run started with approve({erin!r}): {early.finish_failure.observed}",
                          expected=f"it completes approved by {erin} without another decision", revisit=revisit,
                          details=early.finish_failure.details)
    result = early.result
    evidence["rows"] = len(early.rows)
    if not isinstance(result, dict) or result.get("status") != "approved" or result.get("reviewer") != erin \
            or len(early.rows) != 1:
        raise CheckFailed("The early approval was not applied",
                          observed=f"result {result!r}; rows {[r[:2] for r in early.rows]}",
                          expected=f"AnalyzeResult(status='approved', row_id=<row>, reviewer={erin!r})",
                          revisit=revisit)


@pytest.mark.check("history-replays")
def test_histories_replay_deterministically(scenario, evidence):
    """Then every recorded history (signals, updates, timers, the crash) replays against the workflow code."""
    scenario.require()
    verdict = scenario.replay
    if verdict is None:
        raise NotChecked("not checked: no history was recorded")
    if verdict.ok and scenario.approve.workflow_id not in verdict.results:
        raise NotChecked("not checked: the approve run never finished, so there was no history to replay")
    evidence["replayed"] = len(verdict.results)
    if not verdict.ok:
        failures = verdict.failures()
        raise CheckFailed(
            "A recorded history does not replay against your workflow code",
            observed=verdict.error or "; ".join(f"{wid}: {error}" for wid, error in failures.items()),
            expected="the same commands on replay, for every run",
            revisit="A workflow is replayed from its history after a crash, so it must be deterministic: "
                    "no wall-clock time, randomness or I/O in workflow code or its handlers (use "
                    "workflow.now(), workflow.random(), and activities).",
            details=verdict.detail)
