"""Lab 01 autograder: a worker killed mid-retry loses nothing and repeats nothing.

Scenario, run once for the module against a fresh Temporal dev server and course LLM:
  Given the student's worker running as its own process, and two AnalyzeWorkflow runs that share it:
    B first, whose row an earlier attempt already committed (the at-least-once window; its id is
      drawn at random per run) and whose first LLM request fails with a 500 (a fault of the course
      LLM: Temporal, not the openai client, must retry it);
    then A: parse_json's deliberate first-attempt failure puts it in the 2 s retry backoff, and
      the worker is SIGKILLed there;
  When a new worker starts as on another host (a fresh working directory, TMPDIR and HOME: no file
    the first worker wrote),
  Then both complete, and each check below reads the evidence from outside the student's process:
    the LLM ledger (each request tied to the activity attempt that sent it), the workers' record of
    every attempt, the Temporal history, the SQLite rows (their content too), a replay.
The LLM's analysis differs per run (random within the contract), so a saved row is compared with
what the LLM really answered.

The scenario's shared parts (the run's input, reading the rows and a run's LLM requests, the
invariants on rows, history and ledger) live in checks/scenario_lab01_temporal_crash.py, which the
crash sweep (`lab sweep 01`) runs at many random moments; this check is its one chosen kill.

Timing: nothing here waits for a fixed time. Each wait ends on a state (a history event, a pending
activity's attempt, a line of the attempt record), and fails on a state (a workflow task failure, an
attempt that timed out on the server). PATIENCE_S only stops a run that stopped moving altogether;
a worker that never polls is judged by the harness's progress watchdog (labkit.proc.Watchdog). The one window the scenario needs, A's 2 s backoff (the lab's initial_interval),
is caught from the workers' attempt record the moment attempt 1 fails; if a slow machine ever lets
the retry start first, the round is spent and another run tries again (ROUNDS).
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
from datetime import datetime, timezone
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.service import RPCError

from labkit import limits, proc, temporal
from labkit.attribution import Attempt
from labkit.feedback import CheckFailed, NotChecked, tail, unfinished
from labkit.harness import BENIGN_TASK_FAILURES, WorkerHarness
from labkit.llm import LedgerEntry

from scenario_lab01_temporal_crash import (ACTIVITIES, EXPECTED_RETRY, activity_sequence, analysis_rows,
                                           each_activity_completed_once, one_row_saved, requests_of, start_input)

LAB = "01"
BACKOFF_S = EXPECTED_RETRY["initial_interval_s"]  # the lab's initial_interval: the time the retry must wait
PATIENCE_S = 60.0  # hang guard: a run whose history and pending attempts did not change for this long
ROUNDS = 3  # runs A tried, at most, to land the kill inside the 2 s backoff

EXPECTED_WORKFLOW = "AnalyzeWorkflow.run schedules call_llm, parse_json and save_to_db in turn"
REVISIT_ACTIVITIES = ("§64.2.1 workflows and activities: every call with a side effect (the LLM, "
                      "the database) is its own activity, so Temporal records its result and a retry "
                      "of a later step does not repeat it.")
REVISIT_SIDE_EFFECT = ("Call it with workflow.execute_activity: side effects belong in activities. The workflow "
                       "only schedules call_llm, parse_json and save_to_db (`await workflow.execute_activity("
                       "call_llm, prompt, start_to_close_timeout=..., retry_policy=...)`); calling the activity "
                       "function itself, or building the LLM client or the database engine in workflow code, "
                       "runs the side effect inside the workflow, where the sandbox forbids it and a replay "
                       "would repeat it.")

SENTIMENTS = ("positive", "neutral", "negative")
TOPICS = ("delivery", "support", "refund", "packaging", "price", "courier", "tracking", "quality")
SUMMARIES = ("Late delivery, but support resolved it quickly.", "The parcel was two days late; support fixed it.",
             "Slow courier, fast and friendly support.", "Delivery was late and the refund came within minutes.")


@dataclass
class Run:
    """One workflow of the scenario and the evidence gathered about it."""

    label: str
    workflow_id: str
    marker: str
    reply: dict  # the analysis the course LLM gives this run (random per run)
    handle: WorkflowHandle | None = None
    result: object = None
    history: WorkflowHistory | None = None
    llm_requests: list[LedgerEntry] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)  # (id, workflow_id, sentiment, summary, topics)
    failed: str = ""  # why the workflow failed, when the scenario went on without it


@dataclass
class Scenario:
    a: Run
    b: Run
    seeded_row_id: int
    killed_pid: int = 0
    killed_at: datetime | None = None
    backoff_at_kill: temporal.PendingActivity | None = None
    missed_rounds: list[Run] = field(default_factory=list)  # A runs whose retry started before the kill
    old_identities: set[str] = field(default_factory=set)
    llm_requests: list[LedgerEntry] = field(default_factory=list)  # every request under the scenario's key
    attempts: list[Attempt] = field(default_factory=list)  # every activity attempt the workers ran
    new_identities: set[str] = field(default_factory=set)
    restart_to_done_s: float = 0.0
    replay: temporal.ReplayVerdict | None = None
    failure: CheckFailed | None = None

    def require(self) -> Scenario:
        if self.failure is not None:
            raise NotChecked(f"not checked: the crash scenario did not finish ({self.failure.summary})")
        return self


def random_analysis(rng: random.Random) -> dict:
    """An analysis within the contract (models.Analysis), different in every run of the check."""
    return {"sentiment": rng.choice(SENTIMENTS),
            "summary": f"{rng.choice(SUMMARIES)} (case {rng.randrange(10 ** 6):06d})",
            "topics": rng.sample(TOPICS, rng.randint(1, 3))}


# --- the scenario --------------------------------------------------------------------------------

class Progress:
    """A hang guard that restarts whenever the watched state changes: only a run that stopped
    moving for PATIENCE_S runs out of it, however slow the machine."""

    def __init__(self, patience: float = PATIENCE_S):
        self.patience, self.state, self.since = patience, None, time.monotonic()

    def stalled(self, state) -> bool:
        if state != self.state:
            self.state, self.since = state, time.monotonic()
        return time.monotonic() - self.since > self.patience


class Harness(WorkerHarness):
    """The generic worker harness (labkit.harness) plus Lab 01's parts: the SQLite file and its seeded
    row, workers that each run as on their own host, the wait for parse_json's retry backoff, and the
    verdicts on a workflow that ended early."""

    registers = "the workflow and the three activities"

    def __init__(self, target, services, workdir: Path, key: str):
        # The database is the one thing the workers share, as a real database server would be.
        (Path(workdir) / "database").mkdir(parents=True, exist_ok=True)
        self.db_path = Path(workdir) / "database" / "lab01.sqlite"
        # The worker starts while the course LLM finishes starting; run_scenario waits for it.
        super().__init__(target, services, workdir, lab=LAB, key=key, wait_for_llm=False,
                         LAB01_DATABASE_URL=f"sqlite:///{self.db_path}")
        self.replay: temporal.Replay | None = None
        # The code each later worker runs: a copy taken now, before any worker could write next to it.
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

    def push_replies(self, runs: list[Run], failing_first: Run) -> None:
        """The course LLM answers each run (matched by its marker) with its own analysis; the first
        request of `failing_first` fails with a 500."""
        self.services.llm.push_rules([
            {"name": f"lab01-{run.workflow_id}", "match": re.escape(run.marker),
             "reply_json": run.reply, **({"fail_first": 1, "fail_status": 500} if run is failing_first else {})}
            for run in runs])

    def seed_committed_row(self, workflow_id: str, row_id: int) -> None:
        """The row an earlier save_to_db attempt committed before its worker died."""
        with contextlib.closing(sqlite3.connect(self.db_path)) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS analysis (id INTEGER NOT NULL PRIMARY KEY, "
                       "workflow_id VARCHAR NOT NULL UNIQUE, sentiment VARCHAR NOT NULL, "
                       "summary VARCHAR NOT NULL, topics VARCHAR NOT NULL)")
            db.execute("INSERT INTO analysis VALUES (?, ?, 'positive', 'saved before the crash', '')",
                       (row_id, workflow_id))

    def rows(self, workflow_id: str) -> list[tuple]:
        return analysis_rows(self.db_path, workflow_id)

    async def workflow_task_failure(self, handle: WorkflowHandle, expected: str,
                                    history: WorkflowHistory | None = None) -> CheckFailed | None:
        """The harness's verdict on a failed workflow task, with the idea named when the workflow
        ran a side effect itself (an activity function called directly, an LLM client built there)."""
        history = history or await handle.fetch_history()
        failure = await super().workflow_task_failure(handle, expected, history)
        if failure is None or failure.summary.startswith("Not implemented yet"):
            return failure
        trace = task_failure_text(history)
        if side_effect_in_workflow(trace, self.target.name):
            failure.summary = ("Your workflow ran a side effect itself instead of scheduling an activity: "
                               + failure.summary.removeprefix("Your workflow code failed inside the worker: "))
            failure.revisit = REVISIT_SIDE_EFFECT
        return failure

    async def progress_of(self, run: Run) -> tuple:
        pending = await temporal.pending_activities(run.handle)
        history = await run.handle.fetch_history()
        return len(history.events), tuple((p.name, p.attempt, p.state) for p in pending)

    def hang_verdict(self, run: Run, pending: list[temporal.PendingActivity], doing: str) -> CheckFailed:
        waiting = "; ".join(f"{p.name} attempt {p.attempt} ({p.state.lower()})" for p in pending) or "a workflow task"
        return CheckFailed(
            f"Workflow {run.label} stopped moving while {doing}: nothing changed for {PATIENCE_S:.0f} s",
            observed=f"still waiting on: {waiting}",
            expected="each activity returns (or raises) and the workflow goes on to the next one",
            revisit="Something blocks forever: an activity that never returns without a start_to_close_timeout, "
                    "or a workflow that awaits something no one sends.",
            details=tail(self.workers[-1].output()))

    def check_pending(self, run: Run, pending: list[temporal.PendingActivity], *, llm_fault: bool,
                      retries: bool = True) -> None:
        """Raise the teaching message for an activity that never returns (its attempt timed out on the
        server), and, with `retries`, for one that is failing where it should not."""
        for p in pending:
            if p.last_failure and (todo := unfinished(p.last_failure, LAB)):
                raise todo
            if p.last_failure and "timeout" in p.last_failure.lower() and "start" in p.last_failure.lower():
                raise CheckFailed(
                    f"{p.name} attempt {p.attempt - 1} of workflow {run.label} timed out: it never returned",
                    observed=f"the server gave up on the attempt after its start_to_close_timeout "
                             f"({p.last_failure}) and scheduled attempt {p.attempt}",
                    expected=f"{p.name} returns (or raises) within its timeout",
                    revisit="An activity that never returns holds the workflow until its start_to_close_timeout. "
                            "Check that call_llm returns the reply text and that nothing in it waits forever.",
                    details=tail(self.workers[-1].output()))
            if not retries:
                continue
            # call_llm may fail once where the course LLM answers a 500 on purpose, and only with it
            injected = llm_fault and p.name == "call_llm" and p.attempt == 2 and self.llm_refused(run)
            allowed = 2 if (p.name == "parse_json" or injected) else 1
            if p.name == "save_to_db" and run.label == "B":
                continue  # B's save meets a committed row: how it copes is one-row-saved's verdict
            if p.attempt > allowed and p.last_failure:
                raise CheckFailed(
                    f"{p.name} failed (attempt {p.attempt - 1}): {p.last_failure}",
                    observed=f"{p.name} of workflow {run.label} is being retried"
                             + ("; the course LLM failed only the first request of this run, with a 500"
                                if llm_fault else ""),
                    expected="call_llm succeeds (on its second attempt when the LLM's first answer is a 500); "
                             "parse_json fails on attempt 1 only",
                    revisit=limits.explain(None, p.last_failure) or
                            "Read the error: the activity raised it. The course LLM is at OPENAI_BASE_URL; "
                            "create the openai client with max_retries=0 and let Temporal retry.",
                    details=tail(self.workers[-1].output()))

    def llm_refused(self, run: Run) -> bool:
        """The course LLM's ledger holds the 500 it answered this run's first request with."""
        return any(not e.ok and run.marker in e.prompt
                   for e in self.services.llm.ledger().entries(caller=self.api_key))

    async def finish_on_first_worker(self, run: Run) -> None:
        """Run B to its end on the first worker: its call_llm meets the LLM's 500 and is retried, its
        parse_json fails once on purpose, its save meets the committed row."""
        progress = Progress()
        while True:
            self.require_running(self.workers[-1], f"workflow {run.label} ran on the first worker")
            history = await run.handle.fetch_history()
            if closed_status(history):
                break
            failure = await self.workflow_task_failure(run.handle, EXPECTED_WORKFLOW, history)
            if failure:
                raise failure
            pending = await temporal.pending_activities(run.handle)
            self.check_pending(run, pending, llm_fault=True)
            if progress.stalled((len(history.events), tuple((p.name, p.attempt, p.state) for p in pending))):
                raise self.hang_verdict(run, pending, "it ran on the first worker")
            await asyncio.sleep(0.1)
        try:
            run.result = await run.handle.result()
        except WorkflowFailureError as err:
            history = await run.handle.fetch_history()
            if any(r.name == "save_to_db" for r in temporal.activity_runs(history)):
                run.failed = root_cause(err)  # its save could not cope with the committed row: one-row-saved
            else:
                raise await self.closed_early(run, "FAILED")

    async def wait_in_backoff(self, run: Run) -> temporal.PendingActivity | None:
        """Wait until A's parse_json failed attempt 1 and the server holds attempt 2 in its backoff:
        the pending attempt, or None if the retry had already started (a spent round)."""
        worker = self.workers[-1]
        progress, next_look = Progress(), 0.0
        while True:
            self.require_running(worker, f"workflow {run.label} was on its way to parse_json's retry")
            failed_once = any(a.workflow_id == run.workflow_id and a.outcome == "failed"
                              for a in self.attempts("parse_json"))
            now = time.monotonic()
            if failed_once or now >= next_look:
                pending = await temporal.pending_activities(run.handle)
                for p in pending:
                    if p.name == "parse_json" and p.attempt >= 2:
                        if p.in_backoff:
                            return p
                        if p.state != "SCHEDULED":
                            return None  # the retry runs already: this round missed the window
                        # SCHEDULED and due: it starts any moment now; the next look tells
                self.check_pending(run, pending, llm_fault=False)
            if now >= next_look:
                next_look = now + 0.25
                history = await run.handle.fetch_history()
                if (status := closed_status(history)) is not None:
                    if status == "COMPLETED" and parse_attempt(history) >= 2:
                        return None  # parse_json failed once and its retry already finished: spent round
                    raise await self.closed_early(run, status)
                failure = await self.workflow_task_failure(run.handle, EXPECTED_WORKFLOW, history)
                if failure:
                    raise failure
                if progress.stalled((len(history.events), tuple((p.name, p.attempt, p.state) for p in pending))):
                    raise self.hang_verdict(run, pending, "it went on to parse_json's retry")
            await asyncio.sleep(0.01 if failed_once else 0.03)

    async def result_after_restart(self, run: Run):
        """The workflow's result; a workflow task failure (non-determinism on the new worker's
        replay) is reported as soon as the history shows it."""
        result = asyncio.ensure_future(run.handle.result())
        progress = Progress()
        try:
            while not result.done():
                self.require_running(self.workers[-1], f"workflow {run.label} was finishing after the restart")
                history = await run.handle.fetch_history()
                failure = await self.workflow_task_failure(run.handle, EXPECTED_WORKFLOW, history)
                if failure:
                    raise failure
                pending = await temporal.pending_activities(run.handle)
                self.check_pending(run, pending, llm_fault=False, retries=False)
                if progress.stalled((len(history.events), tuple((p.name, p.attempt, p.state) for p in pending))):
                    raise self.hang_verdict(run, pending, "it finished on the new worker")
                await asyncio.wait({result}, timeout=0.25)
            return result.result()
        finally:
            result.cancel()

    async def closed_early(self, run: Run, status: str) -> CheckFailed:
        if status == "COMPLETED":
            runs = temporal.activity_runs(await run.handle.fetch_history())
            parse = next((r for r in runs if r.name == "parse_json"), None)
            return CheckFailed(
                "The workflow finished without any retry, so there was nothing to crash into",
                observed=(f"parse_json completed on attempt {parse.attempt} in workflow {run.label}" if parse
                          else "no parse_json activity in the history: "
                               + (", ".join(r.name for r in runs) or "no activities at all")),
                expected="parse_json raises on attempt 1 (keyed on activity.info().attempt) and succeeds on attempt 2, "
                         "in every workflow the worker runs",
                revisit="The lab's deliberate failure: `if activity.info().attempt == 1: raise ...`. The attempt "
                        "number belongs to each activity of each workflow; a flag in the worker's memory is shared "
                        "by every workflow the worker runs, so only the first one would fail.")
        try:
            await run.handle.result()
        except WorkflowFailureError as err:
            cause = root_cause(err)  # "Activity task failed" says little; its cause says why
            return CheckFailed(
                f"The workflow {status.lower()}: {cause}",
                observed=f"AnalyzeWorkflow {run.label} ended {status}",
                expected="it completes and returns the saved row's id",
                revisit=limits.explain(None, cause) or
                        "Read the cause above; retries run out after maximum_attempts=3.",
                details=tail(self.workers[-1].output()))
        return CheckFailed(f"The workflow ended {status}", expected="it completes")


def closed_status(history: WorkflowHistory) -> str | None:
    for event in reversed(history.events):
        name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_WORKFLOW_EXECUTION_")
        if name in ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELED", "TERMINATED", "CONTINUED_AS_NEW"):
            return name
    return None


def parse_attempt(history: WorkflowHistory) -> int:
    return max((r.attempt for r in temporal.activity_runs(history) if r.name == "parse_json"), default=0)


def task_failure_text(history: WorkflowHistory) -> str:
    """The message and stack trace of the student's failed workflow tasks."""
    texts = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            attrs = event.workflow_task_failed_event_attributes
            if attrs.cause not in BENIGN_TASK_FAILURES:
                texts.append(f"{attrs.failure.message}\n{attrs.failure.stack_trace}")
    return "\n".join(texts)


def side_effect_in_workflow(text: str, package: str) -> bool:
    """True when a failed workflow task ran an activity's body or an I/O client inside the workflow:
    a frame of activities.py in its stack, an activity API used outside an activity, or the sandbox
    refusing what the openai client, HTTP or the database need."""
    if f"{package}/activities.py" in text or "Not in activity context" in text:
        return True
    lowered = text.lower()
    return "restricted" in lowered and any(word in lowered for word in (
        "openai", "httpx", "urllib", "socket", "ssl", "sqlite", "sqlalchemy", "sqlmodel", "http.client"))


def root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    text = (str(err).splitlines() or [""])[0][:300]
    kind = getattr(err, "type", None)  # an ApplicationError names the exception the activity raised
    if kind and not text.startswith(kind):
        return f"{kind}: {text}" if text else kind
    return text or type(err).__name__


def new_run(label: str, key: str, rng: random.Random) -> Run:
    tag = f"{label.lower()}-{key}"
    return Run(label, f"analyze-{tag}", f"[run {tag}]", random_analysis(rng))


async def run_scenario(harness: Harness, scenario: Scenario, key: str, rng: random.Random) -> None:
    client = await Client.connect(harness.services.temporal_address)
    worker1 = harness.start_worker()
    scenario.old_identities = await harness.wait_polling(client, worker1)

    harness.services.llm  # the course LLM answers before any workflow needs it
    a, b = scenario.a, scenario.b
    harness.push_replies([a, b], failing_first=b)
    harness.seed_committed_row(b.workflow_id, scenario.seeded_row_id)

    # B first, to its end on the first worker: the LLM's 500, the deliberate failure, the committed row.
    b.handle = await client.start_workflow(
        "AnalyzeWorkflow", start_input(b.marker), id=b.workflow_id, task_queue=harness.task_queue)
    await harness.finish_on_first_worker(b)

    # Then A on the same worker, until its parse_json waits out the retry backoff on the server.
    for round_ in range(ROUNDS):
        if round_:
            scenario.missed_rounds.append(a)
            a = scenario.a = new_run(f"A{round_ + 1}", key, rng)
            harness.push_replies([a], failing_first=None)
        a.handle = await client.start_workflow(
            "AnalyzeWorkflow", start_input(a.marker), id=a.workflow_id, task_queue=harness.task_queue)
        scenario.backoff_at_kill = await harness.wait_in_backoff(a)
        if scenario.backoff_at_kill is not None:
            break
    else:
        raise CheckFailed(
            f"parse_json's retry started before the worker could be killed, in {ROUNDS} runs out of {ROUNDS}",
            observed="each time, attempt 2 was already running on the first worker when the check looked",
            expected=f"attempt 1 fails, and the server waits initial_interval={BACKOFF_S:g} s before attempt 2",
            revisit="The retry policy's initial_interval=timedelta(seconds=2) is the window the lab crashes into.")

    # The fault: SIGKILL the worker while A's retry waits on the server's timer.
    worker1.kill()
    scenario.killed_pid = worker1.pid
    scenario.killed_at = datetime.now(timezone.utc)
    for run in (a, *scenario.missed_rounds):
        with contextlib.suppress(RPCError):  # do what a graceful shutdown would have; see temporal.forget_sticky_queue
            await temporal.forget_sticky_queue(client, run.workflow_id)

    restarted = time.monotonic()
    worker2 = harness.start_worker()
    replay = harness.replay = temporal.Replay(root=harness.target.root, module=harness.target.module("workflows"),
                                              workflow_id=a.workflow_id)
    scenario.new_identities = await harness.wait_polling(client, worker2, scenario.old_identities)
    try:
        a.result = await harness.result_after_restart(a)
    except WorkflowFailureError:
        raise await harness.closed_early(a, "FAILED")
    scenario.restart_to_done_s = time.monotonic() - restarted

    ledger = scenario.llm_requests = harness.services.llm.ledger().entries(caller=harness.api_key)
    scenario.attempts = harness.attempts()
    for run in (a, b):
        run.history = await run.handle.fetch_history()
        run.llm_requests = requests_of(ledger, run.marker)
        run.rows = harness.rows(run.workflow_id)
    worker2.signal_tree(signal.SIGINT)  # shuts down gracefully while the replay runs
    scenario.replay = await asyncio.to_thread(replay.verdict, a.history, PATIENCE_S)


@pytest.fixture(scope="module")
def scenario(lab_target, services, tmp_path_factory) -> Scenario:
    key = uuid.uuid4().hex[:8]
    rng = random.Random(key)  # a new draw per run of the check; the key reproduces it
    harness = Harness(lab_target, services, tmp_path_factory.mktemp("lab01-run"), key)
    found = Scenario(a=new_run("A", key, rng), b=new_run("B", key, rng),
                     seeded_row_id=rng.randrange(10_000, 2_000_000_000))
    try:
        asyncio.run(run_scenario(harness, found, key, rng))
    except CheckFailed as failure:
        found.failure = failure
    finally:
        harness.close()
    return found


# --- the checks ----------------------------------------------------------------------------------

def _when(entry: LedgerEntry) -> str:
    return datetime.fromtimestamp(entry.at).strftime("%H:%M:%S.%f")[:-3]


def _made_by(entry: LedgerEntry) -> str:
    activity = (entry.origin or {}).get("activity")
    if activity:
        return f"{activity.get('type')} attempt {activity.get('attempt')}"
    if entry.origin is None:
        return "a sender that did not say which code it was"
    return f"code outside any activity (process {entry.origin.get('program') or entry.origin.get('pid')})"


@pytest.mark.check("crash-resume")
def test_killed_worker_resumes_on_a_new_worker(scenario, evidence):
    """Given a worker SIGKILLed during parse_json's retry backoff,
    When a new worker starts, as on another host,
    Then the workflow completes there, and the kill really happened mid-backoff."""
    if scenario.failure:
        raise scenario.failure
    a = scenario.a
    pending = scenario.backoff_at_kill
    margin = (pending.next_attempt_at - scenario.killed_at).total_seconds() if pending.next_attempt_at else 0.0
    evidence.update(restarts=1, killed_pid=scenario.killed_pid, kill_before_retry=f"{margin:.2f}s",
                    resumed_in=f"{scenario.restart_to_done_s:.1f}s")
    if scenario.missed_rounds:
        evidence["rounds"] = len(scenario.missed_rounds) + 1
    if not (pending.next_attempt_at and scenario.killed_at and pending.next_attempt_at > scenario.killed_at):
        raise CheckFailed("The worker was not killed during the retry backoff",
                          observed=f"kill at {scenario.killed_at}, retry due at {pending.next_attempt_at}",
                          expected="the kill lands before the server's retry timer fires")
    parse = next(r for r in temporal.activity_runs(a.history) if r.name == "parse_json")
    if parse.identity in scenario.old_identities or parse.identity not in scenario.new_identities:
        raise CheckFailed(
            "The retried parse_json did not run on the new worker",
            observed=f"parse_json attempt {parse.attempt} ran on {parse.identity!r}",
            expected=f"a worker started after the kill: {sorted(scenario.new_identities)}",
            revisit="The kill must stop the whole worker process; a second worker must not be running.")


@pytest.mark.check("llm-called-once")
def test_llm_called_exactly_once_per_run(scenario, evidence):
    """Given the crash scenario,
    Then every LLM request of a run was sent by a call_llm attempt (the origin each request carried),
    and each run got exactly one answer from the LLM (B's first request failed on purpose)."""
    scenario.require()
    for run in (scenario.a, scenario.b):
        strangers = [c for c in run.llm_requests if c.activity_type != "call_llm"]
        if strangers:
            answered = sum(1 for c in run.llm_requests if c.ok)
            raise CheckFailed(
                f"The LLM was called from {_made_by(strangers[0])}, not from call_llm, in run {run.label}: "
                f"{answered} answered request(s)",
                observed="; ".join(f"request at {_when(c)} sent by {_made_by(c)}" for c in run.llm_requests),
                expected="every LLM request of the run sent by an attempt of call_llm",
                revisit="Only call_llm talks to the LLM, and parse_json validates the text it is given. An LLM "
                        "call made in another activity (even if its reply is cached on disk or in the "
                        "database and read back on the retry) makes that activity's retries and restarts "
                        "repeat or fake the call. " + REVISIT_ACTIVITIES)
    for run in (scenario.a, scenario.b):
        answered = [c for c in run.llm_requests if c.ok]
        evidence[f"llm_calls_{run.label.lower()}"] = len(answered)
        if len(answered) != 1:
            when = ", ".join(_when(c) for c in answered)
            raise CheckFailed(
                f"call_llm reached the LLM {len(answered)} times in run {run.label}",
                observed=f"{len(answered)} answered requests in the course LLM's ledger for this run"
                         + (f" (at {when})" if answered else ""),
                expected="exactly 1: the retry of parse_json and the worker's death must not repeat it",
                revisit="The LLM call must be its own activity (call_llm), and parse_json must take the "
                        "text as its argument rather than call the LLM again. " + REVISIT_ACTIVITIES)
    attributed = {c.id for run in (scenario.a, scenario.b, *scenario.missed_rounds) for c in run.llm_requests}
    others = [c for c in scenario.llm_requests if c.id not in attributed]
    if others:
        raise CheckFailed(
            f"The LLM was called {len(others)} more time(s) with a prompt that is neither run's text",
            observed="extra requests in the course LLM's ledger: "
                     + "; ".join(f"{c.prompt[:60]!r} from {_made_by(c)}" for c in others[:4])
                     + (" ..." if len(others) > 4 else ""),
            expected="exactly 1 request per run: call_llm with the user's text, and no other LLM call",
            revisit="parse_json validates the text it is given; it must not ask the LLM again (each of its "
                    "retries would repeat that call). " + REVISIT_ACTIVITIES)


@pytest.mark.check("temporal-owns-retries")
def test_a_failed_llm_call_is_retried_by_temporal(scenario, evidence):
    """Given the course LLM answering run B's first request with a 500,
    Then each attempt Temporal ran sent one request: the 500 failed an attempt (the workers' record and
    the history show a second one), and the openai client did not retry it by itself."""
    scenario.require()
    b = scenario.b
    by_attempt: dict[tuple, list[LedgerEntry]] = {}
    for entry in b.llm_requests:
        activity = (entry.origin or {}).get("activity") or {}
        by_attempt.setdefault((activity.get("type"), activity.get("id"), activity.get("attempt")), []).append(entry)
    temporal_attempts = [a for a in scenario.attempts if a.workflow_id == b.workflow_id
                         and a.activity_type == (b.llm_requests[0].activity_type if b.llm_requests else "call_llm")]
    evidence.update(llm_requests_b=len(b.llm_requests), attempts_b=len(temporal_attempts))
    revisit = ("Create the client with AsyncOpenAI(max_retries=0). By default the openai client retries a 500 "
               "or a 429 itself, inside one activity attempt: Temporal never sees the failure, the history shows "
               "one attempt, and your retry policy (attempts, backoff) is not the one that ran. Let Temporal own "
               "retries: the failed attempt raises, and the server schedules the next.")
    repeated = {key: entries for key, entries in by_attempt.items() if len(entries) > 1}
    if repeated:
        (kind, _, attempt), entries = next(iter(repeated.items()))
        raise CheckFailed(
            f"The openai client retried the failed LLM call by itself: {len(entries)} requests in one "
            f"{kind} attempt",
            observed=f"{kind} attempt {attempt} of run B sent " + ", ".join(
                f"{'a ' + str(e.status) if not e.ok else 'an answered request'} at {_when(e)}" for e in entries)
                     + f"; Temporal ran {len(temporal_attempts)} attempt(s)",
            expected="the 500 fails call_llm attempt 1 and Temporal runs attempt 2, which gets the answer: one "
                     "request per attempt",
            revisit=revisit)
    failed = [e for e in b.llm_requests if not e.ok]
    if not failed:
        raise CheckFailed("Run B's LLM requests never met the injected 500",
                          observed=f"{len(b.llm_requests)} request(s), none failed",
                          expected="the course LLM answers B's first request with a 500")
    calls = [r for r in temporal.activity_runs(b.history) if r.name == failed[0].activity_type]
    if calls and calls[0].attempt < 2:
        raise CheckFailed(
            "The LLM's 500 did not fail the activity: Temporal saw no retry",
            observed=f"{calls[0].name} completed on attempt {calls[0].attempt}, after "
                     f"{len(b.llm_requests)} requests to the LLM",
            expected="call_llm attempt 1 fails with the 500; attempt 2 gets the answer",
            revisit=revisit)
    evidence["retried_by"] = "temporal"


@pytest.mark.check("activities-completed-once")
def test_each_activity_completed_once(scenario, evidence):
    """Then the history shows call_llm, parse_json and save_to_db each completed exactly once,
    in that order, with parse_json on attempt 2: only attempt 1 fails on purpose."""
    scenario.require()
    runs = temporal.activity_runs(scenario.a.history)
    evidence["activities"] = ",".join(f"{r.name}@{r.attempt}" for r in runs)
    if not each_activity_completed_once(scenario.a.history):
        raise CheckFailed(
            "The activities in the history are not call_llm → parse_json → save_to_db, each completed once",
            observed=", ".join(f"{name} ({outcome}, attempt {attempt})"
                               for name, outcome, attempt in activity_sequence(scenario.a.history)) or "no activities",
            expected=", ".join(f"{name} (completed)" for name in ACTIVITIES),
            revisit="AnalyzeWorkflow awaits the three activities one after the other, each once. "
                    + REVISIT_ACTIVITIES)
    if runs[0].attempt != 1:
        raise CheckFailed("call_llm needed more than one attempt",
                          observed=f"call_llm completed on attempt {runs[0].attempt}",
                          expected="attempt 1: the LLM answers run A's first request",
                          revisit=REVISIT_ACTIVITIES)
    if runs[1].attempt < 2:
        raise CheckFailed("parse_json completed on its first attempt",
                          observed=f"parse_json attempt {runs[1].attempt}",
                          expected="attempt 2: attempt 1 fails on purpose",
                          revisit="Key the deliberate failure on activity.info().attempt == 1.")
    if runs[1].attempt > 2:
        raise CheckFailed(
            "parse_json failed again on the restarted worker",
            observed=f"parse_json completed on attempt {runs[1].attempt}, so attempt 2, the first one on "
                     "the new worker, failed too",
            expected="attempt 2: only attempt 1 fails on purpose",
            revisit="Key the deliberate failure on activity.info().attempt == 1, which the server keeps. "
                    "A note that attempt 1 already failed (a flag, a set of workflow ids, a marker file in "
                    "the working directory or /tmp) lives with the worker: the restarted worker, like one on "
                    "another machine, does not have it, so it failed the retry again.")


@pytest.mark.check("retry-policy")
def test_activities_scheduled_with_the_lab_retry_policy(scenario, evidence):
    """Then every activity was scheduled with maximum_attempts=3, initial_interval=2 s,
    backoff_coefficient=2.0, and a start_to_close_timeout."""
    scenario.require()
    for run in temporal.activity_runs(scenario.a.history):
        got = {k: run.retry_policy[k] for k in EXPECTED_RETRY}
        if got != EXPECTED_RETRY:
            raise CheckFailed(
                f"{run.name} was scheduled with a different retry policy",
                observed=", ".join(f"{k}={v:g}" for k, v in got.items()) + "  (0 means unlimited / default)",
                expected=", ".join(f"{k}={v:g}" for k, v in EXPECTED_RETRY.items()),
                revisit="RetryPolicy lives in temporalio.common: RetryPolicy(maximum_attempts=3, "
                        "initial_interval=timedelta(seconds=2), backoff_coefficient=2.0), passed as "
                        "retry_policy= to each execute_activity call.")
        if not run.start_to_close_s:
            raise CheckFailed(f"{run.name} has no start_to_close_timeout",
                              observed="only schedule_to_close or no timeout",
                              expected="start_to_close_timeout on every activity",
                              revisit="Without it a hung attempt is never retried.")
    evidence["retry"] = "3x 2s x2.0"


def _topics(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


@pytest.mark.check("one-row-saved")
def test_exactly_one_row_per_workflow(scenario, evidence):
    """Then SQLite holds exactly one row for run A, its id is the workflow's result, and it holds the
    analysis the LLM gave run A; and for run B, whose row (a random id) an earlier attempt had already
    committed, still one row, whose id save_to_db returned as-is."""
    scenario.require()
    a, b = scenario.a, scenario.b
    evidence["rows"] = len(a.rows)
    if not one_row_saved(a.rows, a.workflow_id, a.result):
        raise CheckFailed(
            f"Run A left {len(a.rows)} row(s) for its workflow id" if len(a.rows) != 1 else
            "Run A's result is not the id of the row it saved",
            observed=f"rows {[r[:2] for r in a.rows]}, workflow result {a.result!r}",
            expected="exactly one row in table analysis with workflow_id = the workflow id, and its id returned",
            revisit="save_to_db inserts one AnalysisRow with workflow_id=activity.info().workflow_id and "
                    "returns its id (read back from the row you saved); the workflow returns that id.")
    _, _, sentiment, summary, topics = a.rows[0]
    want = a.reply
    if sentiment != want["sentiment"] or summary != want["summary"] or _topics(topics) != want["topics"]:
        raise CheckFailed(
            "Run A's saved row does not hold the analysis the LLM gave it",
            observed=f"row {a.rows[0][0]}: sentiment={sentiment!r}, summary={summary!r}, topics={topics!r}",
            expected=f"sentiment={want['sentiment']!r}, summary={want['summary']!r}, "
                     f"topics={','.join(want['topics'])!r} (the LLM's reply for this run, parsed)",
            revisit="save_to_db saves the row parse_json returned: sentiment and summary as they are, the "
                    "topics joined with commas. Each step passes its result to the next.")
    if len(b.rows) != 1 or b.result != scenario.seeded_row_id:
        raise CheckFailed(
            "save_to_db is not idempotent: a retried save must not insert again",
            observed=f"run B, whose row {scenario.seeded_row_id} was already committed, left {len(b.rows)} row(s) "
                     + (f"and failed: {b.failed}" if b.failed else f"and returned {b.result!r}"),
            expected=f"one row, and save_to_db returns the existing id {scenario.seeded_row_id}",
            revisit="Temporal runs an activity at least once: a worker can die after the INSERT commits and "
                    "before the result is recorded. Look the row up by workflow id first and return its id.")


@pytest.mark.check("history-replays")
def test_history_replays_deterministically(scenario, evidence):
    """Then the recorded history replays against the workflow code without a non-determinism error."""
    scenario.require()
    verdict = scenario.replay
    evidence["replayed"] = ",".join(verdict.workflows) if verdict.ok else "no"
    if not verdict.ok:
        raise CheckFailed(
            "The recorded history does not replay against your workflow code",
            observed=verdict.error,
            expected="the same decisions on replay: call_llm, then parse_json, then save_to_db",
            revisit="A workflow is replayed from its history after a crash, so it must be deterministic: "
                    "no wall-clock time, randomness or I/O in workflow code (use workflow.now(), "
                    "workflow.random(), and activities).",
            details=verdict.detail)
